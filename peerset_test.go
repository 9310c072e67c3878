package pmtud

import (
	"net/netip"
	"slices"
	"testing"
)

// TestPeerSetRoutes: which peer addresses a packet of each family goes to
// over each transport. IPv4-only (a), dual-stack (b) and IPv6-only (c)
// peers, from nodes of either stack, for each relay and relay family;
// unreached peers are what the spans leave out.
func TestPeerSetRoutes(t *testing.T) {
	a4 := netip.MustParseAddr("198.18.1.10")
	b4, b6 := netip.MustParseAddr("198.18.1.11"), netip.MustParseAddr("2001:db8:1::11")
	c6 := netip.MustParseAddr("2001:db8:1::12")
	peers := []Peer{{V6: c6}, {V4: b4, V6: b6}, {V4: a4}}
	own4, own6 := netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("2001:db8:1::1")
	type routes [2][2][]netip.Addr // [packet family][transport]
	for _, tc := range []struct {
		name   string
		c      Config
		want   routes
		unseen [2]int // peers a packet of each family does not reach
	}{
		{"udp, dual-stack node", Config{Mode: ModeUDP, Source: own4, Source6: own6},
			routes{{{a4, b4}, {c6}}, {{a4}, {b6, c6}}}, [2]int{0, 0}},
		{"udp, IPv4-only node", Config{Mode: ModeUDP, Source: own4},
			routes{{{a4, b4}, nil}, {{a4, b4}, nil}}, [2]int{1, 1}},
		{"udp, IPv6-only node", Config{Mode: ModeUDP, Source6: own6},
			routes{{nil, {b6, c6}}, {nil, {b6, c6}}}, [2]int{1, 1}},
		{"udp, relay family ipv4", Config{Mode: ModeUDP, Source: own4, Source6: own6, RelayFamily: FamilyIPv4},
			routes{{{a4, b4}, nil}, {{a4, b4}, nil}}, [2]int{1, 1}},
		{"udp, relay family ipv6", Config{Mode: ModeUDP, Source: own4, Source6: own6, RelayFamily: FamilyIPv6},
			routes{{nil, {b6, c6}}, {nil, {b6, c6}}}, [2]int{1, 1}},
		{"icmp, dual-stack node", Config{Mode: ModeICMP, Source: own4, Source6: own6},
			routes{{{a4, b4}, nil}, {nil, {b6, c6}}}, [2]int{1, 1}},
		{"icmp, IPv6-only node", Config{Mode: ModeICMP, Source6: own6},
			routes{{nil, nil}, {nil, {b6, c6}}}, [2]int{3, 1}},
		{"l2 to peers", Config{Mode: ModeL2, L2Dest: L2Peers, Source6: own6},
			routes{{{a4, b4}, {c6}}, {{a4}, {b6, c6}}}, [2]int{0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newPeerSet(&tc.c, nil, peers)
			if s.nodes != 3 || !slices.Equal(s.addrs, []netip.Addr{a4, b4, b6, c6}) {
				t.Fatalf("nodes %d, addresses %v; want 3 and [a4 b4 b6 c6]", s.nodes, s.addrs)
			}
			if s.sibling[1] != 2 || s.sibling[2] != 1 || s.sibling[0] != -1 || s.sibling[3] != -1 {
				t.Errorf("siblings %v", s.sibling)
			}
			for f := range 2 {
				for tr := range 2 {
					sp := s.spans[f][tr]
					if got := s.addrs[sp.lo:sp.hi]; !slices.Equal(got, tc.want[f][tr]) && len(got)+len(tc.want[f][tr]) > 0 {
						t.Errorf("family %d over %d: %v, want %v", f, tr, got, tc.want[f][tr])
					}
				}
				if got := s.nodes - s.reach[f]; got != tc.unseen[f] {
					t.Errorf("family %d: %d peers unreached, want %d", f, got, tc.unseen[f])
				}
			}
		})
	}
	// l2 broadcast reaches every node once: countIn counts a dual-stack
	// owner (both its bits set, as target tables do) once.
	bc := Config{Mode: ModeL2, Source: own4}
	s := newPeerSet(&bc, nil, peers)
	all := []uint64{1<<len(s.addrs) - 1}
	if n := s.countIn(all, fam4); n != 3 {
		t.Errorf("l2 broadcast: every bit set counts %d peers, want 3", n)
	}
	// The node's own address makes a peer the node itself, whole.
	c := Config{Mode: ModeUDP, Source: b4, Source6: own6}
	if s := newPeerSet(&c, nil, peers); !slices.Equal(s.addrs, []netip.Addr{a4, c6}) {
		t.Errorf("with b's IPv4 address own: %v, want [a4 c6]", s.addrs)
	}
}

// TestCountIn: the peers a bitmap names within a family's spans, counted by
// words, equal a count bit by bit, for spans that start and end inside,
// on and across word boundaries.
func TestCountIn(t *testing.T) {
	for _, sizes := range [][3]int{{0, 0, 1}, {3, 5, 7}, {60, 10, 70}, {64, 64, 64}, {1, 130, 2}, {100, 0, 0}, {0, 0, 200}} {
		var peers []Peer
		for i := range sizes[0] {
			peers = append(peers, Peer{V4: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})})
		}
		for i := range sizes[1] {
			peers = append(peers, Peer{V4: netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), V6: netip.AddrFrom16([16]byte{0x20, 1, 0xd, 0xb8, 1, 14: byte(i >> 8), 15: byte(i)})})
		}
		for i := range sizes[2] {
			peers = append(peers, Peer{V6: netip.AddrFrom16([16]byte{0x20, 1, 0xd, 0xb8, 2, 14: byte(i >> 8), 15: byte(i)})})
		}
		c := Config{Mode: ModeUDP, Source: netip.MustParseAddr("198.18.255.1"), Source6: netip.MustParseAddr("2001:db8:ff::1")}
		s := newPeerSet(&c, nil, peers)
		for seed := range 20 {
			set := make([]uint64, (len(s.addrs)+63)/64)
			for k := range s.addrs {
				if (k*7+seed*13)%(seed%5+2) == 0 {
					set[k/64] |= 1 << (k % 64)
				}
			}
			for f := range 2 {
				want := 0
				for tr := range 2 {
					for k := s.spans[f][tr].lo; k < s.spans[f][tr].hi; k++ {
						if set[k/64]&(1<<(k%64)) != 0 {
							want++
						}
					}
				}
				if got := s.countIn(set, f); got != want {
					t.Fatalf("sizes %v, seed %d, family %d: countIn %d, want %d", sizes, seed, f, got, want)
				}
			}
		}
	}
}
