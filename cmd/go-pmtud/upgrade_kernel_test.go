package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/wire"
)

// v1Release is the last revision whose daemon sends and accepts only
// envelope version 1: the parent of the commit that added version 2.
const v1Release = "2ce9df5^"

// buildRelease builds the daemon as it was at rev, from this repository's
// history, for upgrade tests. Without the history (not a git checkout) it
// skips the test with a message.
func buildRelease(t *testing.T, rev string) string {
	t.Helper()
	root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Skipf("not a git checkout, cannot build release %s: %v", rev, err)
	}
	src := t.TempDir()
	archive := exec.Command("sh", "-c", `git archive "$0" | tar -x -C "$1"`, rev, src)
	archive.Dir = strings.TrimSpace(string(root))
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("git archive %s: %v\n%s", rev, err, out)
	}
	bin := filepath.Join(t.TempDir(), "go-pmtud-"+strings.Trim(rev, "^~"))
	build := exec.Command("go", "build", "-o", bin, "./cmd/go-pmtud")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build at %s: %v\n%s", rev, err, out)
	}
	return bin
}

// TestUpgradeFromV1ToPacked walks two nodes through the rolling upgrade of
// docs/operations.md, from the last release that speaks only envelope
// version 1 (built from this repository's history) to packed datagrams,
// and checks each step on the kernel:
//  1. A still runs the old release, B this one with --relay-envelope 1: B's
//     copy of the router's ICMP teaches A (the stalled download completes),
//     and the old daemon's copy is injected at B.
//  2. Packed too early: B sends version 3 while A runs the old release. A
//     refuses it (bad_version) and does not learn: the order matters.
//  3. A runs this release, still sending version 1 (which accepts version
//     3); B sends version 3: its datagram, captured at A, is version 3, and
//     A learns again.
func TestUpgradeFromV1ToPacked(t *testing.T) {
	old := buildRelease(t, v1Release)
	bin, keyFile := buildDaemon(t), writeKeyFile(t)
	c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	env := func(name string, extra ...string) []string {
		return append([]string{"NODE_NAME=" + name,
			"PMTUD_PEERS=" + netlab.NodeAddr(0).String() + "," + netlab.NodeAddr(1).String(),
			"PMTUD_IGNORE_NETWORKS=198.18.1.0/24", "PMTUD_RELAY_KEY_FILE=" + keyFile}, extra...)
	}
	restart := func(d *daemon, bin string, i int, e []string) *daemon {
		t.Helper()
		d.cmd.Process.Kill()
		<-d.exited
		d = startDaemon(t, bin, c.Nodes[i], netlab.NodeAddr(i), e...)
		d.get("/metrics")
		return d
	}
	a := startDaemon(t, old, c.Nodes[0], netlab.NodeAddr(0), env("node-a")...)
	b := startDaemon(t, bin, c.Nodes[1], netlab.NodeAddr(1), env("node-b", "PMTUD_RELAY_ENVELOPE=1")...)
	a.get("/metrics")
	b.get("/metrics")
	router := openIn(t, c.Router, unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	fragNeededVia := func(node int, sport uint16) {
		t.Helper()
		q := wire.AppendQuote(nil, netlab.Anycast, netlab.ClientAddr, unix.IPPROTO_TCP, 63, 1500,
			[]byte{byte(sport >> 8), byte(sport), 0x1f, 0x90, 0, 0, 0, 1})
		icmp := wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, q))
		if err := unix.Sendto(router, icmp, 0, &unix.SockaddrInet4{Addr: netlab.NodeAddr(node).As4()}); err != nil {
			t.Fatal(err)
		}
	}
	// forget makes A forget the path MTU it learnt, so a download needs a
	// copy again. A copy of a late Packet Too Big from the last download
	// may still teach A after a flush: flush until none comes back.
	forget := func() {
		t.Helper()
		for try := 0; ; try++ {
			c.Nodes[0].MustRun(t, "ip", "route", "flush", "cache")
			time.Sleep(300 * time.Millisecond)
			mtu, err := c.Nodes[0].CachedMTU(netlab.ClientAddr.String())
			if err == nil && mtu == 0 {
				return
			}
			if try == 20 {
				t.Fatalf("A still caches mtu %d (%v) after 20 flushes", mtu, err)
			}
		}
	}

	// 1. Roll 1 under way.
	if got, mtu := download(t, c, c.Nodes[0]); got != downloadSize || mtu != 1400 {
		t.Fatalf("old A, B sending version 1: transferred %d of %d bytes, A caches mtu %d; want all and 1400\nA's log:\n%s", got, downloadSize, mtu, a.stderr.String())
	}
	fragNeededVia(0, 40001) // the old daemon on A relays it to B
	b.waitMetric(`go_pmtud_relay_injected_total{node="node-b"} 1`)

	// 2. Version 3 before every node accepts it.
	b = restart(b, bin, 1, env("node-b", "PMTUD_RELAY_ENVELOPE=3"))
	forget()
	if got, mtu := download(t, c, c.Nodes[0]); got == downloadSize || mtu != 0 {
		t.Fatalf("old A, B sending version 3: transferred %d bytes, A caches mtu %d; want a stall", got, mtu)
	}
	// One refusal per Packet Too Big the router sent for the stalled
	// segments; the download has waited for them.
	if _, m := a.get("/metrics"); !regexp.MustCompile(`(?m)^go_pmtud_relay_dropped_total\{node="node-a",reason="bad_version"\} [1-9]`).MatchString(m) {
		t.Fatalf("the old A did not refuse B's version 3 datagrams as bad_version:\n%s", m)
	}

	// 3. Roll 1 done: A runs this release; B's packed copies teach it.
	a = restart(a, bin, 0, env("node-a", "PMTUD_RELAY_ENVELOPE=1"))
	forget()
	capture := captureSocket(t, c.Nodes[0])
	if got, mtu := download(t, c, c.Nodes[0]); got != downloadSize || mtu != 1400 {
		t.Fatalf("new A, B sending version 3: transferred %d of %d bytes, A caches mtu %d; want all and 1400\nA's log:\n%s", got, downloadSize, mtu, a.stderr.String())
	}
	if d := captureRelayDatagram(t, capture, netlab.NodeAddr(1)); d[4] != 3 {
		t.Fatalf("B's datagram at A has version %d, want 3", d[4])
	}
}
