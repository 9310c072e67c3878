package wire_test

import (
	"testing"

	"github.com/go-pmtud/go-pmtud/bench/baseline"
	"github.com/go-pmtud/go-pmtud/wire"
)

// The benchmark packet is what a Linux router sends: 576 bytes, quoting 548
// bytes of a TCP packet. Most of the parse is the ICMP checksum over 556.

func BenchmarkParseFragNeeded(b *testing.B) {
	pkt := typical()
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if _, err := wire.ParseFragNeeded(pkt); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

// BenchmarkParseFragNeededXNet is the same work done with golang.org/x/net:
// the baseline ParseFragNeeded is measured against.
func BenchmarkParseFragNeededXNet(b *testing.B) {
	pkt := typical()
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if _, _, _, err := baseline.ParseFragNeededXNet(pkt); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

func BenchmarkChecksum(b *testing.B) {
	buf := typical()
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		wire.Checksum(buf)
	}
}

// BenchmarkParsePacketTooBig parses what a Linux router sends over IPv6:
// 1280 bytes, quoting 1232 bytes of a TCP packet.
func BenchmarkParsePacketTooBig(b *testing.B) {
	pkt := typical6()
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if _, err := wire.Parse(pkt); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}
