// Package bench gates hot-path regressions: each test benchmarks a hot path
// and its baseline in the same run, and fails when the hot path allocates
// or its speed-up over the baseline falls below a floor. Ratios only:
// absolute times are not stable on shared machines.
package bench

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/florianl/go-nflog/v2"

	"github.com/go-pmtud/go-pmtud/bench/baseline"
	"github.com/go-pmtud/go-pmtud/bench/nflogbase"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// routerICMP returns a 576-byte frag-needed as a Linux router sends it.
func routerICMP(sport uint16) []byte {
	tcp := make([]byte, 576-20-8-20)
	binary.BigEndian.PutUint16(tcp, sport)
	binary.BigEndian.PutUint16(tcp[2:], 8080)
	quoted := wire.AppendQuote(nil, netip.MustParseAddr("198.18.100.1"), netip.MustParseAddr("198.18.2.2"), 6, 63, 1500, tcp)
	return wire.AppendIPv4(nil, netip.MustParseAddr("198.19.255.1"), netip.MustParseAddr("198.18.100.1"), 1, 64,
		wire.AppendFragNeeded(nil, 1400, quoted))
}

// nflogDatagram returns one netlink datagram of n NFLOG packet messages,
// laid out as the kernel batches them (include/uapi/linux/netfilter/
// nfnetlink_log.h): PACKET_HDR, INDEV, PAYLOAD, SEQ; then NLMSG_DONE.
func nflogDatagram(n int) []byte {
	attr := func(b []byte, typ uint16, v []byte) []byte {
		b = binary.NativeEndian.AppendUint16(b, uint16(4+len(v)))
		b = binary.NativeEndian.AppendUint16(b, typ)
		b = append(b, v...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	msg := func(b []byte, typ, flags uint16, seq uint32, body []byte) []byte {
		b = binary.NativeEndian.AppendUint32(b, uint32(16+len(body)))
		b = binary.NativeEndian.AppendUint16(b, typ)
		b = binary.NativeEndian.AppendUint16(b, flags)
		b = binary.NativeEndian.AppendUint32(b, seq)
		b = binary.NativeEndian.AppendUint32(b, 0)
		return append(b, body...)
	}
	const (
		nlmFMulti  = 0x2      // NLM_F_MULTI (netlink.h)
		nlmsgDone  = 0x3      // NLMSG_DONE (netlink.h)
		msgPacket  = 0x4 << 8 // NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET
		packetHdr  = 1        // NFULA_PACKET_HDR
		indev      = 4        // NFULA_IFINDEX_INDEV
		payloadTyp = 9        // NFULA_PAYLOAD
		seqTyp     = 12       // NFULA_SEQ
	)
	var d []byte
	for i := range n {
		body := []byte{2, 0, 0, 33} // nfgenmsg: AF_INET, v0, res_id = group 33
		body = attr(body, packetHdr, []byte{0x08, 0x00, 0, 0})
		body = attr(body, indev, binary.BigEndian.AppendUint32(nil, 2))
		body = attr(body, payloadTyp, routerICMP(uint16(40000+i)))
		body = attr(body, seqTyp, binary.BigEndian.AppendUint32(nil, uint32(i)))
		d = msg(d, msgPacket, nlmFMulti, 0, body)
	}
	return msg(d, nlmsgDone, nlmFMulti, 0, []byte{0, 0, 0, 0})
}

// gate benchmarks fast and base, and fails when fast allocates or is less
// than floor times faster than base.
func gate(t *testing.T, name string, floor float64, fast, base func(b *testing.B)) {
	t.Helper()
	f := testing.Benchmark(fast)
	b := testing.Benchmark(base)
	if f.N == 0 || b.N == 0 {
		t.Fatalf("%s: a benchmark failed (fast N=%d, base N=%d)", name, f.N, b.N)
	}
	ratio := float64(b.NsPerOp()) / float64(max(f.NsPerOp(), 1))
	t.Logf("%s: %d ns/op %d allocs/op; baseline %d ns/op %d allocs/op; %.1fx (floor %.1fx)",
		name, f.NsPerOp(), f.AllocsPerOp(), b.NsPerOp(), b.AllocsPerOp(), ratio, floor)
	if f.AllocsPerOp() != 0 {
		t.Errorf("%s allocates %d times per op, want 0", name, f.AllocsPerOp())
	}
	if ratio < floor {
		t.Errorf("%s is %.1fx its baseline, below the floor of %.1fx", name, ratio, floor)
	}
}

func TestGateParse(t *testing.T) {
	if testing.Short() {
		t.Skip("benchmark gate skipped in -short mode")
	}
	pkt := routerICMP(40000)
	if _, err := wire.ParseFragNeeded(pkt); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := baseline.ParseFragNeededXNet(pkt); err != nil {
		t.Fatal(err)
	}
	// Floor set from 13.6x measured on 2026-11-25 (2-core AMD EPYC, busy),
	// with room for noise.
	gate(t, "wire.ParseFragNeeded vs x/net", 4, func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			wire.ParseFragNeeded(pkt)
		}
	}, func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			baseline.ParseFragNeededXNet(pkt)
		}
	})
}

func TestGateDecode(t *testing.T) {
	if testing.Short() {
		t.Skip("benchmark gate skipped in -short mode")
	}
	d := nflogDatagram(64)
	pkts, err := nl.Decode(d, make([]nl.Packet, 0, 64))
	if err != nil || len(pkts) != 64 {
		t.Fatalf("nl.Decode: %d packets, %v", len(pkts), err)
	}
	count := 0
	if err := nflogbase.Decode(d, func(nflog.Attribute) int { count++; return 0 }); err != nil || count != 64 {
		t.Fatalf("nflogbase.Decode: %d packets, %v", count, err)
	}
	// Floor set from 25-30x measured on 2026-11-25 (2-core AMD EPYC, busy).
	gate(t, "nl.Decode vs go-nflog", 8, func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]nl.Packet, 0, 64)
		for range b.N {
			nl.Decode(d, buf[:0])
		}
	}, func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			nflogbase.Decode(d, func(nflog.Attribute) int { return 0 })
		}
	})
}
