package pmtud

import (
	"net/netip"
	"slices"

	"github.com/go-pmtud/go-pmtud/wire"
)

// policy decides which valid ICMPs are replicated. It is built once from the
// Config and read-only afterwards, so the hot path takes no lock.
type policy struct {
	// guard maps the addresses whose ICMPs are copies (peers, own
	// addresses) to the reason they are dropped. A map lookup on a
	// netip.Addr hashes a 24-byte value and allocates nothing.
	guard  map[netip.Addr]DropReason
	ignore []netip.Prefix // few in practice: a linear scan beats a trie
	// tunIndex is the udp relay's TUN device: packets logged as arriving
	// on it were injected by go-pmtud. 0: no TUN.
	tunIndex uint32
}

func newPolicy(c *Config, peers []netip.Addr) policy {
	p := policy{guard: make(map[netip.Addr]DropReason), ignore: c.IgnoreNetworks}
	for _, a := range peers {
		p.guard[a] = DropFromPeer
	}
	// Own addresses win over peers: the same address in both lists is ours.
	for _, a := range slices.Concat(c.LocalAddrs, []netip.Addr{c.Source}) {
		p.guard[a.Unmap()] = DropFromSelf
	}
	return p
}

// check returns 0 when f should be replicated, else why not.
func (p *policy) check(f *wire.FragNeeded) DropReason {
	if r, ok := p.guard[f.Src]; ok {
		return r
	}
	for _, n := range p.ignore {
		if n.Contains(f.Src) {
			return DropIgnoredNetwork
		}
	}
	return 0
}
