package wire_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/wire"
)

// Relay keys: 1 the current, 2 the next, 3 one this test's openers do not
// hold; key1Other has key 1's id and another secret.
var (
	key1      = wire.Key{ID: 1, Secret: bytes.Repeat([]byte{0x11}, 32)}
	key2      = wire.Key{ID: 2, Secret: bytes.Repeat([]byte{0x22}, 32)}
	key3      = wire.Key{ID: 3, Secret: bytes.Repeat([]byte{0x33}, 16)}
	key1Other = wire.Key{ID: 1, Secret: bytes.Repeat([]byte{0x44}, 32)}
)

// Node addresses: nodeA sends, nodeB is another peer; nodeV6 an IPv6 node.
var (
	nodeA  = netip.MustParseAddr("198.18.0.2")
	nodeB  = netip.MustParseAddr("198.18.0.3")
	nodeV6 = netip.MustParseAddr("2001:db8::2")
)

// started is the sender's start time in the tests: its first sequence number
// is started's Unix seconds << 32.
var started = time.Unix(1_700_000_000, 0)

const firstSeq = uint64(1_700_000_000) << 32

// sent is the send time the tests seal with.
var sent = time.Unix(1_700_000_005, 123_456_789)

// newSealer is wire.NewSealer for version 2 and wire.NewSealerV1 for 1.
func newSealer(version int, key *wire.Key, seq *wire.Sequence, sender netip.Addr) (*wire.Sealer, error) {
	switch version {
	case 1:
		return wire.NewSealerV1(key, seq, sender)
	case 3:
		return wire.NewSealerPacked(key, seq, sender)
	}
	return wire.NewSealer(key, seq, sender)
}

func mustSealer(t testing.TB, key *wire.Key, seq *wire.Sequence, sender netip.Addr) *wire.Sealer {
	t.Helper()
	return mustSealerV(t, 2, key, seq, sender)
}

func mustSealerV(t testing.TB, version int, key *wire.Key, seq *wire.Sequence, sender netip.Addr) *wire.Sealer {
	t.Helper()
	s, err := newSealer(version, key, seq, sender)
	if err != nil {
		t.Fatalf("NewSealer: %v", err)
	}
	return s
}

func mustOpener(t testing.TB, keys ...wire.Key) *wire.Opener {
	t.Helper()
	o, err := wire.NewOpener(keys...)
	if err != nil {
		t.Fatalf("NewOpener: %v", err)
	}
	return o
}

// seal returns the datagram a fresh sender at nodeA (key nil:
// unauthenticated) sends first for packet.
func seal(t testing.TB, key *wire.Key, packet []byte) []byte {
	t.Helper()
	return sealFrom(t, key, nodeA, packet)
}

func sealFrom(t testing.TB, key *wire.Key, sender netip.Addr, packet []byte) []byte {
	t.Helper()
	return sealV(t, 2, key, sender, packet)
}

// sealV returns the datagram of the given version a fresh sender sends first
// for packet, at the time sent.
func sealV(t testing.TB, version int, key *wire.Key, sender netip.Addr, packet []byte) []byte {
	t.Helper()
	var hdr [wire.EnvelopeLen]byte
	n := mustSealerV(t, version, key, wire.NewSequence(started), sender).Seal(&hdr, packet, sent)
	return append(hdr[:n:n], packet...)
}

// refTag is the tag as the format defines it, computed with crypto/hmac
// directly: HMAC-SHA256(secret, header fields || sender || packet)[:16],
// the header fields being all of hdr but its last 16 bytes: header[0:24] in
// version 2, header[0:16] in version 1.
func refTag(secret, hdr []byte, sender netip.Addr, packet []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(hdr[:len(hdr)-16])
	a := sender.Unmap().As16()
	m.Write(a[:])
	m.Write(packet)
	return m.Sum(nil)[:16]
}

