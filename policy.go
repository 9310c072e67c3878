package pmtud

import (
	"net/netip"

	"github.com/go-pmtud/go-pmtud/wire"
)

// policy decides which valid ICMPs are replicated. It is built once from the
// Config and read-only afterwards, so the hot path takes no lock; the loop
// guard, which follows the peers, is the peer set's.
type policy struct {
	ignore  []netip.Prefix // few in practice: a linear scan beats a trie
	trusted []netip.Prefix // when set, the only sources relayed
	// tunIndex is the udp relay's TUN device: packets logged as arriving
	// on it were injected by go-pmtud. 0: no TUN.
	tunIndex uint32
}

// check returns 0 when f should be replicated with the peer set s, else
// why not.
func (p *policy) check(f *wire.FragNeeded, s *peerSet) DropReason {
	if r, ok := s.guard[f.Src]; ok {
		return r
	}
	for _, n := range p.ignore {
		if n.Contains(f.Src) {
			return DropIgnoredNetwork
		}
	}
	if len(p.trusted) == 0 {
		return 0
	}
	for _, n := range p.trusted {
		if n.Contains(f.Src) {
			return 0
		}
	}
	return DropUntrustedSource
}
