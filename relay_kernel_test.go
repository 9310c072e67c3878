package pmtud_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud"
	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

const group = 33

// startRelay starts a relay in ns and stops it when the test ends.
func startRelay(t *testing.T, ns *netlab.NS, cfg pmtud.Config) *pmtud.Relay {
	t.Helper()
	if cfg.NodeName == "" {
		cfg.NodeName = ns.Name()
	}
	if cfg.TTL == 0 {
		cfg.TTL = 10
	}
	cfg.NFLOG = nl.Config{Group: group}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	var r *pmtud.Relay
	if err := ns.Do(func() (err error) {
		r, err = pmtud.New(cfg, log)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v after cancel, want nil", err)
		}
	})
	return r
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(b)))
	return len(b), nil
}

// injector sends hand-made IP packets from ns (IPPROTO_RAW: the header is
// the caller's) to a next hop: IPv4 ones, or IPv6 ones (newInjector6).
type injector struct {
	fd int
	v6 bool
}

func newInjector(t *testing.T, ns *netlab.NS) *injector { return newInjectorOf(t, ns, false) }

func newInjector6(t *testing.T, ns *netlab.NS) *injector { return newInjectorOf(t, ns, true) }

func newInjectorOf(t *testing.T, ns *netlab.NS, v6 bool) *injector {
	t.Helper()
	inj := &injector{v6: v6}
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	if err := ns.Do(func() (err error) {
		inj.fd, err = unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(inj.fd) })
	return inj
}

// send routes pkt towards via; the packet keeps its own destination.
func (inj *injector) send(t *testing.T, via netip.Addr, pkt []byte) {
	t.Helper()
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: via.As16()}
	if !inj.v6 {
		sa = &unix.SockaddrInet4{Addr: via.As4()}
	}
	if err := unix.Sendto(inj.fd, pkt, 0, sa); err != nil {
		t.Fatalf("inject: %v", err)
	}
}

// icmpSink receives every ICMP that reaches a namespace, with its IP header.
type icmpSink struct {
	conn *ipv4.RawConn
}

func newICMPSink(t *testing.T, ns *netlab.NS) *icmpSink {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	rc, err := ipv4.NewRawConn(pc)
	if err != nil {
		t.Fatal(err)
	}
	return &icmpSink{conn: rc}
}

type received struct {
	src  netip.Addr
	ttl  int
	icmp []byte
}

// collect returns the ICMP packets that arrive within wait.
func (s *icmpSink) collect(t *testing.T, wait time.Duration) []received {
	t.Helper()
	var out []received
	s.conn.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65536)
	for {
		h, p, _, err := s.conn.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		src, _ := netip.AddrFromSlice(h.Src.To4())
		out = append(out, received{src: src, ttl: h.TTL, icmp: bytes.Clone(p)})
	}
}

// quotedPorts reads until stop is closed and calls fn with the quoted
// source port of every frag-needed copy from the address from: the index
// the stream tests put in each ICMP.
func (s *icmpSink) quotedPorts(from netip.Addr, stop <-chan struct{}, fn func(port uint16)) {
	buf := make([]byte, 2048)
	for {
		s.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		h, p, _, err := s.conn.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			select {
			case <-stop:
				return
			default:
				continue
			}
		}
		if err != nil || len(p) < 30 || p[0] != 3 || p[1] != 4 || !h.Src.Equal(from.AsSlice()) {
			continue
		}
		fn(binary.BigEndian.Uint16(p[28:30]))
	}
}

// quotedTCP returns the first 28 bytes of a TCP packet from the anycast
// address to the client, as a router quotes it.
func quotedTCP(sport uint16) []byte {
	tcp := []byte{byte(sport >> 8), byte(sport), 0x1f, 0x90, 0, 0, 0, 1}
	return wire.AppendQuote(nil, netlab.Anycast, netlab.ClientAddr, unix.IPPROTO_TCP, 63, 1500, tcp)
}