// TestSealOpenRoundTrip seals packets of several sizes in each mode, checks
// the header byte for byte against the format, and opens them.
func TestSealOpenRoundTrip(t *testing.T) {
	ok := typical()
	tests := []struct {
		name   string
		key    *wire.Key
		opener []wire.Key
		sender netip.Addr
		from   netip.Addr // the address the receiver sees
		packet []byte
	}{
		{name: "keyed", key: &key1, opener: []wire.Key{key1}, sender: nodeA, from: nodeA, packet: ok},
		{name: "keyed, opener holds two", key: &key1, opener: []wire.Key{key2, key1}, sender: nodeA, from: nodeA, packet: ok},
		{name: "keyed, the second key", key: &key2, opener: []wire.Key{key1, key2}, sender: nodeA, from: nodeA, packet: ok},
		{name: "keyed, 16-byte secret", key: &key3, opener: []wire.Key{key3}, sender: nodeA, from: nodeA, packet: ok},
		{name: "keyed, empty packet", key: &key1, opener: []wire.Key{key1}, sender: nodeA, from: nodeA, packet: []byte{}},
		{name: "keyed, 1 byte", key: &key1, opener: []wire.Key{key1}, sender: nodeA, from: nodeA, packet: []byte{0x45}},
		{name: "keyed, 65535 bytes", key: &key1, opener: []wire.Key{key1}, sender: nodeA, from: nodeA, packet: bytes.Repeat([]byte{0xa5}, 65535)},
		{name: "keyed, ipv6 sender", key: &key1, opener: []wire.Key{key1}, sender: nodeV6, from: nodeV6, packet: ok},
		{
			name: "keyed, seen v4-mapped on a dual-stack socket", key: &key1, opener: []wire.Key{key1},
			sender: nodeA, from: netip.AddrFrom16(nodeA.As16()), packet: ok,
		},
		{name: "unauthenticated", opener: nil, sender: nodeA, from: nodeA, packet: ok},
		{name: "unauthenticated, no sender address", opener: nil, from: nodeB, packet: ok},
		{name: "unauthenticated, empty packet", opener: nil, from: nodeA, packet: nil},
	}
	for _, tt := range tests {
		for _, version := range []int{2, 1} {
			t.Run(fmt.Sprintf("%s/v%d", tt.name, version), func(t *testing.T) {
				roundTrip(t, version, tt.key, tt.opener, tt.sender, tt.from, tt.packet)
			})
		}
	}
}

func roundTrip(t *testing.T, version int, key *wire.Key, opener []wire.Key, sender, from netip.Addr, orig []byte) {
	packet := bytes.Clone(orig)
	s := mustSealerV(t, version, key, wire.NewSequence(started), sender)
	o := mustOpener(t, opener...)
	hlen := wire.EnvelopeLen
	if version == 1 {
		hlen = wire.EnvelopeLenV1
	}
	if s.Len() != hlen {
		t.Fatalf("Len() = %d, want %d", s.Len(), hlen)
	}
	var id uint16
	if key != nil {
		id = key.ID
	}
	for i := range uint64(3) {
		var hdr [wire.EnvelopeLen]byte
		at := sent.Add(time.Duration(i) * time.Millisecond)
		if n := s.Seal(&hdr, packet, at); n != hlen {
			t.Fatalf("Seal returned %d, want %d", n, hlen)
		}
		if !bytes.Equal(packet, orig) {
			t.Fatal("Seal changed the packet")
		}
		want := make([]byte, hlen-16, hlen)
		copy(want, "PMTD\x00\x00")
		want[4] = byte(version)
		binary.BigEndian.PutUint16(want[6:], id)
		binary.BigEndian.PutUint64(want[8:], firstSeq+i)
		if version == 2 {
			binary.BigEndian.PutUint64(want[16:], uint64(at.UnixNano()))
		}
		if key != nil {
			want = append(want, refTag(key.Secret, append(bytes.Clone(want), make([]byte, 16)...), sender, packet)...)
		} else {
			want = append(want, make([]byte, 16)...)
		}
		if !bytes.Equal(hdr[:hlen], want) {
			t.Fatalf("datagram %d: header\n% x\nwant\n% x", i, hdr[:hlen], want)
		}

		d := append(hdr[:hlen:hlen], packet...)
		e, err := o.Open(d, from)
		if err != nil {
			t.Fatalf("datagram %d: Open: %v", i, err)
		}
		wantNano := int64(0)
		if version == 2 {
			wantNano = at.UnixNano()
		}
		if e.Version != byte(version) || e.KeyID != id || e.Seq != firstSeq+i || e.UnixNano != wantNano {
			t.Errorf("datagram %d: version %d key id %d seq %#x time %d, want %d %d %#x %d",
				i, e.Version, e.KeyID, e.Seq, e.UnixNano, version, id, firstSeq+i, wantNano)
		}
		if len(e.Packet) != len(packet) || cap(e.Packet) != len(packet) {
			t.Errorf("datagram %d: Packet len %d cap %d, want both %d", i, len(e.Packet), cap(e.Packet), len(packet))
		}
		if len(packet) > 0 && &e.Packet[0] != &d[hlen] {
			t.Errorf("datagram %d: Packet is not a view into the datagram", i)
		}
		if !bytes.Equal(e.Packet, packet) {
			t.Errorf("datagram %d: Packet differs from the packet sealed", i)
		}
	}
}

