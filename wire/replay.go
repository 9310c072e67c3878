package wire

// Replay window geometry, WireGuard's (its replay package, after RFC 6479):
// a ring of 64-bit blocks, one bit per sequence number. One block is the
// one the newest number falls in and is filled as numbers arrive; the other
// 127 hold the numbers below it.
const (
	replayBlockBits = 64
	replayBlockLog  = 6 // log2(replayBlockBits)
	replayBlocks    = 128
	replayBlockMask = replayBlocks - 1
)

// ReplayWindowSize is how far below the newest sequence number a ReplayWindow
// still accepts numbers: 8128, so a number n is judged on its own merits while
// newest-n <= 8128 and rejected as too old beyond. That is the reordering it
// absorbs: the workers of one sender take numbers from one Sequence and send
// them in batches, each to every peer, so numbers arrive a few batches out of
// order.
const ReplayWindowSize = (replayBlocks - 1) * replayBlockBits

// ReplayWindow rejects sequence numbers seen before: a sliding bitmap of the
// newest number accepted and the ReplayWindowSize numbers below it (RFC 6479,
// as WireGuard implements it). The zero value is an empty window, ready to
// use; it takes 1032 bytes.
//
// A receiver keeps one window per sender address, whatever the key id: a
// sender's numbers come from one Sequence for the life of its process, across
// key rolls, and the envelope tag binds them to the sender's address. A
// restarted sender starts above its old numbers (see Sequence), which moves
// the window forward; datagrams the old process still had in flight are then
// too old and dropped.
//
// Feed a window only the numbers of envelopes Opener.Open accepted with a
// key. An unauthenticated number is whatever anyone who can send from the
// sender's address says: one such datagram with a number near 2^64 would make
// every later number too old. Without keys, either keep no window (the
// numbers then only serve to drop duplicates, which are harmless) or drop
// numbers whose high 32 bits, the sender's start time in Unix seconds, lie in
// the future.
//
// A ReplayWindow is not safe for concurrent use: if datagrams from one sender
// can reach several receiving goroutines (a socket per sender port, say),
// guard its window with a mutex.
type ReplayWindow struct {
	last uint64 // the newest number accepted; 0 in the zero value
	ring [replayBlocks]uint64
}

// Check reports whether seq is new: not accepted before and no more than
// ReplayWindowSize below the newest number accepted. A new seq is recorded,
// so a second Check of it returns false. Any number is valid, 0 and
// math.MaxUint64 included; a number above the newest moves the window up to
// it.
//
// It allocates nothing. It costs a few instructions, plus clearing up to 128
// words when seq moves the window forward by many blocks.
func (w *ReplayWindow) Check(seq uint64) bool {
	block := seq >> replayBlockLog
	if seq > w.last {
		// Forward: clear the blocks between the newest number's block and
		// seq's, at most the whole ring, before they are reused.
		cur := w.last >> replayBlockLog
		n := min(block-cur, replayBlocks)
		for i := cur + 1; i <= cur+n; i++ {
			w.ring[i&replayBlockMask] = 0
		}
		w.last = seq
	} else if w.last-seq > ReplayWindowSize {
		return false
	}
	bit := uint64(1) << (seq & (replayBlockBits - 1))
	b := &w.ring[block&replayBlockMask]
	old := *b
	*b = old | bit
	return old&bit == 0
}
