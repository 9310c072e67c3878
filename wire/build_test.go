package wire_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/go-pmtud/go-pmtud/wire"
)

func TestAppendIPv4Golden(t *testing.T) {
	src, dst := netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("192.168.0.199")
	payload := bytes.Repeat([]byte{0xaa}, 95)
	prefix := []byte("prefix")
	got := wire.AppendIPv4(bytes.Clone(prefix), src, dst, 17, 64, payload)
	want := append(append(bytes.Clone(prefix), ipv4Golden(0xb861)...), payload...)
	if !bytes.Equal(got, want) {
		t.Errorf("AppendIPv4 =\n% x\nwant\n% x", got, want)
	}
}

func TestAppendFragNeededGolden(t *testing.T) {
	got := wire.AppendFragNeeded([]byte{0xee}, 1400, []byte{0x45, 0x00})
	// Type 3, code 4, checksum, unused, MTU 0x0578, quote.
	want := []byte{0xee, 0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0x05, 0x78, 0x45, 0x00}
	sum := ^uint16(0x0304 + 0x0578 + 0x4500)
	want[3], want[4] = byte(sum>>8), byte(sum)
	if !bytes.Equal(got, want) {
		t.Errorf("AppendFragNeeded = % x, want % x", got, want)
	}
}

// TestBuildersRoundTrip parses what the builders build, with an odd-length
// quote and a buffer that already holds data.
func TestBuildersRoundTrip(t *testing.T) {
	orig := original(17)
	for _, n := range []int{28, 29, 100, 548, len(orig)} {
		icmp := wire.AppendFragNeeded(nil, 1280, orig[:n])
		pkt := wire.AppendIPv4(make([]byte, 3, 2000), router, service, 1, 7, icmp)[3:]
		f, err := wire.ParseFragNeeded(pkt)
		if err != nil {
			t.Fatalf("quote %d: ParseFragNeeded: %v", n, err)
		}
		want := flow(17, servicePort, clientPort)
		if f.Src != router || f.Dst != service || f.TTL != 7 || f.MTU != 1280 || f.Inner != want {
			t.Errorf("quote %d: got %v -> %v TTL %d MTU %d inner %+v", n, f.Src, f.Dst, f.TTL, f.MTU, f.Inner)
		}
		if !bytes.Equal(f.ICMP, icmp) || len(f.Packet) != 20+len(icmp) {
			t.Errorf("quote %d: ICMP not returned verbatim", n)
		}
		if !bytes.Equal(f.ICMP[8:], orig[:n]) {
			t.Errorf("quote %d: quoted bytes changed", n)
		}
	}
}

func TestAppendIPv4Panics(t *testing.T) {
	for name, f := range map[string]func(){
		"ipv6 source": func() {
			wire.AppendIPv4(nil, netip.MustParseAddr("2001:db8::1"), service, 1, 64, nil)
		},
		"too long": func() { wire.AppendIPv4(nil, router, service, 1, 64, make([]byte, 65516)) },
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
	// The longest packet that fits does not panic.
	if p := wire.AppendIPv4(nil, router, service, 1, 64, make([]byte, 65515)); len(p) != 65535 {
		t.Errorf("len = %d, want 65535", len(p))
	}
}