// TestSealersShareSequence: the Sealers of one sender, whichever key they
// hold, number from the same Sequence, so one ReplayWindow per sender
// accepts them all and a key roll does not reuse numbers.
func TestSealersShareSequence(t *testing.T) {
	seq := wire.NewSequence(started)
	sealers := []*wire.Sealer{
		mustSealer(t, &key1, seq, nodeA),
		mustSealer(t, &key1, seq, nodeA),
		mustSealer(t, &key2, seq, nodeA), // after a roll
	}
	o := mustOpener(t, key1, key2)
	var w wire.ReplayWindow
	pkt := typical()
	for i := range uint64(30) {
		var hdr [wire.EnvelopeLen]byte
		sealers[i%3].Seal(&hdr, pkt, sent)
		e, err := o.Open(append(hdr[:], pkt...), nodeA)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if e.Seq != firstSeq+i {
			t.Fatalf("datagram %d: seq %#x, want %#x", i, e.Seq, firstSeq+i)
		}
		if !w.Check(e.Seq) {
			t.Fatalf("datagram %d: replay window rejected seq %#x", i, e.Seq)
		}
	}
}

func TestSequence(t *testing.T) {
	q := wire.NewSequence(started)
	for i := range uint64(3) {
		if got := q.Next(); got != firstSeq+i {
			t.Errorf("Next #%d = %#x, want %#x", i, got, firstSeq+i)
		}
	}
	// A sender restarted a second later numbers above its old self, even
	// after sending 2^32-1 datagrams per second of its first life.
	old := wire.NewSequence(started.Add(-time.Second))
	for range 3 {
		old.Next()
	}
	if a, b := wire.NewSequence(started).Next(), old.Next(); a <= b {
		t.Errorf("restarted sender's first number %#x not above the old one's %#x", a, b)
	}
	if got := wire.NewSequence(started.Add(999 * time.Millisecond)).Next(); got != firstSeq {
		t.Errorf("sub-second start: first number %#x, want %#x", got, firstSeq)
	}
}

// TestSequenceConcurrent: numbers taken concurrently are all distinct (run
// with -race).
func TestSequenceConcurrent(t *testing.T) {
	const workers, each = 8, 1000
	q := wire.NewSequence(started)
	got := make([][]uint64, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range each {
				got[w] = append(got[w], q.Next())
			}
		})
	}
	wg.Wait()
	seen := make(map[uint64]bool)
	for _, g := range got {
		for _, n := range g {
			if seen[n] || n < firstSeq || n >= firstSeq+workers*each {
				t.Fatalf("number %#x repeated or out of range", n)
			}
			seen[n] = true
		}
	}
}

type openCase struct {
	name     string
	opener   []wire.Key
	from     netip.Addr
	datagram []byte
	err      error
}

