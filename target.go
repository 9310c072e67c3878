package pmtud

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/go-pmtud/go-pmtud/wire"
)

// TargetScope says how the peers of a relayed ICMP were chosen. Its String
// is the scope label of go_pmtud_targeted_total.
type TargetScope uint8

const (
	// ScopeAll: every peer. Nothing says which nodes own the flow.
	ScopeAll TargetScope = iota
	// ScopeService: the nodes with endpoints of the Service whose address
	// and port the quoted flow left from.
	ScopeService
	// ScopeGroup: the nodes of a --peer-groups entry whose prefix (and
	// port) holds the quoted flow's source.
	ScopeGroup
	scopeCount
)

// String returns "all", "service" or "group".
func (s TargetScope) String() string {
	switch s {
	case ScopeAll:
		return "all"
	case ScopeService:
		return "service"
	case ScopeGroup:
		return "group"
	}
	return "unknown"
}

// Target names the nodes that can own the flows leaving from some
// addresses: the only peers an ICMP about such a flow needs to reach. The
// quoted packet of an ICMP is one the node sent, so its source address and
// port are the service's.
type Target struct {
	// Scope is ScopeService or ScopeGroup.
	Scope TargetScope
	// Prefix holds the flows' source addresses: a single address (/32,
	// /128) for a Service.
	Prefix netip.Prefix
	// Proto is the flows' IP protocol (6 TCP, 17 UDP, 132 SCTP); 0 means
	// any. A Service's is never 0.
	Proto uint8
	// Port is the flows' source port; 0 means any. A Service's is never 0.
	Port uint16
	// Nodes are the addresses of the nodes that can own such flows. This
	// node's own addresses are left out when the ICMP is relayed (it has
	// it already); an address that is neither this node's nor a current
	// peer's makes the owners unknown, and such an ICMP goes to every
	// peer.
	Nodes []netip.Addr
}

func (t Target) equal(u Target) bool {
	return t.Scope == u.Scope && t.Prefix == u.Prefix && t.Proto == u.Proto && t.Port == u.Port && slices.Equal(t.Nodes, u.Nodes)
}

// MaxTargets bounds the entries SetTargets takes: far above the
// LoadBalancer Services of any cluster, and a bound on what a bad API
// answer can make the relay allocate.
const MaxTargets = 1 << 20

// checkTargets reports what makes ts unusable.
func checkTargets(ts []Target) error {
	if len(ts) > MaxTargets {
		return fmt.Errorf("%d targets: at most %d are supported", len(ts), MaxTargets)
	}
	for i := range ts {
		t := &ts[i]
		switch {
		case !t.Prefix.IsValid():
			return fmt.Errorf("target %d: invalid prefix", i)
		case t.Scope == ScopeService && (!t.Prefix.IsSingleIP() || t.Proto == 0 || t.Port == 0):
			return fmt.Errorf("target %d: a Service target needs one address, a protocol and a port, not %v proto %d port %d", i, t.Prefix, t.Proto, t.Port)
		case t.Scope != ScopeService && t.Scope != ScopeGroup:
			return fmt.Errorf("target %d: scope %v is neither service nor group", i, t.Scope)
		}
	}
	return nil
}

// targetKey is a Service's address, protocol and port: the exact lookup.
type targetKey struct {
	addr  netip.Addr
	proto uint8
	port  uint16
}

// targetTable maps a quoted flow's source to the peers that can own it,
// as bitmaps over one peer set's indexes. It is immutable and belongs to
// that peer set: a new set gets a new table.
type targetTable struct {
	// services maps a Service's address, protocol and port to its bitmap.
	services map[targetKey][]uint64
	// groups are the prefix entries, most specific first.
	groups []groupTarget
	// nService, nGroup count the entries in force; unknown those that
	// name a node that is no peer (ScopeAll for their ICMPs).
	nService, nGroup, unknown int
}

type groupTarget struct {
	prefix netip.Prefix
	proto  uint8
	port   uint16
	set    []uint64
}

// newTargetTable builds ts's bitmaps over s's peers. An entry that names a
// node that is neither a peer of s nor one of own is left out: its owners
// are unknown.
func newTargetTable(ts []Target, s *peerSet, own map[netip.Addr]bool) *targetTable {
	if len(ts) == 0 {
		return nil
	}
	words := (len(s.addrs) + 63) / 64
	t := &targetTable{services: make(map[targetKey][]uint64)}
	// One backing array for every bitmap: fewer objects for the GC.
	backing := make([]uint64, 0, words*len(ts))
entries:
	for i := range ts {
		e := &ts[i]
		set := backing[len(backing) : len(backing)+words : len(backing)+words]
		for _, a := range e.Nodes {
			a = a.Unmap()
			if own[a] {
				continue
			}
			k, ok := s.index[a]
			if !ok {
				// The owners are unknown: the entry stays, with no bitmap,
				// so that it sends to every peer rather than let a duplicate
				// or a broader group narrow the copies.
				t.unknown++
				clear(set) // the next entry's words
				t.add(e, nil)
				continue entries
			}
			set[k/64] |= 1 << (k % 64)
			// The peer's other address too: a packet of either family
			// reaches the owner.
			if sib := s.sibling[k]; sib >= 0 {
				set[sib/64] |= 1 << (sib % 64)
			}
		}
		backing = backing[:len(backing)+words]
		t.add(e, set)
	}
	// Most specific first: the longer prefix, then a given protocol and
	// port over "any".
	slices.SortStableFunc(t.groups, func(a, b groupTarget) int {
		if c := cmp.Compare(b.prefix.Bits(), a.prefix.Bits()); c != 0 {
			return c
		}
		if c := cmp.Compare(b.port, a.port); c != 0 {
			return c
		}
		return cmp.Compare(b.proto, a.proto)
	})
	return t
}

// add puts entry e with bitmap set into t; a nil set means every peer (the
// owners are unknown), and it wins over a duplicate's bitmap.
func (t *targetTable) add(e *Target, set []uint64) {
	if e.Scope == ScopeService {
		key := targetKey{e.Prefix.Addr().Unmap(), e.Proto, e.Port}
		if prev, dup := t.services[key]; dup {
			// Two Services on one address and port (a shared IP): either
			// may own the flow.
			if prev == nil || set == nil {
				set = nil
			} else {
				for w := range prev {
					set[w] |= prev[w]
				}
			}
		} else {
			t.nService++
		}
		t.services[key] = set
		return
	}
	t.groups = append(t.groups, groupTarget{e.Prefix.Masked(), e.Proto, e.Port, set})
	t.nGroup++
}

// lookup returns the scope of f's peers and, unless the scope is ScopeAll,
// their bitmap over the set's indexes (which may name none: the flow is
// this node's). A nil table is all peers. It allocates nothing: a map
// lookup on a value key, then a scan of the groups.
func (t *targetTable) lookup(f *wire.FragNeeded) (TargetScope, []uint64) {
	if t == nil {
		return ScopeAll, nil
	}
	in := &f.Inner
	if in.SrcPort != 0 && len(t.services) > 0 {
		if set, ok := t.services[targetKey{in.Src, in.Proto, in.SrcPort}]; ok {
			if set == nil {
				return ScopeAll, nil // owners unknown
			}
			return ScopeService, set
		}
	}
	for i := range t.groups {
		g := &t.groups[i]
		if (g.port == 0 || g.port == in.SrcPort) && (g.proto == 0 || g.proto == in.Proto) && g.prefix.Contains(in.Src) {
			if g.set == nil {
				return ScopeAll, nil
			}
			return ScopeGroup, g.set
		}
	}
	return ScopeAll, nil
}