// fragNeeded returns a router's "fragmentation needed" from src to the
// anycast address.
func fragNeeded(src netip.Addr, mtu uint16, sport uint16) []byte {
	return wire.AppendIPv4(nil, src, netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, mtu, quotedTCP(sport)))
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReplicatesVerbatimICMP(t *testing.T) {
	for _, tc := range []struct {
		workers int
		split   pmtud.Split
	}{{1, pmtud.SplitBatch}, {3, pmtud.SplitBatch}, {2, pmtud.SplitPeer}} {
		t.Run(fmt.Sprintf("%d workers split by %v", tc.workers, tc.split), func(t *testing.T) {
			testReplicatesVerbatimICMP(t, tc.workers, tc.split)
		})
	}
}

func testReplicatesVerbatimICMP(t *testing.T, workers int, split pmtud.Split) {
	lab := netlab.NewT(t)
	c, err := netlab.BuildCluster(lab, 4, 1400)
	if err != nil {
		t.Fatal(err)
	}
	b := c.Nodes[1]
	// A rule wider than the documented one, so that the relay's own
	// validation, not iptables' icmp match, must reject the bad inputs.
	b.MustRun(t, "iptables", "-t", "raw", "-A", "PREROUTING", "-p", "icmp", "-j", "NFLOG", "--nflog-group", "33")
	peers := []netip.Addr{netlab.NodeAddr(0), netlab.NodeAddr(2), netlab.NodeAddr(3)}
	const ttl = 7
	relay := startRelay(t, b, pmtud.Config{
		Source:         netlab.NodeAddr(1),
		LocalAddrs:     []netip.Addr{netlab.NodeAddr(1), netlab.Anycast},
		Peers:          pmtud.PeersOf(append(peers, netlab.NodeAddr(1))...), // own address: removed
		IgnoreNetworks: []netip.Prefix{netip.MustParsePrefix("198.19.254.0/24")},
		TTL:            ttl,
		Workers:        workers,
		Split:          split,
		CPUs:           []int{0},
	})
	if got := relay.Peers(); len(got) != 3 {
		t.Fatalf("Peers() = %v, want the 3 remote peers", got)
	}
	sinks := make([]*icmpSink, len(peers))
	for i, j := range []int{0, 2, 3} {
		sinks[i] = newICMPSink(t, c.Nodes[j])
	}

	valid := [][]byte{
		fragNeeded(netlab.RouterLoopback, 1400, 40000),
		fragNeeded(netlab.RouterLoopback, 1280, 40001),
		fragNeeded(netlab.RouterLoopback, 576, 40002),
	}
	badChecksum := fragNeeded(netlab.RouterLoopback, 1400, 40003)
	badChecksum[20+2] ^= 0xff
	shortInner := wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64,
		wire.AppendFragNeeded(nil, 1400, quotedTCP(40004)[:24]))
	echo := wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64,
		setChecksum([]byte{8, 0, 0, 0, 0, 1, 0, 1, 'p', 'i', 'n', 'g'}))
	portUnreach := fragNeeded(netlab.RouterLoopback, 0, 40005)
	portUnreach[20+1] = 3
	setChecksum(portUnreach[20:])
	rejected := map[pmtud.DropReason][]byte{
		pmtud.DropIgnoredNetwork:                fragNeeded(netip.MustParseAddr("198.19.254.7"), 1400, 40006),
		pmtud.DropFromPeer:                      fragNeeded(netlab.NodeAddr(2), 1400, 40007),
		pmtud.DropFromSelf:                      fragNeeded(netlab.NodeAddr(1), 1400, 40008),
		pmtud.DropReason(wire.ErrBadChecksum):   badChecksum,
		pmtud.DropReason(wire.ErrBadInner):      shortInner,
		pmtud.DropReason(wire.ErrMTUZero):       fragNeeded(netlab.RouterLoopback, 0, 40009),
		pmtud.DropReason(wire.ErrMTUTooSmall):   fragNeeded(netlab.RouterLoopback, 68, 40010),
		pmtud.DropReason(wire.ErrMTUNotSmaller): fragNeeded(netlab.RouterLoopback, 1500, 40011),
		pmtud.DropReason(wire.ErrNoDF): wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64,
			wire.AppendFragNeeded(nil, 1400, func() []byte { q := quotedTCP(40012); q[6] = 0; return q }())),
	}

	inj := newInjector(t, c.Router)
	for _, p := range valid {
		inj.send(t, netlab.NodeAddr(1), p)
	}
	for _, p := range rejected {
		inj.send(t, netlab.NodeAddr(1), p)
	}
	inj.send(t, netlab.NodeAddr(1), echo)
	inj.send(t, netlab.NodeAddr(1), portUnreach)
	total := uint64(len(valid) + len(rejected) + 2)
	waitFor(t, "the relay to read every input", func() bool { return relay.Stats().Received == total })

	for i, s := range sinks {
		got := s.collect(t, 500*time.Millisecond)
		if len(got) != len(valid) {
			t.Errorf("peer %v received %d ICMPs, want exactly %d", peers[i], len(got), len(valid))
		}
		// Workers may reorder copies; each valid input must arrive once.
		seen := make([]bool, len(valid))
		for k, r := range got {
			match := -1
			for v := range valid {
				if !seen[v] && bytes.Equal(r.icmp, valid[v][20:]) {
					match = v
					break
				}
			}
			if match < 0 {
				t.Errorf("peer %v copy %d: ICMP bytes match no input (or repeat one)\n got %x", peers[i], k, r.icmp)
				continue
			}
			seen[match] = true
			if r.ttl != ttl || r.src != netlab.NodeAddr(1) {
				t.Errorf("peer %v copy %d: ttl %d from %v, want ttl %d from %v", peers[i], k, r.ttl, r.src, ttl, netlab.NodeAddr(1))
			}
		}
	}
	st := relay.Stats()
	if want := uint64(len(valid) * len(peers)); st.Sent != want || st.SendErrors != 0 {
		t.Errorf("Sent = %d, SendErrors = %d; want %d, 0", st.Sent, st.SendErrors, want)
	}
	want := map[pmtud.DropReason]uint64{pmtud.DropReason(wire.ErrNotFragNeeded): 2}
	for r := range rejected {
		want[r]++
	}
	if len(st.Dropped) != len(want) {
		t.Errorf("Dropped = %v, want %v", st.Dropped, want)
	}
	for r, n := range want {
		if st.Dropped[r] != n {
			t.Errorf("Dropped[%v] = %d, want %d (all: %v)", r, st.Dropped[r], n, st.Dropped)
		}
	}
}