// openCases covers every EnvelopeError and acceptance in both modes; the
// tests and the allocation test share it.
func openCases(t testing.TB) []openCase {
	pkt := typical()
	keyed := seal(t, &key1, pkt)
	unauth := seal(t, nil, pkt)
	keyedV1 := sealV(t, 1, &key1, nodeA, pkt)
	unauthV1 := sealV(t, 1, nil, nodeA, pkt)
	edit := func(d []byte, f func(d []byte)) []byte {
		d = bytes.Clone(d)
		f(d)
		return d
	}
	both := []wire.Key{key1, key2}
	return []openCase{
		{name: "keyed", opener: both, from: nodeA, datagram: keyed},
		{name: "unauthenticated", from: nodeA, datagram: unauth},
		{name: "header only", opener: both, from: nodeA, datagram: seal(t, &key1, nil)},
		{name: "version 1 keyed", opener: both, from: nodeA, datagram: keyedV1},
		{name: "version 1 unauthenticated", from: nodeA, datagram: unauthV1},
		{name: "version 1 header only", opener: both, from: nodeA, datagram: sealV(t, 1, &key1, nodeA, nil)},

		{name: "empty", opener: both, datagram: nil, err: wire.ErrEnvelopeShort},
		{name: "31 bytes", opener: both, from: nodeA, datagram: keyed[:31], err: wire.ErrEnvelopeShort},
		{name: "39 bytes", opener: both, from: nodeA, datagram: keyed[:39], err: wire.ErrEnvelopeShort},
		{name: "39 bytes unauthenticated", from: nodeA, datagram: unauth[:39], err: wire.ErrEnvelopeShort},
		{name: "version 1, 31 bytes", opener: both, from: nodeA, datagram: keyedV1[:31], err: wire.ErrEnvelopeShort},

		{name: "magic", opener: both, from: nodeA, datagram: edit(keyed, func(d []byte) { copy(d, "PMTU") }), err: wire.ErrEnvelopeMagic},
		{name: "an ip packet", from: nodeA, datagram: pkt, err: wire.ErrEnvelopeMagic},

		{name: "version 0", opener: both, from: nodeA, datagram: edit(keyed, func(d []byte) { d[4] = 0 }), err: wire.ErrEnvelopeVersion},
		{name: "version 4", from: nodeA, datagram: edit(unauth, func(d []byte) { d[4] = 4 }), err: wire.ErrEnvelopeVersion},
		{name: "version 2 claimed as 3", opener: both, from: nodeA, datagram: edit(keyed, func(d []byte) { d[4] = 3 }), err: wire.ErrEnvelopeTag},
		{name: "version 1 flags", opener: both, from: nodeA, datagram: edit(keyedV1, func(d []byte) { d[5] = 1 }), err: wire.ErrEnvelopeVersion},
		{name: "flags", opener: both, from: nodeA, datagram: edit(keyed, func(d []byte) { d[5] = 1 }), err: wire.ErrEnvelopeVersion},
		{name: "flags unauthenticated", from: nodeA, datagram: edit(unauth, func(d []byte) { d[5] = 0x80 }), err: wire.ErrEnvelopeVersion},

		{name: "key not held", opener: both, from: nodeA, datagram: seal(t, &key3, pkt), err: wire.ErrEnvelopeKey},
		{name: "keyed at an opener without keys", from: nodeA, datagram: keyed, err: wire.ErrEnvelopeKey},

		{name: "tag", opener: both, from: nodeA, datagram: edit(keyed, func(d []byte) { d[39] ^= 1 }), err: wire.ErrEnvelopeTag},
		{name: "send time", opener: both, from: nodeA, datagram: edit(keyed, func(d []byte) { d[23]++ }), err: wire.ErrEnvelopeTag},
		{name: "version 1 claimed as 2", opener: both, from: nodeA, datagram: edit(keyedV1, func(d []byte) { d[4] = 2 }), err: wire.ErrEnvelopeTag},
		{name: "version 2 claimed as 1", opener: both, from: nodeA, datagram: edit(keyed, func(d []byte) { d[4] = 1 }), err: wire.ErrEnvelopeTag},
		{name: "version 1 tag", opener: both, from: nodeA, datagram: edit(keyedV1, func(d []byte) { d[31] ^= 1 }), err: wire.ErrEnvelopeTag},
		{name: "packet", opener: both, from: nodeA, datagram: edit(keyed, func(d []byte) { d[100] ^= 1 }), err: wire.ErrEnvelopeTag},
		{name: "sequence", opener: both, from: nodeA, datagram: edit(keyed, func(d []byte) { d[15]++ }), err: wire.ErrEnvelopeTag},
		{name: "another secret, same id", opener: []wire.Key{key1Other}, from: nodeA, datagram: keyed, err: wire.ErrEnvelopeTag},
		{name: "replayed from another sender's address", opener: both, from: nodeB, datagram: keyed, err: wire.ErrEnvelopeTag},
		{name: "truncated", opener: both, from: nodeA, datagram: keyed[:len(keyed)-1], err: wire.ErrEnvelopeTag},
		{name: "extended", opener: both, from: nodeA, datagram: append(bytes.Clone(keyed), 0), err: wire.ErrEnvelopeTag},
		{name: "unauthenticated, tag not zero", from: nodeA, datagram: edit(unauth, func(d []byte) { d[24] = 1 }), err: wire.ErrEnvelopeTag},
		{name: "unauthenticated, last tag byte", from: nodeA, datagram: edit(unauth, func(d []byte) { d[39] = 0x80 }), err: wire.ErrEnvelopeTag},
		{name: "version 1 unauthenticated, tag not zero", from: nodeA, datagram: edit(unauthV1, func(d []byte) { d[16] = 1 }), err: wire.ErrEnvelopeTag},

		{name: "unauthenticated at a keyed opener", opener: both, from: nodeA, datagram: unauth, err: wire.ErrEnvelopeUnauthenticated},
		{
			name: "key id zeroed", opener: both, from: nodeA,
			datagram: edit(keyed, func(d []byte) { d[7] = 0 }), err: wire.ErrEnvelopeUnauthenticated,
		},
	}
}

