package pmtud

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"sync/atomic"
	"time"
)

// dedup remembers the ICMPs this node relayed or injected during the last
// window, so that none is relayed twice. It is what makes the udp relay
// loop-free: a packet injected through TUN whose destination is not local
// (a node's own address, a pod on another node) is forwarded by the kernel
// and arrives at another node on its cluster interface, with the router's
// source address and not on a TUN device. Only its bytes say it is a copy.
//
// The table is a fixed array of atomic slots, shared by every worker and
// the receiver: a lookup hashes the ICMP once, loads and maybe stores one
// word, takes no lock and allocates nothing. A slot holds the top 40 bits
// of the hash and a 24-bit millisecond timestamp (it wraps every 4.6 hours;
// an entry more than 2.3 hours old aliasing a new one costs one missed
// copy). Slots pair into buckets of two; a third ICMP in a full bucket
// evicts the older entry: the table may forget, it never drops a first
// sight, except for a 2^-40 chance of a tag collision.
type dedup struct {
	seed   maphash.Seed
	slots  []atomic.Uint64
	mask   uint64
	window uint64 // milliseconds; 0 disables
	epoch  time.Time
}

const (
	dedupSlots   = 1 << 14 // 128 KiB: a second of a 16k ICMP/s storm
	dedupTimeBit = 24
	dedupTimeMax = 1<<dedupTimeBit - 1
)

func newDedup(window time.Duration) *dedup {
	return &dedup{
		seed:   maphash.MakeSeed(),
		slots:  make([]atomic.Uint64, dedupSlots),
		mask:   dedupSlots - 1,
		window: uint64(window.Milliseconds()),
		epoch:  time.Now(),
	}
}

// key hashes what identifies an ICMP wherever it travels: the router's
// address, the destination and the ICMP message. The outer TTL and checksum
// change when a copy is forwarded; these do not.
func (d *dedup) key(src, dst netip.Addr, icmp []byte) uint64 {
	// As16 covers both families (an IPv4 address as IPv4-mapped). Each
	// address word is folded in after the seeded hash of the message, with
	// an avalanche, so pairs of addresses that share a key cannot be found
	// without the seed.
	s, t := src.As16(), dst.As16()
	h := maphash.Bytes(d.seed, icmp)
	h = avalanche(h ^ binary.LittleEndian.Uint64(s[:8]))
	h = avalanche(h ^ binary.LittleEndian.Uint64(s[8:]))
	h = avalanche(h ^ binary.LittleEndian.Uint64(t[:8]))
	return avalanche(h ^ binary.LittleEndian.Uint64(t[8:]))
}

// avalanche is MurmurHash3's 64-bit finalizer: every input bit flips each
// output bit with probability about 1/2, so slot index and tag use
// independent bits.
func avalanche(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// now returns the timestamp seen takes, in milliseconds.
func (d *dedup) now(t time.Time) uint64 { return uint64(t.Sub(d.epoch).Milliseconds()) }

// seen reports whether key was recorded within the window before now, and
// records it at now. A key may sit in either slot of its two-slot bucket; a
// new one replaces the older entry, so only a third key in the same bucket
// within a window can make the table forget one.
func (d *dedup) seen(key, now uint64) bool {
	if d.window == 0 {
		return false
	}
	i := key & d.mask &^ 1
	a, b := &d.slots[i], &d.slots[i+1]
	va, vb := a.Load(), b.Load()
	if d.holds(va, key, now) || d.holds(vb, key, now) {
		return true
	}
	v := key&^dedupTimeMax | now&dedupTimeMax
	if age(va, now) >= age(vb, now) {
		a.Store(v)
	} else {
		b.Store(v)
	}
	return false
}

// contains reports whether key was recorded within the window before now,
// without recording it.
func (d *dedup) contains(key, now uint64) bool {
	if d.window == 0 {
		return false
	}
	i := key & d.mask &^ 1
	return d.holds(d.slots[i].Load(), key, now) || d.holds(d.slots[i+1].Load(), key, now)
}

// holds reports whether slot value v records key within the window before
// now.
func (d *dedup) holds(v, key, now uint64) bool {
	return v&^dedupTimeMax == key&^dedupTimeMax && age(v, now) < d.window
}

// age returns how many milliseconds before now slot value v was stored.
// Workers and the receiver each stamp a whole batch with one time, so an
// entry may carry a slightly later time than the caller's now: an age that
// wrapped (more than half the 24-bit range) is such an entry, and 0.
func age(v, now uint64) uint64 {
	d := (now - v) & dedupTimeMax
	if d > dedupTimeMax/2 {
		return 0
	}
	return d
}
