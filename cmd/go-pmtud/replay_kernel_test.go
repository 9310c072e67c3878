package main

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/wire"
)

// TestReplayAfterRestartIsRefused captures a relay datagram that node B's
// real daemon sends to node A, replays it to A (refused as replayed), restarts
// A's daemon, whose replay windows then start empty, and replays it again.
// With envelope version 2, the default, the restarted A refuses it as
// stale_sequence: it was sealed before A started. With --relay-envelope 1,
// whose datagrams carry no send time, the restarted A injects it: the test
// can tell the two apart, and that is the hole version 2 closes.
func TestReplayAfterRestartIsRefused(t *testing.T) {
	bin, keyFile := buildDaemon(t), writeKeyFile(t)
	for _, tc := range []struct {
		envelope string
		version  byte
		after    string // the series at the restarted A that counts the replay
	}{
		{"2", 2, `go_pmtud_relay_dropped_total{node="node-a",reason="stale_sequence"} 1`},
		{"1", 1, `go_pmtud_relay_injected_total{node="node-a"} 1`},
	} {
		t.Run("envelope "+tc.envelope, func(t *testing.T) {
			c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
			if err != nil {
				t.Fatal(err)
			}
			env := func(name string) []string {
				return []string{"NODE_NAME=" + name,
					"PMTUD_PEERS=" + netlab.NodeAddr(0).String() + "," + netlab.NodeAddr(1).String(),
					"PMTUD_IGNORE_NETWORKS=198.18.1.0/24",
					"PMTUD_RELAY_KEY_FILE=" + keyFile,
					"PMTUD_RELAY_ENVELOPE=" + tc.envelope}
			}
			a := startDaemon(t, bin, c.Nodes[0], netlab.NodeAddr(0), env("node-a")...)
			b := startDaemon(t, bin, c.Nodes[1], netlab.NodeAddr(1), env("node-b")...)
			a.get("/metrics")
			b.get("/metrics")

			// A raw UDP socket in A's namespace gets a copy of every
			// datagram A receives, the daemon's included.
			capture := captureSocket(t, c.Nodes[0])
			router := openIn(t, c.Router, unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
			q := wire.AppendQuote(nil, netlab.Anycast, netlab.ClientAddr, unix.IPPROTO_TCP, 63, 1500,
				[]byte{0x9c, 0x41, 0x1f, 0x90, 0, 0, 0, 1})
			icmp := wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, q))
			if err := unix.Sendto(router, icmp, 0, &unix.SockaddrInet4{Addr: netlab.NodeAddr(1).As4()}); err != nil {
				t.Fatal(err)
			}
			a.waitMetric(`go_pmtud_relay_injected_total{node="node-a"} 1`)
			captured := captureRelayDatagram(t, capture, netlab.NodeAddr(1))
			if captured[4] != tc.version {
				t.Fatalf("captured datagram has version %d, want %d", captured[4], tc.version)
			}
			t.Logf("captured %d-byte datagram from B, version %d", len(captured), captured[4])

			// From B's address, as the datagram came (any source port).
			replayer := openIn(t, c.Nodes[1], unix.AF_INET, unix.SOCK_DGRAM, 0)
			if err := unix.Bind(replayer, &unix.SockaddrInet4{Addr: netlab.NodeAddr(1).As4()}); err != nil {
				t.Fatal(err)
			}
			replay := func() {
				t.Helper()
				if err := unix.Sendto(replayer, captured, 0, &unix.SockaddrInet4{Addr: netlab.NodeAddr(0).As4(), Port: 2734}); err != nil {
					t.Fatal(err)
				}
			}
			replay()
			a.waitMetric(`go_pmtud_relay_dropped_total{node="node-a",reason="replayed"} 1`)

			a.cmd.Process.Kill()
			<-a.exited
			a = startDaemon(t, bin, c.Nodes[0], netlab.NodeAddr(0), env("node-a")...)
			a.waitMetric(`go_pmtud_relay_injected_total{node="node-a"} 0`)
			replay()
			a.waitMetric(tc.after)
			_, m := a.get("/metrics")
			if tc.version == 2 && !strings.Contains(m, `go_pmtud_relay_injected_total{node="node-a"} 0`+"\n") {
				t.Errorf("the restarted A injected the replayed datagram:\n%s", m)
			}
		})
	}
}

// openIn opens a socket in ns and closes it when the test ends.
func openIn(t *testing.T, ns *netlab.NS, domain, typ, proto int) int {
	t.Helper()
	var fd int
	if err := ns.Do(func() (err error) {
		fd, err = unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// captureSocket opens a raw UDP socket in ns, which gets a copy of every
// UDP datagram ns receives, with a 10 s receive timeout.
func captureSocket(t *testing.T, ns *netlab.NS) int {
	t.Helper()
	fd := openIn(t, ns, unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_UDP)
	tv := unix.NsecToTimeval(int64(10 * time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return fd
}

// captureRelayDatagram reads IPv4 packets from fd, a raw UDP socket, until
// one from src to the relay port, and returns its UDP payload.
func captureRelayDatagram(t *testing.T, fd int, src netip.Addr) []byte {
	t.Helper()
	buf := make([]byte, 65536)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			t.Fatalf("no relay datagram from %v captured: %v", src, err)
		}
		p := buf[:n]
		if n < 20 {
			continue
		}
		ihl := int(p[0]&0x0f) * 4
		if n < ihl+8 || netip.AddrFrom4([4]byte(p[12:16])) != src || binary.BigEndian.Uint16(p[ihl+2:]) != 2734 {
			continue
		}
		return append([]byte(nil), p[ihl+8:]...)
	}
}

// TestPackedCopiesTeachPeer runs the real binary on two nodes: B sends
// version 3 (packed) datagrams, A runs the default (version 2) and accepts
// them, as it must during the switch. The router's ICMPs land on B; A
// injects B's packs, caches the path MTU and the stalled download
// completes.
func TestPackedCopiesTeachPeer(t *testing.T) {
	c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	bin, keyFile := buildDaemon(t), writeKeyFile(t)
	common := []string{"PMTUD_IGNORE_NETWORKS=198.18.1.0/24", "PMTUD_RELAY_KEY_FILE=" + keyFile,
		"PMTUD_PEERS=" + netlab.NodeAddr(0).String() + "," + netlab.NodeAddr(1).String()}
	a := startDaemon(t, bin, c.Nodes[0], netlab.NodeAddr(0), append(common, "NODE_NAME=node-a")...)
	b := startDaemon(t, bin, c.Nodes[1], netlab.NodeAddr(1), append(common, "NODE_NAME=node-b", "PMTUD_RELAY_ENVELOPE=3")...)
	a.get("/metrics")
	b.get("/metrics")
	capture := captureSocket(t, c.Nodes[0])
	got, mtu := download(t, c, c.Nodes[0])
	_, ma := a.get("/metrics")
	if got != downloadSize || mtu != 1400 || strings.Contains(ma, `go_pmtud_relay_injected_total{node="node-a"} 0`+"\n") {
		t.Fatalf("transferred %d of %d bytes, A caches mtu %d; want all and 1400\nA:\n%s", got, downloadSize, mtu, ma)
	}
	if !strings.Contains(ma, `reason="bad_version"} 0`+"\n") {
		t.Errorf("A refused datagrams as bad_version:\n%s", ma)
	}
	if d := captureRelayDatagram(t, capture, netlab.NodeAddr(1)); d[4] != 3 {
		t.Fatalf("B sent a version %d datagram, want 3 (packed)", d[4])
	}
}
