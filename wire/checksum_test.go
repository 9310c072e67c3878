package wire_test

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/go-pmtud/go-pmtud/wire"
)

// refChecksum is RFC 1071 as written in the RFC: one 16-bit word at a time.
func refChecksum(b []byte) uint16 {
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

func TestChecksumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 2008)
	for range 20000 {
		// Random contents, length and alignment; every tenth buffer is all
		// ones to exercise the carries.
		n, off := r.IntN(2001), r.IntN(8)
		b := buf[off : off+n]
		fill := r.IntN(10) == 0
		for i := range b {
			if fill {
				b[i] = 0xff
			} else {
				b[i] = byte(r.Uint32())
			}
		}
		if got, want := wire.Checksum(b), refChecksum(b); got != want {
			t.Fatalf("Checksum(%d bytes at offset %d) = %#04x, want %#04x", n, off, got, want)
		}
	}
}

func TestChecksum(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		want uint16
	}{
		{name: "empty", b: nil, want: 0xffff},
		{name: "zeros", b: make([]byte, 9), want: 0xffff},
		{name: "ones", b: []byte{0xff, 0xff, 0xff, 0xff}, want: 0x0000},
		{name: "odd byte is the high byte", b: []byte{0x01}, want: 0xfeff},
		// RFC 1071 section 3: the sum of these words is ddf2.
		{name: "rfc 1071", b: []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, want: ^uint16(0xddf2)},
		// An IPv4 header with its checksum field zeroed (b861 when filled).
		{name: "ipv4 header", b: ipv4Golden(0), want: 0xb861},
		{name: "ipv4 header verifies", b: ipv4Golden(0xb861), want: 0},
	}
	for _, tt := range tests {
		if got := wire.Checksum(tt.b); got != tt.want {
			t.Errorf("%s: Checksum = %#04x, want %#04x", tt.name, got, tt.want)
		}
	}
}

// ipv4Golden returns the 20-byte header of a 115-byte UDP packet from
// 192.168.0.1 to 192.168.0.199 (TTL 64, DF, ID 0) with checksum sum.
func ipv4Golden(sum uint16) []byte {
	h := []byte{
		0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00,
		0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
	}
	binary.BigEndian.PutUint16(h[10:], sum)
	return h
}

// TestChecksumVerifies checks the contract callers rely on: a checksum stored
// in its zeroed field makes the block sum to 0, for any length.
func TestChecksumVerifies(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for n := 4; n <= 600; n++ {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		b[2], b[3] = 0, 0
		binary.BigEndian.PutUint16(b[2:], wire.Checksum(b))
		if got := wire.Checksum(b); got != 0 {
			t.Fatalf("%d bytes: checksum over a filled-in block = %#04x, want 0", n, got)
		}
	}
}

func TestChecksumAllocs(t *testing.T) {
	b := make([]byte, 1500)
	if n := testing.AllocsPerRun(100, func() { wire.Checksum(b) }); n != 0 {
		t.Errorf("%v allocations per call, want 0", n)
	}
}
