package pmtud

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

var testKey = wire.Key{ID: 3, Secret: []byte("allocation-test-secret-32-bytes!")}

// newTestRelay starts no loops: it opens a relay on node i of a 4-node
// cluster with the other nodes as peers, for tests that drive its parts.
func newTestRelay(t *testing.T, mode Mode, i int, keys ...wire.Key) (*Relay, *netlab.Cluster) {
	t.Helper()
	lab := netlab.NewT(t)
	c, err := netlab.BuildCluster(lab, 4, 1400)
	if err != nil {
		t.Fatal(err)
	}
	var peers []netip.Addr
	for j := range c.Nodes {
		peers = append(peers, netlab.NodeAddr(j))
	}
	cfg := Config{
		NodeName:       "t",
		Mode:           mode,
		Source:         netlab.NodeAddr(i),
		Peers:          peers,
		IgnoreNetworks: []netip.Prefix{netip.MustParsePrefix("198.19.254.0/24")},
		TTL:            10,
		NFLOG:          nl.Config{Group: 33},
	}
	cfg.Keys = keys
	var r *Relay
	if err := c.Nodes[i].Do(func() (err error) {
		r, err = New(cfg, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, c
}

// TestRelayAllocs proves that the per-batch path — parse, policy, sealing
// (udp), fan-out with real sendmmsg calls, metrics — allocates nothing in
// steady state.
func TestRelayAllocs(t *testing.T) {
	for _, mode := range []Mode{ModeICMP, ModeUDP} {
		t.Run(mode.String(), func(t *testing.T) {
			r, _ := newTestRelay(t, mode, 1, testKeys(mode)...)
			quoted := wire.AppendIPv4(nil, netlab.Anycast, netlab.ClientAddr, unix.IPPROTO_TCP, 63, make([]byte, 8))
			good := wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, quoted))
			fromPeer := wire.AppendIPv4(nil, netlab.NodeAddr(2), netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, quoted))
			ignored := wire.AppendIPv4(nil, netip.MustParseAddr("198.19.254.1"), netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, quoted))
			b := &nl.Batch{}
			for i := range 64 {
				p := good
				switch i % 8 {
				case 3:
					p = fromPeer
				case 5:
					p = ignored
				case 7:
					p = good[:30]
				}
				b.Packets = append(b.Packets, nl.Packet{Payload: p})
			}
			w := r.workers[0]
			w.handle(b) // warm up: histogram buckets, neighbour entries
			allocs := testing.AllocsPerRun(100, func() { w.handle(b) })
			if allocs != 0 {
				t.Fatalf("handle allocates %.1f times per batch of %d packets, want 0", allocs, len(b.Packets))
			}
			st := r.Stats()
			if st.Sent == 0 || st.SendErrors != 0 || st.Dropped[DropFromPeer] == 0 || st.Dropped[DropIgnoredNetwork] == 0 || st.Dropped[DropReason(wire.ErrTruncated)] == 0 {
				t.Fatalf("the measured path did not do the work: %+v", st)
			}
		})
	}
}

// TestReceiveAllocs proves that the udp relay's receive path — source
// check, envelope verification, parse, replay window, TUN write — allocates
// nothing per datagram.
func TestReceiveAllocs(t *testing.T) {
	r, _ := newTestRelay(t, ModeUDP, 0, testKey)
	rv := r.recv
	sender := netlab.NodeAddr(1)
	sealer, err := wire.NewSealer(&testKey, wire.NewSequence(time.Now()), sender)
	if err != nil {
		t.Fatal(err)
	}
	quoted := wire.AppendIPv4(nil, netlab.Anycast, netlab.ClientAddr, unix.IPPROTO_TCP, 63, make([]byte, 8))
	pkt := wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, quoted))
	// Datagram 0 as recvmmsg would leave it, sealed afresh each time so the
	// replay window accepts it.
	rv.names[0] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: sender.As4()}
	rv.msgs[0].Len = uint32(wire.EnvelopeLen + len(pkt))
	copy(rv.bufs[wire.EnvelopeLen:], pkt)
	hdr := (*[wire.EnvelopeLen]byte)(rv.bufs[:wire.EnvelopeLen])
	receive := func() {
		sealer.Seal(hdr, pkt)
		if reason := rv.handle(0); reason != 0 {
			t.Fatalf("datagram dropped: %v", reason)
		}
	}
	receive()
	if allocs := testing.AllocsPerRun(100, receive); allocs != 0 {
		t.Fatalf("the receive path allocates %.1f times per datagram, want 0", allocs)
	}
}

func testKeys(mode Mode) []wire.Key {
	if mode == ModeUDP {
		return []wire.Key{testKey}
	}
	return nil
}

// TestUnauthenticatedFutureSequence: without keys nothing proves who sent
// a datagram, so a sequence number from the future, which would push the
// sender's replay window past its genuine numbers, is refused.
func TestUnauthenticatedFutureSequence(t *testing.T) {
	r, _ := newTestRelay(t, ModeUDP, 0)
	rv := r.recv
	sender := netlab.NodeAddr(1)
	quoted := wire.AppendIPv4(nil, netlab.Anycast, netlab.ClientAddr, unix.IPPROTO_TCP, 63, make([]byte, 8))
	pkt := wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, quoted))
	deliver := func(start time.Time) RecvDropReason {
		s, err := wire.NewSealer(nil, wire.NewSequence(start), sender)
		if err != nil {
			t.Fatal(err)
		}
		rv.names[0] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: sender.As4()}
		rv.msgs[0].Len = uint32(wire.EnvelopeLen + len(pkt))
		copy(rv.bufs[wire.EnvelopeLen:], pkt)
		s.Seal((*[wire.EnvelopeLen]byte)(rv.bufs[:wire.EnvelopeLen]), pkt)
		rv.now = time.Now()
		return rv.handle(0)
	}
	if got := deliver(time.Now().Add(24 * time.Hour)); got != RecvFutureSequence {
		t.Fatalf("sequence from tomorrow: %v, want %v", got, RecvFutureSequence)
	}
	if got := deliver(time.Now()); got != 0 {
		t.Fatalf("genuine datagram after the forged one: %v, want injected", got)
	}
}
