package baseline_test

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/go-pmtud/go-pmtud/bench/baseline"
	"github.com/go-pmtud/go-pmtud/wire"
)

var (
	router  = netip.MustParseAddr("198.18.0.1")
	service = netip.MustParseAddr("198.19.0.10")
	client  = netip.MustParseAddr("198.18.1.20")
)

// packet returns a Fragmentation Needed from router to service announcing
// mtu and quoting the first n bytes of a 1500-byte TCP packet, after edit
// (which may be nil) changed it; checksums are recomputed after edit.
func packet(mtu uint16, n int, edit func(p []byte)) []byte {
	orig := wire.AppendIPv4(nil, service, client, 6, 64, make([]byte, 1480))
	p := wire.AppendIPv4(nil, router, service, 1, 64, wire.AppendFragNeeded(nil, mtu, orig[:n]))
	if edit != nil {
		edit(p)
		binary.BigEndian.PutUint16(p[10:], 0)
		binary.BigEndian.PutUint16(p[10:], wire.Checksum(p[:20]))
		if len(p) >= 28 && int(binary.BigEndian.Uint16(p[2:4])) == len(p) {
			binary.BigEndian.PutUint16(p[22:], 0)
			binary.BigEndian.PutUint16(p[22:], wire.Checksum(p[20:]))
		}
	}
	return p
}

// TestParseFragNeededXNetAgreesWithWire checks that the baseline does the
// same work as wire.ParseFragNeeded, so that comparing their speed is fair.
func TestParseFragNeededXNetAgreesWithWire(t *testing.T) {
	tests := []struct {
		name string
		pkt  []byte
		err  error
	}{
		{name: "accepted", pkt: packet(1400, 548, nil)},
		{name: "short quote accepted", pkt: packet(1280, 28, nil)},
		{name: "truncated", pkt: packet(1400, 548, nil)[:300], err: wire.ErrTruncated},
		{name: "not ipv4", pkt: packet(1400, 548, func(p []byte) { p[0] = 0x65 }), err: wire.ErrNotIPv4},
		{name: "bad header checksum", pkt: func() []byte { p := packet(1400, 548, nil); p[10]++; return p }(), err: wire.ErrBadHeader},
		{name: "fragment", pkt: packet(1400, 548, func(p []byte) { p[6] |= 0x20 }), err: wire.ErrFragment},
		{name: "not icmp", pkt: packet(1400, 548, func(p []byte) { p[9] = 17 }), err: wire.ErrNotICMP},
		{name: "not frag needed", pkt: packet(1400, 548, func(p []byte) { p[21] = 1 }), err: wire.ErrNotFragNeeded},
		{name: "bad icmp checksum", pkt: func() []byte { p := packet(1400, 548, nil); p[100]++; return p }(), err: wire.ErrBadChecksum},
		{name: "bad inner", pkt: packet(1400, 27, nil), err: wire.ErrBadInner},
	}
	for _, tt := range tests {
		src, dst, mtu, err := baseline.ParseFragNeededXNet(tt.pkt)
		if !errors.Is(err, tt.err) {
			t.Errorf("%s: baseline err = %v, want %v", tt.name, err, tt.err)
		}
		f, werr := wire.ParseFragNeeded(tt.pkt)
		if werr != tt.err {
			t.Errorf("%s: wire err = %v, want %v", tt.name, werr, tt.err)
		}
		if err == nil && werr == nil && (src != f.Src || dst != f.Dst || uint32(mtu) != f.MTU) {
			t.Errorf("%s: baseline %v -> %v MTU %d, wire %v -> %v MTU %d", tt.name, src, dst, mtu, f.Src, f.Dst, f.MTU)
		}
		if err == nil && (src != router || dst != service) {
			t.Errorf("%s: baseline %v -> %v, want %v -> %v", tt.name, src, dst, router, service)
		}
	}
}

func TestParseFragNeededXNetWrapsXNetErrors(t *testing.T) {
	_, _, _, err := baseline.ParseFragNeededXNet(make([]byte, 10))
	var we wire.Error
	if err == nil || errors.As(err, &we) {
		t.Errorf("err = %v, want x/net's header error, wrapped", err)
	}
}