func TestOpen(t *testing.T) {
	for _, tt := range openCases(t) {
		t.Run(tt.name, func(t *testing.T) {
			e, err := mustOpener(t, tt.opener...).Open(tt.datagram, tt.from)
			if err != tt.err {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err != nil {
				if e.KeyID != 0 || e.Seq != 0 || e.Packet != nil {
					t.Errorf("rejected datagram returned non-zero %+v", e)
				}
				return
			}
			hlen := wire.EnvelopeLen
			if tt.datagram[4] == 1 {
				hlen = wire.EnvelopeLenV1
			}
			if !bytes.Equal(e.Packet, tt.datagram[hlen:]) {
				t.Errorf("Packet is not the datagram after the header")
			}
		})
	}
}

// TestOpenCoversEveryError keeps openCases honest: every EnvelopeError is
// produced by at least one case, and so is covered by the allocation test.
func TestOpenCoversEveryError(t *testing.T) {
	seen := make(map[error]bool)
	for _, tt := range openCases(t) {
		seen[tt.err] = true
	}
	if !seen[nil] {
		t.Error("no accepted datagram")
	}
	for e := wire.EnvelopeError(1); e < wire.EnvelopeErrorCount; e++ {
		if !seen[e] {
			t.Errorf("no case for %v", e)
		}
	}
}

// TestOpenRejectsTampering changes each byte of a sealed datagram in turn, in
// several ways, and expects the error the field that byte belongs to calls
// for: bad_magic, bad_version (version and flags), a key id error, and
// bad_tag for everything else, the packet included.
func TestOpenRejectsTampering(t *testing.T) {
	for _, version := range []int{2, 1} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) { rejectsTampering(t, version) })
	}
}

func rejectsTampering(t *testing.T, version int) {
	pkt := typical()
	d := sealV(t, version, &key1, nodeA, pkt)
	hlen := wire.EnvelopeLen
	if version == 1 {
		hlen = wire.EnvelopeLenV1
	}
	o := mustOpener(t, key1, key2)
	for i := range d {
		for _, x := range []byte{0x01, 0x02, 0x80, 0xff} {
			c := bytes.Clone(d)
			c[i] ^= x
			var want error
			switch {
			case i < 4:
				want = wire.ErrEnvelopeMagic
			case i == 4 && (c[4] == 3 || c[4] == 2) && len(c) >= wire.EnvelopeLen:
				want = wire.ErrEnvelopeTag // another version of the same length: the tag covers the byte
			case i < 6:
				want = wire.ErrEnvelopeVersion
			case i < 8:
				switch binary.BigEndian.Uint16(c[6:8]) {
				case 0:
					want = wire.ErrEnvelopeUnauthenticated
				case key1.ID, key2.ID:
					want = wire.ErrEnvelopeTag // another key held: its tag fails
				default:
					want = wire.ErrEnvelopeKey
				}
			default:
				want = wire.ErrEnvelopeTag
			}
			if _, err := o.Open(c, nodeA); err != want {
				t.Fatalf("byte %d ^ %#02x: err = %v, want %v", i, x, err, want)
			}
		}
	}
	// Unauthenticated, only the header is protected, by its fixed values:
	// the packet is anyone's to change.
	u := sealV(t, version, nil, nodeA, pkt)
	for i := range u {
		c := bytes.Clone(u)
		c[i] ^= 0x01
		_, err := mustOpener(t).Open(c, nodeA)
		if i == 4 && c[4] == 3 && err == nil {
			continue // version 2 read as 3: nothing authenticates an unkeyed header
		}
		switch {
		case i < 4 && err != wire.ErrEnvelopeMagic,
			i >= 4 && i < 6 && err != wire.ErrEnvelopeVersion,
			i >= 6 && i < 8 && err != wire.ErrEnvelopeKey,
			i >= 8 && i < hlen-16 && err != nil,
			i >= hlen-16 && i < hlen && err != wire.ErrEnvelopeTag,
			i >= hlen && err != nil:
			t.Fatalf("unauthenticated, byte %d changed: err = %v", i, err)
		}
	}
}

