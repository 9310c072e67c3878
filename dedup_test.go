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

// TestDedupKeyAddresses: the key tells source from destination and IPv4
// from IPv6 addresses, and it takes an IPv4 address and its IPv4-mapped
// form for the same (the parser never produces the latter).
func TestDedupKeyAddresses(t *testing.T) {
	d := newDedup(time.Second)
	msg := []byte{2, 0, 0, 0, 0, 0, 5, 120}
	v4a, v4b := netip.MustParseAddr("198.19.255.1"), netip.MustParseAddr("198.18.100.1")
	v6a, v6b := netip.MustParseAddr("2001:db8:ff::1"), netip.MustParseAddr("2001:db8:100::1")
	keys := map[uint64]string{}
	for _, c := range []struct {
		name     string
		src, dst netip.Addr
	}{
		{"v4", v4a, v4b}, {"v4 swapped", v4b, v4a},
		{"v6", v6a, v6b}, {"v6 swapped", v6b, v6a},
		{"v4 source, v6 destination", v4a, v6b},
	} {
		k := d.key(c.src, c.dst, msg)
		if other, ok := keys[k]; ok {
			t.Errorf("%s and %s share key %x", c.name, other, k)
		}
		keys[k] = c.name
		if d.key(c.src, c.dst, msg) != k {
			t.Errorf("%s: key not stable", c.name)
		}
	}
	mapped := func(a netip.Addr) netip.Addr { return netip.AddrFrom16(a.As16()) }
	if d.key(v4a, v4b, msg) != d.key(mapped(v4a), mapped(v4b), msg) {
		t.Error("an IPv4 pair and its IPv4-mapped form have different keys")
	}
}

// TestDedupLaterStamp: an entry stamped a little after the caller's now
// (another goroutine's batch) is recent, not 4.6 hours old.
func TestDedupLaterStamp(t *testing.T) {
	d := newDedup(time.Second)
	k := d.key(netip.MustParseAddr("198.19.255.1"), netip.MustParseAddr("198.18.100.1"), []byte{3, 4, 0, 0, 0, 0, 5, 120})
	d.seen(k, 5000)
	if !d.seen(k, 4998) || !d.contains(k, 4998) {
		t.Fatal("an entry from 2 ms in the caller's future was taken for an expired one")
	}
}

func TestDedupContainsDoesNotRecord(t *testing.T) {
	d := newDedup(time.Second)
	k := d.key(netip.MustParseAddr("198.19.255.1"), netip.MustParseAddr("198.18.100.1"), []byte{3, 4, 0, 0, 0, 0, 5, 120})
	if d.contains(k, 10) || d.contains(k, 10) {
		t.Fatal("contains found a key never recorded, or recorded it")
	}
	d.seen(k, 10)
	if !d.contains(k, 500) || d.contains(k, 1010) {
		t.Fatal("contains disagrees with the window")
	}
}
