package nl

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

func TestDecode(t *testing.T) {
	src, dst := [4]byte{198, 18, 0, 2}, [4]byte{198, 18, 0, 1}
	p1 := fragNeeded(src, dst, 1400, 1, 576)
	p2 := fragNeeded(src, dst, 1280, 2, 100)
	p3 := []byte{0x45, 1, 2} // Decode does not look inside payloads

	// want is the Packet kernelPacket(…, payload, seq, 1, 1700000000, usec) decodes to.
	want := func(payload []byte, seq uint32, usec int64) Packet {
		return Packet{Payload: payload, Seq: seq, HasSeq: true, InIfindex: 1, HwProto: 0x0800,
			Timestamp: 1700000000*1e9 + usec*1e3, HwHeader: []byte{0: 0, 12: 0x08, 13: 0x00}, HwType: 772}
	}
	pkt := func(payload []byte, seq uint32) []byte {
		return appendMsg(nil, msgTypePacket, 0, 0, kernelPacket(33, payload, seq, 1, 1700000000, 0))
	}
	attrs := func(as ...[]byte) []byte {
		b := nfgen(33)
		for _, a := range as {
			b = append(b, a...)
		}
		return appendMsg(nil, msgTypePacket, 0, 0, b)
	}
	attr := func(typ uint16, v []byte) []byte { return appendAttr(nil, typ, v) }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	errMsg := func(code int32) []byte {
		body := make([]byte, 4+nlmsgHdrLen)
		body[0], body[1], body[2], body[3] = byte(code), byte(code>>8), byte(code>>16), byte(code>>24)
		return appendMsg(nil, nlmsgError, 0, 7, body)
	}
	// rawAttr is an attribute header claiming length n, without a value.
	rawAttr := func(n, typ uint16) []byte { return []byte{byte(n), byte(n >> 8), byte(typ), byte(typ >> 8)} }

	tests := []struct {
		name string
		in   []byte
		want []Packet
		err  error // nil, a malformedError or a syscall.Errno
	}{
		{name: "empty datagram"},
		{name: "one packet", in: pkt(p1, 7), want: []Packet{want(p1, 7, 0)}},
		{
			name: "batch with done",
			in:   kernelDatagram([][]byte{p1, p2, p3}, 3, 41),
			want: []Packet{want(p1, 41, 0), want(p2, 42, 1), want(p3, 43, 2)},
		},
		{name: "done only", in: appendMsg(nil, nlmsgDone, 0, 0, nfgen(0))},
		{name: "noop", in: appendMsg(nil, nlmsgNoop, 0, 0, nil)},
		{name: "ack skipped", in: cat(errMsg(0), pkt(p2, 1)), want: []Packet{want(p2, 1, 0)}},
		{name: "config message skipped", in: cat(appendMsg(nil, msgTypeConfig, 0, 0, nfgen(1)), pkt(p2, 1)), want: []Packet{want(p2, 1, 0)}},
		{
			name: "error message keeps earlier packets",
			in:   cat(pkt(p1, 1), errMsg(-int32(syscall.EPERM)), pkt(p2, 2)),
			want: []Packet{want(p1, 1, 0)},
			err:  syscall.EPERM,
		},
		{name: "positive error code", in: errMsg(5), err: errPositiveErr},
		{name: "error message without code", in: appendMsg(nil, nlmsgError, 0, 0, []byte{0, 0}), err: errShortErr},
		{
			name: "truncated datagram keeps earlier packets",
			in:   kernelDatagram([][]byte{p1}, 3, 1)[:2*len(pkt(p1, 0))+100],
			want: []Packet{want(p1, 1, 0), want(p1, 2, 1)},
			err:  errMsgLen,
		},
		{name: "header only", in: pkt(p1, 0)[:nlmsgHdrLen], err: errMsgLen},
		{name: "trailing bytes", in: cat(pkt(p2, 1), []byte{1, 2, 3, 4}), want: []Packet{want(p2, 1, 0)}, err: errTrailing},
		{name: "message length below header", in: []byte{8, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, err: errMsgLen},
		{name: "message length beyond datagram", in: cat([]byte{0xff, 0xff, 0, 0}, pkt(p2, 1)[4:]), err: errMsgLen},
		{
			name: "last message without padding",
			in:   unpadded(attrs(attr(nfulaPayload, []byte{1, 2, 3, 4, 5})), nlmsgHdrLen+4+4+5),
			want: []Packet{{Payload: []byte{1, 2, 3, 4, 5}}},
		},
		{name: "no nfgenmsg", in: appendMsg(nil, msgTypePacket, 0, 0, []byte{2, 0}), err: errShortNfgen},
		{name: "no attributes", in: attrs(), want: []Packet{{}}},
		{name: "attribute length 2", in: attrs(rawAttr(2, nfulaSeq)), err: errAttrLen},
		{name: "attribute length 0", in: attrs(rawAttr(0, nfulaSeq)), err: errAttrZero},
		{name: "attribute beyond message", in: attrs(rawAttr(200, nfulaPayload)), err: errAttrLen},
		{
			name: "trailing attribute bytes",
			in:   appendMsg(nil, msgTypePacket, 0, 0, cat(nfgen(1), attr(nfulaSeq, be32(9)), []byte{1, 2})),
			err:  errAttrTrailing,
		},
		{name: "short seq", in: attrs(attr(nfulaSeq, []byte{1, 2, 3})), err: errAttrSize},
		{name: "long indev", in: attrs(attr(nfulaIfindexIndev, make([]byte, 8))), err: errAttrSize},
		{name: "short timestamp", in: attrs(attr(nfulaTimestamp, make([]byte, 8))), err: errAttrSize},
		{name: "short packet header", in: attrs(attr(nfulaPacketHdr, []byte{8})), err: errAttrSize},
		{
			name: "type flags masked",
			in: attrs(
				attr(nfulaSeq|0x4000 /* NLA_F_NET_BYTEORDER */, be32(5)),
				attr(nfulaPayload|0x8000 /* NLA_F_NESTED */, p3),
			),
			want: []Packet{{Payload: p3, Seq: 5, HasSeq: true}},
		},
		{
			name: "unknown attributes skipped, later attribute wins",
			in:   attrs(attr(nfulaSeq, be32(1)), attr(99, []byte{1}), attr(nfulaSeq, be32(2)), attr(nfulaIfindexIndev, be32(3))),
			want: []Packet{{Seq: 2, HasSeq: true, InIfindex: 3}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.in, nil)
			if !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
				t.Fatalf("Decode error: got %v, want %v", err, tt.err)
			}
			if _, ok := tt.err.(*malformedError); ok && !errors.Is(err, ErrMalformed) {
				t.Errorf("Decode error %v does not match ErrMalformed", err)
			}
			if len(got) != len(tt.want) || len(got) > 0 && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decode packets:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// unpadded cuts a one-message datagram to n bytes, its nlmsg_len included.
func unpadded(b []byte, n int) []byte {
	b = b[:n]
	b[0], b[1], b[2], b[3] = byte(n), 0, 0, 0
	return b
}

func TestDecodeAppends(t *testing.T) {
	p := []byte{0x45, 0, 0, 20}
	d := kernelDatagram([][]byte{p}, 2, 10)
	pkts := make([]Packet, 1, 4)
	pkts[0].Seq = 99
	got, err := Decode(d, pkts)
	if err != nil || len(got) != 3 {
		t.Fatalf("Decode: %d packets, %v; want 3, nil", len(got), err)
	}
	if got[0].Seq != 99 || got[1].Seq != 10 || got[2].Seq != 11 {
		t.Errorf("sequence numbers %d %d %d, want 99 10 11", got[0].Seq, got[1].Seq, got[2].Seq)
	}
}

func TestDecodePayloadCapacity(t *testing.T) {
	d := kernelDatagram([][]byte{{1, 2, 3}}, 2, 0)
	got, err := Decode(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got[0].Payload) != cap(got[0].Payload) {
		t.Fatalf("payload length %d, capacity %d", len(got[0].Payload), cap(got[0].Payload))
	}
	// An append to the first payload must not overwrite the second message.
	_ = append(got[0].Payload, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee)
	again, err := Decode(d, nil)
	if err != nil || !reflect.DeepEqual(got, again) {
		t.Errorf("datagram changed by an append to a payload: %v", err)
	}
}

func TestMalformedErrors(t *testing.T) {
	for _, err := range []error{errTrailing, errMsgLen, errShortErr, errPositiveErr, errShortNfgen,
		errAttrTrailing, errAttrZero, errAttrLen, errAttrSize, errTruncated} {
		if !errors.Is(err, ErrMalformed) || !strings.HasPrefix(err.Error(), "nl: malformed netlink message: ") {
			t.Errorf("%q: want a reason for ErrMalformed", err)
		}
	}
}

func TestDecodeAllocs(t *testing.T) {
	d := kernelDatagram([][]byte{fragNeeded([4]byte{198, 18, 0, 2}, [4]byte{198, 18, 0, 1}, 1400, 1, 576)}, 64, 0)
	pkts := make([]Packet, 0, 64)
	allocs := testing.AllocsPerRun(100, func() {
		var err error
		pkts, err = Decode(d, pkts[:0])
		if err != nil || len(pkts) != 64 {
			t.Fatalf("Decode: %d packets, %v", len(pkts), err)
		}
	})
	if allocs != 0 {
		t.Errorf("Decode of 64 packets: %v allocations, want 0", allocs)
	}
	bad := append(d[:len(d):len(d)], 1, 2, 3)
	allocs = testing.AllocsPerRun(100, func() {
		pkts, _ = Decode(bad, pkts[:0])
	})
	if allocs != 0 {
		t.Errorf("Decode error path: %v allocations, want 0", allocs)
	}
}

func TestL2Group(t *testing.T) {
	eth := func(dst ...byte) []byte { return append(append(dst, 2, 0, 0, 0, 0, 1), 0x08, 0x00) }
	for _, tc := range []struct {
		name string
		hw   []byte
		want bool
	}{
		{"none", nil, false},
		{"unicast", eth(2, 0, 0, 0, 0, 9), false},
		{"broadcast", eth(0xff, 0xff, 0xff, 0xff, 0xff, 0xff), true},
		{"IPv4 multicast", eth(0x01, 0x00, 0x5e, 0, 0, 1), true},
		{"IPv6 multicast", eth(0x33, 0x33, 0, 0, 0, 1), true},
		{"too short for Ethernet", []byte{0xff, 0xff}, false},
	} {
		p := Packet{HwHeader: tc.hw, HwType: 1}
		if got := p.L2Group(); got != tc.want {
			t.Errorf("%s: L2Group() = %v, want %v", tc.name, got, tc.want)
		}
	}
	// A tunnel's "hardware header" is no Ethernet header: an ipgre device
	// reports the outer IPv4 header, whose first byte 0x45 is odd.
	gre := Packet{HwHeader: []byte{0x45, 0, 0, 0x54, 0, 0, 0x40, 0, 0x40, 0x2f, 0, 0, 198, 18}, HwType: 778}
	if gre.L2Group() || gre.Ethernet() != nil {
		t.Error("an ipgre device's header read as an Ethernet group frame")
	}
}
