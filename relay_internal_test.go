package pmtud

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// TestRelayAllocs proves that the per-batch path — parse, policy, fan-out
// with real sendmmsg calls, metrics — allocates nothing in steady state.
func TestRelayAllocs(t *testing.T) {
	lab := netlab.NewT(t)
	c, err := netlab.BuildCluster(lab, 4, 1400)
	if err != nil {
		t.Fatal(err)
	}
	var r *Relay
	if err := c.Nodes[1].Do(func() (err error) {
		r, err = New(Config{
			NodeName:       "b",
			Source:         netlab.NodeAddr(1),
			Peers:          []netip.Addr{netlab.NodeAddr(0), netlab.NodeAddr(2), netlab.NodeAddr(3)},
			IgnoreNetworks: []netip.Prefix{netip.MustParsePrefix("198.19.254.0/24")},
			TTL:            10,
			NFLOG:          nl.Config{Group: 33},
		}, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer r.Close()

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
	if st.Sent == 0 || st.Dropped[DropFromPeer] == 0 || st.Dropped[DropIgnoredNetwork] == 0 || st.Dropped[DropReason(wire.ErrTruncated)] == 0 {
		t.Fatalf("the measured path did not do the work: %+v", st)
	}
}
