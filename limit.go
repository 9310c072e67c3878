package pmtud

import (
	"hash/maphash"
	"net/netip"
	"sync/atomic"
	"time"
)

// limiter caps how many ICMPs a node relays per second, so that a storm of
// frag-needed messages (or a forger sending them) is not multiplied by P
// without bound. It is the generic cell rate algorithm: one atomic word,
// the theoretical arrival time of the next ICMP, shared by every preparer;
// a decision is a load and a compare-and-swap, takes no lock and allocates
// nothing. The burst is one second's worth: a node relays up to rate ICMPs
// at once after a quiet second, then rate per second.
type limiter struct {
	cellRate
	tat atomic.Int64 // nanoseconds since epoch
}

// cellRate is a budget's rate, rate ICMPs a second with a burst of one
// second's worth, in the units the cell rate algorithm works in.
type cellRate struct {
	interval int64 // nanoseconds per ICMP
	burst    int64 // tolerance: (rate-1) intervals
	epoch    time.Time
}

func newCellRate(rate int) cellRate {
	iv := max(int64(time.Second)/int64(rate), 1)
	return cellRate{interval: iv, burst: int64(rate-1) * iv, epoch: time.Now()}
}

// now returns the timestamp allow takes.
func (c *cellRate) now(t time.Time) int64 { return int64(t.Sub(c.epoch)) }

// newLimiter returns a limiter for rate ICMPs per second, or nil (no
// limit) when rate is 0.
func newLimiter(rate int) *limiter {
	if rate <= 0 {
		return nil
	}
	return &limiter{cellRate: newCellRate(rate)}
}

// allow reports whether one more ICMP may be relayed at now, and counts it
// if so.
func (l *limiter) allow(now int64) bool {
	for {
		tat := l.tat.Load()
		next := max(tat, now)
		if next-now > l.burst {
			return false
		}
		if l.tat.CompareAndSwap(tat, next+l.interval) {
			return true
		}
	}
}

// sourceBuckets is the width of each row of a sourceLimiter: two rows of
// 4,096 words, 64 KiB, whatever the number of sources.
const sourceBuckets = 4096

// sourceLimiter caps how many ICMPs each outer source address (a router)
// may have relayed per second, so that one source flooding distinct ICMPs
// cannot use up the node's whole budget. Its memory is fixed: an attacker
// who rotates source addresses does not grow it. Like a count-min sketch,
// each source hashes (with a per-process seed) to one bucket in each of
// two rows, each bucket a cell-rate timestamp shared by every source that
// lands there; an ICMP passes if the less loaded of its two buckets has
// room, and then uses room in both. Sharing only ever overestimates a
// source's rate, so a source is never held below its budget unless both of
// its buckets are shared with heavier sources. Burst: one second's worth.
// A decision hashes the address once and does two compare-and-swap loops;
// no lock, no allocation.
type sourceLimiter struct {
	cellRate
	seed maphash.Seed
	rows [2][sourceBuckets]atomic.Int64
}

// newSourceLimiter returns a limiter of rate ICMPs per second per source,
// or nil (no limit) when rate is 0.
func newSourceLimiter(rate int) *sourceLimiter {
	if rate <= 0 {
		return nil
	}
	return &sourceLimiter{cellRate: newCellRate(rate), seed: maphash.MakeSeed()}
}

// allow reports whether one more ICMP from src may be relayed at now (a
// now timestamp), and counts it if so.
func (l *sourceLimiter) allow(src netip.Addr, now int64) bool {
	a := src.As16()
	h := avalanche(maphash.Bytes(l.seed, a[:]))
	b0, b1 := &l.rows[0][h%sourceBuckets], &l.rows[1][(h>>32)%sourceBuckets]
	if min(max(b0.Load(), now), max(b1.Load(), now))-now > l.burst {
		return false
	}
	l.use(b0, now)
	l.use(b1, now)
	return true
}

// use takes one interval from bucket b at now.
func (l *sourceLimiter) use(b *atomic.Int64, now int64) {
	for {
		tat := b.Load()
		if b.CompareAndSwap(tat, max(tat, now)+l.interval) {
			return
		}
	}
}
