package wire

import (
	"encoding/binary"
	"math/bits"
)

// Checksum returns the RFC 1071 Internet checksum of b: the one's complement
// of the one's-complement sum of b's 16-bit big-endian words, an odd last
// byte padded with zero. Stored big-endian in a zeroed checksum field it makes
// the block verify; over a block that includes a valid checksum it returns 0.
//
// It reads 8 bytes per addition and allocates nothing; 576 bytes take a few
// dozen nanoseconds.
func Checksum(b []byte) uint16 {
	return ^fold(sum(b))
}

// sum returns the one's-complement sum of b in 64 bits, with b loaded
// little-endian. RFC 1071 section 2(B): the sum is byte-order independent,
// so adding byte-swapped words and swapping the folded result back gives the
// big-endian sum, and little-endian loads are plain moves on the machines
// that matter.
func sum(b []byte) uint64 {
	var s, c uint64
	for len(b) >= 64 {
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[0:8]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[8:16]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[16:24]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[24:32]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[32:40]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[40:48]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[48:56]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[56:64]), c)
		b = b[64:]
	}
	for len(b) >= 8 {
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b), c)
		b = b[8:]
	}
	// Fewer than 8 bytes remain. Where a word sits inside the 64-bit lanes
	// does not matter (fold adds the lanes up), only that it stays 16-bit
	// aligned, so the tail is summed into one small integer.
	var t uint64
	if len(b) >= 4 {
		t = uint64(binary.LittleEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		t += uint64(binary.LittleEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		t += uint64(b[0]) // low byte in little-endian order: padded with zero
	}
	s, c = bits.Add64(s, t, c)
	// End-around carry. Adding c carries only when s is all ones, which
	// leaves s at zero, so adding that carry back cannot carry again.
	s, c = bits.Add64(s, c, 0)
	return s + c
}

// fold reduces a little-endian 64-bit one's-complement sum to the big-endian
// 16-bit sum.
func fold(s uint64) uint16 {
	s = s>>32 + s&0xffffffff
	s = s>>32 + s&0xffffffff
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return bits.ReverseBytes16(uint16(s))
}
