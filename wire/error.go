package wire

import "strconv"

// Error is why ParseFragNeeded or ParsePacketTooBig rejected a packet. Its
// String (and Error) is a metric label such as "bad_checksum". Error values
// are small integers, so returning one as an error allocates nothing.
type Error uint8

const (
	// ErrTruncated: the buffer is shorter than 20 bytes, than the IPv4
	// total length, or the ICMP message is shorter than its 8-byte header.
	// Data cut off in transit or by a too small NFLOG copy range.
	ErrTruncated Error = iota + 1
	// ErrNotIPv4: the version nibble is not 4 (from Parse: neither 4 nor 6).
	ErrNotIPv4
	// ErrBadHeader: IHL < 5, total length < IHL*4, or a bad IPv4 header
	// checksum.
	ErrBadHeader
	// ErrFragment: More Fragments set or fragment offset not 0.
	ErrFragment
	// ErrNotICMP: the IPv4 protocol is not ICMP (1), or the IPv6 next
	// header is not ICMPv6 (58).
	ErrNotICMP
	// ErrNotFragNeeded: an ICMP type and code other than 3 and 4, or an
	// ICMPv6 type and code other than 2 and 0 (Packet Too Big).
	ErrNotFragNeeded
	// ErrBadChecksum: the ICMP checksum over the whole message does not
	// verify.
	ErrBadChecksum
	// ErrBadInner: the quoted packet is not of the outer packet's IP
	// version, its IPv4 IHL < 5, or fewer than its header plus 8 bytes
	// are quoted.
	ErrBadInner
	// ErrNotIPv6: ParsePacketTooBig was given a version nibble other
	// than 6.
	ErrNotIPv6
	// ErrMTUZero: an IPv4 next-hop MTU of 0. Only routers older than RFC
	// 1191 (1990) send it; there is no MTU to learn, and a forger gets the
	// receiving kernel to guess one.
	ErrMTUZero
	// ErrMTUTooSmall: a next-hop MTU below the family's floor: 552 for
	// IPv4 (Linux's default net.ipv4.route.min_pmtu, which it would clamp
	// to anyway; a forged tiny MTU would lower the route to the client to
	// 552 bytes for 10 minutes), 1280 for IPv6 (the minimum link MTU of
	// RFC 8200; Linux ignores such a Packet Too Big).
	ErrMTUTooSmall
	// ErrMTUNotSmaller: the MTU is not smaller than the quoted packet's
	// length (IPv4 total length; IPv6 40 + payload length): that packet
	// would have fit, so the message is forged or broken.
	ErrMTUNotSmaller
	// ErrNoDF: the quoted IPv4 packet does not have DF set. A router
	// fragments such a packet instead of dropping it; no genuine
	// "fragmentation needed" quotes one.
	ErrNoDF
	// ErrorCount is one more than the last Error, for iterating over all of
	// them: for e := Error(1); e < ErrorCount; e++.
	ErrorCount
)

var errorLabels = [ErrorCount]string{
	ErrTruncated:     "truncated",
	ErrNotIPv4:       "not_ipv4",
	ErrBadHeader:     "bad_ip_header",
	ErrFragment:      "fragment",
	ErrNotICMP:       "not_icmp",
	ErrNotFragNeeded: "not_frag_needed",
	ErrBadChecksum:   "bad_checksum",
	ErrBadInner:      "bad_inner",
	ErrNotIPv6:       "not_ipv6",
	ErrMTUZero:       "mtu_zero",
	ErrMTUTooSmall:   "mtu_too_small",
	ErrMTUNotSmaller: "mtu_not_smaller",
	ErrNoDF:          "no_df",
}

// String returns e's metric label, such as "bad_checksum". It allocates only
// for values outside the enum.
func (e Error) String() string {
	if e > 0 && e < ErrorCount {
		return errorLabels[e]
	}
	return "wire.Error(" + strconv.Itoa(int(e)) + ")"
}

// Error returns the same text as String.
func (e Error) Error() string { return e.String() }
