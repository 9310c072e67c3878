package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"regexp"
	"testing"

	"github.com/go-pmtud/go-pmtud/wire"
)

// Addresses from the benchmarking range, as in the lab: a router answers the
// service address (the anycast source of the flow) about a flow to a client.
var (
	router  = netip.MustParseAddr("198.18.0.1")
	service = netip.MustParseAddr("198.19.0.10")
	client  = netip.MustParseAddr("198.18.1.20")
)

const (
	servicePort = 443
	clientPort  = 51000
)

// original returns a 1500-byte packet from service to client with a
// transport header that starts with the ports.
func original(proto uint8) []byte {
	l4 := make([]byte, 1480)
	binary.BigEndian.PutUint16(l4[0:], servicePort)
	binary.BigEndian.PutUint16(l4[2:], clientPort)
	for i := 4; i < len(l4); i++ {
		l4[i] = byte(i)
	}
	return wire.AppendIPv4(nil, service, client, proto, 64, l4)
}

// quote returns the first n bytes of orig, as a router quotes it: the quoted
// total length still says 1500.
func quote(orig []byte, n int) []byte { return orig[:n:n] }

// fragNeeded returns the packet a router sends to service: an ICMP
// Fragmentation Needed announcing mtu and quoting q.
func fragNeeded(mtu uint16, q []byte) []byte {
	return wire.AppendIPv4(nil, router, service, 1, 61, wire.AppendFragNeeded(nil, mtu, q))
}

// typical is what a Linux router sends: 576 bytes, quoting a TCP packet.
func typical() []byte { return fragNeeded(1400, quote(original(6), 548)) }

// ihl returns the IPv4 header length of p in bytes.
func ihl(p []byte) int { return int(p[0]&0x0f) * 4 }

// fixIP recomputes p's IPv4 header checksum in place and returns p.
func fixIP(p []byte) []byte {
	p[10], p[11] = 0, 0
	binary.BigEndian.PutUint16(p[10:], wire.Checksum(p[:ihl(p)]))
	return p
}

// fixICMP recomputes the checksum of the ICMP message in IPv4 packet p in
// place and returns p.
func fixICMP(p []byte) []byte {
	m := p[ihl(p):binary.BigEndian.Uint16(p[2:4])]
	m[2], m[3] = 0, 0
	binary.BigEndian.PutUint16(m[2:], wire.Checksum(m))
	return p
}

// editIP returns a copy of p changed by f, with the IPv4 header checksum
// recomputed.
func editIP(p []byte, f func(p []byte)) []byte {
	p = bytes.Clone(p)
	f(p)
	return fixIP(p)
}

// editICMP returns a copy of p whose ICMP message is changed by f, with the
// ICMP checksum recomputed.
func editICMP(p []byte, f func(m []byte)) []byte {
	p = bytes.Clone(p)
	f(p[ihl(p):])
	return fixICMP(p)
}

// withOptions returns a copy of p with opts (a multiple of 4 bytes) inserted
// as IPv4 options: IHL, total length and header checksum updated.
func withOptions(p, opts []byte) []byte {
	h := ihl(p)
	q := append(append(bytes.Clone(p[:h]), opts...), p[h:]...)
	q[0] = 4<<4 | byte((h+len(opts))/4)
	binary.BigEndian.PutUint16(q[2:], binary.BigEndian.Uint16(p[2:4])+uint16(len(opts)))
	return fixIP(q)
}

// routerAlert is an IPv4 option (RFC 2113), 4 bytes.
var routerAlert = []byte{0x94, 0x04, 0x00, 0x00}

type parseCase struct {
	name string
	pkt  []byte
	err  error
	// For accepted packets:
	mtu    uint32
	length int // of Packet
	inner  wire.Flow
}

func flow(proto uint8, sport, dport uint16) wire.Flow {
	return wire.Flow{Src: service, Dst: client, Proto: proto, SrcPort: sport, DstPort: dport}
}

