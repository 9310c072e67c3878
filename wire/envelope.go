package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"
)

// EnvelopeLen is the length of the header that precedes the router's packet
// in a udp relay datagram of version 2, the version a Sealer writes unless
// made with NewSealerV1: datagram = header || packet, the packet exactly as
// NFLOG delivered it. The header, every field big-endian:
//
//	offset size
//	 0      4   magic "PMTD"
//	 4      1   version, 2
//	 5      1   flags, 0: reserved. Receivers reject other values, so every
//	            datagram they accept is exactly what a Sealer makes.
//	 6      2   key id: 1..65535 names the Key the tag is made with; 0 means
//	            unauthenticated, and the tag is all zero
//	 8      8   sequence number, strictly increasing per sender (see Sequence)
//	16      8   send time: the sender's clock when it sealed the datagram, in
//	            nanoseconds since the Unix epoch
//	24     16   tag: the first 16 bytes of
//	            HMAC-SHA256(secret, header[0:24] || sender || packet)
//
// Version 1 (EnvelopeLenV1, 32 bytes) is the same without the send time: the
// tag is at offset 16 and covers header[0:16]. The send time lets a receiver
// refuse datagrams sealed before it started, which a sequence number cannot
// prove: a restarted receiver's replay windows start empty.
//
// sender is the sender's IP address as 16 bytes (an IPv4 address in its
// IPv4-mapped form ::ffff:a.b.c.d): the source address its peers see on the
// datagram. It is not sent, the receiver supplies it. Binding it into the tag
// keeps one sender's datagrams from being replayed under another's address:
// the replay window is kept per sender, and without the binding a captured
// datagram from a sender that started later would pass the tag under an
// earlier starter's address and advance that sender's window past all its
// numbers, silencing it until it restarts.
//
// The tag is HMAC-SHA-256-128, as IPsec uses it (RFC 4868): 128 bits leave a
// forger one chance in 2^128 per try.
const EnvelopeLen = 40

// EnvelopeLenV1 is the length of a version 1 header: EnvelopeLen without the
// send time.
const EnvelopeLenV1 = 32

// MinSecretLen is the shortest Key.Secret NewSealer and NewOpener accept: 128
// bits. 32 random bytes is the natural size; HMAC-SHA256 hashes secrets
// longer than 64 bytes down to 32.
const MinSecretLen = 16

const (
	envelopeMagic = 0x504d5444 // "PMTD"
	tagLen        = 16
	// macInputLen is what the tag covers before the packet, at most:
	// header[0:24] || sender for version 2; version 1 covers 8 bytes less.
	macInputLen = EnvelopeLen - tagLen + 16
)

// EnvelopeError is why Opener.Open rejected a datagram. Its String (and
// Error) is a metric label such as "bad_tag". It is a separate enum from
// Error, whose values index the parser's drop metrics. Values are small
// integers, so returning one as an error allocates nothing.
type EnvelopeError uint8

const (
	// ErrEnvelopeShort: the datagram is shorter than EnvelopeLen.
	ErrEnvelopeShort EnvelopeError = iota + 1
	// ErrEnvelopeMagic: the datagram does not start with "PMTD": not go-pmtud
	// traffic.
	ErrEnvelopeMagic
	// ErrEnvelopeVersion: a version other than 1 or 2, or flags other than
	// 0: a header this version does not define, from a newer (or broken)
	// sender. Receivers also count a version they refuse by choice under
	// its label (the daemon's version 1 without --relay-accept-v1).
	ErrEnvelopeVersion
	// ErrEnvelopeKey: a key id the Opener does not hold, including any id
	// other than 0 at an Opener without keys. A sender on another key, or a
	// roll that has not reached every node yet.
	ErrEnvelopeKey
	// ErrEnvelopeTag: the tag does not verify (or, for key id 0, is not all
	// zero): the datagram was changed, forged, made with another secret of
	// the same id, or sent from another address than its sender's.
	ErrEnvelopeTag
	// ErrEnvelopeUnauthenticated: key id 0 at an Opener that has keys. A
	// node without the key file, or a downgrade attempt.
	ErrEnvelopeUnauthenticated
	// EnvelopeErrorCount is one more than the last EnvelopeError, for
	// iterating over all of them: for e := EnvelopeError(1); e <
	// EnvelopeErrorCount; e++.
	EnvelopeErrorCount
)

var envelopeErrorLabels = [EnvelopeErrorCount]string{
	ErrEnvelopeShort:           "short",
	ErrEnvelopeMagic:           "bad_magic",
	ErrEnvelopeVersion:         "bad_version",
	ErrEnvelopeKey:             "unknown_key",
	ErrEnvelopeTag:             "bad_tag",
	ErrEnvelopeUnauthenticated: "unauthenticated",
}

