package wire_test

import (
	"testing"

	"github.com/go-pmtud/go-pmtud/wire"
)

// The envelope benchmarks seal and open the 576-byte frag-needed a Linux
// router sends (typical), as the udp relay does once per packet on each side.
// SetBytes counts the packet, not the header.

func BenchmarkSeal(b *testing.B) {
	pkt := typical()
	s := mustSealer(b, &key1, wire.NewSequence(started), nodeA)
	var hdr [wire.EnvelopeLen]byte
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		s.Seal(&hdr, pkt, sent)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

// BenchmarkSealUnauthenticated is Seal without a key: the header alone.
func BenchmarkSealUnauthenticated(b *testing.B) {
	pkt := typical()
	s := mustSealer(b, nil, wire.NewSequence(started), nodeA)
	var hdr [wire.EnvelopeLen]byte
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		s.Seal(&hdr, pkt, sent)
	}
}

// BenchmarkSealParallel seals on every P, each goroutine with its own Sealer
// and all sharing one Sequence, as the workers do: the cost of the shared
// counter under contention.
func BenchmarkSealParallel(b *testing.B) {
	pkt := typical()
	seq := wire.NewSequence(started)
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	b.RunParallel(func(pb *testing.PB) {
		s := mustSealer(b, &key1, seq, nodeA)
		var hdr [wire.EnvelopeLen]byte
		for pb.Next() {
			s.Seal(&hdr, pkt, sent)
		}
	})
}

func BenchmarkOpen(b *testing.B) {
	d := seal(b, &key1, typical())
	o := mustOpener(b, key1, key2)
	b.ReportAllocs()
	b.SetBytes(int64(len(d) - wire.EnvelopeLen))
	for b.Loop() {
		if _, err := o.Open(d, nodeA); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

// BenchmarkOpenBadTag is a forged datagram: it costs what an accepted one
// does, so a flood of forgeries is as expensive as real traffic.
func BenchmarkOpenBadTag(b *testing.B) {
	d := seal(b, &key1, typical())
	d[len(d)-1] ^= 1
	o := mustOpener(b, key1, key2)
	b.ReportAllocs()
	b.SetBytes(int64(len(d) - wire.EnvelopeLen))
	for b.Loop() {
		if _, err := o.Open(d, nodeA); err != wire.ErrEnvelopeTag {
			b.Fatal(err)
		}
	}
}

// BenchmarkReplayWindow checks increasing numbers with a few reordered ones,
// the common case.
func BenchmarkReplayWindow(b *testing.B) {
	var w wire.ReplayWindow
	var seq uint64 = 1 << 40
	b.ReportAllocs()
	for b.Loop() {
		seq++
		w.Check(seq)
		w.Check(seq - 3) // reordered or duplicate
	}
}
