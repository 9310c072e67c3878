// Package baseline holds the implementations go-pmtud's benchmarks compare
// its own code with: the obvious way to do the same job with off-the-shelf
// libraries. Nothing here is used by the daemon.
package baseline

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/go-pmtud/go-pmtud/wire"
)

// ParseFragNeededXNet is the comparison baseline for wire.ParseFragNeeded: the
// same checks, written with golang.org/x/net's
// ipv4.ParseHeader and icmp.ParseMessage and a plain 16-bit-at-a-time RFC
// 1071 checksum (x/net exports none). It returns the outer source and
// destination and the next-hop MTU. A rejection by one of its own checks is
// the wire.Error that wire.ParseFragNeeded would return; a rejection by x/net
// is x/net's error, wrapped.
//
// It accepts exactly what wire.ParseFragNeeded accepts, except that x/net
// also parses RFC 4884 extensions past the first 128 quoted bytes and fails
// on malformed ones, which wire ignores.
//
// It allocates on every call: x/net returns each header, message and body as
// a new object and copies the addresses and the quoted datagram.
func ParseFragNeededXNet(b []byte) (src, dst netip.Addr, mtu uint16, err error) {
	h, err := ipv4.ParseHeader(b)
	if err != nil {
		return src, dst, 0, fmt.Errorf("baseline: ipv4 header: %w", err)
	}
	if h.Version != 4 {
		return src, dst, 0, wire.ErrNotIPv4
	}
	if h.TotalLen < h.Len {
		return src, dst, 0, wire.ErrBadHeader
	}
	if h.TotalLen > len(b) {
		return src, dst, 0, wire.ErrTruncated
	}
	if checksum(b[:h.Len]) != 0 {
		return src, dst, 0, wire.ErrBadHeader
	}
	if h.Flags&ipv4.MoreFragments != 0 || h.FragOff != 0 {
		return src, dst, 0, wire.ErrFragment
	}
	if h.Protocol != 1 {
		return src, dst, 0, wire.ErrNotICMP
	}
	raw := b[h.Len:h.TotalLen]
	if len(raw) < 8 {
		return src, dst, 0, wire.ErrTruncated
	}
	m, err := icmp.ParseMessage(1, raw)
	if err != nil {
		return src, dst, 0, fmt.Errorf("baseline: icmp: %w", err)
	}
	if m.Type != ipv4.ICMPTypeDestinationUnreachable || m.Code != 4 {
		return src, dst, 0, wire.ErrNotFragNeeded
	}
	if checksum(raw) != 0 {
		return src, dst, 0, wire.ErrBadChecksum
	}
	body, ok := m.Body.(*icmp.DstUnreach)
	if !ok {
		return src, dst, 0, wire.ErrNotFragNeeded
	}
	inner, err := ipv4.ParseHeader(body.Data)
	if err != nil || inner.Version != 4 || len(body.Data) < inner.Len+8 {
		return src, dst, 0, wire.ErrBadInner
	}
	switch mtu := int(binary.BigEndian.Uint16(raw[6:8])); {
	case mtu == 0:
		return src, dst, 0, wire.ErrMTUZero
	case mtu < 552:
		return src, dst, 0, wire.ErrMTUTooSmall
	case mtu >= inner.TotalLen:
		return src, dst, 0, wire.ErrMTUNotSmaller
	case inner.Flags&ipv4.DontFragment == 0:
		return src, dst, 0, wire.ErrNoDF
	}
	return addr(h.Src), addr(h.Dst), binary.BigEndian.Uint16(raw[6:8]), nil
}

// addr converts an address from x/net, which always holds 16 bytes.
func addr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// checksum is RFC 1071 as usually written: one 16-bit word per addition.
func checksum(b []byte) uint16 {
	var s uint32
	for ; len(b) >= 2; b = b[2:] {
		s += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}
