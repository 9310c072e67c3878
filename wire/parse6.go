package wire

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// IPv6 and ICMPv6 sizes and values (RFC 8200, RFC 4443; struct ipv6hdr in
// include/uapi/linux/ipv6.h, struct icmp6hdr in include/uapi/linux/icmpv6.h).
const (
	ipv6HeaderLen = 40
	protoICMPv6   = 58 // IPPROTO_ICMPV6 (include/uapi/linux/in6.h)

	icmpv6PacketTooBig = 2 // ICMPV6_PKT_TOOBIG
)

// Parse validates b as the packet a router sends when a packet does not fit
// its next hop: an ICMPv4 Fragmentation Needed (ParseFragNeeded) when b is
// IPv4, an ICMPv6 Packet Too Big (ParsePacketTooBig) when it is IPv6. Any
// other version nibble is ErrNotIPv4. It costs one comparison more than the
// parser it calls and allocates nothing.
func Parse(b []byte) (FragNeeded, error) {
	if len(b) > 0 && b[0]>>4 == 6 {
		return ParsePacketTooBig(b)
	}
	return ParseFragNeeded(b)
}

// ParsePacketTooBig validates b, an IPv6 packet starting at its header, as
// an ICMPv6 Packet Too Big message (type 2, code 0) and returns it: Src and
// Dst are IPv6 addresses, TTL is the hop limit, MTU the 32-bit MTU field.
// Bytes past the payload length are ignored. A rejection is an Error:
//
//   - ErrTruncated: shorter than the 40-byte header, than the payload
//     length says, or an ICMPv6 message shorter than its 8-byte header;
//   - ErrNotIPv6: the version nibble is not 6;
//   - ErrNotICMP: the next header is not ICMPv6 (58). Extension headers
//     are not walked: a router's error message carries none;
//   - ErrNotFragNeeded: another ICMPv6 type or code;
//   - ErrBadChecksum: the ICMPv6 checksum, over the pseudo-header and the
//     message, does not verify;
//   - ErrBadInner: the quoted packet is not IPv6 or fewer than its header
//     plus 8 bytes are quoted (Linux's ICMPv6 handler needs the ports).
//
// It allocates nothing and copies nothing; its cost is one checksum over
// the message and the 32 address bytes.
func ParsePacketTooBig(b []byte) (FragNeeded, error) {
	if len(b) < ipv6HeaderLen {
		return FragNeeded{}, ErrTruncated
	}
	if b[0]>>4 != 6 {
		return FragNeeded{}, ErrNotIPv6
	}
	total := ipv6HeaderLen + int(binary.BigEndian.Uint16(b[4:6]))
	if total > len(b) {
		return FragNeeded{}, ErrTruncated
	}
	pkt := b[:total:total]
	if pkt[6] != protoICMPv6 {
		return FragNeeded{}, ErrNotICMP
	}
	icmp := pkt[ipv6HeaderLen:]
	if len(icmp) < icmpHeaderLen {
		return FragNeeded{}, ErrTruncated
	}
	if icmp[0] != icmpv6PacketTooBig || icmp[1] != 0 {
		return FragNeeded{}, ErrNotFragNeeded
	}
	if checksum6(pkt[8:40], icmp) != 0 {
		return FragNeeded{}, ErrBadChecksum
	}
	f := FragNeeded{
		Src:    netip.AddrFrom16([16]byte(pkt[8:24])),
		Dst:    netip.AddrFrom16([16]byte(pkt[24:40])),
		TTL:    pkt[7],
		MTU:    binary.BigEndian.Uint32(icmp[4:8]),
		Packet: pkt,
		ICMP:   icmp,
	}
	q := icmp[icmpHeaderLen:]
	if !parseQuoted6(&f.Inner, q) {
		return FragNeeded{}, ErrBadInner
	}
	switch {
	case f.MTU < minMTU6:
		return FragNeeded{}, ErrMTUTooSmall
	case f.MTU >= ipv6HeaderLen+uint32(binary.BigEndian.Uint16(q[4:6])):
		return FragNeeded{}, ErrMTUNotSmaller
	}
	return f, nil
}

// checksum6 returns the ICMPv6 checksum (RFC 4443 section 2.3) of msg sent
// between the addresses in addrs (source then destination, 32 bytes): the
// Internet checksum over the RFC 8200 pseudo-header and msg. Over a message
// with a valid checksum it returns 0.
func checksum6(addrs, msg []byte) uint16 {
	var tail [8]byte // upper-layer length (32 bits), 3 zero bytes, next header
	binary.BigEndian.PutUint32(tail[0:4], uint32(len(msg)))
	tail[7] = protoICMPv6
	s := add1(sum(addrs), sum(tail[:]))
	return ^fold(add1(s, sum(msg)))
}

// add1 adds two one's-complement sums. When the addition carries, a+b
// wrapped to at most 2^64-2, so adding the carry back cannot carry again.
func add1(a, b uint64) uint64 {
	s, c := bits.Add64(a, b, 0)
	return s + c
}

// parseQuoted6 sets f to the flow of q, the IPv6 packet quoted by an ICMPv6
// error, and reports whether q holds an IPv6 header and the 8 bytes after
// it. The ports are read when the next header is TCP, UDP, SCTP or UDPLite;
// behind extension headers (a fragment header included) they are left 0.
func parseQuoted6(f *Flow, q []byte) bool {
	if len(q) < ipv6HeaderLen+8 || q[0]>>4 != 6 {
		return false
	}
	f.Src = netip.AddrFrom16([16]byte(q[8:24]))
	f.Dst = netip.AddrFrom16([16]byte(q[24:40]))
	f.Proto = q[6]
	f.setPorts(q[ipv6HeaderLen:])
	return true
}
