package pmtud

import (
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
