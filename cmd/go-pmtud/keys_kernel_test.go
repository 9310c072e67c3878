package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/wire"
)

// TestKeyRotatesWithoutRestart runs the real binary on two nodes with the
// udp relay, each reading its key file from a Secret-style directory, and
// rolls the key the documented way, one node after the other, by
// kubelet-style swaps: the old key alone, then the new one added second,
// then first, then alone. After every swap a router ICMP at node B is
// relayed to node A and injected there: copies keep flowing, no datagram
// is refused for its key, and neither daemon restarts.
func TestKeyRotatesWithoutRestart(t *testing.T) {
	c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	oldKey, newKey := "1:"+strings.Repeat("5a", 32), "2:"+strings.Repeat("c3", 32)
	bin := buildDaemon(t)
	dirs := []string{t.TempDir(), t.TempDir()}
	var daemons []*daemon
	for i, n := range c.Nodes {
		kubeletSwapFile(t, dirs[i], "keys", oldKey+"\n")
		daemons = append(daemons, startDaemon(t, bin, n, netlab.NodeAddr(i),
			fmt.Sprintf("NODE_NAME=node-%d", i),
			"PMTUD_PEERS="+netlab.NodeAddr(0).String()+","+netlab.NodeAddr(1).String(),
			"PMTUD_IGNORE_NETWORKS=198.18.1.0/24",
			"PMTUD_RELAY_KEY_FILE="+filepath.Join(dirs[i], "keys")))
	}
	a, b := daemons[0], daemons[1]
	for _, d := range daemons {
		d.get("/metrics") // up
	}

	var fd int
	if err := c.Router.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	injected := 0
	relayOne := func(step string) {
		t.Helper()
		injected++
		q := wire.AppendQuote(nil, netlab.Anycast, netlab.ClientAddr, unix.IPPROTO_TCP, 63, 1500,
			[]byte{0x9c, byte(injected), 0x1f, 0x90, 0, 0, 0, byte(injected)})
		pkt := wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, q))
		if err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: netlab.NodeAddr(1).As4()}); err != nil {
			t.Fatal(err)
		}
		a.waitMetric(fmt.Sprintf(`go_pmtud_relay_injected_total{node="node-0"} %d`, injected))
		t.Logf("%s: copy %d injected at A", step, injected)
	}
	relayOne("old key")
	applied := []int{0, 0}
	swap := func(i int, content string) {
		t.Helper()
		kubeletSwapFile(t, dirs[i], "keys", content)
		applied[i]++
		daemons[i].waitMetric(fmt.Sprintf(`go_pmtud_key_reloads_total{node="node-%d",result="applied"} %d`, i, applied[i]))
	}
	for _, step := range []struct{ name, content string }{
		{"new key second", oldKey + "\n" + newKey + "\n"},
		{"new key first", newKey + "\n" + oldKey + "\n"},
		{"new key alone", newKey + "\n"},
	} {
		swap(1, step.content) // B
		relayOne(step.name + " on B")
		swap(0, step.content) // A
		relayOne(step.name + " on both")
	}
	for i, d := range daemons {
		_, m := d.get("/metrics")
		for _, reason := range []string{"unknown_key", "bad_tag", "unauthenticated"} {
			if !strings.Contains(m, fmt.Sprintf(`go_pmtud_relay_dropped_total{node="node-%d",reason=%q} 0`, i, reason)+"\n") {
				t.Errorf("node %d refused datagrams as %s:\n%s", i, reason, m)
			}
		}
		if strings.Count(d.stderr.String(), "go-pmtud started") != 1 {
			t.Errorf("node %d restarted:\n%s", i, d.stderr.String())
		}
	}
	// SIGHUP re-reads the file: the same keys, counted unchanged.
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	a.waitMetric(`go_pmtud_key_reloads_total{node="node-0",result="unchanged"} 1`)
	if !strings.Contains(b.stderr.String(), "relay keys changed") {
		t.Errorf("B logged no key change:\n%s", b.stderr.String())
	}
}

// kubeletSwapFile is kubeletSwap for a file named name: dir/name points
// into ..data, which a swap renames over.
func kubeletSwapFile(t *testing.T, dir, name, content string) {
	t.Helper()
	v, err := os.MkdirTemp(dir, "..2026_")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v, name), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(v), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, name)); err != nil {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}
