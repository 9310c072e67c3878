package wire_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"

	"github.com/go-pmtud/go-pmtud/wire"
)

// FuzzParsePacketTooBig checks that ParsePacketTooBig never panics, that
// what it accepts has the properties its documentation promises (the
// checksum checked by naiveChecksum6), and that it agrees with
// golang.org/x/net both ways: what it accepts, x/net parses to the same
// type and MTU; a packet that x/net and the reference checksum find to be
// a well-formed Packet Too Big, it accepts. With fix set the fuzzer's
// checksum is recomputed first, so mutations get past it.
func FuzzParsePacketTooBig(f *testing.F) {
	for _, tt := range tooBigCases() {
		f.Add(tt.pkt, false)
	}
	ok := typical6()
	for _, i := range []int{0, 4, 5, 6, 40, 41, 44, 48, 54, 88, len(ok) - 1} {
		p := bytes.Clone(ok)
		p[i] ^= 0x5a
		f.Add(p, false)
		f.Add(p, true)
	}
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if fix && len(b) >= 44 {
			b = bytes.Clone(b)
			if end := 40 + int(binary.BigEndian.Uint16(b[4:6])); end <= len(b) && end >= 44 {
				fixICMP6(b[:end])
			}
		}
		fn, err := wire.ParsePacketTooBig(b)
		want := wellFormedTooBig(b)
		if err != nil {
			if _, ok := err.(wire.Error); !ok {
				t.Fatalf("error %v is %T, not a wire.Error", err, err)
			}
			if want {
				t.Fatalf("rejected (%v) a well-formed Packet Too Big", err)
			}
			return
		}
		if !want {
			t.Fatal("accepted what x/net and the reference checksum do not")
		}
		p := fn.Packet
		if !bytes.Equal(p, b[:len(p)]) || len(p) != 40+int(binary.BigEndian.Uint16(b[4:6])) || cap(p) != len(p) {
			t.Fatal("Packet is not the input up to its payload length")
		}
		if !bytes.Equal(fn.ICMP, p[40:]) || fn.MTU != binary.BigEndian.Uint32(p[44:48]) || fn.TTL != p[7] {
			t.Fatal("ICMP, MTU or hop limit do not match the bytes")
		}
		if fn.Src.As16() != [16]byte(p[8:24]) || fn.Dst.As16() != [16]byte(p[24:40]) || !fn.Src.Is6() {
			t.Fatal("addresses do not match the header")
		}
		if fn.Inner.Src.As16() != [16]byte(p[56:72]) || fn.Inner.Proto != p[54] {
			t.Fatal("inner flow does not match the quote")
		}
	})
}

// wellFormedTooBig reports whether x/net and the reference checksum find b
// to be what ParsePacketTooBig promises to accept.
func wellFormedTooBig(b []byte) bool {
	h, err := ipv6.ParseHeader(b)
	if err != nil || h.Version != 6 || h.NextHeader != 58 || 40+h.PayloadLen > len(b) || h.PayloadLen < 8 {
		return false
	}
	msg := b[40 : 40+h.PayloadLen]
	if naiveChecksum6(b[8:24], b[24:40], msg) != 0 || msg[1] != 0 {
		return false
	}
	m, err := icmp.ParseMessage(58, msg)
	if err != nil || m.Type != ipv6.ICMPTypePacketTooBig {
		return false
	}
	body, ok := m.Body.(*icmp.PacketTooBig)
	if !ok || body.MTU != int(binary.BigEndian.Uint32(msg[4:8])) {
		return false
	}
	q := msg[8:]
	if len(q) < 48 || q[0]>>4 != 6 {
		return false
	}
	// A sane MTU: at least IPv6's minimum link MTU, and smaller than the
	// quoted packet, which did not fit.
	return body.MTU >= 1280 && body.MTU < 40+int(binary.BigEndian.Uint16(q[4:6]))
}