// String returns e's metric label, such as "bad_tag". It allocates only for
// values outside the enum.
func (e EnvelopeError) String() string {
	if e > 0 && e < EnvelopeErrorCount {
		return envelopeErrorLabels[e]
	}
	return "wire.EnvelopeError(" + strconv.Itoa(int(e)) + ")"
}

// Error returns the same text as String.
func (e EnvelopeError) Error() string { return e.String() }

// Key is a relay key: a secret every node shares and the id that names it in
// envelope headers, so that two keys can be accepted while a new one rolls
// out. ID is 1..65535 (0 means no key); Secret has at least MinSecretLen
// bytes. NewSealer and NewOpener keep neither the Key nor its Secret slice,
// only the HMAC state derived from it.
type Key struct {
	ID     uint16
	Secret []byte
}

func (k *Key) validate() error {
	if k.ID == 0 {
		return errors.New("wire: key id 0 is reserved for unauthenticated envelopes")
	}
	if len(k.Secret) < MinSecretLen {
		return fmt.Errorf("wire: key %d: secret is %d bytes, want at least %d", k.ID, len(k.Secret), MinSecretLen)
	}
	return nil
}

// newMAC returns the HMAC-SHA256 state for k, reset once so that it has
// saved its keyed state: every later Reset restores it without allocating.
func newMAC(k *Key) hash.Hash {
	m := hmac.New(sha256.New, k.Secret)
	m.Reset()
	return m
}

// Sequence hands out one sender's sequence numbers, strictly increasing. The
// first is start's Unix time in seconds times 2^32, so a restarted sender's
// numbers lie above everything it sent before, as long as it restarts in a
// later second than it started (the high half is 32 bits: it wraps in 2106).
// The count may carry into the high half; that stays below a later restart's
// first number unless the sender averaged 2^32 datagrams per second of its
// life.
//
// One Sequence serves the whole process: every Sealer, every worker and every
// key shares it (make the Sealers for a new key with the same Sequence), so
// that a receiver can keep a single ReplayWindow per sender. Workers that
// take numbers concurrently send them slightly out of order; the window
// absorbs up to ReplayWindowSize numbers of that.
//
// It is safe for concurrent use; Next costs one atomic add.
type Sequence struct {
	next atomic.Uint64
}

// NewSequence returns a Sequence whose first number is start's Unix seconds
// (normally time.Now() at process start) in the high 32 bits, zero in the low
// 32.
func NewSequence(start time.Time) *Sequence {
	q := new(Sequence)
	q.next.Store(uint64(uint32(start.Unix())) << 32)
	return q
}

// Next returns the next sequence number. It is safe for concurrent use and
// costs one atomic add (a contended cache line when workers share it).
func (q *Sequence) Next() uint64 { return q.next.Add(1) - 1 }

// Sealer seals envelope headers for one sender: it writes the header, taking
// the next number from its Sequence, and the tag over the header, the sender's
// address and the packet. The packet is only read, never copied: the caller
// sends header and packet as two iovecs, and one sealed header serves every
// peer.
//
// A Sealer is not safe for concurrent use (it holds an HMAC state): give each
// worker its own, all made with the same Sequence.
type Sealer struct {
	seq  *Sequence
	mac  hash.Hash // nil: unauthenticated
	hlen int       // EnvelopeLen, or EnvelopeLenV1
	// in is the tagged header fields || sender, built here rather than in
	// the caller's array so that the caller's header does not escape
	// through the hash interface; only the sequence number and the send
	// time change between calls.
	in  [macInputLen]byte
	sum [sha256.Size]byte
}

// NewSealer returns a Sealer of version 2 envelopes that numbers them from
// seq and tags them with key, on behalf of sender, the address the peers will
// see the datagrams come from (the address the relay socket is bound to).
// With a nil key it seals unauthenticated envelopes: key id 0, an all-zero
// tag, and sender is not used.
//
// It returns an error if key has id 0 or a secret shorter than MinSecretLen,
// if sender is not a valid address while key is not nil, or if seq is nil.
func NewSealer(key *Key, seq *Sequence, sender netip.Addr) (*Sealer, error) {
	return newSealer(2, key, seq, sender)
}

// NewSealerPacked is NewSealer for version 3 envelopes: the version 2
// header before a pack of packets (see AppendPacked) instead of one.
func NewSealerPacked(key *Key, seq *Sequence, sender netip.Addr) (*Sealer, error) {
	return newSealer(3, key, seq, sender)
}

// AppendPacked appends pkt to a version 3 envelope's body: its length as 2
// bytes, big-endian, then its bytes. A packet of more than 65,535 bytes is
// not a frag-needed: it panics.
func AppendPacked(body, pkt []byte) []byte {
	if len(pkt) > 0xffff {
		panic("wire: AppendPacked: packet longer than 65535 bytes")
	}
	body = binary.BigEndian.AppendUint16(body, uint16(len(pkt)))
	return append(body, pkt...)
}

