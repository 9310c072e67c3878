package wire

import (
	"encoding/binary"
	"net/netip"
)

// ipv4FlagDF is IP_DF (include/uapi/linux/ip.h): don't fragment.
const ipv4FlagDF = 0x4000

// AppendIPv4 appends to b a 20-byte IPv4 header (no options, TOS 0, ID 0, DF
// set, header checksum computed) from src to dst carrying proto with the
// given TTL, followed by payload, and returns the extended slice. It
// allocates only when b lacks the capacity.
//
// It panics if src or dst is not an IPv4 address or if the packet would
// exceed 65535 bytes: it builds test, lab and load packets, where either is a
// bug in the caller.
func AppendIPv4(b []byte, src, dst netip.Addr, proto, ttl uint8, payload []byte) []byte {
	total := ipv4HeaderLen + len(payload)
	if total > 0xffff {
		panic("wire: AppendIPv4: packet longer than 65535 bytes")
	}
	s, d := src.As4(), dst.As4()
	start := len(b)
	b = append(b,
		4<<4|ipv4HeaderLen/4, 0, // version, IHL; TOS
		byte(total>>8), byte(total),
		0, 0, // ID
		ipv4FlagDF>>8, 0, // flags, fragment offset
		ttl, proto,
		0, 0, // checksum, computed below
		s[0], s[1], s[2], s[3],
		d[0], d[1], d[2], d[3],
	)
	binary.BigEndian.PutUint16(b[start+10:], Checksum(b[start:]))
	return append(b, payload...)
}

// AppendQuote appends to b the start of an IPv4 packet as an ICMP error
// quotes it: a header as AppendIPv4 builds it (DF set) that claims a total
// length of total bytes, followed by head, the first bytes of its payload.
// It allocates only when b lacks the capacity, and panics if total is
// outside 20+len(head)..65535.
func AppendQuote(b []byte, src, dst netip.Addr, proto, ttl uint8, total int, head []byte) []byte {
	if total < ipv4HeaderLen+len(head) || total > 0xffff {
		panic("wire: AppendQuote: total length out of range")
	}
	start := len(b)
	b = AppendIPv4(b, src, dst, proto, ttl, head)
	h := b[start : start+ipv4HeaderLen]
	binary.BigEndian.PutUint16(h[2:], uint16(total))
	h[10], h[11] = 0, 0
	binary.BigEndian.PutUint16(h[10:], Checksum(h))
	return b
}

// AppendFragNeeded appends to b an ICMP Destination Unreachable /
// Fragmentation Needed message (type 3, code 4) announcing next-hop mtu and
// quoting orig in full, with its checksum computed, and returns the extended
// slice. Callers quote as much of the original packet as a router would
// (RFC 792: its header and 8 bytes; RFC 1812: up to 576 bytes in all). It
// allocates only when b lacks the capacity.
func AppendFragNeeded(b []byte, mtu uint16, orig []byte) []byte {
	start := len(b)
	b = append(b,
		icmpDestUnreach, icmpFragNeeded,
		0, 0, // checksum, computed below
		0, 0, // unused
		byte(mtu>>8), byte(mtu),
	)
	b = append(b, orig...)
	binary.BigEndian.PutUint16(b[start+2:], Checksum(b[start:]))
	return b
}

// AppendPacketTooBig appends to b an IPv6 packet from src to dst with the
// given hop limit carrying an ICMPv6 Packet Too Big (type 2, code 0) that
// announces mtu and quotes orig in full, its checksum computed over the
// pseudo-header, and returns the extended slice. Unlike AppendFragNeeded it
// builds the IP header too: the ICMPv6 checksum covers the addresses.
// Routers quote as much of the original packet as fits in 1280 bytes
// (RFC 4443). It allocates only when b lacks the capacity.
//
// It panics if src or dst is not an IPv6 address (an IPv4-mapped one is
// not) or if the payload would exceed 65535 bytes: it builds test, lab and
// load packets, where either is a bug in the caller.
func AppendPacketTooBig(b []byte, src, dst netip.Addr, hopLimit uint8, mtu uint32, orig []byte) []byte {
	plen := icmpHeaderLen + len(orig)
	if plen > 0xffff {
		panic("wire: AppendPacketTooBig: payload longer than 65535 bytes")
	}
	if !src.Is6() || !dst.Is6() || src.Is4In6() || dst.Is4In6() {
		panic("wire: AppendPacketTooBig: addresses must be IPv6")
	}
	s, d := src.As16(), dst.As16()
	start := len(b)
	b = append(b,
		6<<4, 0, 0, 0, // version, traffic class, flow label
		byte(plen>>8), byte(plen),
		protoICMPv6, hopLimit,
	)
	b = append(b, s[:]...)
	b = append(b, d[:]...)
	msg := len(b)
	b = append(b,
		icmpv6PacketTooBig, 0,
		0, 0, // checksum, computed below
		byte(mtu>>24), byte(mtu>>16), byte(mtu>>8), byte(mtu),
	)
	b = append(b, orig...)
	binary.BigEndian.PutUint16(b[msg+2:], checksum6(b[start+8:start+40], b[msg:]))
	return b
}
