package wire_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/go-pmtud/go-pmtud/wire"
)

// TestReplayWindow runs one window, from its zero value, through a
// deterministic sequence of (seq, accepted?) rows.
func TestReplayWindow(t *testing.T) {
	const W = wire.ReplayWindowSize
	const far = uint64(1) << 40
	rows := []struct {
		name string
		seq  uint64
		want bool
	}{
		{"seq 0, first", 0, true},
		{"seq 0 again", 0, false},
		{"increasing", 1, true},
		{"increasing", 2, true},
		{"increasing", 3, true},
		{"duplicate", 2, false},
		{"gap", 10, true},
		{"reordered inside the window", 7, true},
		{"reordered, duplicate", 7, false},
		{"last of the first block", 63, true},
		{"next block", 64, true},
		{"reordered into the gap", 5, true},
		{"window moves up", W + 10, true},
		{"exactly the window below, seen", 10, false},
		{"one past the window, never seen", 9, false},
		{"one inside the window, never seen", 11, true},
		{"one inside the window, seen", 63, false},
		{"big jump forward clears the window", far, true},
		{"just below the jump", far - 1, true},
		{"start of the block below the jump", far - 64, true},
		{"old window is too old", W + 10, false},
		{"window edge below the jump", far - W, true},
		{"one past the edge", far - W - 1, false},
		{"jump by one block", far + 64, true},
		{"behind it, in a reused block, new", far + 1, true},
		{"behind it, seen before the move", far - 1, false},
		{"jump by 127 blocks", far + 64 + 127*64, true},
		{"previous newest still in the window", far + 64, false},
		{"unseen, 127 blocks back", far + 65, true},
		{"max uint64", math.MaxUint64, true},
		{"max uint64 again", math.MaxUint64, false},
		{"just below max", math.MaxUint64 - 1, true},
		{"window edge below max", math.MaxUint64 - W, true},
		{"one past the edge below max", math.MaxUint64 - W - 1, false},
		{"seq 0 after max", 0, false},
	}
	var w wire.ReplayWindow
	for i, r := range rows {
		if got := w.Check(r.seq); got != r.want {
			t.Errorf("row %d, %s: Check(%#x) = %t, want %t", i, r.name, r.seq, got, r.want)
		}
	}
}

// refWindow is the window's specification, kept in a map: a number is new
// if never accepted and at most ReplayWindowSize below the newest accepted.
type refWindow struct {
	last uint64
	seen map[uint64]bool
}

func (r *refWindow) check(seq uint64) bool {
	if r.seen[seq] || (seq < r.last && r.last-seq > wire.ReplayWindowSize) {
		return false
	}
	r.seen[seq] = true
	r.last = max(r.last, seq)
	return true
}

// TestReplayWindowMatchesReference drives the window and refWindow with the
// same random numbers: mostly increasing, reordered, duplicated, around the
// window's edge, and jumps of every size up to past the whole ring.
func TestReplayWindowMatchesReference(t *testing.T) {
	const W = wire.ReplayWindowSize
	r := rand.New(rand.NewPCG(3, 4))
	for run := range 20 {
		var w wire.ReplayWindow
		ref := refWindow{seen: make(map[uint64]bool)}
		next := r.Uint64N(1 << 50)
		if run == 0 {
			next = 0
		}
		for i := range 20000 {
			var seq uint64
			switch k := r.IntN(100); {
			case k < 50:
				seq = next
				next++
			case k < 70: // reordered
				seq = next - min(next, r.Uint64N(W+200))
			case k < 80: // around the edge
				seq = ref.last - min(ref.last, W-5+r.Uint64N(10))
			case k < 90: // duplicate of something recent
				seq = ref.last - min(ref.last, r.Uint64N(300))
			case k < 98: // jump forward by up to 200 blocks
				next += r.Uint64N(200 * 64)
				seq = next
			default: // far back
				seq = r.Uint64N(ref.last + 1)
			}
			if got, want := w.Check(seq), ref.check(seq); got != want {
				t.Fatalf("run %d, step %d: Check(%#x) = %t, want %t (newest %#x)", run, i, seq, got, want, ref.last)
			}
		}
	}
}

func TestReplayWindowAllocs(t *testing.T) {
	var w wire.ReplayWindow
	var seq uint64
	n := testing.AllocsPerRun(1000, func() {
		w.Check(seq)
		seq += 1000 // moves the window forward, clearing blocks
	})
	if n != 0 {
		t.Errorf("%v allocations per Check, want 0", n)
	}
}

func TestReplayWindowSize(t *testing.T) {
	if wire.ReplayWindowSize < 2048 {
		t.Errorf("ReplayWindowSize = %d, want at least 2048", wire.ReplayWindowSize)
	}
}
