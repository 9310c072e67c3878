package wire

// This fuzz target lives in package wire, not wire_test, because re-sealing an
// arbitrary datagram needs Sealer.seal: Seal takes its number from a Sequence,
// which cannot be set to the number the fuzzer chose.

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// FuzzOpen checks that Open never panics, rejects only with EnvelopeError
// values, and that what it accepts is exactly what a Sealer makes: Packet is
// the input after the header, a view into it, and re-sealing Packet with the
// version and key the header names, its sequence number, its send time and
// the same sender address reproduces the input byte for byte.
//
// keyed selects the Opener: even, one without keys; odd, one holding keys 1
// and 2.
func FuzzOpen(f *testing.F) {
	keys := []Key{
		{ID: 1, Secret: bytes.Repeat([]byte{0x11}, 32)},
		{ID: 2, Secret: bytes.Repeat([]byte{0x22}, 16)},
	}
	from := netip.MustParseAddr("198.18.0.2")
	openers := [2]*Opener{}
	var err error
	if openers[0], err = NewOpener(); err != nil {
		f.Fatal(err)
	}
	if openers[1], err = NewOpener(keys...); err != nil {
		f.Fatal(err)
	}
	// sealers[version-1][key id]
	sealers := [3]map[uint16]*Sealer{{}, {}, {}}
	seq := NewSequence(time.Unix(1_700_000_000, 0))
	for v := range sealers {
		for _, k := range append([]*Key{nil}, &keys[0], &keys[1]) {
			s, err := newSealer(byte(v+1), k, seq, from)
			if err != nil {
				f.Fatal(err)
			}
			if k == nil {
				sealers[v][0] = s
			} else {
				sealers[v][k.ID] = s
			}
		}
	}
	sent := time.Unix(1_700_000_001, 5)

	// Seeds: sealed datagrams in each mode, for a frag-needed and for
	// nothing, whole, truncated and with single bytes changed.
	orig := AppendIPv4(nil, netip.MustParseAddr("198.19.0.10"), netip.MustParseAddr("198.18.1.20"), protoTCP, 64, make([]byte, 1480))
	pkt := AppendIPv4(nil, netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.19.0.10"), protoICMP, 61,
		AppendFragNeeded(nil, 1400, orig[:548]))
	pack := AppendPacked(AppendPacked(nil, pkt), pkt[:60])
	for v, id := range [9]uint16{0, 1, 2, 0, 1, 2, 0, 1, 2} {
		for _, p := range [][]byte{pkt, nil, pack} {
			var hdr [EnvelopeLen]byte
			n := sealers[v/3][id].Seal(&hdr, p, sent)
			d := append(hdr[:n:n], p...)
			for keyed := range uint8(2) {
				f.Add(d, keyed)
				f.Add(d[:n-1], keyed)
				for _, i := range []int{0, 4, 5, 6, 7, 8, 16, 23, 24, 31, 32, 39, 40, len(d) - 1} {
					if i < len(d) {
						c := bytes.Clone(d)
						c[i] ^= 0x01
						f.Add(c, keyed)
					}
				}
			}
		}
	}

	f.Fuzz(func(t *testing.T, d []byte, keyed uint8) {
		e, err := openers[keyed&1].Open(d, from)
		if err != nil {
			if _, ok := err.(EnvelopeError); !ok {
				t.Fatalf("error %v is %T, not an EnvelopeError", err, err)
			}
			if e.Version != 0 || e.KeyID != 0 || e.Seq != 0 || e.UnixNano != 0 || e.Packet != nil {
				t.Fatalf("rejected datagram returned non-zero %+v", e)
			}
			return
		}
		if e.Version < 1 || e.Version > 3 {
			t.Fatalf("accepted version %d", e.Version)
		}
		hlen := len(d) - len(e.Packet)
		if hlen != sealers[e.Version-1][0].Len() || cap(e.Packet) != len(e.Packet) {
			t.Fatalf("version %d: Packet len %d cap %d, input %d bytes", e.Version, len(e.Packet), cap(e.Packet), len(d))
		}
		if len(e.Packet) > 0 && &e.Packet[0] != &d[hlen] {
			t.Fatal("Packet is not a view into the input")
		}
		if keyed&1 == 1 && e.KeyID == 0 || keyed&1 == 0 && e.KeyID != 0 {
			t.Fatalf("key id %d accepted by the opener with keyed = %d", e.KeyID, keyed&1)
		}
		s := sealers[e.Version-1][e.KeyID]
		if s == nil {
			t.Fatalf("accepted key id %d, which no key has", e.KeyID)
		}
		var hdr [EnvelopeLen]byte
		n := s.seal(&hdr, e.Seq, e.UnixNano, e.Packet)
		if !bytes.Equal(hdr[:n], d[:hlen]) {
			t.Fatalf("re-sealed header\n% x\ndiffers from the input's\n% x", hdr[:n], d[:hlen])
		}
	})
}
