package nflogbase_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	nflog "github.com/florianl/go-nflog/v2"
	"github.com/go-pmtud/go-pmtud/bench/nflogbase"
	"github.com/mdlayher/netlink"
)

// packetMessage encodes an NFULNL_MSG_PACKET message (nfnetlink_log.h):
// nfgenmsg AF_INET, then the attributes ae holds.
func packetMessage(t *testing.T, ae *netlink.AttributeEncoder) []byte {
	t.Helper()
	attrs, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	data := append([]byte{2 /* AF_INET */, 0 /* NFNETLINK_V0 */, 0, 33}, attrs...)
	return message(t, 0x0400 /* NFNL_SUBSYS_ULOG<<8 | NFULNL_MSG_PACKET */, data)
}

func message(t *testing.T, typ netlink.HeaderType, data []byte) []byte {
	t.Helper()
	m := netlink.Message{Header: netlink.Header{Length: uint32(16 + (len(data)+3)&^3), Type: typ}, Data: data}
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func packet(t *testing.T, seq uint32, payload []byte) []byte {
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(1, []byte{0x08, 0x00, 0, 0}) // NFULA_PACKET_HDR
	ts := binary.BigEndian.AppendUint64(nil, 1700000000)
	ae.Bytes(3, binary.BigEndian.AppendUint64(ts, 5)) // NFULA_TIMESTAMP
	ae.ByteOrder = binary.BigEndian
	ae.Uint32(4, 1)      // NFULA_IFINDEX_INDEV
	ae.Uint32(12, seq)   // NFULA_SEQ
	ae.Bytes(9, payload) // NFULA_PAYLOAD
	return packetMessage(t, ae)
}

func TestDecode(t *testing.T) {
	d := append(packet(t, 7, []byte{0x45, 1}), packet(t, 8, []byte{0x45, 2})...)
	d = append(d, message(t, netlink.Done, []byte{0, 0, 0, 0})...)
	d = append(d, packet(t, 9, []byte{0x45, 3})...) // after NLMSG_DONE: go-nflog stops
	var got []nflog.Attribute
	if err := nflogbase.Decode(d, func(a nflog.Attribute) int { got = append(got, a); return 0 }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %d messages, want 2", len(got))
	}
	for i, a := range got {
		if a.Seq == nil || *a.Seq != uint32(7+i) || a.Payload == nil || !bytes.Equal(*a.Payload, []byte{0x45, byte(1 + i)}) ||
			a.InDev == nil || *a.InDev != 1 || a.HwProtocol == nil || *a.HwProtocol != 0x0800 ||
			a.Timestamp == nil || a.Timestamp.UnixNano() != 1700000000e9+5e3 {
			t.Errorf("message %d decoded wrong: %+v", i, a)
		}
	}
}

func TestDecodeStops(t *testing.T) {
	d := append(packet(t, 1, nil), packet(t, 2, nil)...)
	n := 0
	if err := nflogbase.Decode(d, func(nflog.Attribute) int { n++; return 1 }); err != nil || n != 1 {
		t.Errorf("hook returning 1: called %d times, %v", n, err)
	}
}

func TestDecodeErrorMessage(t *testing.T) {
	d := message(t, netlink.Error, []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	if err := nflogbase.Decode(d, func(nflog.Attribute) int { return 0 }); err == nil {
		t.Error("error message -1 decoded without error")
	}
}

func TestParseMessageGuards(t *testing.T) {
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(1, []byte{0x08}) // NFULA_PACKET_HDR of 1 byte: go-nflog would panic
	m := packetMessage(t, ae)
	if _, err := nflogbase.ParseMessage(m[16:]); !errors.Is(err, nflogbase.ErrShortAttribute) {
		t.Errorf("short packet header: %v, want ErrShortAttribute", err)
	}
	if _, err := nflogbase.ParseMessage([]byte{2}); !errors.Is(err, nflogbase.ErrShortAttribute) {
		t.Errorf("1-byte message: %v, want ErrShortAttribute", err)
	}
}
