package nl

import (
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	c, err := Config{Group: 3}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Group: 3, CopyRange: 0xffff, QThreshold: 200, Timeout: 10 * time.Millisecond, BufSize: 131072, ReadBuffer: 8 << 20}
	if c != want {
		t.Errorf("defaults: got %+v, want %+v", c, want)
	}
	set := Config{Group: 1, CopyRange: 128, QThreshold: 1, Timeout: time.Second, BufSize: 8192, ReadBuffer: 1}
	if c, err := set.withDefaults(); err != nil || c != set {
		t.Errorf("set fields changed: got %+v, %v", c, err)
	}
	for _, bad := range []Config{{Timeout: -1}, {ReadBuffer: -1}} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

func TestTimeoutTicks(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want uint32
	}{
		{time.Nanosecond, 1},
		{10 * time.Millisecond, 1},
		{11 * time.Millisecond, 2},
		{time.Second, 100},
		{1 << 62, 1<<32 - 1},
	} {
		if got := (Config{Timeout: tt.d}).timeoutTicks(); got != tt.want {
			t.Errorf("timeout %v: %d ticks, want %d", tt.d, got, tt.want)
		}
	}
}
