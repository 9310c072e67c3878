package wire

import (
	"encoding/binary"
	"net/netip"
)

// Header sizes and fields (RFC 791, RFC 792; struct iphdr in
// include/uapi/linux/ip.h, struct icmphdr in include/uapi/linux/icmp.h).
const (
	ipv4HeaderLen = 20     // IHL 5, no options
	icmpHeaderLen = 8      // type, code, checksum, 4 bytes of rest-of-header
	ipv4FlagMF    = 0x2000 // IP_MF: more fragments
	ipv4FragOff   = 0x1fff // IP_OFFSET: fragment offset, in 8-byte units

	icmpDestUnreach = 3 // ICMP_DEST_UNREACH
	icmpFragNeeded  = 4 // ICMP_FRAG_NEEDED

	// minMTU4 is Linux's default net.ipv4.route.min_pmtu (512 + 20 + 20,
	// net/ipv4/route.c); minMTU6 is IPV6_MIN_MTU (include/linux/ipv6.h),
	// the minimum link MTU of RFC 8200.
	minMTU4 = 552
	minMTU6 = 1280
)

// IP protocol numbers (IANA; IPPROTO_* in include/uapi/linux/in.h).
const (
	protoICMP    = 1
	protoTCP     = 6
	protoUDP     = 17
	protoSCTP    = 132
	protoUDPLite = 136
)

// Flow is the 5-tuple of the packet an ICMP error quotes: the flow the error
// is about. The ports are 0 unless Proto is TCP (6), UDP (17), SCTP (132) or
// UDPLite (136) and the quoted packet is not a non-first fragment; all four
// start with the 16-bit source and destination ports.
type Flow struct {
	Src, Dst         netip.Addr
	Proto            uint8
	SrcPort, DstPort uint16
}

// FragNeeded is a validated ICMPv4 Destination Unreachable / Fragmentation
// Needed packet, or an ICMPv6 Packet Too Big (see ParsePacketTooBig).
// Packet and ICMP are views into the parsed buffer, valid as long as it is
// (for an nl.Packet, until the next Read into its Batch); their capacity
// ends with the packet, so appending to them never overwrites bytes that
// follow.
type FragNeeded struct {
	Src, Dst netip.Addr // outer source (the router) and destination
	TTL      uint8      // outer TTL or hop limit
	MTU      uint32     // next-hop MTU: ICMP bytes 6-7 (RFC 1191; 0 from pre-RFC 1191 routers), ICMPv6 bytes 4-7
	Packet   []byte     // the IP packet as received, up to its total (payload) length
	ICMP     []byte     // Packet after the IP header: the ICMP message verbatim
	Inner    Flow       // the flow of the quoted packet
}

// ParseFragNeeded validates b, an IPv4 packet starting at its header, as an
// ICMP Fragmentation Needed message, checking the fields the package
// documentation lists in that order, and returns it. Bytes past the IPv4 total
// length are ignored. A rejection is an Error.
//
// It allocates nothing, on any path, and copies nothing; its cost is two
// checksums (the IPv4 header and the ICMP message) and a few comparisons.
func ParseFragNeeded(b []byte) (FragNeeded, error) {
	if len(b) < ipv4HeaderLen {
		return FragNeeded{}, ErrTruncated
	}
	if b[0]>>4 != 4 {
		return FragNeeded{}, ErrNotIPv4
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < ipv4HeaderLen {
		return FragNeeded{}, ErrBadHeader
	}
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if total < ihl {
		return FragNeeded{}, ErrBadHeader
	}
	if total > len(b) {
		return FragNeeded{}, ErrTruncated
	}
	pkt := b[:total:total]
	if Checksum(pkt[:ihl]) != 0 {
		return FragNeeded{}, ErrBadHeader
	}
	if binary.BigEndian.Uint16(pkt[6:8])&(ipv4FlagMF|ipv4FragOff) != 0 {
		return FragNeeded{}, ErrFragment
	}
	if pkt[9] != protoICMP {
		return FragNeeded{}, ErrNotICMP
	}
	icmp := pkt[ihl:]
	if len(icmp) < icmpHeaderLen {
		return FragNeeded{}, ErrTruncated
	}
	// Type and code before the checksum: rejecting other ICMP is cheaper.
	if icmp[0] != icmpDestUnreach || icmp[1] != icmpFragNeeded {
		return FragNeeded{}, ErrNotFragNeeded
	}
	if Checksum(icmp) != 0 {
		return FragNeeded{}, ErrBadChecksum
	}
	f := FragNeeded{
		Src:    netip.AddrFrom4([4]byte(pkt[12:16])),
		Dst:    netip.AddrFrom4([4]byte(pkt[16:20])),
		TTL:    pkt[8],
		MTU:    uint32(binary.BigEndian.Uint16(icmp[6:8])),
		Packet: pkt,
		ICMP:   icmp,
	}
	// Inner is filled in place: returning a Flow by value costs a copy.
	q := icmp[icmpHeaderLen:]
	if !parseQuoted(&f.Inner, q) {
		return FragNeeded{}, ErrBadInner
	}
	switch qlen := uint32(binary.BigEndian.Uint16(q[2:4])); {
	case f.MTU == 0:
		return FragNeeded{}, ErrMTUZero
	case f.MTU < minMTU4:
		return FragNeeded{}, ErrMTUTooSmall
	case f.MTU >= qlen:
		return FragNeeded{}, ErrMTUNotSmaller
	case binary.BigEndian.Uint16(q[6:8])&ipv4FlagDF == 0:
		return FragNeeded{}, ErrNoDF
	}
	return f, nil
}

// parseQuoted sets f to the flow of q, the packet quoted by an ICMP error,
// and reports whether q holds an IPv4 header and the 8 bytes after it. Its
// total length and checksum are not checked (see the package documentation).
func parseQuoted(f *Flow, q []byte) bool {
	if len(q) < ipv4HeaderLen || q[0]>>4 != 4 {
		return false
	}
	ihl := int(q[0]&0x0f) * 4
	if ihl < ipv4HeaderLen || len(q) < ihl+8 {
		return false
	}
	f.Src = netip.AddrFrom4([4]byte(q[12:16]))
	f.Dst = netip.AddrFrom4([4]byte(q[16:20]))
	f.Proto = q[9]
	// A non-first fragment continues the payload: its first bytes are data,
	// not ports.
	if binary.BigEndian.Uint16(q[6:8])&ipv4FragOff != 0 {
		return true
	}
	f.setPorts(q[ihl:])
	return true
}

// setPorts reads the ports from l4, the quoted transport header (at least
// 4 bytes), when f.Proto has them in its first 4 bytes.
func (f *Flow) setPorts(l4 []byte) {
	switch f.Proto {
	case protoTCP, protoUDP, protoSCTP, protoUDPLite:
		f.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		f.DstPort = binary.BigEndian.Uint16(l4[2:4])
	}
}
