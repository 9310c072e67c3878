package pmtud

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/internal/transport"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// fragFrom returns a router's frag-needed about a flow that left this node
// from src:sport (proto TCP or UDP), distinct by seq.
func fragFrom(src netip.Addr, proto uint8, sport uint16, seq int) []byte {
	l4 := []byte{byte(sport >> 8), byte(sport), 0xc3, 0x50, 0, 0, byte(seq >> 8), byte(seq)}
	q := wire.AppendQuote(nil, src, netlab.ClientAddr, proto, 63, 1500, l4)
	return wire.AppendIPv4(nil, netlab.RouterLoopback, src, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, q))
}

// TestTargets runs relay A (fakes, icmp relay) with peers B..F and a target
// table, in both splits (with two peer-split workers each sending to half
// the peers), and checks which peers get each ICMP: a Service's endpoints'
// nodes; nobody for a Service whose only endpoint node is A; every peer for
// a Service with a node that is no peer, for another port or protocol, and
// for no entry at all; the most specific group. After a peer leaves, its
// Service falls back to every peer; after SetTargets(nil), everything does.
func TestTargets(t *testing.T) {
	e, f := netip.MustParseAddr("198.18.1.14"), netip.MustParseAddr("198.18.1.15")
	svc := func(a string, port uint16, nodes ...netip.Addr) Target {
		return Target{Scope: ScopeService, Prefix: netip.PrefixFrom(netip.MustParseAddr(a), 32), Proto: unix.IPPROTO_TCP, Port: port, Nodes: nodes}
	}
	group := func(p string, port uint16, nodes ...netip.Addr) Target {
		return Target{Scope: ScopeGroup, Prefix: netip.MustParsePrefix(p), Port: port, Nodes: nodes}
	}
	targets := []Target{
		svc("198.18.100.1", 443, fakeB),
		svc("198.18.100.2", 443, fakeA),
		svc("198.18.100.3", 443, fakeB, netip.MustParseAddr("198.18.9.9")),
		svc("198.18.100.4", 443, fakeB, netip.Addr{}), // a node name the source could not resolve
		// Unknown owners are not narrowed by a duplicate that knows some, in
		// either order, nor by a group around them.
		svc("198.18.100.5", 443, netip.MustParseAddr("198.18.9.9")),
		svc("198.18.100.5", 443, fakeB),
		svc("198.18.101.6", 443, netip.MustParseAddr("198.18.9.9")),
		group("198.18.101.0/24", 0, fakeC, fakeD),
		group("198.18.101.0/25", 80, e),
	}
	peers := []netip.Addr{fakeB, fakeC, fakeD, e, f}
	all := peers
	type icmp struct {
		src   string
		proto uint8
		port  uint16
		want  []netip.Addr
		scope TargetScope
	}
	cases := []icmp{
		{"198.18.100.1", unix.IPPROTO_TCP, 443, []netip.Addr{fakeB}, ScopeService},
		{"198.18.100.2", unix.IPPROTO_TCP, 443, nil, ScopeService},
		{"198.18.100.3", unix.IPPROTO_TCP, 443, all, ScopeAll},
		{"198.18.100.4", unix.IPPROTO_TCP, 443, all, ScopeAll},
		{"198.18.100.5", unix.IPPROTO_TCP, 443, all, ScopeAll},
		{"198.18.101.6", unix.IPPROTO_TCP, 443, all, ScopeAll},
		{"198.18.100.1", unix.IPPROTO_TCP, 444, all, ScopeAll},
		{"198.18.100.1", unix.IPPROTO_UDP, 443, all, ScopeAll},
		{"198.18.101.5", unix.IPPROTO_TCP, 80, []netip.Addr{e}, ScopeGroup},
		{"198.18.101.5", unix.IPPROTO_UDP, 81, []netip.Addr{fakeC, fakeD}, ScopeGroup},
		{"198.18.101.200", unix.IPPROTO_TCP, 80, []netip.Addr{fakeC, fakeD}, ScopeGroup},
		{"198.18.102.1", unix.IPPROTO_TCP, 443, all, ScopeAll},
	}
	for _, split := range []Split{SplitBatch, SplitPeer} {
		t.Run(split.String(), func(t *testing.T) {
			res := &fakeResources{}
			r, err := newRelay(Config{NodeName: "a", Mode: ModeICMP, Source: fakeA, Peers: PeersOf(append([]netip.Addr{fakeA}, peers...)...),
				TTL: 10, Split: split, Workers: 2, DedupWindow: -1}, nil, res)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if err := r.SetTargets(targets); err != nil {
				t.Fatal(err)
			}
			seq := 0
			check := func(step string, cases []icmp) {
				t.Helper()
				j := newJob()
				for _, c := range cases {
					seq++
					j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: fragFrom(netip.MustParseAddr(c.src), c.proto, c.port, seq)})
				}
				for _, s := range res.senders {
					s.copies = s.copies[:0]
				}
				process(r, j)
				got := map[string][]netip.Addr{} // ICMP bytes -> peers
				for _, s := range res.senders {
					for _, c := range s.copies {
						got[string(c.datagram)] = append(got[string(c.datagram)], c.peer)
					}
				}
				for i, c := range cases {
					f, err := wire.Parse(j.batch.Packets[i].Payload)
					if err != nil {
						t.Fatal(err)
					}
					g := got[string(f.ICMP)]
					slices.SortFunc(g, netip.Addr.Compare)
					want := slices.Clone(c.want)
					slices.SortFunc(want, netip.Addr.Compare)
					if !slices.Equal(g, want) {
						t.Errorf("%s: ICMP about %s/%d:%d went to %v, want %v", step, c.src, c.proto, c.port, g, want)
					}
				}
			}
			check("targets", cases)
			var m strings.Builder
			r.WritePrometheus(&m)
			for _, line := range []string{
				`go_pmtud_targeted_total{node="a",scope="service"} 2`,
				`go_pmtud_targeted_total{node="a",scope="group"} 3`,
				`go_pmtud_targeted_total{node="a",scope="all"} 7`,
				`go_pmtud_targeted_peers_total{node="a",scope="service"} 1`,
				`go_pmtud_targeted_peers_total{node="a",scope="group"} 5`,
				`go_pmtud_targeted_peers_total{node="a",scope="all"} 35`,
				`go_pmtud_target_entries{node="a",scope="service"} 6`,
				`go_pmtud_target_entries{node="a",scope="group"} 2`,
				`go_pmtud_target_unknown_owners{node="a"} 4`,
			} {
				if !strings.Contains(m.String(), line+"\n") {
					t.Errorf("metrics lack %q", line)
				}
			}

			// B leaves: its Service's owner is no peer now.
			if _, err := r.SetPeers(PeersOf(fakeC, fakeD, e, f)); err != nil {
				t.Fatal(err)
			}
			rest := []netip.Addr{fakeC, fakeD, e, f}
			check("B left", []icmp{
				{"198.18.100.1", unix.IPPROTO_TCP, 443, rest, ScopeAll},
				{"198.18.101.5", unix.IPPROTO_TCP, 80, []netip.Addr{e}, ScopeGroup},
			})
			if err := r.SetTargets(nil); err != nil {
				t.Fatal(err)
			}
			check("no targets", []icmp{
				{"198.18.101.5", unix.IPPROTO_TCP, 80, rest, ScopeAll},
				{"198.18.100.2", unix.IPPROTO_TCP, 443, rest, ScopeAll},
			})
		})
	}
}

