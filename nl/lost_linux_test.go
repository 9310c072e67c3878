//go:build linux

package nl

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

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

// TestKernelAccountsEveryLoggedPacket overflows the socket and checks the
// NFLOG accounting end to end: every packet the rule logged (its iptables
// counter) is either read or counted in Batch.Lost, and the socket's drop
// count (Reader.Drops) saw the dropped datagrams.
func TestKernelAccountsEveryLoggedPacket(t *testing.T) {
	e := newKernelEnv(t, 14)
	r := e.listen(t, Config{QThreshold: 4, ReadBuffer: 1})
	const burst = 400
	for i := range burst {
		e.send(t, probe(i))
	}
	// One more packet after the burst, so that a drop at the end of it has
	// a packet after it that reveals its gap; more until one arrives.
	sent := burst
	rs := readUntil(t, r, func(rs []received) bool {
		for _, rv := range rs {
			for _, p := range rv.pkts {
				if int(p.Seq) == sent-1 {
					return true
				}
			}
		}
		e.send(t, probe(sent))
		sent++
		return false
	})
	var got, lost int
	for _, rv := range rs {
		if rv.err != nil && !errors.Is(rv.err, unix.ENOBUFS) {
			t.Fatalf("Read: %v", rv.err)
		}
		got += len(rv.pkts)
		lost += int(rv.lost)
	}
	logged := ruleCount(t, e)
	drops := r.Drops()
	t.Logf("rule logged %d, read %d, Lost %d, socket drops %d datagrams", logged, got, lost, drops)
	if uint64(got+lost) != logged {
		t.Errorf("read %d + Lost %d = %d, rule logged %d", got, lost, got+lost, logged)
	}
	if lost == 0 || drops == 0 {
		t.Errorf("no overflow: Lost %d, Drops %d", lost, drops)
	}
}

// ruleCount returns the packet counter of e's NFLOG rule.
func ruleCount(t *testing.T, e *kernelEnv) uint64 {
	t.Helper()
	out := e.ns.MustRun(t, "iptables", "-t", "raw", "-nvxL", "PREROUTING")
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == "NFLOG" {
			n, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no NFLOG rule in %q", out)
	return 0
}
