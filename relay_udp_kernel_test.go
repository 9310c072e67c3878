package pmtud_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud"
	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// TestPodBehindDNATLearnsPathMTU is the Kubernetes case: a client fetches
// from a pod behind node A's DNAT; the router's ICMP lands on node B. The
// udp relay delivers the router's packet to A untouched, so conntrack
// relates it to the flow, reverses the NAT and the pod learns the MTU. The
// icmp relay's copy is INVALID to A's conntrack and dropped: the transfer
// stalls. The l2 relay's broadcast frame reaches A, but A does not forward
// a packet that came as a link-layer broadcast: the transfer stalls too.
// go-pmtud runs on every node, as a DaemonSet.
func TestPodBehindDNATLearnsPathMTU(t *testing.T) {
	const size = 1 << 20
	for _, tc := range []struct {
		mode pmtud.Mode
		dest string
	}{{pmtud.ModeUDP, ""}, {pmtud.ModeL2, pmtud.L2Broadcast}, {pmtud.ModeL2, pmtud.L2Peers}, {pmtud.ModeICMP, ""}} {
		mode, name := tc.mode, tc.mode.String()+" relay"
		if tc.dest != "" {
			name += " to " + tc.dest
		}
		t.Run(name, func(t *testing.T) {
			lab := netlab.NewT(t)
			c, err := netlab.BuildCluster(lab, 2, 1400)
			if err != nil {
				t.Fatal(err)
			}
			pod, err := c.AddPod(lab)
			if err != nil {
				t.Fatal(err)
			}
			relays := startDaemonsTo(t, c, mode, tc.dest, 0, 1)
			got, err := c.Transfer(pod, size, 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			mtu, err := pod.CachedMTU(netlab.ClientAddr.String())
			if err != nil {
				t.Fatal(err)
			}
			onB := relays[1].Stats()
			if onB.Sent == 0 {
				t.Fatalf("B replicated nothing: the scenario did not put the router's ICMP on B: %+v", onB)
			}
			if tc.dest == pmtud.L2Broadcast {
				// The documented limit of l2 broadcast frames: A takes the
				// copy, conntrack relates it and reverses the NAT, but a
				// packet that arrived as a link-layer broadcast is not
				// forwarded (ip_forward drops pkt_type != PACKET_HOST).
				if got == size || mtu != 0 {
					t.Fatalf("l2 broadcast: transferred %d of %d bytes, the pod caches mtu %d; want a stall", got, size, mtu)
				}
				if st := relays[0].Stats(); st.Dropped[pmtud.DropL2Copy] == 0 {
					t.Fatalf("A logged no l2 copy: %+v", st)
				}
				return
			}
			if mode != pmtud.ModeICMP {
				if got != size || mtu != 1400 {
					t.Fatalf("%v relay: transferred %d of %d bytes, the pod caches mtu %d; want all and 1400 (A: %+v)", mode, got, size, mtu, relays[0].Stats())
				}
				return
			}
			// The documented limit of the icmp relay.
			if got == size || mtu != 0 {
				t.Fatalf("icmp relay: transferred %d of %d bytes, the pod caches mtu %d; want a stall, as conntrack drops the copy as INVALID", got, size, mtu)
			}
		})
	}
}

// TestRejectsForgedRelayDatagrams sends hand-made relay datagrams to a udp
// relay: only the genuine one is injected, every other is counted under its
// reason.
func TestRejectsForgedRelayDatagrams(t *testing.T) {
	lab := netlab.NewT(t)
	c, err := netlab.BuildCluster(lab, 4, 1400)
	if err != nil {
		t.Fatal(err)
	}
	// The relay on A lists B and C (node 3) as peers; node 2 is no peer.
	a := c.Nodes[0]
	keys := testKeys(pmtud.ModeUDP)
	relay := startRelay(t, a, pmtud.Config{
		Mode:       pmtud.ModeUDP,
		Source:     netlab.NodeAddr(0),
		LocalAddrs: []netip.Addr{netlab.NodeAddr(0), netlab.Anycast},
		Peers:      pmtud.PeersOf(netlab.NodeAddr(1), netlab.NodeAddr(3)),
		Keys:       keys,
	})

	seq := wire.NewSequence(time.Now())
	// A sender whose clock is an hour fast.
	fast := wire.NewSequence(time.Now().Add(time.Hour))
	sealSeq := func(seq *wire.Sequence, key *wire.Key, sender netip.Addr, pkt []byte) []byte {
		s, err := wire.NewSealer(key, seq, sender)
		if err != nil {
			t.Fatal(err)
		}
		var hdr [wire.EnvelopeLen]byte
		s.Seal(&hdr, pkt, time.Now())
		return append(hdr[:], pkt...)
	}
	seal := func(key *wire.Key, sender netip.Addr, pkt []byte) []byte { return sealSeq(seq, key, sender, pkt) }
	future := sealSeq(fast, &keys[0], netlab.NodeAddr(1), fragNeeded(netlab.RouterLoopback, 1400, 42007))
	good := seal(&keys[0], netlab.NodeAddr(1), fragNeeded(netlab.RouterLoopback, 1400, 42000))
	badTag := seal(&keys[0], netlab.NodeAddr(1), fragNeeded(netlab.RouterLoopback, 1400, 42001))
	badTag[len(badTag)-1] ^= 1
	otherKey := wire.Key{ID: 8, Secret: keys[0].Secret}
	unknownKey := seal(&otherKey, netlab.NodeAddr(1), fragNeeded(netlab.RouterLoopback, 1400, 42002))
	notFragNeeded := fragNeeded(netlab.RouterLoopback, 1400, 42003)
	notFragNeeded[20+1] = 3 // port unreachable
	setChecksum(notFragNeeded[20:])
	inner := seal(&keys[0], netlab.NodeAddr(1), notFragNeeded)
	unauthenticated := seal(nil, netlab.NodeAddr(1), fragNeeded(netlab.RouterLoopback, 1400, 42004))
	short := good[:wire.EnvelopeLen-1]
	// Sealed by B, sent from C: the tag binds the sender's address.
	fromOtherPeer := seal(&keys[0], netlab.NodeAddr(1), fragNeeded(netlab.RouterLoopback, 1400, 42006))

	send := func(from *netlab.NS, d []byte) {
		t.Helper()
		if err := from.Do(func() error {
			conn, err := net.Dial("udp4", net.JoinHostPort(netlab.NodeAddr(0).String(), strconv.Itoa(pmtud.DefaultRelayPort)))
			if err != nil {
				return err
			}
			defer conn.Close()
			_, err = conn.Write(d)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	b, stranger := c.Nodes[1], c.Nodes[2]
	// First, so that good below shows the window was not moved by it.
	send(b, future)
	send(b, good)
	send(b, good) // replayed
	send(b, badTag)
	send(b, unknownKey)
	send(b, inner)
	send(b, unauthenticated)
	send(b, short)
	// From a non-peer: the socket's filter drops it in the kernel.
	send(stranger, seal(&keys[0], netlab.NodeAddr(2), fragNeeded(netlab.RouterLoopback, 1400, 42005)))
	send(c.Nodes[3], fromOtherPeer)

	const total = 9
	waitFor(t, "the relay to read every datagram", func() bool {
		st := relay.Stats()
		return st.RelayReceived == total && st.Injected+sum(st.RelayDropped) == total
	})
	st := relay.Stats()
	if st.Injected != 1 {
		t.Errorf("Injected = %d, want only the genuine datagram", st.Injected)
	}
	want := map[string]uint64{
		"replayed": 1, "bad_tag": 2, "unknown_key": 1, "inner_not_frag_needed": 1,
		"unauthenticated": 1, "short": 1, "future_sequence": 1,
	}
	if st.SocketDrops != 1 {
		t.Errorf("SocketDrops = %d, want the non-peer's datagram", st.SocketDrops)
	}
	got := map[string]uint64{}
	for r, n := range st.RelayDropped {
		got[r.String()] = n
	}
	for r, n := range want {
		if got[r] != n {
			t.Errorf("RelayDropped[%s] = %d, want %d (all: %v)", r, got[r], n, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("RelayDropped = %v, want %v", got, want)
	}
}

// TestRelaySocketAdmitsOnlyPeers: the udp relay's socket filter drops a
// non-peer's datagrams in the kernel, and follows the peer set: once the
// sender is a peer its datagram is injected, once it has left, dropped
// again.
func TestRelaySocketAdmitsOnlyPeers(t *testing.T) {
	c, err := netlab.BuildCluster(netlab.NewT(t), 3, 1400)
	if err != nil {
		t.Fatal(err)
	}
	keys := testKeys(pmtud.ModeUDP)
	relay := startRelay(t, c.Nodes[0], pmtud.Config{
		Mode:       pmtud.ModeUDP,
		Source:     netlab.NodeAddr(0),
		LocalAddrs: []netip.Addr{netlab.NodeAddr(0), netlab.Anycast},
		Peers:      pmtud.PeersOf(netlab.NodeAddr(1)),
		Keys:       keys,
	})
	seq := wire.NewSequence(time.Now())
	sealer, err := wire.NewSealer(&keys[0], seq, netlab.NodeAddr(2))
	if err != nil {
		t.Fatal(err)
	}
	n := uint16(0)
	send := func() {
		t.Helper()
		n++
		pkt := fragNeeded(netlab.RouterLoopback, 1400, 43000+n)
		var hdr [wire.EnvelopeLen]byte
		sealer.Seal(&hdr, pkt, time.Now())
		if err := c.Nodes[2].Do(func() error {
			conn, err := net.Dial("udp4", net.JoinHostPort(netlab.NodeAddr(0).String(), strconv.Itoa(pmtud.DefaultRelayPort)))
			if err != nil {
				return err
			}
			defer conn.Close()
			_, err = conn.Write(append(hdr[:], pkt...))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	send()
	waitFor(t, "the kernel to drop the non-peer's datagram", func() bool { return relay.Stats().SocketDrops == 1 })
	if _, err := relay.SetPeers(pmtud.PeersOf(netlab.NodeAddr(1), netlab.NodeAddr(2))); err != nil {
		t.Fatal(err)
	}
	send()
	waitFor(t, "the new peer's datagram to be injected", func() bool { return relay.Stats().Injected == 1 })
	if _, err := relay.SetPeers(pmtud.PeersOf(netlab.NodeAddr(1))); err != nil {
		t.Fatal(err)
	}
	send()
	waitFor(t, "the kernel to drop the departed peer's datagram", func() bool { return relay.Stats().SocketDrops == 2 })
	if st := relay.Stats(); st.RelayReceived != 1 || st.Injected != 1 {
		t.Fatalf("stats %+v: want only the datagram sent while a peer received and injected", st)
	}
}

func sum[K comparable](m map[K]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// TestForwardedCopiesAreNotRelayedAgain: a frag-needed addressed to node
// B's own address (egress SNATed to the node, say) reaches B; B's udp copies
// are injected on A and C, whose kernels forward them back to B — on its
// cluster interface, with the router's source address, not on a TUN. Only
// the dedup window recognises them. With it, B sends exactly one copy per
// peer and nothing moves after; the control run without it shows the loop
// the scenario creates.
func TestForwardedCopiesAreNotRelayedAgain(t *testing.T) {
	for _, dedup := range []bool{false, true} {
		name := "dedup off (control)"
		if dedup {
			name = "dedup on"
		}
		t.Run(name, func(t *testing.T) {
			lab := netlab.NewT(t)
			c, err := netlab.BuildCluster(lab, 3, 1400)
			if err != nil {
				t.Fatal(err)
			}
			var peers []netip.Addr
			for i := range c.Nodes {
				peers = append(peers, netlab.NodeAddr(i))
			}
			var relays []*pmtud.Relay
			for i, node := range c.Nodes {
				if err := netlab.InstallNFLOGRule(node, group); err != nil {
					t.Fatal(err)
				}
				cfg := pmtud.Config{
					Mode:       pmtud.ModeUDP,
					Source:     netlab.NodeAddr(i),
					LocalAddrs: []netip.Addr{netlab.NodeAddr(i), netlab.Anycast},
					Peers:      pmtud.PeersOf(peers...),
					Keys:       testKeys(pmtud.ModeUDP),
				}
				if !dedup {
					cfg.DedupWindow = -1
				}
				relays = append(relays, startRelay(t, node, cfg))
			}
			b := netlab.NodeAddr(1)
			quoted := wire.AppendQuote(nil, b, netlab.ClientAddr, 6, 63, 1500, []byte{0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1})
			pkt := wire.AppendIPv4(nil, netlab.RouterLoopback, b, 1, 64, wire.AppendFragNeeded(nil, 1400, quoted))
			newInjector(t, c.Router).send(t, b, pkt)

			sent := func() (n uint64) {
				for _, r := range relays {
					n += r.Stats().Sent
				}
				return n
			}
			if !dedup {
				waitFor(t, "the loop to show", func() bool { return sent() > 100 })
				return
			}
			waitFor(t, "B's two copies", func() bool { return relays[1].Stats().Sent == 2 })
			time.Sleep(300 * time.Millisecond)
			if n := sent(); n != 2 {
				t.Fatalf("%d copies sent in all, want B's 2: A %+v, B %+v, C %+v", n, relays[0].Stats(), relays[1].Stats(), relays[2].Stats())
			}
		})
	}
}

// TestPeerWithoutDaemonIsCounted: B relays to A, which runs go-pmtud, and
// to C, which does not: C's kernel answers each datagram with port
// unreachable. B counts those reports against C (IP_RECVERR), and they
// cost A nothing: every copy still reaches A, and no send is an error.
func TestPeerWithoutDaemonIsCounted(t *testing.T) {
	lab := netlab.NewT(t)
	c, err := netlab.BuildCluster(lab, 3, 1400)
	if err != nil {
		t.Fatal(err)
	}
	a, b, cAddr := netlab.NodeAddr(0), netlab.NodeAddr(1), netlab.NodeAddr(2)
	startNode := func(i int) *pmtud.Relay {
		if err := netlab.InstallNFLOGRule(c.Nodes[i], group); err != nil {
			t.Fatal(err)
		}
		return startRelay(t, c.Nodes[i], pmtud.Config{
			Mode:       pmtud.ModeUDP,
			Source:     netlab.NodeAddr(i),
			LocalAddrs: []netip.Addr{netlab.NodeAddr(i), netlab.Anycast},
			Peers:      pmtud.PeersOf(a, b, cAddr),
			Keys:       testKeys(pmtud.ModeUDP),
		})
	}
	onA, onB := startNode(0), startNode(1)
	const n = 50
	inj := newInjector(t, c.Router)
	for i := range n {
		inj.send(t, b, fragNeeded(netlab.RouterLoopback, 1400, uint16(20000+i)))
		// The first half spread over batches of one, so that a report
		// fails the first send of a call; the second half back to back,
		// so that one fails a send in the middle of a call.
		if i < n/2 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	waitFor(t, "every copy to reach A", func() bool { return onA.Stats().RelayReceived == n })
	waitFor(t, "B to count C's reports", func() bool { return onB.Stats().Unreachable[cAddr] > 0 })
	st := onB.Stats()
	if st.Sent != 2*n || st.SendErrors != 0 || st.Unreachable[a] != 0 {
		t.Fatalf("B: %+v; want %d copies sent, no send errors, no reports against A", st, 2*n)
	}
	var out bytes.Buffer
	onB.WritePrometheus(&out)
	if want := fmt.Sprintf("go_pmtud_relay_unreachable_total{node=%q,peer=%q} %d", c.Nodes[1].Name(), cAddr, st.Unreachable[cAddr]); !strings.Contains(out.String(), want) {
		t.Fatalf("metrics lack %q:\n%s", want, out.String())
	}
}

// TestRelaySocketDropsAreCounted: datagrams that arrive while the relay's
// receive buffer is full are dropped by the kernel; go-pmtud counts them
// (SO_MEMINFO), and its count is the kernel's Udp RcvbufErrors.
func TestRelaySocketDropsAreCounted(t *testing.T) {
	lab := netlab.NewT(t)
	c, err := netlab.BuildCluster(lab, 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	a, b := netlab.NodeAddr(0), netlab.NodeAddr(1)
	var r *pmtud.Relay
	if err := c.Nodes[1].Do(func() (err error) {
		r, err = pmtud.New(pmtud.Config{
			NodeName: "b", Mode: pmtud.ModeUDP, Source: b, TTL: 10,
			LocalAddrs: []netip.Addr{b}, Peers: pmtud.PeersOf(a), Keys: testKeys(pmtud.ModeUDP),
			NFLOG: nl.Config{Group: group},
		}, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// Nothing reads yet: fill the 8 MiB buffer (16 MiB of truesize) and
	// overflow it from peer A.
	const sent = 30000
	if err := c.Nodes[0].Do(func() error {
		conn, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(b, pmtud.DefaultRelayPort)))
		if err != nil {
			return err
		}
		defer conn.Close()
		d := make([]byte, 1000)
		for range sent {
			if _, err := conn.Write(d); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	kernel, err := c.Nodes[1].UDPRcvbufErrors()
	if err != nil {
		t.Fatal(err)
	}
	if kernel == 0 || kernel >= sent {
		t.Fatalf("the kernel dropped %d of %d datagrams; the test needs some dropped and some queued", kernel, sent)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the relay to read the queue", func() bool { return r.Stats().RelayReceived == sent-kernel })
	if st := r.Stats(); st.SocketDrops != kernel {
		t.Fatalf("go-pmtud counts %d socket drops, the kernel %d (stats %+v)", st.SocketDrops, kernel, st)
	}
}
