package nl

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"unsafe"

	"github.com/go-pmtud/go-pmtud/bench/nflogbase"
	"github.com/mdlayher/netlink"
)

// errNotComparable marks a datagram on which the reference decodes
// something else than Decode by design: go-nflog parses a packet message's
// nfgenmsg as attributes unless its family is AF_INET, AF_INET6 or AF_BRIDGE
// and its version NFNETLINK_V0.
var errNotComparable = errors.New("reference decoder does not apply")

// referenceDecode decodes a datagram independently of Decode: framing by
// github.com/mdlayher/netlink (netlink.Message.UnmarshalBinary over whole
// aligned messages, a trailing piece shorter than a header ignored, as its
// Conn.Receive does), attributes by go-nflog v2.3.0's decoding as
// reproduced in bench/nflogbase (netlink.AttributeDecoder).
func referenceDecode(b []byte) ([]Packet, error) {
	var pkts []Packet
	for len(b) >= nlmsgHdrLen {
		n := int(binary.NativeEndian.Uint32(b))
		an := align4(n)
		if n < nlmsgHdrLen || an > len(b) {
			return nil, errors.New("reference: bad message length")
		}
		var m netlink.Message
		if err := m.UnmarshalBinary(b[:an]); err != nil {
			return nil, err
		}
		b = b[an:]
		switch m.Header.Type {
		case netlink.Error:
			if len(m.Data) < 4 || binary.NativeEndian.Uint32(m.Data) != 0 {
				return nil, errors.New("reference: error message")
			}
		case msgTypePacket:
			d := m.Data
			if len(d) < 2 || !(d[0] == 2 || d[0] == 10 || d[0] == 7) || d[1] != nfnetlinkV0 {
				return nil, errNotComparable
			}
			a, err := nflogbase.ParseMessage(d)
			if err != nil {
				return nil, err
			}
			var p Packet
			if a.Payload != nil {
				p.Payload = *a.Payload
			}
			if a.Seq != nil {
				p.Seq, p.HasSeq = *a.Seq, true
			}
			if a.InDev != nil {
				p.InIfindex = *a.InDev
			}
			if a.HwProtocol != nil {
				p.HwProto = *a.HwProtocol
			}
			if a.HwHeader != nil {
				p.HwHeader = *a.HwHeader
			}
			if a.HwType != nil {
				p.HwType = *a.HwType
			}
			if a.Timestamp != nil {
				p.Timestamp = a.Timestamp.UnixNano()
			}
			pkts = append(pkts, p)
		}
	}
	return pkts, nil
}

// checkDecode runs Decode and the reference decoder on d and fails t when
// they disagree. Decode is stricter than the reference in two documented
// ways only: it rejects trailing bytes after the last message (the
// reference ignores fewer than a header's worth) and zero-length attributes
// (which the kernel never sends and nla_ok rejects; mdlayher/netlink skips
// them).
func checkDecode(t *testing.T, d []byte) {
	t.Helper()
	got, err := Decode(d, nil)
	for i, p := range got {
		if len(p.Payload) > 0 && !within(p.Payload, d) {
			t.Fatalf("packet %d: payload is not a view into the datagram", i)
		}
	}
	want, refErr := referenceDecode(d)
	if refErr != nil {
		return
	}
	if err != nil {
		if errors.Is(err, errTrailing) || errors.Is(err, errAttrZero) {
			return
		}
		t.Fatalf("reference accepts the datagram, Decode fails: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("Decode found %d packets, the reference %d", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if (g.Payload == nil) != (w.Payload == nil) || !bytes.Equal(g.Payload, w.Payload) {
			t.Errorf("packet %d: payload %x, reference %x", i, g.Payload, w.Payload)
		}
		if g.HasSeq != w.HasSeq || g.Seq != w.Seq {
			t.Errorf("packet %d: seq %d (%v), reference %d (%v)", i, g.Seq, g.HasSeq, w.Seq, w.HasSeq)
		}
		if g.InIfindex != w.InIfindex {
			t.Errorf("packet %d: indev %d, reference %d", i, g.InIfindex, w.InIfindex)
		}
		if g.HwProto != w.HwProto {
			t.Errorf("packet %d: hw protocol %#x, reference %#x", i, g.HwProto, w.HwProto)
		}
		if !bytes.Equal(g.HwHeader, w.HwHeader) {
			t.Errorf("packet %d: hw header %x, reference %x", i, g.HwHeader, w.HwHeader)
		}
		if timestampComparable(d, i) && g.Timestamp != w.Timestamp {
			t.Errorf("packet %d: timestamp %d, reference %d", i, g.Timestamp, w.Timestamp)
		}
	}
}