// TestSetTargetsRejects: entries that cannot be looked up are refused and
// the targets in force stay.
func TestSetTargetsRejects(t *testing.T) {
	r, _ := newFakeRelay(t, fakeA, fakeB)
	good := Target{Scope: ScopeService, Prefix: netip.MustParsePrefix("198.18.100.1/32"), Proto: 6, Port: 443, Nodes: []netip.Addr{fakeB}}
	if err := r.SetTargets([]Target{good}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Target{
		{Scope: ScopeService, Prefix: netip.MustParsePrefix("198.18.100.0/24"), Proto: 6, Port: 443},
		{Scope: ScopeService, Prefix: netip.MustParsePrefix("198.18.100.1/32"), Port: 443},
		{Scope: ScopeService, Prefix: netip.MustParsePrefix("198.18.100.1/32"), Proto: 6},
		{Scope: ScopeGroup},
		{Scope: ScopeAll, Prefix: netip.MustParsePrefix("198.18.100.0/24")},
	} {
		if err := r.SetTargets([]Target{good, bad}); err == nil {
			t.Errorf("SetTargets accepted %+v", bad)
		}
	}
	if n := r.set.Load().targets.nService; n != 1 {
		t.Errorf("%d Service entries in force after refused updates, want 1", n)
	}
}

// TestTargetedRelayAllocs: a batch of targeted and untargeted ICMPs is
// prepared and sent (fakes) without allocating, in both relays.
func TestTargetedRelayAllocs(t *testing.T) {
	for _, mode := range []Mode{ModeICMP, ModeUDP} {
		t.Run(mode.String(), func(t *testing.T) {
			cfg := Config{NodeName: "a", Mode: mode, Source: fakeA, Peers: PeersOf(fakeB, fakeC), TTL: 10, DedupWindow: -1}
			if mode == ModeUDP {
				cfg.Keys = []wire.Key{testKey}
			}
			r, err := newRelay(cfg, nil, &allocFreeResources{})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if err := r.SetTargets([]Target{{Scope: ScopeService, Prefix: netip.MustParsePrefix("198.18.100.1/32"), Proto: 6, Port: 443, Nodes: []netip.Addr{fakeC}}}); err != nil {
				t.Fatal(err)
			}
			j := newJob()
			for i := range 64 {
				src := "198.18.100.1"
				if i%2 == 1 {
					src = "198.18.100.7"
				}
				j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: fragFrom(netip.MustParseAddr(src), 6, 443, i)})
			}
			process(r, j)
			if n := testing.AllocsPerRun(100, func() { process(r, j) }); n != 0 {
				t.Errorf("%v allocations per batch, want 0", n)
			}
			var m strings.Builder
			r.WritePrometheus(&m)
			if want := fmt.Sprintf(`go_pmtud_targeted_total{node="a",scope="service"} %d`, 32*102); !strings.Contains(m.String(), want+"\n") {
				t.Errorf("metrics lack %q", want)
			}
		})
	}
}

