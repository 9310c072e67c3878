package wire_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"

	"github.com/go-pmtud/go-pmtud/wire"
)

// The IPv6 lab's addresses (2001:db8::/32): a router answers the service
// address about a flow to a client.
var (
	router6  = netip.MustParseAddr("2001:db8:ff::1")
	service6 = netip.MustParseAddr("2001:db8:100::1")
	client6  = netip.MustParseAddr("2001:db8:2::2")
)

// original6 returns a 1500-byte IPv6 packet from service6 to client6 whose
// next header is proto, with a transport header that starts with the ports.
func original6(proto uint8) []byte {
	p := make([]byte, 1500)
	p[0] = 6 << 4
	binary.BigEndian.PutUint16(p[4:], 1460)
	p[6], p[7] = proto, 64
	s, d := service6.As16(), client6.As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	binary.BigEndian.PutUint16(p[40:], servicePort)
	binary.BigEndian.PutUint16(p[42:], clientPort)
	for i := 44; i < len(p); i++ {
		p[i] = byte(i)
	}
	return p
}

// tooBig returns the packet a router sends to service6: a Packet Too Big
// announcing mtu and quoting q.
func tooBig(mtu uint32, q []byte) []byte {
	return wire.AppendPacketTooBig(nil, router6, service6, 64, mtu, q)
}

// typical6 is what a Linux router sends: 1280 bytes, quoting a TCP packet.
func typical6() []byte { return tooBig(1400, quote(original6(6), 1280-48)) }

// fixICMP6 recomputes p's ICMPv6 checksum in place and returns p.
func fixICMP6(p []byte) []byte {
	p[42], p[43] = 0, 0
	binary.BigEndian.PutUint16(p[42:], naiveChecksum6(p[8:24], p[24:40], p[40:]))
	return p
}

