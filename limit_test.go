package pmtud

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	if newLimiter(0) != nil {
		t.Fatal("rate 0 must mean no limiter")
	}
	l := newLimiter(10) // 100 ms per ICMP, burst 10
	ms := func(n int64) int64 { return n * int64(time.Millisecond) }
	for _, step := range []struct {
		now   int64
		tries int
		want  int // allowed
	}{
		{ms(0), 15, 10},    // the burst
		{ms(50), 5, 0},     // nothing earned yet
		{ms(100), 5, 1},    // one interval: one more
		{ms(350), 5, 2},    // 250 ms more: two
		{ms(5000), 20, 10}, // a quiet while: the burst again, no more
		{ms(5000), 1, 0},
	} {
		got := 0
		for range step.tries {
			if l.allow(step.now) {
				got++
			}
		}
		if got != step.want {
			t.Errorf("at %v: %d of %d allowed, want %d", time.Duration(step.now), got, step.tries, step.want)
		}
	}
}

// TestLimiterShared: preparers on several goroutines share one budget.
func TestLimiterShared(t *testing.T) {
	l := newLimiter(1000)
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for range 1000 {
				if l.allow(0) {
					n++
				}
			}
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	if total != 1000 {
		t.Fatalf("%d allowed at one instant, want the burst of 1000", total)
	}
}

// TestSourceLimiter: each source gets its own budget (burst one second's
// worth, then the rate), a flooding source does not use up another's, and
// a million rotating sources leave the table's size as it was.
func TestSourceLimiter(t *testing.T) {
	if newSourceLimiter(0) != nil {
		t.Fatal("rate 0 must mean no limiter")
	}
	l := newSourceLimiter(10) // 100 ms per ICMP, burst 10
	ms := func(n int64) int64 { return n * int64(time.Millisecond) }
	flood, quiet := netip.MustParseAddr("198.19.255.1"), netip.MustParseAddr("2001:db8::1")
	for _, step := range []struct {
		src   netip.Addr
		now   int64
		tries int
		want  int
	}{
		{flood, ms(0), 1000, 10}, // the burst, then nothing
		{quiet, ms(0), 5, 5},     // another source: its own budget
		{flood, ms(50), 5, 0},
		{flood, ms(100), 5, 1},
		{quiet, ms(100), 10, 6}, // the rest of its burst, and one earned
		{flood, ms(5000), 20, 10},
	} {
		got := 0
		for range step.tries {
			if l.allow(step.src, step.now) {
				got++
			}
		}
		if got != step.want {
			t.Fatalf("%v at %d ms: %d of %d allowed, want %d", step.src, step.now/int64(time.Millisecond), got, step.tries, step.want)
		}
	}
	// Rotating sources: each new one passes (fresh buckets or shared ones
	// with room), and the table does not grow: it is a fixed array.
	l = newSourceLimiter(1000)
	passed := 0
	for i := range 1 << 20 {
		if l.allow(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), ms(int64(i)/1000)) {
			passed++
		}
	}
	if passed == 0 {
		t.Fatal("no rotating source passed")
	}
	if n := testing.AllocsPerRun(100, func() { l.allow(flood, ms(1)) }); n != 0 {
		t.Fatalf("allow allocates %.1f times", n)
	}
}
