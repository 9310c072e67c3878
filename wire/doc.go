// Package wire parses, validates and builds the packets go-pmtud relays:
// ICMPv4 Destination Unreachable / Fragmentation Needed (type 3, code 4),
// starting at the IPv4 header, and ICMPv6 Packet Too Big (type 2), starting
// at the IPv6 header, as NFLOG and the UDP relay hand them over;
// and it seals and opens the udp relay's envelope (Sealer, Opener) and keeps
// its replay window (ReplayWindow).
//
// It works on bytes only: no syscalls, no sockets. ParseFragNeeded is a pure
// function; the envelope types hold only their own small state (an HMAC, a
// sequence counter, a bitmap), owned by one goroutine each except Sequence.
// Nothing allocates on any path, accepted or rejected: results are values
// whose slices are views into the input, and rejections are Error or
// EnvelopeError values, which double as the drop-reason labels of the
// daemon's metrics.
//
// # What is validated, and why
//
// A packet is relayed verbatim to every peer, so one bad packet becomes P bad
// packets. The parser therefore checks what the receiving kernel needs before
// it acts on the message, and lets through what the kernel tolerates:
//
//   - The outer IPv4 header: version 4, IHL >= 5, a total length that covers
//     the header and fits in the buffer, and a valid header checksum. The
//     kernel verifies that checksum before the raw table sees a packet from
//     the wire, but packets also arrive from peers over the UDP relay, so
//     the parser trusts no source. Bytes past the total length (link-layer
//     padding) are not part of the packet and are dropped from the views.
//   - Not a fragment: a non-first fragment carries no ICMP header, and a
//     first fragment carries an ICMP message whose checksum cannot be
//     verified. Routers keep ICMP errors within 576 bytes (RFC 1812), so
//     they are never fragmented: a fragment is forged or broken.
//   - Protocol ICMP, type 3 code 4, at least the 8-byte ICMP header.
//   - The ICMP checksum over the whole message. The raw PREROUTING hook that
//     feeds NFLOG runs before the kernel checks it, and the peers' kernels
//     would discard a message that fails it (the relay keeps the bytes
//     intact, so the checksum stays valid for any destination).
//   - The quoted packet: IPv4, IHL >= 5, and its header plus 8 bytes
//     present. Linux's ICMP handler needs exactly that to find the socket
//     the error is for (the ports live in those 8 bytes); a shorter quote
//     would be dropped by every peer.
//   - A sane MTU, because one forged message becomes P and each lowers a
//     route for 10 minutes: not 0 (ErrMTUZero: only pre-RFC 1191 routers
//     send it, and there is nothing to learn), not below 552
//     (ErrMTUTooSmall: Linux's default min_pmtu, to which it would clamp;
//     a forger's MTU 68 would still cost every node's route to the client
//     its full size), and smaller than the quoted packet's total length
//     (ErrMTUNotSmaller: otherwise the packet would have fit). The quoted
//     packet must have DF set (ErrNoDF): routers fragment a packet without
//     it instead of reporting it.
//
// Deliberately not validated: the quoted packet's header checksum and
// whether its total length matches what is quoted (routers quote a
// truncated copy, RFC 792 the header plus 64 bits, RFC 1812 as much as fits
// in 576 bytes, and some rewrite the quoted header without fixing its
// checksum; the kernel ignores both). Outer IP options are valid and stay.
//
// An IPv6 Packet Too Big is checked the same way, less what IPv6 does not
// have (a header checksum, fragmentation by routers): version 6, a payload
// length within the buffer, next header ICMPv6 with no extension headers,
// type 2 code 0, the ICMPv6 checksum over the pseudo-header and the
// message, a quoted IPv6 header plus 8 bytes, and an MTU of at least 1280
// (RFC 8200's minimum link MTU; Linux ignores a smaller one) and smaller
// than the quoted packet (40 bytes plus its payload length). Its checksum covers the
// outer addresses, so unlike ICMPv4 it is valid only between the router and
// the original destination: the udp relay carries it unchanged, the icmp
// relay cannot re-originate it.
package wire