// parseCases covers every Error and the accepted variants; the tests and
// the allocation test share it.
func parseCases() []parseCase {
	ok := typical()
	tcp := flow(6, servicePort, clientPort)
	return []parseCase{
		// Accepted.
		{name: "linux router, tcp", pkt: ok, mtu: 1400, length: 576, inner: tcp},
		{name: "udp", pkt: fragNeeded(1280, quote(original(17), 28)), mtu: 1280, length: 56, inner: flow(17, servicePort, clientPort)},
		{name: "sctp", pkt: fragNeeded(1280, quote(original(132), 28)), mtu: 1280, length: 56, inner: flow(132, servicePort, clientPort)},
		{name: "udplite", pkt: fragNeeded(1280, quote(original(136), 28)), mtu: 1280, length: 56, inner: flow(136, servicePort, clientPort)},
		{name: "icmp inner has no ports", pkt: fragNeeded(1280, quote(original(1), 28)), mtu: 1280, length: 56, inner: flow(1, 0, 0)},
		{name: "gre inner has no ports", pkt: fragNeeded(1280, quote(original(47), 28)), mtu: 1280, length: 56, inner: flow(47, 0, 0)},
		{
			name: "inner non-first fragment has no ports",
			pkt:  fragNeeded(1280, quote(editIP(original(17), func(p []byte) { p[7] = 185 }), 28)),
			mtu:  1280, length: 56, inner: flow(17, 0, 0),
		},
		{
			name: "inner first fragment has ports",
			pkt:  fragNeeded(1280, quote(editIP(original(17), func(p []byte) { p[6] |= 0x20 }), 28)),
			mtu:  1280, length: 56, inner: flow(17, servicePort, clientPort),
		},
		{name: "mtu 552, the floor", pkt: fragNeeded(552, quote(original(6), 28)), mtu: 552, length: 56, inner: tcp},
		{name: "mtu 1499, one below the quoted length", pkt: fragNeeded(1499, quote(original(6), 28)), mtu: 1499, length: 56, inner: tcp},
		{name: "outer options", pkt: withOptions(ok, routerAlert), mtu: 1400, length: 580, inner: tcp},
		{name: "outer options, 40 bytes", pkt: withOptions(ok, make([]byte, 40)), mtu: 1400, length: 616, inner: tcp},
		{
			name: "inner options, ports after them",
			pkt:  fragNeeded(1400, quote(withOptions(original(6), bytes.Repeat(routerAlert, 3)), 40)),
			mtu:  1400, length: 68, inner: tcp,
		},
		{name: "trailing padding ignored", pkt: append(fragNeeded(1400, quote(original(6), 28)), make([]byte, 6)...), mtu: 1400, length: 56, inner: tcp},
		{name: "trailing garbage ignored", pkt: append(bytes.Clone(ok), 0xff, 0xff, 0xff), mtu: 1400, length: 576, inner: tcp},
		{name: "df clear", pkt: editIP(ok, func(p []byte) { p[6] = 0 }), mtu: 1400, length: 576, inner: tcp},
		{name: "whole original quoted", pkt: fragNeeded(1400, original(17)), mtu: 1400, length: 1528, inner: flow(17, servicePort, clientPort)},

		// ErrTruncated.
		{name: "empty", pkt: nil, err: wire.ErrTruncated},
		{name: "19 bytes", pkt: ok[:19], err: wire.ErrTruncated},
		{name: "shorter than total length", pkt: ok[:575], err: wire.ErrTruncated},
		{name: "shorter than options", pkt: withOptions(ok, routerAlert)[:22], err: wire.ErrTruncated},
		{
			name: "icmp shorter than 8 bytes",
			pkt:  editIP(ok[:27], func(p []byte) { binary.BigEndian.PutUint16(p[2:], 27) }),
			err:  wire.ErrTruncated,
		},
		{name: "no icmp at all", pkt: wire.AppendIPv4(nil, router, service, 1, 64, nil), err: wire.ErrTruncated},

		// ErrNotIPv4.
		{name: "version 6", pkt: editIP(ok, func(p []byte) { p[0] = 6<<4 | 5 }), err: wire.ErrNotIPv4},
		{name: "version 0", pkt: make([]byte, 40), err: wire.ErrNotIPv4},

		// ErrBadHeader.
		{name: "ihl 4", pkt: editIP(ok, func(p []byte) { p[0] = 4<<4 | 4 }), err: wire.ErrBadHeader},
		{name: "ihl 0", pkt: editIP(ok, func(p []byte) { p[0] = 4 << 4 }), err: wire.ErrBadHeader},
		{name: "total length below ihl", pkt: editIP(ok, func(p []byte) { binary.BigEndian.PutUint16(p[2:], 19) }), err: wire.ErrBadHeader},
		{name: "total length below options", pkt: editIP(withOptions(ok, routerAlert), func(p []byte) { binary.BigEndian.PutUint16(p[2:], 20) }), err: wire.ErrBadHeader},
		{name: "header checksum", pkt: func() []byte { p := bytes.Clone(ok); p[11] ^= 1; return p }(), err: wire.ErrBadHeader},
		{name: "header checksum covers options", pkt: func() []byte { p := withOptions(ok, routerAlert); p[22] ^= 1; return p }(), err: wire.ErrBadHeader},

		// ErrFragment.
		{name: "more fragments", pkt: editIP(ok, func(p []byte) { p[6] |= 0x20 }), err: wire.ErrFragment},
		{name: "fragment offset", pkt: editIP(ok, func(p []byte) { p[7] = 1 }), err: wire.ErrFragment},
		{name: "last fragment offset", pkt: editIP(ok, func(p []byte) { p[6], p[7] = 0x1f, 0xff }), err: wire.ErrFragment},

		// ErrNotICMP.
		{name: "tcp", pkt: editIP(ok, func(p []byte) { p[9] = 6 }), err: wire.ErrNotICMP},
		{name: "icmpv6 number", pkt: editIP(ok, func(p []byte) { p[9] = 58 }), err: wire.ErrNotICMP},

		// ErrNotFragNeeded.
		{name: "host unreachable", pkt: editICMP(ok, func(m []byte) { m[1] = 1 }), err: wire.ErrNotFragNeeded},
		{name: "port unreachable", pkt: editICMP(ok, func(m []byte) { m[1] = 3 }), err: wire.ErrNotFragNeeded},
		{name: "time exceeded", pkt: editICMP(ok, func(m []byte) { m[0], m[1] = 11, 0 }), err: wire.ErrNotFragNeeded},
		{name: "echo request", pkt: editICMP(ok, func(m []byte) { m[0], m[1] = 8, 0 }), err: wire.ErrNotFragNeeded},

		// ErrBadChecksum.
		{name: "icmp checksum", pkt: func() []byte { p := bytes.Clone(ok); p[23] ^= 1; return p }(), err: wire.ErrBadChecksum},
		{name: "mtu changed", pkt: func() []byte { p := bytes.Clone(ok); p[27]--; return p }(), err: wire.ErrBadChecksum},
		{name: "last quoted byte changed", pkt: func() []byte { p := bytes.Clone(ok); p[575] ^= 0x80; return p }(), err: wire.ErrBadChecksum},

		// ErrMTUZero, ErrMTUTooSmall, ErrMTUNotSmaller, ErrNoDF.
		{name: "mtu 0", pkt: fragNeeded(0, quote(original(6), 28)), err: wire.ErrMTUZero},
		{name: "mtu 68", pkt: fragNeeded(68, quote(original(6), 28)), err: wire.ErrMTUTooSmall},
		{name: "mtu 551", pkt: fragNeeded(551, quote(original(6), 28)), err: wire.ErrMTUTooSmall},
		{name: "mtu 1500, the quoted length", pkt: fragNeeded(1500, quote(original(6), 28)), err: wire.ErrMTUNotSmaller},
		{name: "mtu 65535", pkt: fragNeeded(65535, quote(original(6), 28)), err: wire.ErrMTUNotSmaller},
		{name: "quoted length 28", pkt: fragNeeded(1400, wire.AppendIPv4(nil, service, client, 6, 64, make([]byte, 8))), err: wire.ErrMTUNotSmaller},
		{name: "quoted packet without DF", pkt: fragNeeded(1400, quote(editIP(original(6), func(p []byte) { p[6] = 0 }), 28)), err: wire.ErrNoDF},

		// ErrBadInner.
		{name: "nothing quoted", pkt: fragNeeded(1400, nil), err: wire.ErrBadInner},
		{name: "19 bytes quoted", pkt: fragNeeded(1400, quote(original(6), 19)), err: wire.ErrBadInner},
		{name: "inner header only", pkt: fragNeeded(1400, quote(original(6), 20)), err: wire.ErrBadInner},
		{name: "inner header and 7 bytes", pkt: fragNeeded(1400, quote(original(6), 27)), err: wire.ErrBadInner},
		{name: "inner options and 7 bytes", pkt: fragNeeded(1400, quote(withOptions(original(6), routerAlert), 31)), err: wire.ErrBadInner},
		{name: "inner version 6", pkt: fragNeeded(1400, quote(editIP(original(6), func(p []byte) { p[0] = 6<<4 | 5 }), 48)), err: wire.ErrBadInner},
		{name: "inner ihl 4", pkt: fragNeeded(1400, quote(editIP(original(6), func(p []byte) { p[0] = 4<<4 | 4 }), 48)), err: wire.ErrBadInner},
	}
}