// allocFreeResources is fakeResources with senders that only count, so
// that an allocation test sees the relay's own allocations.
type allocFreeResources struct{ fakeResources }

func (*allocFreeResources) sender(*Config, netip.Addr) (sender, error) { return &countingSender{}, nil }

// countingSender counts copies per peer in its Tally and keeps nothing.
type countingSender struct {
	peers []netip.Addr
	tally transport.Tally
}

func (s *countingSender) SetPeers(peers []netip.Addr) {
	s.peers = peers
	s.tally = transport.Tally{Sent: make([]uint64, len(peers)), Errors: make([]uint64, len(peers)), Unreachable: make([]uint64, len(peers))}
}

func (s *countingSender) Send(heads, payloads [][]byte) {
	for k := range s.peers {
		s.tally.Sent[k] += uint64(len(payloads))
	}
}

func (s *countingSender) SendSome(heads, payloads [][]byte, sets [][]uint64, base int) {
	for i := range payloads {
		for k := range s.peers {
			if w := (base + k) / 64; w < len(sets[i]) && sets[i][w]&(1<<((base+k)%64)) != 0 {
				s.tally.Sent[k]++
			}
		}
	}
}

func (s *countingSender) Tally() *transport.Tally { return &s.tally }
func (s *countingSender) Close() error            { return nil }