// TestKeyRotation rolls key 1 to key 2: during the roll an opener holding
// both accepts either and nothing else; after it, key 1 is refused.
func TestKeyRotation(t *testing.T) {
	pkt := typical()
	d1, d2, d3 := seal(t, &key1, pkt), seal(t, &key2, pkt), seal(t, &key3, pkt)
	steps := []struct {
		name       string
		keys       []wire.Key
		e1, e2, e3 error
	}{
		{"before", []wire.Key{key1}, nil, wire.ErrEnvelopeKey, wire.ErrEnvelopeKey},
		{"during, old first", []wire.Key{key1, key2}, nil, nil, wire.ErrEnvelopeKey},
		{"during, new first", []wire.Key{key2, key1}, nil, nil, wire.ErrEnvelopeKey},
		{"after", []wire.Key{key2}, wire.ErrEnvelopeKey, nil, wire.ErrEnvelopeKey},
	}
	for _, st := range steps {
		o := mustOpener(t, st.keys...)
		for i, c := range []struct {
			d    []byte
			want error
		}{{d1, st.e1}, {d2, st.e2}, {d3, st.e3}} {
			if _, err := o.Open(c.d, nodeA); err != c.want {
				t.Errorf("%s: key %d: err = %v, want %v", st.name, i+1, err, c.want)
			}
		}
	}
}

func TestNewSealerRejects(t *testing.T) {
	seq := wire.NewSequence(started)
	tests := []struct {
		name   string
		key    *wire.Key
		seq    *wire.Sequence
		sender netip.Addr
	}{
		{"secret of 15 bytes", &wire.Key{ID: 1, Secret: make([]byte, 15)}, seq, nodeA},
		{"no secret", &wire.Key{ID: 1}, seq, nodeA},
		{"key id 0", &wire.Key{ID: 0, Secret: key1.Secret}, seq, nodeA},
		{"no sender address", &key1, seq, netip.Addr{}},
		{"no sequence", &key1, nil, nodeA},
		{"no sequence, unauthenticated", nil, nil, nodeA},
	}
	for _, tt := range tests {
		if s, err := wire.NewSealer(tt.key, tt.seq, tt.sender); err == nil || s != nil {
			t.Errorf("%s: NewSealer = %v, %v; want an error", tt.name, s, err)
		}
	}
	if _, err := wire.NewSealer(&wire.Key{ID: 65535, Secret: make([]byte, 16)}, seq, nodeA); err != nil {
		t.Errorf("16-byte secret, id 65535: %v", err)
	}
}

func TestNewOpenerRejects(t *testing.T) {
	tests := []struct {
		name string
		keys []wire.Key
	}{
		{"secret of 15 bytes", []wire.Key{{ID: 1, Secret: make([]byte, 15)}}},
		{"second secret of 15 bytes", []wire.Key{key1, {ID: 2, Secret: make([]byte, 15)}}},
		{"key id 0", []wire.Key{{ID: 0, Secret: key1.Secret}}},
		{"same id twice", []wire.Key{key1, key1Other}},
		{"three keys", []wire.Key{key1, key2, key3}},
	}
	for _, tt := range tests {
		if o, err := wire.NewOpener(tt.keys...); err == nil || o != nil {
			t.Errorf("%s: NewOpener = %v, %v; want an error", tt.name, o, err)
		}
	}
}

// TestSealerKeepsNoSecret: changing the caller's secret after NewSealer and
// NewOpener changes nothing.
func TestSealerKeepsNoSecret(t *testing.T) {
	k := wire.Key{ID: 1, Secret: bytes.Clone(key1.Secret)}
	s := mustSealer(t, &k, wire.NewSequence(started), nodeA)
	o := mustOpener(t, k)
	clear(k.Secret)
	var hdr [wire.EnvelopeLen]byte
	pkt := typical()
	s.Seal(&hdr, pkt, sent)
	if !bytes.Equal(hdr[24:], refTag(key1.Secret, hdr[:], nodeA, pkt)) {
		t.Error("tag not made with the secret given to NewSealer")
	}
	if _, err := o.Open(append(hdr[:], pkt...), nodeA); err != nil {
		t.Errorf("Open: %v", err)
	}
}

