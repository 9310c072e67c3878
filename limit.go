package pmtud

import (
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
	interval int64        // nanoseconds per ICMP
	burst    int64        // tolerance: (rate-1) intervals
	tat      atomic.Int64 // nanoseconds since epoch
	epoch    time.Time
}

// newLimiter returns a limiter for rate ICMPs per second, or nil (no
// limit) when rate is 0.
func newLimiter(rate int) *limiter {
	if rate <= 0 {
		return nil
	}
	iv := int64(time.Second) / int64(rate)
	return &limiter{interval: max(iv, 1), burst: int64(rate-1) * max(iv, 1), epoch: time.Now()}
}

// now returns the timestamp allow takes.
func (l *limiter) now(t time.Time) int64 { return int64(t.Sub(l.epoch)) }

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
