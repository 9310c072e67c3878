package pmtud

import "github.com/go-pmtud/go-pmtud/wire"

// DropReason says why a logged packet was not replicated. Its String is the
// reason label of go_pmtud_dropped_packets_total. The first values are the
// wire parser's rejections, in wire.Error order; the rest are policy.
type DropReason uint8

const (
	// DropIgnoredNetwork: the outer source lies in --ignore-networks.
	DropIgnoredNetwork = DropReason(wire.ErrorCount) + iota
	// DropFromPeer: the outer source is a peer, so the packet is a copy.
	DropFromPeer
	// DropFromSelf: the outer source is one of the node's own addresses.
	DropFromSelf
	// DropFromTUN: the packet arrived on the udp relay's injection device
	// (the veth end or the TUN device), so go-pmtud injected it: a copy,
	// whatever its source address says.
	DropFromTUN
	// DropDuplicate: this node relayed or injected the same ICMP within the
	// dedup window; a copy forwarded back to it, or the router repeating.
	DropDuplicate
	// DropNoFamilyPeers: no peer can get a copy of an ICMP of this family
	// from this node: the icmp relay re-originates an ICMP in its own
	// family only, and --relay-family allows one transport, so peers (or
	// this node) without an address of that family are out of reach.
	DropNoFamilyPeers
	// DropRateLimited: relaying it would exceed Config.RateLimit.
	DropRateLimited
	// DropNoPeers: the peer set in force is empty (a peer source has not
	// produced one yet, or the cluster has no other node).
	DropNoPeers
	// DropSourceRateLimited: relaying it would exceed its outer source's
	// budget, Config.SourceRateLimit.
	DropSourceRateLimited
	// DropUntrustedSource: Config.TrustedSources is set and the outer
	// source lies outside it.
	DropUntrustedSource
	// DropL2Copy: the packet arrived in a link-layer broadcast or
	// multicast frame, or (l2 relay to peers) in a frame from a peer's
	// link-layer address. A router sends its ICMPs to one host from its
	// own address; this is another node's l2 relay copy, which no node
	// relays again.
	DropL2Copy
	// dropReasonCount bounds the enum for iteration.
	dropReasonCount
)

// dropReasonOf maps a wire parse error to its drop reason.
func dropReasonOf(e wire.Error) DropReason { return DropReason(e) }

// String returns the reason's metric label, such as "bad_checksum" or
// "from_peer".
func (r DropReason) String() string {
	switch r {
	case DropIgnoredNetwork:
		return "ignored_network"
	case DropFromPeer:
		return "from_peer"
	case DropFromSelf:
		return "from_self"
	case DropFromTUN:
		return "from_tun"
	case DropDuplicate:
		return "duplicate"
	case DropNoFamilyPeers:
		return "no_family_peers"
	case DropRateLimited:
		return "rate_limited"
	case DropNoPeers:
		return "no_peers"
	case DropSourceRateLimited:
		return "source_rate_limited"
	case DropUntrustedSource:
		return "untrusted_source"
	case DropL2Copy:
		return "l2_copy"
	}
	if r > 0 && r < DropReason(wire.ErrorCount) {
		return wire.Error(r).String()
	}
	return "unknown"
}

// DropReasons returns every drop reason, in a fixed order: the set of
// labels go_pmtud_dropped_packets_total is created with.
func DropReasons() []DropReason {
	rs := make([]DropReason, 0, dropReasonCount-1)
	for r := DropReason(1); r < dropReasonCount; r++ {
		rs = append(rs, r)
	}
	return rs
}
