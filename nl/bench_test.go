package nl

import (
	"testing"

	nflog "github.com/florianl/go-nflog/v2"
	"github.com/go-pmtud/go-pmtud/bench/nflogbase"
)

// benchPackets is how many packets the benchmark datagram holds: the
// default queue threshold.
const benchPackets = DefaultQThreshold

// benchDatagram is what the kernel sends for 64 ICMP fragmentation-needed
// packets of 576 bytes (the size a router quotes up to) logged at PREROUTING.
func benchDatagram() []byte {
	p := fragNeeded([4]byte{198, 18, 0, 2}, [4]byte{198, 18, 0, 1}, 1400, 1, 576)
	return kernelDatagram([][]byte{p}, benchPackets, 0)
}

// reportPerPacket adds ns/pkt and pkts/s for b.N datagrams of n packets.
func reportPerPacket(b *testing.B, n int) {
	ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N*n)
	b.ReportMetric(ns, "ns/pkt")
	b.ReportMetric(1e9/ns, "pkts/s")
}

// BenchmarkDecode measures Decode on one 64-packet datagram.
func BenchmarkDecode(b *testing.B) {
	d := benchDatagram()
	pkts := make([]Packet, 0, benchPackets)
	b.SetBytes(int64(len(d)))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if pkts, err = Decode(d, pkts[:0]); err != nil || len(pkts) != benchPackets {
			b.Fatalf("Decode: %d packets, %v", len(pkts), err)
		}
	}
	reportPerPacket(b, benchPackets)
}

// BenchmarkDecodeGoNflog measures the baseline on the same datagram:
// go-nflog v2.3.0's decode path (bench/nflogbase), socket read excluded.
func BenchmarkDecodeGoNflog(b *testing.B) {
	d := benchDatagram()
	b.SetBytes(int64(len(d)))
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		err := nflogbase.Decode(d, func(a nflog.Attribute) int {
			if a.Payload != nil {
				n++
			}
			return 0
		})
		if err != nil || n != benchPackets {
			b.Fatalf("nflogbase.Decode: %d packets, %v", n, err)
		}
	}
	reportPerPacket(b, benchPackets)
}
