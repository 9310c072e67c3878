package pmtud

import (
	"net/netip"
	"testing"

	"github.com/go-pmtud/go-pmtud/internal/neigh"
)

// TestPeerMACs: the MACs that mark a frame as a peer's copy. A MAC that
// several IPv4 addresses or several peers resolve to may be a proxy's (the
// router's) and is left out; one node's IPv4, IPv6 and link-local
// addresses share a MAC by nature and keep it.
func TestPeerMACs(t *testing.T) {
	a4, b4, r4 := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("198.18.1.11"), netip.MustParseAddr("198.18.1.1")
	a6, b6, a6ll := netip.MustParseAddr("2001:db8:1::10"), netip.MustParseAddr("2001:db8:1::11"), netip.MustParseAddr("fe80::10")
	macA, macB, macR := neigh.MAC{2, 0, 0, 0, 0, 0xa}, neigh.MAC{2, 0, 0, 0, 0, 0xb}, neigh.MAC{2, 0, 0, 0, 0, 1}
	for _, tc := range []struct {
		name   string
		peers  []Peer
		table  map[netip.Addr]neigh.MAC
		want   []neigh.MAC
		shared int
	}{
		{"distinct", PeersOf(a4, b4), map[netip.Addr]neigh.MAC{a4: macA, b4: macB, r4: macR}, []neigh.MAC{macA, macB}, 0},
		{"proxy ARP: two peers", PeersOf(a4, b4), map[netip.Addr]neigh.MAC{a4: macR, b4: macR}, nil, 2},
		{"proxy ARP: a peer and the router", PeersOf(a4, b4), map[netip.Addr]neigh.MAC{a4: macR, b4: macB, r4: macR}, []neigh.MAC{macB}, 1},
		{"dual-stack nodes", []Peer{{V4: a4, V6: a6}, {V4: b4, V6: b6}},
			map[netip.Addr]neigh.MAC{a4: macA, a6: macA, a6ll: macA, b4: macB, b6: macB, r4: macR}, []neigh.MAC{macA, macB}, 0},
		{"IPv6 only, link-local beside", PeersOf(a6, b6), map[netip.Addr]neigh.MAC{a6: macA, a6ll: macA, b6: macB}, []neigh.MAC{macA, macB}, 0},
		{"proxy NDP: two peers", PeersOf(a6, b6), map[netip.Addr]neigh.MAC{a6: macR, b6: macR}, nil, 2},
		{"proxy NDP: a peer and the router", PeersOf(a6, b6),
			map[netip.Addr]neigh.MAC{a6: macR, a6ll: macR, netip.MustParseAddr("fe80::1"): macR, b6: macB}, []neigh.MAC{macB}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Config{Mode: ModeL2, L2Dest: L2Peers, Source: netip.MustParseAddr("198.18.1.12"), Source6: netip.MustParseAddr("2001:db8:1::12")}
			n := &neighbours{segment: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("2001:db8:1::/64")}}
			shared := n.setPeerMACs(newPeerSet(c, nil, tc.peers), tc.table)
			got := *n.peerMACs.Load()
			if shared != tc.shared || len(got) != len(tc.want) {
				t.Fatalf("shared %d, MACs %v; want %d, %v", shared, got, tc.shared, tc.want)
			}
			for _, m := range tc.want {
				if !got[m] {
					t.Errorf("MAC %v missing from %v", m, got)
				}
			}
		})
	}
}