// naiveChecksum6 is RFC 4443's checksum written the obvious way, 16 bits at
// a time: the reference the package's checksum6 is checked against.
func naiveChecksum6(src, dst, msg []byte) uint16 {
	var ph []byte
	ph = append(ph, src...)
	ph = append(ph, dst...)
	ph = binary.BigEndian.AppendUint32(ph, uint32(len(msg)))
	ph = append(ph, 0, 0, 0, 58)
	ph = append(ph, msg...)
	if len(ph)%2 == 1 {
		ph = append(ph, 0)
	}
	var s uint32
	for i := 0; i < len(ph); i += 2 {
		s += uint32(binary.BigEndian.Uint16(ph[i:]))
	}
	for s>>16 != 0 {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

func edit6(p []byte, f func(p []byte)) []byte {
	p = bytes.Clone(p)
	f(p)
	return p
}

func flow6(proto uint8, sport, dport uint16) wire.Flow {
	return wire.Flow{Src: service6, Dst: client6, Proto: proto, SrcPort: sport, DstPort: dport}
}

// tooBigCases covers ParsePacketTooBig's errors and accepted variants.
func tooBigCases() []parseCase {
	ok := typical6()
	tcp := flow6(6, servicePort, clientPort)
	return []parseCase{
		// Accepted.
		{name: "v6 linux router, tcp", pkt: ok, mtu: 1400, length: 1280, inner: tcp},
		{name: "v6 udp, minimal quote", pkt: tooBig(1280, quote(original6(17), 48)), mtu: 1280, length: 96, inner: flow6(17, servicePort, clientPort)},
		{name: "v6 odd quote", pkt: tooBig(1280, quote(original6(17), 49)), mtu: 1280, length: 97, inner: flow6(17, servicePort, clientPort)},
		{name: "v6 inner behind an extension header has no ports", pkt: tooBig(1280, quote(original6(44), 48)), mtu: 1280, length: 96, inner: flow6(44, 0, 0)},
		{name: "v6 mtu 1499, one below the quoted length", pkt: tooBig(1499, quote(original6(6), 48)), mtu: 1499, length: 96, inner: tcp},
		{name: "v6 padding after the payload is ignored", pkt: append(bytes.Clone(ok), 0, 0, 0, 0), mtu: 1400, length: 1280, inner: tcp},
		// Rejected.
		{name: "v6 empty", pkt: nil, err: wire.ErrTruncated},
		{name: "v6 short header", pkt: ok[:39], err: wire.ErrTruncated},
		{name: "v6 payload length beyond the buffer", pkt: ok[:1279], err: wire.ErrTruncated},
		{name: "v6 version 4", pkt: edit6(ok, func(p []byte) { p[0] = 4 << 4 }), err: wire.ErrNotIPv6},
		{name: "v6 extension header", pkt: edit6(ok, func(p []byte) { p[6] = 0 }), err: wire.ErrNotICMP},
		{name: "v6 udp", pkt: edit6(ok, func(p []byte) { p[6] = 17 }), err: wire.ErrNotICMP},
		{
			name: "v6 icmp header cut",
			pkt:  edit6(ok[:44], func(p []byte) { binary.BigEndian.PutUint16(p[4:], 4) }),
			err:  wire.ErrTruncated,
		},
		{name: "v6 echo request", pkt: fixICMP6(edit6(ok, func(p []byte) { p[40] = 128 })), err: wire.ErrNotFragNeeded},
		{name: "v6 destination unreachable", pkt: fixICMP6(edit6(ok, func(p []byte) { p[40] = 1 })), err: wire.ErrNotFragNeeded},
		{name: "v6 code 1", pkt: fixICMP6(edit6(ok, func(p []byte) { p[41] = 1 })), err: wire.ErrNotFragNeeded},
		{name: "v6 bad checksum", pkt: edit6(ok, func(p []byte) { p[100] ^= 1 }), err: wire.ErrBadChecksum},
		{name: "v6 checksum of another destination", pkt: edit6(ok, func(p []byte) { p[39] ^= 1 }), err: wire.ErrBadChecksum},
		{name: "v6 mtu 1279", pkt: tooBig(1279, quote(original6(6), 48)), err: wire.ErrMTUTooSmall},
		{name: "v6 mtu 0", pkt: tooBig(0, quote(original6(6), 48)), err: wire.ErrMTUTooSmall},
		{name: "v6 mtu 1500, the quoted length", pkt: tooBig(1500, quote(original6(6), 48)), err: wire.ErrMTUNotSmaller},
		{name: "v6 mtu beyond 16 bits", pkt: tooBig(70000, quote(original6(6), 48)), err: wire.ErrMTUNotSmaller},
		{name: "v6 inner is ipv4", pkt: tooBig(1280, quote(original(6), 48)), err: wire.ErrBadInner},
		{name: "v6 inner short", pkt: tooBig(1280, quote(original6(6), 47)), err: wire.ErrBadInner},
	}
}

func TestParsePacketTooBig(t *testing.T) {
	for _, tt := range tooBigCases() {
		t.Run(tt.name, func(t *testing.T) {
			f, err := wire.ParsePacketTooBig(tt.pkt)
			if err != tt.err {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			g, gerr := wire.Parse(tt.pkt)
			if tt.err != wire.ErrNotIPv6 && (gerr != err || g.MTU != f.MTU || len(g.Packet) != len(f.Packet)) {
				t.Fatalf("Parse = %v, %v; ParsePacketTooBig = %v", g.MTU, gerr, err)
			}
			if err != nil {
				return
			}
			if f.Src != router6 || f.Dst != service6 || f.TTL != 64 {
				t.Errorf("outer %v -> %v hop limit %d", f.Src, f.Dst, f.TTL)
			}
			if f.MTU != tt.mtu || len(f.Packet) != tt.length || !bytes.Equal(f.Packet, tt.pkt[:tt.length]) {
				t.Errorf("MTU %d, %d bytes; want %d, %d", f.MTU, len(f.Packet), tt.mtu, tt.length)
			}
			if !bytes.Equal(f.ICMP, f.Packet[40:]) || cap(f.Packet) != len(f.Packet) {
				t.Error("ICMP is not the packet after its header, or Packet's capacity reaches past it")
			}
			if f.Inner != tt.inner {
				t.Errorf("Inner = %+v, want %+v", f.Inner, tt.inner)
			}
		})
	}
}

// TestParseDispatches: Parse reads IPv4 with ParseFragNeeded and IPv6 with
// ParsePacketTooBig, and calls any other version not IPv4.
func TestParseDispatches(t *testing.T) {
	for _, tt := range []struct {
		name string
		pkt  []byte
		err  error
	}{
		{"ipv4", typical(), nil},
		{"ipv6", typical6(), nil},
		{"version 5", edit6(typical(), func(p []byte) { p[0] = 5<<4 | 5 }), wire.ErrNotIPv4},
		{"empty", nil, wire.ErrTruncated},
	} {
		if _, err := wire.Parse(tt.pkt); err != tt.err {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.err)
		}
	}
}

// TestAppendPacketTooBigMatchesXNet builds the same message with
// golang.org/x/net/icmp, which computes the checksum over the pseudo-header
// its own way.
func TestAppendPacketTooBigMatchesXNet(t *testing.T) {
	for _, n := range []int{48, 49, 200, 1232} {
		q := quote(original6(6), n)
		m := icmp.Message{Type: ipv6.ICMPTypePacketTooBig, Body: &icmp.PacketTooBig{MTU: 1400, Data: q}}
		want, err := m.Marshal(icmp.IPv6PseudoHeader(router6.AsSlice(), service6.AsSlice()))
		if err != nil {
			t.Fatal(err)
		}
		got := wire.AppendPacketTooBig([]byte{0xee}, router6, service6, 64, 1400, q)
		if got[0] != 0xee || !bytes.Equal(got[41:], want) {
			t.Errorf("quote %d: ICMPv6 message\n% x\nwant (x/net)\n% x", n, got[41:81], want[:40])
		}
		if h, err := ipv6.ParseHeader(got[1:]); err != nil || h.Src.String() != router6.String() ||
			h.Dst.String() != service6.String() || h.NextHeader != 58 || h.HopLimit != 64 || h.PayloadLen != len(want) {
			t.Errorf("quote %d: IPv6 header %+v, %v", n, h, err)
		}
	}
}

func TestAppendPacketTooBigPanics(t *testing.T) {
	for name, f := range map[string]func(){
		"ipv4 source":        func() { wire.AppendPacketTooBig(nil, router, service6, 64, 1280, nil) },
		"ipv4-mapped target": func() { wire.AppendPacketTooBig(nil, router6, netip.MustParseAddr("::ffff:198.18.0.1"), 64, 1280, nil) },
		"too long":           func() { wire.AppendPacketTooBig(nil, router6, service6, 64, 1280, make([]byte, 65535)) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

func TestParsePacketTooBigAllocs(t *testing.T) {
	for _, tt := range tooBigCases() {
		var err error
		n := testing.AllocsPerRun(100, func() { _, err = wire.Parse(tt.pkt) })
		if tt.err != wire.ErrNotIPv6 && err != tt.err {
			t.Fatalf("%s: err = %v, want %v", tt.name, err, tt.err)
		}
		if n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", tt.name, n)
		}
	}
}