func TestParseFragNeeded(t *testing.T) {
	for _, tt := range parseCases() {
		t.Run(tt.name, func(t *testing.T) {
			f, err := wire.ParseFragNeeded(tt.pkt)
			if err != tt.err {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err != nil {
				var zero wire.FragNeeded
				if f.Src != zero.Src || f.Packet != nil || f.ICMP != nil || f.Inner != zero.Inner {
					t.Errorf("rejected packet returned non-zero %+v", f)
				}
				return
			}
			if f.Src != router || f.Dst != service {
				t.Errorf("outer %v -> %v, want %v -> %v", f.Src, f.Dst, router, service)
			}
			if f.TTL != tt.pkt[8] {
				t.Errorf("TTL = %d, want %d", f.TTL, tt.pkt[8])
			}
			if f.MTU != tt.mtu {
				t.Errorf("MTU = %d, want %d", f.MTU, tt.mtu)
			}
			if len(f.Packet) != tt.length || &f.Packet[0] != &tt.pkt[0] {
				t.Errorf("Packet is %d bytes (shares input: %t), want the first %d of the input",
					len(f.Packet), &f.Packet[0] == &tt.pkt[0], tt.length)
			}
			if cap(f.Packet) != len(f.Packet) {
				t.Errorf("cap(Packet) = %d, want %d: appending would overwrite the input", cap(f.Packet), len(f.Packet))
			}
			if h := ihl(tt.pkt); len(f.ICMP) != len(f.Packet)-h || &f.ICMP[0] != &f.Packet[h] {
				t.Errorf("ICMP is not Packet[%d:]", h)
			}
			if f.Inner != tt.inner {
				t.Errorf("Inner = %+v, want %+v", f.Inner, tt.inner)
			}
		})
	}
}

// TestParsersCoverEveryError keeps parseCases and tooBigCases honest: every
// Error is produced by at least one case, and so is covered by the
// allocation tests.
func TestParsersCoverEveryError(t *testing.T) {
	seen := make(map[error]bool)
	for _, tt := range append(parseCases(), tooBigCases()...) {
		seen[tt.err] = true
	}
	if !seen[nil] {
		t.Error("no accepted packet")
	}
	for e := wire.Error(1); e < wire.ErrorCount; e++ {
		if !seen[e] {
			t.Errorf("no case for %v", e)
		}
	}
}

func TestParseFragNeededAllocs(t *testing.T) {
	for _, tt := range parseCases() {
		var err error
		n := testing.AllocsPerRun(100, func() { _, err = wire.ParseFragNeeded(tt.pkt) })
		if err != tt.err {
			t.Fatalf("%s: err = %v, want %v", tt.name, err, tt.err)
		}
		if n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", tt.name, n)
		}
	}
}

func TestErrorLabels(t *testing.T) {
	label := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	seen := make(map[string]bool)
	for e := wire.Error(1); e < wire.ErrorCount; e++ {
		s := e.String()
		if !label.MatchString(s) {
			t.Errorf("Error(%d).String() = %q: not a metric label", e, s)
		}
		if seen[s] {
			t.Errorf("label %q used twice", s)
		}
		seen[s] = true
		if e.Error() != s {
			t.Errorf("Error(%d): Error() = %q, String() = %q", e, e.Error(), s)
		}
		var target wire.Error
		if !errors.As(error(e), &target) || target != e {
			t.Errorf("errors.As(%v) failed", e)
		}
	}
	if got, want := wire.ErrBadChecksum.String(), "bad_checksum"; got != want {
		t.Errorf("ErrBadChecksum = %q, want %q", got, want)
	}
	for _, e := range []wire.Error{0, wire.ErrorCount, 255} {
		if s := e.String(); label.MatchString(s) || seen[s] {
			t.Errorf("out-of-range Error(%d).String() = %q looks like a label", e, s)
		}
	}
}