// timestampComparable reports whether packet i's timestamp (if any) is
// small enough for both decoders to compute the same Unix nanoseconds: both
// multiply without overflow checks, and time.Time.UnixNano is undefined
// beyond int64.
func timestampComparable(d []byte, i int) bool {
	pkts, err := Decode(d, nil)
	if err != nil || i >= len(pkts) || pkts[i].Timestamp == 0 {
		return true
	}
	ok := true
	walkAttrs(d, i, func(typ uint16, v []byte) {
		if typ == nfulaTimestamp && len(v) >= timestampLen {
			sec, usec := int64(binary.BigEndian.Uint64(v)), int64(binary.BigEndian.Uint64(v[8:]))
			ok = sec > -1e9 && sec < 1e9 && usec > -1e9 && usec < 1e9
		}
	})
	return ok
}

// walkAttrs calls fn for each attribute of the i-th packet message of a
// well-formed datagram d.
func walkAttrs(d []byte, i int, fn func(typ uint16, v []byte)) {
	for len(d) >= nlmsgHdrLen {
		n := int(binary.NativeEndian.Uint32(d))
		if binary.NativeEndian.Uint16(d[4:]) == msgTypePacket {
			if i == 0 {
				a := d[nlmsgHdrLen+nfgenmsgLen : n]
				for len(a) >= nlaHdrLen {
					l := int(binary.NativeEndian.Uint16(a))
					fn(binary.NativeEndian.Uint16(a[2:])&nlaTypeMask, a[nlaHdrLen:l])
					a = a[min(align4(l), len(a)):]
				}
				return
			}
			i--
		}
		d = d[min(align4(n), len(d)):]
	}
}

// within reports whether v lies inside b's memory.
func within(v, b []byte) bool {
	vp, bp := uintptr(unsafe.Pointer(unsafe.SliceData(v))), uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return vp >= bp && vp+uintptr(len(v)) <= bp+uintptr(len(b))
}

// FuzzDecode checks that Decode never panics and agrees with an
// independent decoder (mdlayher/netlink framing, go-nflog attribute
// decoding) on every datagram that decoder accepts. The corpus in
// testdata/fuzz/FuzzDecode holds datagrams captured from Linux 6.18
// (TestKernel*, NL_WRITE_SEEDS=1).
func FuzzDecode(f *testing.F) {
	src, dst := [4]byte{198, 18, 0, 2}, [4]byte{198, 18, 0, 1}
	small := fragNeeded(src, dst, 1400, 1, 56)
	f.Add([]byte{})
	f.Add(kernelDatagram([][]byte{small}, 1, 0))
	f.Add(kernelDatagram([][]byte{small, {0x45}}, 3, 0xfffffffe))
	f.Add(appendMsg(nil, nlmsgError, 0, 1, make([]byte, 20)))
	f.Add(appendMsg(nil, nlmsgError, 0, 1, []byte{0xff, 0xff, 0xff, 0xff}))
	f.Add(append(kernelDatagram([][]byte{small}, 1, 0), 0, 0))
	f.Add(appendMsg(nil, msgTypePacket, 0, 0, append(nfgen(1), 0, 0, 12, 0)))
	f.Add(appendMsg(nil, msgTypePacket, 0, 0, append(nfgen(1), appendAttr(nil, nfulaSeq|0x4000, be32(3))...)))
	f.Fuzz(func(t *testing.T, d []byte) {
		checkDecode(t, d)
	})
}

// TestReferenceAgreesOnSeeds runs the differential check on hand-built
// datagrams, so that it runs in every `go test`, not only under -fuzz.
func TestReferenceAgreesOnSeeds(t *testing.T) {
	p := fragNeeded([4]byte{198, 18, 0, 2}, [4]byte{198, 18, 0, 1}, 1400, 1, 576)
	for _, n := range []int{1, 2, 64} {
		d := kernelDatagram([][]byte{p}, n, 100)
		want, err := referenceDecode(d)
		if err != nil || len(want) != n {
			t.Fatalf("reference: %d packets, %v", len(want), err)
		}
		checkDecode(t, d)
	}
}