// NextPacked splits the first packet off a version 3 envelope's body: pkt
// and what follows it. ok is false when body is empty or malformed (a
// length that runs past its end, or a zero length): the caller stops
// there. It allocates nothing; pkt's capacity ends with it.
func NextPacked(body []byte) (pkt, rest []byte, ok bool) {
	if len(body) < 2 {
		return nil, nil, false
	}
	n := int(binary.BigEndian.Uint16(body))
	if n == 0 || 2+n > len(body) {
		return nil, nil, false
	}
	return body[2 : 2+n : 2+n], body[2+n:], true
}

// NewSealerV1 is NewSealer for version 1 envelopes, which carry no send time:
// for a rolling upgrade from a release that knows only version 1.
func NewSealerV1(key *Key, seq *Sequence, sender netip.Addr) (*Sealer, error) {
	return newSealer(1, key, seq, sender)
}

func newSealer(version byte, key *Key, seq *Sequence, sender netip.Addr) (*Sealer, error) {
	if seq == nil {
		return nil, errors.New("wire: NewSealer: nil Sequence")
	}
	s := &Sealer{seq: seq, hlen: EnvelopeLen}
	if version == 1 {
		s.hlen = EnvelopeLenV1
	}
	binary.BigEndian.PutUint32(s.in[0:4], envelopeMagic)
	s.in[4] = version
	if key == nil {
		return s, nil
	}
	if err := key.validate(); err != nil {
		return nil, err
	}
	if !sender.IsValid() {
		return nil, errors.New("wire: NewSealer: a keyed Sealer needs the sender's address")
	}
	binary.BigEndian.PutUint16(s.in[6:8], key.ID)
	a := sender.Unmap().As16()
	copy(s.in[s.hlen-tagLen:], a[:])
	s.mac = newMAC(key)
	return s, nil
}

// Len returns the length of the headers s writes: EnvelopeLen, or
// EnvelopeLenV1 for a Sealer made by NewSealerV1.
func (s *Sealer) Len() int { return s.hlen }

// Seal writes into hdr the envelope header for packet, with the next sequence
// number and now as the send time (version 2), and returns the header's
// length, s.Len(). Afterwards hdr[:n] || packet is the datagram for every
// peer.
//
// It allocates nothing and copies nothing but the header. Keyed, it costs one
// HMAC-SHA256 over 40 + len(packet) bytes, a fifth more than SHA-256 of the
// packet alone (BenchmarkSeal; figures in docs/performance.md).
// Unauthenticated, it costs a header write.
func (s *Sealer) Seal(hdr *[EnvelopeLen]byte, packet []byte, now time.Time) int {
	return s.seal(hdr, s.seq.Next(), now.UnixNano(), packet)
}

// seal is Seal with the sequence number and send time given.
func (s *Sealer) seal(hdr *[EnvelopeLen]byte, seq uint64, unixNano int64, packet []byte) int {
	fields := s.hlen - tagLen // the header bytes before the tag
	binary.BigEndian.PutUint64(s.in[8:16], seq)
	if s.hlen == EnvelopeLen {
		binary.BigEndian.PutUint64(s.in[16:24], uint64(unixNano))
	}
	copy(hdr[:fields], s.in[:fields])
	if s.mac == nil {
		clear(hdr[fields:s.hlen])
		return s.hlen
	}
	s.mac.Reset()
	s.mac.Write(s.in[:fields+16])
	s.mac.Write(packet)
	copy(hdr[fields:s.hlen], s.mac.Sum(s.sum[:0]))
	return s.hlen
}

// Envelope is a datagram Opener.Open accepted.
type Envelope struct {
	Version byte   // 1, 2, or 3 (Packet is a pack: see NextPacked)
	KeyID   uint16 // 0: unauthenticated
	Seq     uint64 // the sender's sequence number, for its ReplayWindow
	// UnixNano is the send time of a version 2 envelope: the sender's clock
	// when it sealed the datagram, in nanoseconds since the Unix epoch. 0
	// in version 1.
	UnixNano int64
	// Packet is the datagram after the header: a view into it, valid as long
	// as the datagram's buffer is, whose capacity ends with the datagram. It
	// may be empty; whether it is a frag-needed is ParseFragNeeded's call.
	Packet []byte
}

