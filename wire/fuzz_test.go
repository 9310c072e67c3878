package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/go-pmtud/go-pmtud/bench/baseline"
	"github.com/go-pmtud/go-pmtud/wire"
)

// FuzzParseFragNeeded checks that ParseFragNeeded never panics, that what it
// accepts has the properties its documentation promises, and that it agrees
// with golang.org/x/net: whatever it accepts, x/net parses to the same
// addresses, type and code; whatever the x/net baseline accepts, it accepts.
//
// A random mutation almost never leaves both checksums valid, so the fuzzer
// would rarely get past them; fix says which of them to recompute before
// parsing (see fixChecksums), which lets it explore the checks behind them.
func FuzzParseFragNeeded(f *testing.F) {
	for _, tt := range parseCases() {
		f.Add(tt.pkt, uint8(0))
	}
	// Mutations the table does not have: a flipped byte in each region,
	// with and without the checksums fixed up.
	ok := typical()
	for _, i := range []int{0, 2, 6, 9, 12, 20, 21, 26, 28, 28 + 9, 28 + 20, len(ok) - 1} {
		p := bytes.Clone(ok)
		p[i] ^= 0x5a
		f.Add(p, uint8(0))
		f.Add(p, fixBoth)
	}

	f.Fuzz(func(t *testing.T, b []byte, fix uint8) {
		if fix != 0 {
			b = bytes.Clone(b) // the input is the corpus entry: leave it as it was
			fixChecksums(b, fix)
		}
		fn, err := wire.ParseFragNeeded(b)
		bsrc, bdst, bmtu, berr := baseline.ParseFragNeededXNet(b)
		if err != nil {
			if _, ok := err.(wire.Error); !ok {
				t.Fatalf("error %v is %T, not a wire.Error", err, err)
			}
			if berr == nil {
				t.Fatalf("rejected (%v) what the x/net baseline accepts", err)
			}
			return
		}
		checkAccepted(t, b, fn)

		// Differential against x/net, called directly.
		h, xerr := ipv4.ParseHeader(b)
		if xerr != nil {
			t.Fatalf("accepted what ipv4.ParseHeader rejects: %v", xerr)
		}
		if addr(h.Src) != fn.Src || addr(h.Dst) != fn.Dst || h.TTL != int(fn.TTL) {
			t.Fatalf("x/net outer %v -> %v TTL %d, wire %v -> %v TTL %d", h.Src, h.Dst, h.TTL, fn.Src, fn.Dst, fn.TTL)
		}
		m, xerr := icmp.ParseMessage(1, fn.ICMP)
		if xerr != nil && len(fn.ICMP) > icmpNoExtensions {
			// x/net also parses RFC 4884 extensions after the first 128
			// quoted bytes and fails on malformed ones; wire ignores them.
			// Without them x/net must agree.
			m, xerr = icmp.ParseMessage(1, fn.ICMP[:icmpNoExtensions])
		}
		if xerr != nil {
			t.Fatalf("accepted what icmp.ParseMessage rejects: %v", xerr)
		}
		if m.Type != ipv4.ICMPTypeDestinationUnreachable || m.Code != 4 {
			t.Fatalf("x/net type %v code %d", m.Type, m.Code)
		}
		ih, xerr := ipv4.ParseHeader(fn.ICMP[8:])
		if xerr != nil {
			t.Fatalf("accepted a quote ipv4.ParseHeader rejects: %v", xerr)
		}
		if addr(ih.Src) != fn.Inner.Src || addr(ih.Dst) != fn.Inner.Dst || ih.Protocol != int(fn.Inner.Proto) {
			t.Fatalf("x/net inner %v -> %v proto %d, wire %+v", ih.Src, ih.Dst, ih.Protocol, fn.Inner)
		}

		// And against the baseline built on x/net.
		if berr != nil {
			var we wire.Error
			if errors.As(berr, &we) || len(fn.ICMP) <= icmpNoExtensions {
				t.Fatalf("accepted what the x/net baseline rejects: %v", berr)
			}
		} else if bsrc != fn.Src || bdst != fn.Dst || uint32(bmtu) != fn.MTU {
			t.Fatalf("baseline %v -> %v MTU %d, wire %v -> %v MTU %d", bsrc, bdst, bmtu, fn.Src, fn.Dst, fn.MTU)
		}
	})
}

const (
	fixIPv4Sum uint8 = 1 << iota // recompute the IPv4 header checksum
	fixICMPSum                   // recompute the ICMP checksum
	fixBoth    = fixIPv4Sum | fixICMPSum
)

// fixChecksums recomputes in b the checksums fix asks for, where the header
// fields say where they are; ICMP first, since the IPv4 header does not
// cover it.
func fixChecksums(b []byte, fix uint8) {
	if len(b) < 20 {
		return
	}
	h, total := int(b[0]&0x0f)*4, int(binary.BigEndian.Uint16(b[2:4]))
	if h < 20 || h > len(b) {
		return
	}
	if fix&fixICMPSum != 0 && h+4 <= total && total <= len(b) {
		m := b[h:total]
		m[2], m[3] = 0, 0
		binary.BigEndian.PutUint16(m[2:], wire.Checksum(m))
	}
	if fix&fixIPv4Sum != 0 {
		b[10], b[11] = 0, 0
		binary.BigEndian.PutUint16(b[10:], wire.Checksum(b[:h]))
	}
}

// icmpNoExtensions is the longest ICMP message in which x/net looks for no
// RFC 4884 extension: the 8-byte header, the 128 bytes of original datagram
// that precede any extension, and less than its 8-byte minimum.
const icmpNoExtensions = 8 + 128 + 7

// checkAccepted checks the promises ParseFragNeeded makes about an accepted
// packet b.
func checkAccepted(t *testing.T, b []byte, f wire.FragNeeded) {
	t.Helper()
	h := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if len(f.Packet) != total || total > len(b) || &f.Packet[0] != &b[0] {
		t.Fatalf("Packet (%d bytes) is not b[:%d] (len(b) = %d)", len(f.Packet), total, len(b))
	}
	if len(f.ICMP) != total-h || &f.ICMP[0] != &f.Packet[h] {
		t.Fatalf("ICMP is not Packet[%d:]", h)
	}
	if s := wire.Checksum(f.ICMP); s != 0 {
		t.Fatalf("ICMP checksum verifies to %#04x", s)
	}
	if s := wire.Checksum(f.Packet[:h]); s != 0 {
		t.Fatalf("IPv4 header checksum verifies to %#04x", s)
	}
	if f.ICMP[0] != 3 || f.ICMP[1] != 4 {
		t.Fatalf("ICMP type %d code %d", f.ICMP[0], f.ICMP[1])
	}
	if mtu := uint32(binary.BigEndian.Uint16(f.ICMP[6:8])); f.MTU != mtu {
		t.Fatalf("MTU = %d, ICMP bytes 6-7 say %d", f.MTU, mtu)
	}
	if q := f.ICMP[8:]; len(q) < int(q[0]&0x0f)*4+8 {
		t.Fatalf("quote of %d bytes lacks header + 8", len(q))
	}
	if f.Src != netip.AddrFrom4([4]byte(b[12:16])) || f.Dst != netip.AddrFrom4([4]byte(b[16:20])) || f.TTL != b[8] {
		t.Fatalf("outer fields do not match the header")
	}
}

// addr converts an x/net address (16 bytes) to a netip.Addr.
func addr(ip []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}
