//go:build linux

package nl

import "testing"

func TestBatchLostCountsSequenceGaps(t *testing.T) {
	seqs := func(ss ...uint32) []Packet {
		var ps []Packet
		for _, s := range ss {
			ps = append(ps, Packet{Seq: s, HasSeq: true})
		}
		return ps
	}
	for _, tt := range []struct {
		name    string
		batches [][]Packet
		lost    []uint64
	}{
		{"first packet sets the base", [][]Packet{seqs(100, 101)}, []uint64{0}},
		{"consecutive", [][]Packet{seqs(0, 1, 2), seqs(3)}, []uint64{0, 0}},
		{"gap inside a batch", [][]Packet{seqs(0, 1, 5)}, []uint64{3}},
		{"gap between batches", [][]Packet{seqs(0, 1), seqs(4, 5)}, []uint64{0, 2}},
		{"wraparound", [][]Packet{seqs(0xfffffffe, 0xffffffff), seqs(0, 1)}, []uint64{0, 0}},
		{"gap across wraparound", [][]Packet{seqs(0xfffffffe), seqs(1)}, []uint64{0, 2}},
		{"restart is not a loss", [][]Packet{seqs(500), seqs(0, 1)}, []uint64{0, 0}},
		{"unnumbered packets ignored", [][]Packet{{{}, {Seq: 0, HasSeq: true}, {}}, seqs(1)}, []uint64{0, 0}},
		{"empty batch", [][]Packet{seqs(7), nil, seqs(9)}, []uint64{0, 0, 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var r Reader
			for i, ps := range tt.batches {
				b := &Batch{Packets: ps}
				r.count(b)
				if b.Lost != tt.lost[i] {
					t.Errorf("batch %d: Lost %d, want %d", i, b.Lost, tt.lost[i])
				}
			}
		})
	}
}
