// Package peers produces the sets of node addresses a relay sends copies to,
// from sources that change at run time: a file (a mounted ConfigMap) or the
// Kubernetes API's Node objects. A source only produces address sets; the
// relay derives everything else (sockets addresses, loop guard, metrics)
// from them. Nothing here is on the packet path.
package peers

import "net/netip"

// Update is one outcome of a source: the complete current set of peer
// addresses, or the reason the source could not produce one. After an
// Update with Err set, the previous set stays in force.
type Update struct {
	// Addrs is the whole set, in the source's order, when Err is nil. It
	// may be empty (a cluster of one node). The receiver may keep it.
	Addrs []netip.Addr
	// Names maps each node's name to its addresses in Addrs (the
	// Kubernetes source only), to resolve the node names of Owners.
	Names map[string][]netip.Addr
	// Err says why no set could be produced; nil when Addrs is valid.
	Err error
}