// setChecksum fills in the ICMP checksum of m and returns it.
func setChecksum(m []byte) []byte {
	m[2], m[3] = 0, 0
	c := wire.Checksum(m)
	m[2], m[3] = byte(c>>8), byte(c)
	return m
}

// TestPeerLearnsPathMTU is the end-to-end check of shared/design.md: node A
// owns a flow, the router's "fragmentation needed" (IPv4) or "packet too
// big" (IPv6) lands on node B. Only with go-pmtud does A learn the path MTU
// and the transfer complete: on B alone with the icmp relay, on every node
// (as a DaemonSet) with the udp relay. The relay traffic between the nodes
// stays on IPv4 (their addresses are the peers) in both cases. The icmp
// relay cannot re-originate an ICMPv6 message (its checksum covers the
// router's addresses): it drops it by reason, and the IPv6 transfer stalls.
func TestPeerLearnsPathMTU(t *testing.T) {
	const size = 1 << 20
	for _, fam := range []struct {
		name        string
		ipv6        bool
		svc, client netip.Addr
		capture     []string // the command that logs the router's messages to group+1
		check       func(*testing.T, *nl.Reader)
	}{
		{"ipv4", false, netlab.Anycast, netlab.ClientAddr,
			append([]string{"iptables"}, netlab.NFLOGRule(group+1)...), checkRealRouterICMP},
		{"ipv6", true, netlab.Anycast6, netlab.ClientAddr6,
			append([]string{"ip6tables"}, netlab.NFLOGRule6(group+1)...), checkRealPacketTooBig},
	} {
		for _, mode := range []pmtud.Mode{0, pmtud.ModeICMP, pmtud.ModeUDP, pmtud.ModeL2} {
			name := fam.name + "/without go-pmtud"
			if mode != 0 {
				name = fam.name + "/" + mode.String() + " relay"
			}
			t.Run(name, func(t *testing.T) {
				c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
				if err != nil {
					t.Fatal(err)
				}
				if fam.ipv6 {
					if err := c.AddIPv6(); err != nil {
						t.Fatal(err)
					}
				}
				a, b := c.Nodes[0], c.Nodes[1]
				if mtu, err := a.CachedMTU(fam.client.String()); err != nil || mtu != 0 {
					t.Fatalf("before the transfer A caches mtu %d (%v), want none", mtu, err)
				}
				var relays []*pmtud.Relay
				switch mode {
				case pmtud.ModeICMP, pmtud.ModeL2: // A needs no daemon
					relays = startDaemons(t, c, mode, 1)
				case pmtud.ModeUDP:
					relays = startDaemons(t, c, mode, 0, 1)
				}
				var capture *nl.Reader
				if mode != 0 {
					// A second group sees the same router messages, for the
					// parser checks and fuzz seeds.
					b.MustRun(t, fam.capture...)
					if err := b.Do(func() (err error) {
						capture, err = nl.Listen(nl.Config{Group: group + 1})
						return err
					}); err != nil {
						t.Fatal(err)
					}
					defer capture.Close()
				}
				got, err := c.TransferTo(a, fam.svc, size, 3*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				mtu, err := a.CachedMTU(fam.client.String())
				if err != nil {
					t.Fatal(err)
				}
				learns := mode == pmtud.ModeUDP || mode == pmtud.ModeL2 || mode == pmtud.ModeICMP && !fam.ipv6
				if !learns {
					if got == size || mtu != 0 {
						t.Fatalf("transferred %d of %d bytes, A caches mtu %d; want a stall and no cached MTU", got, size, mtu)
					}
					if mode == pmtud.ModeICMP {
						fam.check(t, capture)
						if st := relays[0].Stats(); st.Dropped[pmtud.DropNoFamilyPeers] == 0 || st.Sent != 0 {
							t.Fatalf("icmp relay: %+v; want no_family_peers drops and nothing sent", st)
						}
					}
					return
				}
				onB := relays[len(relays)-1]
				if got != size || mtu != 1400 {
					t.Fatalf("transferred %d of %d bytes, A caches mtu %d; want all and 1400 (B's relay: %+v)", got, size, mtu, onB.Stats())
				}
				fam.check(t, capture)
				// The counters are updated just after the sendmmsg call returns.
				waitFor(t, "B's relay to count its copies", func() bool { return onB.Stats().Sent > 0 })
				if mode == pmtud.ModeUDP {
					onA := relays[0]
					waitFor(t, "A's relay to inject the copies", func() bool { return onA.Stats().Injected > 0 })
					// A logs what it injected on pmtud0 again and drops it there.
					waitFor(t, "A's relay to drop its own injection", func() bool { return onA.Stats().Dropped[pmtud.DropFromTUN] > 0 })
				}
			})
		}
	}
}

// startDaemons installs the NFLOG rules (both families) and starts go-pmtud
// on the given nodes of c, each listing every node of c as a peer, as a DaemonSet would.
func startDaemons(t *testing.T, c *netlab.Cluster, mode pmtud.Mode, nodes ...int) []*pmtud.Relay {
	t.Helper()
	return startDaemonsTo(t, c, mode, "", nodes...)
}

// startDaemonsTo is startDaemons with the l2 relay's destination (Config.L2Dest).
func startDaemonsTo(t *testing.T, c *netlab.Cluster, mode pmtud.Mode, l2dest string, nodes ...int) []*pmtud.Relay {
	t.Helper()
	var peers []netip.Addr
	for i := range c.Nodes {
		peers = append(peers, netlab.NodeAddr(i))
	}
	var relays []*pmtud.Relay
	for _, i := range nodes {
		if err := netlab.InstallNFLOGRule(c.Nodes[i], group); err != nil {
			t.Fatal(err)
		}
		if err := netlab.InstallNFLOGRule6(c.Nodes[i], group); err != nil {
			t.Fatal(err)
		}
		relays = append(relays, startRelay(t, c.Nodes[i], pmtud.Config{
			Mode:       mode,
			L2Iface:    "eth0",
			L2Dest:     l2dest,
			Source:     netlab.NodeAddr(i),
			LocalAddrs: []netip.Addr{netlab.NodeAddr(i), netlab.Anycast, netlab.NodeAddr6(i), netlab.Anycast6},
			Peers:      pmtud.PeersOf(peers...),
			Keys:       testKeys(mode),
		}))
	}
	return relays
}

// testKeys returns a relay key for the udp relay, none for icmp.
func testKeys(mode pmtud.Mode) []wire.Key {
	if mode != pmtud.ModeUDP {
		return nil
	}
	return []wire.Key{{ID: 7, Secret: []byte("0123456789abcdef0123456789abcdef")}}
}

// readCapture reads one batch from the capture group r, failing t if none
// arrives within 5 s or the batch is empty.
func readCapture(t *testing.T, r *nl.Reader) *nl.Batch {
	t.Helper()
	b := nl.NewBatch()
	done := make(chan error, 1)
	go func() { done <- r.Read(b) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		r.Close()
		t.Fatal("nothing was logged to the capture group")
	}
	if len(b.Packets) == 0 {
		t.Fatal("the capture group delivered an empty batch")
	}
	return b
}

// checkRealRouterICMP reads the ICMPs the kernel router sent during a
// transfer and checks that wire accepts them as the router built them.
// With PMTUD_WRITE_SEEDS=1 it stores them as fuzz seeds for wire and nl.
func checkRealRouterICMP(t *testing.T, r *nl.Reader) {
	t.Helper()
	b := readCapture(t, r)
	for i, p := range b.Packets {
		f, err := wire.ParseFragNeeded(p.Payload)
		if err != nil {
			t.Fatalf("router ICMP %d rejected: %v (%x)", i, err, p.Payload)
		}
		if f.Src != netlab.RouterLoopback || f.MTU != 1400 || f.Inner.Src != netlab.Anycast || f.Inner.Dst != netlab.ClientAddr || f.Inner.SrcPort != netlab.TransferPort {
			t.Fatalf("router ICMP %d parsed as %+v", i, f)
		}
		if i == 0 && os.Getenv("PMTUD_WRITE_SEEDS") == "1" {
			writeSeed(t, "wire/testdata/fuzz/FuzzParseFragNeeded/kernel-router", fmt.Sprintf("[]byte(%q)\nbyte('\\x00')\n", p.Payload))
		}
	}
}

// writeSeed writes a corpus entry in the format of go test fuzz v1.
func writeSeed(t *testing.T, path, values string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("go test fuzz v1\n"+values), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote fuzz seed %s", path)
}

// TestTwoDaemonsDoNotPingPong runs go-pmtud on two and on three nodes that
// list each other, with no --ignore-networks: one router ICMP to each node
// gives exactly one copy to every other node, and the copies are not copied
// again.
func TestTwoDaemonsDoNotPingPong(t *testing.T) {
	for _, n := range []int{2, 3} {
		for _, tc := range []struct {
			mode pmtud.Mode
			dest string
		}{{pmtud.ModeICMP, ""}, {pmtud.ModeUDP, ""}, {pmtud.ModeL2, pmtud.L2Broadcast}, {pmtud.ModeL2, pmtud.L2Peers}} {
			t.Run(fmt.Sprintf("%d daemons/%v relay %s", n, tc.mode, tc.dest), func(t *testing.T) { noPingPong(t, n, tc.mode, tc.dest) })
		}
	}
}

func noPingPong(t *testing.T, n int, mode pmtud.Mode, dest string) {
	lab := netlab.NewT(t)
	c, err := netlab.BuildCluster(lab, n, 1400)
	if err != nil {
		t.Fatal(err)
	}
	nodes := make([]int, n)
	for i := range nodes {
		nodes[i] = i
	}
	relays := startDaemonsTo(t, c, mode, dest, nodes...)
	inj := newInjector(t, c.Router)
	oneCopyEach(t, relays, mode, dest, 1, func(i int) {
		inj.send(t, netlab.NodeAddr(i), fragNeeded(netlab.RouterLoopback, 1400, uint16(41000+i)))
	})
}

// oneCopyEach checks loop safety among relays, one per node, that list
// each other: once the l2 relay to peers has resolved them, it has the
// router send per ICMPs to each node (send(i)), then expects exactly one
// copy of each to every other node (one broadcast frame with
// --l2-dest broadcast), each copy dropped by the reason of its relay, and
// no counter moving after.
func oneCopyEach(t *testing.T, relays []*pmtud.Relay, mode pmtud.Mode, dest string, per int, send func(i int)) {
	t.Helper()
	n := len(relays)
	if dest == pmtud.L2Peers {
		// Unicast frames, not broadcast ones, are the case to prove.
		waitFor(t, "every node to resolve its peers", func() bool {
			for _, r := range relays {
				var m strings.Builder
				r.WritePrometheus(&m)
				if !regexp.MustCompile(`(?m)^go_pmtud_l2_unresolved_peers\{[^}]*\} 0$`).MatchString(m.String()) {
					return false
				}
			}
			return true
		})
	}
	for i := range n {
		send(i)
	}

	// icmp: each node logs the router's ICMP and the peers' copies,
	// which come from the peers' addresses. udp: each node logs
	// the router's ICMP and the injected copies, which arrive on
	// its TUN. l2: each node logs the router's ICMP and the peers'
	// broadcast frames; each sends one frame, not one per peer.
	k := uint64(per)
	copyReason, sent := pmtud.DropFromPeer, k*uint64(n-1)
	switch mode {
	case pmtud.ModeUDP:
		copyReason = pmtud.DropFromTUN
	case pmtud.ModeL2:
		copyReason = pmtud.DropL2Copy
		if dest == pmtud.L2Broadcast {
			sent = k
		}
	}
	check := func() bool {
		for _, r := range relays {
			st := r.Stats()
			if st.Received != k*uint64(n) || st.Sent != sent || st.Dropped[copyReason] != k*uint64(n-1) {
				return false
			}
			if mode == pmtud.ModeUDP && st.Injected != k*uint64(n-1) {
				return false
			}
		}
		return true
	}
	waitFor(t, "one copy each way", check)
	// A ping-pong would keep the counters moving; give it time to show.
	time.Sleep(300 * time.Millisecond)
	if !check() {
		var sts []string
		for _, r := range relays {
			sts = append(sts, fmt.Sprintf("%+v", r.Stats()))
		}
		t.Fatalf("counters moved after the exchange: %v", sts)
	}
}

// TestL2PeersResolvesAndCountsOffSegment starts an l2 relay to peers on a
// node whose neighbour table knows nobody: the peer on the segment is
// solicited and resolved; one outside the interface's prefix is counted as
// off the segment and not solicited.
func TestL2PeersResolvesAndCountsOffSegment(t *testing.T) {
	c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	off := netip.MustParseAddr("198.18.77.7")
	r := startRelay(t, c.Nodes[1], pmtud.Config{
		Mode: pmtud.ModeL2, L2Iface: "eth0", L2Dest: pmtud.L2Peers,
		Source: netlab.NodeAddr(1), Peers: pmtud.PeersOf(netlab.NodeAddr(0), netlab.NodeAddr(1), off),
	})
	want := regexp.MustCompile(`(?m)^go_pmtud_l2_unresolved_peers\{[^}]*\} 0\n(.|\n)*^go_pmtud_l2_offsegment_peers\{[^}]*\} 1$`)
	var m strings.Builder
	waitFor(t, "A resolved and the off-segment peer counted", func() bool {
		m.Reset()
		r.WritePrometheus(&m)
		return want.MatchString(m.String())
	})
	if out := c.Nodes[1].MustRun(t, "ip", "neigh", "show", "dev", "eth0"); strings.Contains(out, off.String()) || !strings.Contains(out, netlab.NodeAddr(0).String()) {
		t.Fatalf("neighbour table:\n%s\nwant A and not the off-segment peer", out)
	}
}