// Opener verifies envelopes. It holds up to two keys, with distinct ids: the
// current and the previous one, both accepted during a roll. Without keys it
// accepts only unauthenticated envelopes (key id 0); the caller must then
// restrict the source addresses itself. With keys it rejects key id 0.
//
// Open does not check the sequence number: feed Envelope.Seq to the sender's
// ReplayWindow after Open accepts.
//
// An Opener is not safe for concurrent use (it holds HMAC states): give each
// receiving goroutine its own.
type Opener struct {
	n    int
	ids  [2]uint16
	macs [2]hash.Hash
	in   [macInputLen]byte // the tagged header fields || sender, as Sealer.in
	sum  [sha256.Size]byte
}

// NewOpener returns an Opener that accepts envelopes tagged with any of keys,
// at most two. With no keys it accepts only unauthenticated envelopes.
//
// It returns an error for more than two keys, two keys with the same id, or a
// key with id 0 or a secret shorter than MinSecretLen.
func NewOpener(keys ...Key) (*Opener, error) {
	if len(keys) > len(Opener{}.ids) {
		return nil, fmt.Errorf("wire: NewOpener: %d keys, at most 2 (the current and the previous)", len(keys))
	}
	o := &Opener{n: len(keys)}
	for i := range keys {
		k := &keys[i]
		if err := k.validate(); err != nil {
			return nil, err
		}
		if i > 0 && k.ID == keys[0].ID {
			return nil, fmt.Errorf("wire: NewOpener: key id %d given twice", k.ID)
		}
		o.ids[i] = k.ID
		o.macs[i] = newMAC(k)
	}
	return o, nil
}

// Open checks datagram, received from the address from, and returns its
// header fields and the packet it carries. It takes versions 1 and 2; which
// versions a receiver accepts, and how old a send time may be, is the
// caller's policy. The checks, in order: length, magic, version and flags,
// key id (known to the Opener; 0 only at an Opener without keys), then the
// tag, compared in constant time (for key id 0: all zero). A rejection is an
// EnvelopeError. What Open accepts, a Sealer with the same version, key,
// sequence number, send time and sender reproduces byte for byte.
//
// from is the datagram's source address as received; an IPv4-mapped IPv6
// address (from a dual-stack socket) is the same as the IPv4 address. It is
// not used for unauthenticated envelopes.
//
// It allocates nothing and copies nothing but the header bytes the tag
// covers. A keyed envelope costs one HMAC-SHA256 over 40 + len(packet) bytes
// (32 + len(packet) in version 1), as Seal does, whether the tag verifies or
// not (BenchmarkOpen, BenchmarkOpenBadTag); every other rejection costs a few
// comparisons.
func (o *Opener) Open(datagram []byte, from netip.Addr) (Envelope, error) {
	if len(datagram) < EnvelopeLenV1 {
		return Envelope{}, ErrEnvelopeShort
	}
	if binary.BigEndian.Uint32(datagram[0:4]) != envelopeMagic {
		return Envelope{}, ErrEnvelopeMagic
	}
	var hlen int
	switch {
	case datagram[5] != 0:
		return Envelope{}, ErrEnvelopeVersion
	case datagram[4] == 1:
		hlen = EnvelopeLenV1
	case datagram[4] == 2, datagram[4] == 3:
		hlen = EnvelopeLen
	default:
		return Envelope{}, ErrEnvelopeVersion
	}
	if len(datagram) < hlen {
		return Envelope{}, ErrEnvelopeShort
	}
	h := datagram[:hlen]
	fields := hlen - tagLen
	e := Envelope{
		Version: h[4],
		KeyID:   binary.BigEndian.Uint16(h[6:8]),
		Seq:     binary.BigEndian.Uint64(h[8:16]),
		Packet:  datagram[hlen:len(datagram):len(datagram)],
	}
	if hlen == EnvelopeLen {
		e.UnixNano = int64(binary.BigEndian.Uint64(h[16:24]))
	}
	tag := h[fields:hlen]
	if e.KeyID == 0 {
		if o.n > 0 {
			return Envelope{}, ErrEnvelopeUnauthenticated
		}
		// No secret involved: an ordinary comparison leaks nothing.
		if binary.BigEndian.Uint64(tag[0:8])|binary.BigEndian.Uint64(tag[8:16]) != 0 {
			return Envelope{}, ErrEnvelopeTag
		}
		return e, nil
	}
	var mac hash.Hash
	for i := range o.n {
		if o.ids[i] == e.KeyID {
			mac = o.macs[i]
		}
	}
	if mac == nil {
		return Envelope{}, ErrEnvelopeKey
	}
	copy(o.in[:fields], h[:fields])
	a := from.Unmap().As16()
	copy(o.in[fields:fields+16], a[:])
	mac.Reset()
	mac.Write(o.in[:fields+16])
	mac.Write(e.Packet)
	if subtle.ConstantTimeCompare(mac.Sum(o.sum[:0])[:tagLen], tag) != 1 {
		return Envelope{}, ErrEnvelopeTag
	}
	return e, nil
}
