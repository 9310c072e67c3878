// Package peers produces the sets of peer nodes a relay sends copies to,
// from sources that change at run time: a file (a mounted ConfigMap) or the
// Kubernetes API's Node objects. A source only produces sets of nodes'
// addresses; the relay derives everything else (socket addresses, loop
// guard, metrics) from them. Nothing here is on the packet path.
package peers

import (
	"fmt"
	"net/netip"
	"strings"
)

// Peer is one node: its address of each family it has, at least one.
type Peer struct {
	V4 netip.Addr // an IPv4 address, or the zero Addr
	V6 netip.Addr // an IPv6 address, or the zero Addr
}

// String returns the peer as ParsePeer reads it: its address, or
// "IPv4+IPv6".
func (p Peer) String() string {
	switch {
	case p.V4.IsValid() && p.V6.IsValid():
		return p.V4.String() + "+" + p.V6.String()
	case p.V4.IsValid():
		return p.V4.String()
	}
	return p.V6.String()
}

// Addrs returns the peer's addresses, IPv4 first.
func (p Peer) Addrs() []netip.Addr {
	var out []netip.Addr
	for _, a := range []netip.Addr{p.V4, p.V6} {
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

// compare orders peers by IPv4 address, then IPv6 (absent first).
func (p Peer) compare(q Peer) int {
	if c := p.V4.Compare(q.V4); c != 0 {
		return c
	}
	return p.V6.Compare(q.V6)
}

// ParsePeer parses one peer: an IP address, or a dual-stack node's two,
// one of each family, joined by "+" ("198.18.0.2+2001:db8::2"). An
// IPv4-mapped IPv6 address is IPv4; zones are refused.
func ParsePeer(s string) (Peer, error) {
	var p Peer
	for _, w := range strings.SplitN(s, "+", 3) {
		a, err := netip.ParseAddr(w)
		if err != nil || a.Zone() != "" {
			return Peer{}, fmt.Errorf("%q is not an IP address or IPv4+IPv6", printable(s))
		}
		a = a.Unmap()
		slot := &p.V6
		if a.Is4() {
			slot = &p.V4
		}
		if slot.IsValid() {
			return Peer{}, fmt.Errorf("%q: one address of each family at most", printable(s))
		}
		*slot = a
	}
	return p, nil
}

// Update is one outcome of a source: the complete current set of peers,
// or the reason the source could not produce one. After an Update with
// Err set, the previous set stays in force.
type Update struct {
	// Peers is the whole set, in the source's order, when Err is nil. It
	// may be empty (a cluster of one node). The receiver may keep it.
	Peers []Peer
	// Names maps each node's name to its addresses in Peers (the
	// Kubernetes source only), to resolve the node names of Owners.
	Names map[string][]netip.Addr
	// Err says why no set could be produced; nil when Peers is valid.
	Err error
}
