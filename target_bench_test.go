package pmtud

import (
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// serviceTargets returns n ETP=Local Service entries, 198.18.(128+i/250).(i%250):443
// TCP, each owned by k of peers (consecutive ones, wrapping).
func serviceTargets(n, k int, peers []netip.Addr) []Target {
	ts := make([]Target, n)
	for i := range ts {
		ts[i] = Target{Scope: ScopeService, Prefix: netip.PrefixFrom(serviceAddr(i), 32), Proto: unix.IPPROTO_TCP, Port: 443}
		for j := range k {
			ts[i].Nodes = append(ts[i].Nodes, peers[(i*k+j)%len(peers)])
		}
	}
	return ts
}

func serviceAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(128 + i/250), byte(i % 250)})
}

// BenchmarkTargetLookup is the hot path's table lookup with 10,000 Services
// and 1,000 peers: a Service hit, and a miss that scans 10 groups.
func BenchmarkTargetLookup(b *testing.B) {
	peers := manyPeers(1000)
	cfg := Config{NodeName: "bench", Source: netip.MustParseAddr("198.18.50.1"), TTL: 10}
	s := newPeerSet(&cfg, nil, PeersOf(peers...))
	ts := serviceTargets(10000, 3, peers)
	for g := range 10 {
		ts = append(ts, Target{Scope: ScopeGroup, Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(g), 0}), 24), Nodes: peers[g : g+2]})
	}
	s.targets = newTargetTable(ts, s, cfg.ownAddrs())
	for _, tc := range []struct {
		name  string
		src   netip.Addr
		scope TargetScope
	}{{"service", serviceAddr(4321), ScopeService}, {"miss", netip.MustParseAddr("198.18.100.1"), ScopeAll}} {
		b.Run(tc.name, func(b *testing.B) {
			f, err := wire.Parse(fragFrom(tc.src, unix.IPPROTO_TCP, 443, 1))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if sc, _ := s.targets.lookup(&f); sc != tc.scope {
					b.Fatalf("scope %v, want %v", sc, tc.scope)
				}
			}
		})
	}
}

// BenchmarkTargetedRelay is the scale figure of targeting: 1,000 peers
// behind a sink, 50 ETP=Local Services with 3 endpoint nodes each, and a
// batch of 50 ICMPs, one about each Service, relayed by the icmp relay with
// the table ("targeted": 3 copies per ICMP) and without ("all": 1,000).
// ns/icmp is the relay's cost per ICMP, fan-out included.
func BenchmarkTargetedRelay(b *testing.B) {
	const p, services = 1000, 50
	ns, peers := sinkPeers(b, p)
	for _, targeted := range []bool{true, false} {
		name := "all"
		if targeted {
			name = "targeted"
		}
		b.Run(fmt.Sprintf("%s/P=%d", name, p), func(b *testing.B) {
			cfg := Config{NodeName: "bench", Mode: ModeICMP, Source: netip.MustParseAddr("198.18.50.1"), Peers: PeersOf(peers...), TTL: 10, NFLOG: nl.Config{Group: 33}}
			r := newRelayIn(b, ns, cfg)
			if targeted {
				if err := r.SetTargets(serviceTargets(services, 3, peers)); err != nil {
					b.Fatal(err)
				}
			}
			j := newJob()
			var pkts [][]byte
			for i := range services {
				pkt := fragFrom(serviceAddr(i), unix.IPPROTO_TCP, 443, i)
				pkts = append(pkts, pkt)
				j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: pkt})
			}
			w := r.workers[0]
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				renumber(pkts, uint32(i))
				w.handle(j)
			}
			b.StopTimer()
			st := r.Stats()
			icmps := float64(b.N) * float64(len(pkts))
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/icmps, "ns/icmp")
			b.ReportMetric(float64(st.Sent)/icmps, "copies/icmp")
			if st.SendErrors != 0 || len(st.Dropped) != 0 {
				b.Fatalf("unexpected errors or drops: %+v", st)
			}
		})
	}
}
