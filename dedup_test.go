package pmtud

import (
	"net/netip"
	"testing"
	"time"
)

func TestDedup(t *testing.T) {
	d := newDedup(time.Second)
	src, dst := netip.MustParseAddr("198.19.255.1"), netip.MustParseAddr("198.18.100.1")
	k := d.key(src, dst, []byte{3, 4, 0, 0, 0, 0, 5, 120})
	other := d.key(src, dst, []byte{3, 4, 0, 0, 0, 0, 5, 121})
	for _, row := range []struct {
		key, now uint64
		want     bool
	}{
		{k, 10, false}, // first sight
		{k, 500, true}, // a copy within the window
		{other, 500, false},
		{k, 1009, true},  // still within 1000 ms of the first sight
		{k, 1010, false}, // the window has passed: relayed again
		{k, 1011, true},
	} {
		if got := d.seen(row.key, row.now); got != row.want {
			t.Errorf("seen(%x, %d) = %v, want %v", row.key, row.now, got, row.want)
		}
	}
	// Two keys of one bucket are both remembered.
	a := uint64(0x1234_5678_9abc_0000) &^ 1
	b := a | 1<<40 // same bucket, another tag
	d.seen(a, 2000)
	d.seen(b, 2000)
	if !d.seen(a, 2001) || !d.seen(b, 2001) {
		t.Error("a bucket forgot one of two keys")
	}
	if newDedup(0).seen(k, 1) || newDedup(0).seen(k, 1) {
		t.Error("a zero window must disable deduplication")
	}
}