func TestEnvelopeAllocs(t *testing.T) {
	pkt := typical()
	var hdr [wire.EnvelopeLen]byte
	for _, key := range []*wire.Key{&key1, nil} {
		s := mustSealer(t, key, wire.NewSequence(started), nodeA)
		if n := testing.AllocsPerRun(100, func() { s.Seal(&hdr, pkt, sent) }); n != 0 {
			t.Errorf("Seal (key %v): %v allocations per call, want 0", key != nil, n)
		}
	}
	for _, tt := range openCases(t) {
		o := mustOpener(t, tt.opener...)
		var err error
		n := testing.AllocsPerRun(100, func() { _, err = o.Open(tt.datagram, tt.from) })
		if err != tt.err {
			t.Fatalf("%s: err = %v, want %v", tt.name, err, tt.err)
		}
		if n != 0 {
			t.Errorf("Open, %s: %v allocations per call, want 0", tt.name, n)
		}
	}
}

func TestEnvelopeErrorLabels(t *testing.T) {
	label := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	seen := make(map[string]bool)
	for e := wire.EnvelopeError(1); e < wire.EnvelopeErrorCount; e++ {
		s := e.String()
		if !label.MatchString(s) {
			t.Errorf("EnvelopeError(%d).String() = %q: not a metric label", e, s)
		}
		if seen[s] {
			t.Errorf("label %q used twice", s)
		}
		seen[s] = true
		if e.Error() != s {
			t.Errorf("EnvelopeError(%d): Error() = %q, String() = %q", e, e.Error(), s)
		}
		var target wire.EnvelopeError
		if !errors.As(error(e), &target) || target != e {
			t.Errorf("errors.As(%v) failed", e)
		}
	}
	want := map[wire.EnvelopeError]string{
		wire.ErrEnvelopeShort:           "short",
		wire.ErrEnvelopeMagic:           "bad_magic",
		wire.ErrEnvelopeVersion:         "bad_version",
		wire.ErrEnvelopeKey:             "unknown_key",
		wire.ErrEnvelopeTag:             "bad_tag",
		wire.ErrEnvelopeUnauthenticated: "unauthenticated",
	}
	for e, s := range want {
		if e.String() != s {
			t.Errorf("%d = %q, want %q", e, e.String(), s)
		}
	}
	for _, e := range []wire.EnvelopeError{0, wire.EnvelopeErrorCount, 255} {
		if s := e.String(); label.MatchString(s) || seen[s] {
			t.Errorf("out-of-range EnvelopeError(%d).String() = %q looks like a label", e, s)
		}
	}
}

// TestPacked: a version 3 body of several packets splits into them again,
// sealed and opened like version 2; malformed bodies stop the split.
func TestPacked(t *testing.T) {
	a, b := typical(), []byte{0x45, 1, 2, 3}
	body := wire.AppendPacked(wire.AppendPacked(nil, a), b)
	s := mustSealerV(t, 3, &key1, wire.NewSequence(started), nodeA)
	var hdr [wire.EnvelopeLen]byte
	n := s.Seal(&hdr, body, sent)
	e, err := mustOpener(t, key1).Open(append(hdr[:n:n], body...), nodeA)
	if err != nil || e.Version != 3 || e.UnixNano != sent.UnixNano() {
		t.Fatalf("Open = %+v, %v", e, err)
	}
	var got [][]byte
	for rest := e.Packet; ; {
		pkt, r, ok := wire.NextPacked(rest)
		if !ok {
			if len(rest) != 0 {
				t.Fatalf("%d bytes left over", len(rest))
			}
			break
		}
		if cap(pkt) != len(pkt) {
			t.Error("a packed packet's capacity runs past it")
		}
		got, rest = append(got, pkt), r
	}
	if len(got) != 2 || !bytes.Equal(got[0], a) || !bytes.Equal(got[1], b) {
		t.Fatalf("split %d packets", len(got))
	}
	for _, bad := range [][]byte{{0}, {0, 0}, {0, 5, 1, 2}, {0xff, 0xff}} {
		if _, _, ok := wire.NextPacked(bad); ok {
			t.Errorf("NextPacked(%x) accepted", bad)
		}
	}
}
