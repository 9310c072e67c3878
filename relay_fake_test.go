package pmtud

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/internal/transport"
	"github.com/go-pmtud/go-pmtud/internal/tun"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// fakeResources gives a Relay fake kernel resources, so its logic runs
// without root: senders that record what they would send, a TUN device
// that records what is written, no NFLOG reader and no relay socket. Such
// a Relay is driven with process and receiver.handle, not Run.
type fakeResources struct {
	senders []*fakeSender
	dev     *fakeTUN
}

func (f *fakeResources) sender(*Config, netip.Addr) (sender, error) {
	s := &fakeSender{}
	f.senders = append(f.senders, s)
	return s, nil
}

func (f *fakeResources) tun(*Config) (injector, error) {
	f.dev = &fakeTUN{ipv6: true}
	return f.dev, nil
}

func (*fakeResources) listen(*Config, netip.Addr) (*transport.Listener, error) { return nil, nil }
func (*fakeResources) nflog(*Config) (*nl.Reader, error)                       { return nil, nil }

// copyTo is one copy a fakeSender was asked to send.
type copyTo struct {
	peer      netip.Addr
	datagram  []byte // header and payload, as the peer would receive them
	peerIndex int
}

// fakeSender records every copy, as a peer would receive it.
type fakeSender struct {
	peers  []netip.Addr
	tally  transport.Tally
	copies []copyTo
}

func (s *fakeSender) SetPeers(peers []netip.Addr) {
	s.peers = peers
	s.tally = transport.Tally{Sent: make([]uint64, len(peers)), Errors: make([]uint64, len(peers)), Unreachable: make([]uint64, len(peers))}
}

func (s *fakeSender) Send(heads, payloads [][]byte) {
	for i, p := range payloads {
		for k, a := range s.peers {
			var d []byte
			if len(heads) > 0 {
				d = append(d, heads[i]...)
			}
			s.copies = append(s.copies, copyTo{peer: a, datagram: append(d, p...), peerIndex: k})
			s.tally.Sent[k]++
		}
	}
}

func (s *fakeSender) SendSome(heads, payloads [][]byte, sets [][]uint64, base int) {
	for i, p := range payloads {
		for k, a := range s.peers {
			if w := (base + k) / 64; w >= len(sets[i]) || sets[i][w]&(1<<((base+k)%64)) == 0 {
				continue
			}
			var d []byte
			if len(heads) > 0 {
				d = append(d, heads[i]...)
			}
			s.copies = append(s.copies, copyTo{peer: a, datagram: append(d, p...), peerIndex: k})
			s.tally.Sent[k]++
		}
	}
}

func (s *fakeSender) Tally() *transport.Tally { return &s.tally }
func (s *fakeSender) Close() error            { return nil }

// fakeTUN records the packets injected through it: at Flush, as a veth
// writer sends them, so a receiver that forgot to flush, or let a queued
// packet change before the flush, injects nothing or the wrong bytes.
type fakeTUN struct {
	ipv6    bool
	queued  [][]byte // views, until Flush
	written [][]byte
	down    error // what Up returns
	fail    error // what Flush fails the first queued packet with
}

func (t *fakeTUN) Writer() (tun.Writer, error) { return t, nil }
func (t *fakeTUN) Queue(p []byte) bool         { t.queued = append(t.queued, p); return false }
func (t *fakeTUN) Flush() (queued, failed int, err error) {
	queued = len(t.queued)
	ok := t.queued
	if t.fail != nil && queued > 0 {
		failed, err, ok = 1, t.fail, ok[1:]
	}
	for _, p := range ok {
		t.written = append(t.written, bytes.Clone(p))
	}
	t.queued = t.queued[:0]
	return queued, failed, err
}
func (t *fakeTUN) IPv6() bool   { return t.ipv6 }
func (t *fakeTUN) Name() string { return "fake0" }
func (t *fakeTUN) Index() int   { return 99 }
func (t *fakeTUN) Close() error { return nil }
func (t *fakeTUN) Up() error    { return t.down }

var (
	fakeA = netip.MustParseAddr("198.18.1.10")
	fakeB = netip.MustParseAddr("198.18.1.11")
	fakeC = netip.MustParseAddr("198.18.1.12")
	fakeD = netip.MustParseAddr("198.18.1.13")
)

// newFakeRelay is a udp relay on node src, with keys, on fake resources.
func newFakeRelay(t *testing.T, src netip.Addr, peers ...netip.Addr) (*Relay, *fakeResources) {
	t.Helper()
	res := &fakeResources{}
	r, err := newRelay(Config{
		NodeName: "fake", Mode: ModeUDP, Source: src, Peers: PeersOf(peers...), TTL: 10,
		Keys: []wire.Key{testKey}, DynamicPeers: true,
	}, nil, res)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, res
}

// TestInjectFailuresAreCounted: a packet the device refuses at the flush
// counts as inject_failed and the rest of the flush as injected, for
// datagrams of one packet and for packs; once the device works again all
// count as injected.
func TestInjectFailuresAreCounted(t *testing.T) {
	for _, envelope := range []int{2, 3} {
		t.Run(fmt.Sprint("v", envelope), func(t *testing.T) {
			resA := &fakeResources{}
			a, err := newRelay(Config{NodeName: "a", Mode: ModeUDP, Source: fakeA, Peers: PeersOf(fakeB), TTL: 10,
				Keys: []wire.Key{testKey}, Envelope: envelope}, nil, resA)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			b, resB := newFakeRelay(t, fakeB, fakeA)
			j := newJob()
			for _, p := range distinctFragNeeded(4) {
				j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: p})
			}
			process(a, j)
			j.set.Store(nil)
			sent := resA.senders[0].copies
			if len(sent) == 0 {
				t.Fatal("A sent nothing")
			}
			deliver := func(d []byte) RecvDropReason {
				b.recvs[0].in = &testDatagram{src: fakeA, buf: d}
				b.recvs[0].stamp(time.Now())
				return b.recvs[0].handle(0)
			}
			resB.dev.fail = errors.New("device gone")
			want := RecvInjectFailed
			if envelope == 3 {
				want = recvCounted
			}
			if got := deliver(sent[0].datagram); got != want {
				t.Fatalf("first datagram: %v, want %v", got, want)
			}
			st := b.Stats()
			failed := st.RelayDropped[RecvInjectFailed]
			if failed != 1 || st.Injected != uint64(len(resB.dev.written)) {
				t.Fatalf("with the device failing one packet: injected %d (device got %d), inject_failed %d; want 1 failed, the rest injected", st.Injected, len(resB.dev.written), failed)
			}
			if envelope == 3 && st.Injected == 0 {
				t.Fatal("the pack's other packets were not injected")
			}
			resB.dev.fail = nil
			for _, c := range sent[1:] {
				deliver(c.datagram)
			}
			st = b.Stats()
			if st.Injected != uint64(len(resB.dev.written)) || st.Injected+failed != 4 || st.RelayDropped[RecvInjectFailed] != failed {
				t.Fatalf("after the device works again: injected %d (device got %d), inject_failed %d; want the 4 packets split between them", st.Injected, len(resB.dev.written), st.RelayDropped[RecvInjectFailed])
			}
		})
	}
}

// TestRelayLogicWithFakes runs the relay's logic without root: node A
// seals each accepted ICMP for its peers of the moment, drops the rest by
// reason, follows a peer-set change from the next batch on (the series of
// a peer that left disappear), and node B's receive side opens A's
// datagrams, injects each router packet once and refuses replays and
// non-peers, also after A left B's peers and came back.
func TestRelayLogicWithFakes(t *testing.T) {
	a, resA := newFakeRelay(t, fakeA, fakeB, fakeC)
	b, resB := newFakeRelay(t, fakeB, fakeA)

	good := distinctFragNeeded(3)
	fromPeer := append([]byte(nil), good[0]...)
	copy(fromPeer[12:16], fakeC.AsSlice()) // the outer source: a peer
	fixIPv4Checksum(fromPeer)
	badSum := append([]byte(nil), good[1]...)
	badSum[22] ^= 0xff

	j := newJob()
	for _, p := range [][]byte{good[0], good[1], fromPeer, badSum, good[0]} {
		j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: p})
	}
	process(a, j)
	j.set.Store(nil)
	st := a.Stats()
	if st.Sent != 4 || st.Dropped[DropFromPeer] != 1 || st.Dropped[DropReason(wire.ErrBadChecksum)] != 1 || st.Dropped[DropDuplicate] != 1 {
		t.Fatalf("A's stats %+v: want 2 ICMPs × 2 peers sent, one from_peer, one bad_checksum, one duplicate", st)
	}
	sent := resA.senders[0].copies
	if len(sent) != 4 || sent[0].peer != fakeB || sent[1].peer != fakeC {
		t.Fatalf("A sent %d copies (%+v), want 4: each ICMP to B, then C", len(sent), sent)
	}

	// B receives A's copies meant for B: each injected once, verbatim.
	deliver := func(from netip.Addr, d []byte) RecvDropReason {
		b.recvs[0].in = &testDatagram{src: from, buf: d}
		b.recvs[0].stamp(time.Now())
		return b.recvs[0].handle(0)
	}
	for _, c := range sent {
		if c.peer != fakeB {
			continue
		}
		if got := deliver(fakeA, c.datagram); got != 0 {
			t.Fatalf("B dropped A's datagram: %v", got)
		}
		if got := deliver(fakeA, c.datagram); got != RecvReplayed {
			t.Fatalf("B took a replay as %v, want replayed", got)
		}
		if got := deliver(fakeD, c.datagram); got != RecvNotPeer {
			t.Fatalf("B took a datagram from a non-peer as %v, want not_peer", got)
		}
	}
	if w := resB.dev.written; len(w) != 2 || !bytes.Equal(w[0], good[0]) || !bytes.Equal(w[1], good[1]) {
		t.Fatalf("B injected %d packets, want the router's 2, verbatim", len(w))
	}
	// Bytes after the packet's total length are not part of it: B writes
	// exactly the parsed packet.
	trailing := append(bytes.Clone(good[2]), 0xde, 0xad, 0xbe, 0xef)
	// (A later start than A's relay: numbers its window has not seen.)
	sealer, err := wire.NewSealer(&testKey, wire.NewSequence(time.Now().Add(time.Second)), fakeA)
	if err != nil {
		t.Fatal(err)
	}
	var hdr [wire.EnvelopeLen]byte
	sealer.Seal(&hdr, trailing, time.Now())
	if got := deliver(fakeA, append(hdr[:], trailing...)); got != 0 {
		t.Fatalf("B dropped a datagram with trailing bytes: %v", got)
	}
	if w := resB.dev.written; len(w) != 3 || !bytes.Equal(w[2], good[2]) {
		t.Fatalf("B injected %x, want the parsed packet without the trailing bytes", w[len(w)-1])
	}
	resB.dev.written = resB.dev.written[:2]
	// A leaves B's peers and comes back: its replay window comes back
	// with it, so a datagram A sent before is still refused.
	if _, err := b.SetPeers(PeersOf(nil...)); err != nil {
		t.Fatal(err)
	}
	if got := deliver(fakeA, sent[0].datagram); got != RecvNotPeer {
		t.Fatalf("B took a datagram from A, no peer now, as %v, want not_peer", got)
	}
	if _, err := b.SetPeers(PeersOf(fakeA)); err != nil {
		t.Fatal(err)
	}
	if got := deliver(fakeA, sent[0].datagram); got != RecvReplayed {
		t.Fatalf("B took an old datagram from A, back as a peer, as %v, want replayed", got)
	}

	// C leaves, D joins: the next batch goes to B and D only, and C's
	// series are gone while B's carry on.
	if ch, err := a.SetPeers(PeersOf(fakeA, fakeB, fakeD)); err != nil || ch != (PeerChange{Added: 1, Removed: 1, Peers: 2}) {
		t.Fatalf("SetPeers = %+v, %v", ch, err)
	}
	j.batch.Packets = j.batch.Packets[:0]
	j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: good[2]}, nl.Packet{Payload: fromPeer})
	process(a, j)
	j.set.Store(nil)
	// C's address left the loop guard with C: its copy is now relayed
	// like any router's (the dedup window catches it coming back).
	sent = resA.senders[0].copies[4:]
	if len(sent) != 4 || sent[0].peer != fakeB || sent[1].peer != fakeD || sent[2].peer != fakeB || sent[3].peer != fakeD {
		t.Fatalf("after the change A sent %d copies, want both packets to B and D only", len(sent))
	}
	if st := a.Stats(); st.Dropped[DropFromPeer] != 1 {
		t.Fatalf("A's from_peer drops: %d, want still 1", st.Dropped[DropFromPeer])
	}
	var m strings.Builder
	a.WritePrometheus(&m)
	for _, want := range []string{
		`go_pmtud_sent_packets_peer{node="fake",peer="198.18.1.11"} 4`,
		`go_pmtud_sent_packets_peer{node="fake",peer="198.18.1.13"} 2`,
		`go_pmtud_peers{node="fake"} 2`,
		`go_pmtud_peer_updates_total{node="fake",result="applied"} 1`,
	} {
		if !strings.Contains(m.String(), want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(m.String(), `peer="198.18.1.12"`) {
		t.Errorf("metrics still have series of C, which left:\n%s", m.String())
	}

	// Bad sets leave the one in force and count as errors; the same set
	// again is unchanged.
	for _, bad := range [][]Peer{
		{{V4: fakeB}, {V4: netip.MustParseAddr("2001:db8::1")}},
		{{V6: fakeB}},
		{{V6: netip.MustParseAddr("::ffff:198.18.1.1")}},
		{{}},
		{{V6: netip.MustParseAddr("fe80::1%eth0")}},
	} {
		if _, err := a.SetPeers(bad); err == nil {
			t.Fatalf("SetPeers took %v", bad)
		}
	}
	if ch, err := a.SetPeers(PeersOf(fakeD, fakeB, fakeB)); err != nil || ch.Added+ch.Removed != 0 {
		t.Fatalf("the same set again: %+v, %v; want no change", ch, err)
	}
	// The same addresses grouped otherwise route otherwise: applied, and
	// the node count follows. (Both IPv4 here: a Peer's V6 must be IPv6,
	// so regroup through a set with an IPv6 address.)
	d6 := netip.MustParseAddr("2001:db8::d")
	a.SetPeers([]Peer{{V4: fakeD}, {V6: d6}, {V4: fakeB}})
	if ch, err := a.SetPeers([]Peer{{V4: fakeD, V6: d6}, {V4: fakeB}}); err != nil || ch.Peers != 2 || a.set.Load().nodes != 2 {
		t.Fatalf("D's two addresses joined into one peer: %+v, %v; want it applied with 2 peers", ch, err)
	}
	a.SetPeers(PeersOf(fakeD, fakeB))
	m.Reset()
	a.WritePrometheus(&m)
	for _, want := range []string{
		`go_pmtud_peer_updates_total{node="fake",result="error"} 5`,
		`go_pmtud_peer_updates_total{node="fake",result="unchanged"} 1`,
	} {
		if !strings.Contains(m.String(), want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}

	// B without peers: what it would relay is counted as no_peers.
	if _, err := b.SetPeers(PeersOf(nil...)); err != nil {
		t.Fatal(err)
	}
	j.batch.Packets = append(j.batch.Packets[:0], nl.Packet{Payload: distinctFragNeeded(9)[8]})
	process(b, j)
	if st := b.Stats(); st.Dropped[DropNoPeers] != 1 || st.Sent != 0 {
		t.Fatalf("B without peers: %+v, want one no_peers drop", st)
	}
}

// fixIPv4Checksum recomputes the IPv4 header checksum of p.
func fixIPv4Checksum(p []byte) {
	p[10], p[11] = 0, 0
	c := wire.Checksum(p[:20])
	p[10], p[11] = byte(c>>8), byte(c)
}

// TestPolicyOnBothSides: with trusted sources set, node A relays only the
// routers' ICMPs (untrusted_source for the rest), and node B's receiver
// applies its own policy to the packet in a datagram: a packet whose
// source is untrusted, ignored, a peer or B itself is refused by reason,
// even when sealed by a genuine peer.
func TestPolicyOnBothSides(t *testing.T) {
	res := &fakeResources{}
	routers := []netip.Prefix{netip.MustParsePrefix("198.19.255.0/24")}
	a, err := newRelay(Config{NodeName: "a", Mode: ModeUDP, Source: fakeA, Peers: PeersOf(fakeB), TTL: 10,
		Keys: []wire.Key{testKey}, TrustedSources: routers}, nil, res)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := newRelay(Config{NodeName: "b", Mode: ModeUDP, Source: fakeB, Peers: PeersOf(fakeA, fakeC), TTL: 10,
		Keys: []wire.Key{testKey}, TrustedSources: routers, IgnoreNetworks: []netip.Prefix{netip.MustParsePrefix("198.19.255.128/25")}}, nil, &fakeResources{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	from := func(src netip.Addr, sport int) []byte {
		p := distinctFragNeeded(sport + 1)[sport]
		copy(p[12:16], src.AsSlice())
		fixIPv4Checksum(p)
		return p
	}
	j := newJob()
	j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: from(netip.MustParseAddr("198.19.255.1"), 1)}, nl.Packet{Payload: from(netip.MustParseAddr("203.0.113.1"), 2)})
	process(a, j)
	if st := a.Stats(); st.Sent != 1 || st.Dropped[DropUntrustedSource] != 1 {
		t.Fatalf("A: %+v; want the router's ICMP relayed and the other untrusted_source", st)
	}
	// What A would seal for B if it had no policy: each source in turn.
	sealer, err := wire.NewSealer(&testKey, wire.NewSequence(time.Now()), fakeA)
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		src  netip.Addr
		want RecvDropReason
	}{
		{netip.MustParseAddr("198.19.255.1"), 0},
		{netip.MustParseAddr("203.0.113.1"), RecvInnerUntrustedSource},
		{netip.MustParseAddr("198.19.255.200"), RecvInnerIgnoredNetwork},
		{fakeC, RecvInnerFromPeer},
		{fakeB, RecvInnerFromSelf},
	} {
		pkt := from(tc.src, 10+i)
		var hdr [wire.EnvelopeLen]byte
		sealer.Seal(&hdr, pkt, time.Now())
		b.recvs[0].in = &testDatagram{src: fakeA, buf: append(hdr[:], pkt...)}
		b.recvs[0].stamp(time.Now())
		if got := b.recvs[0].handle(0); got != tc.want {
			t.Errorf("inner source %v: %v, want %v", tc.src, got, tc.want)
		}
	}
}

// TestKeyRotationWithoutRestart rolls the udp relay's key on two running
// relays in the documented two steps (the new key added as second
// everywhere, then first everywhere) and drops the old one: every copy A
// sends on the way is opened and injected by B, and once B has dropped the
// old key, a datagram sealed with it is refused as unknown_key. Bad key
// lists leave the keys in force and are counted.
func TestKeyRotationWithoutRestart(t *testing.T) {
	k1 := testKey
	k2 := wire.Key{ID: 4, Secret: []byte("the-next-relay-secret-32-bytes!!")}
	a, resA := newFakeRelay(t, fakeA, fakeB)
	b, resB := newFakeRelay(t, fakeB, fakeA)
	pkts := distinctFragNeeded(8)
	n := 0
	send := func() RecvDropReason {
		t.Helper()
		j := newJob()
		j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: pkts[n]})
		n++
		process(a, j)
		c := resA.senders[0].copies
		b.recvs[0].in = &testDatagram{src: fakeA, buf: c[len(c)-1].datagram}
		b.recvs[0].stamp(time.Now())
		return b.recvs[0].handle(0)
	}
	setKeys := func(r *Relay, keys ...wire.Key) {
		t.Helper()
		if changed, err := r.SetKeys(keys); err != nil || !changed {
			t.Fatalf("SetKeys(%v) = %v, %v", keys, changed, err)
		}
	}
	for i, step := range []func(){
		func() {},
		func() { setKeys(b, k1, k2) }, // step 1, B first
		func() { setKeys(a, k1, k2) }, // step 1 on A: still seals with k1
		func() { setKeys(a, k2, k1) }, // step 2, A first: seals with k2, B opens both
		func() { setKeys(b, k2, k1) },
		func() { setKeys(a, k2); setKeys(b, k2) }, // k1 retired
	} {
		step()
		if got := send(); got != 0 {
			t.Fatalf("step %d: B refused A's copy: %v", i, got)
		}
	}
	if len(resB.dev.written) != 6 {
		t.Fatalf("B injected %d of 6 copies", len(resB.dev.written))
	}
	// A datagram sealed with the retired key.
	old, err := wire.NewSealer(&k1, wire.NewSequence(time.Now().Add(time.Minute)), fakeA)
	if err != nil {
		t.Fatal(err)
	}
	var hdr [wire.EnvelopeLen]byte
	old.Seal(&hdr, pkts[7], time.Now())
	b.recvs[0].in = &testDatagram{src: fakeA, buf: append(hdr[:], pkts[7]...)}
	b.recvs[0].stamp(time.Now())
	if got := b.recvs[0].handle(0); got != RecvDropReason(wire.ErrEnvelopeKey) {
		t.Fatalf("a datagram sealed with the retired key: %v, want unknown_key", got)
	}
	for _, bad := range [][]wire.Key{nil, {{ID: 0, Secret: k2.Secret}}, {{ID: 9, Secret: []byte("short")}}, {k1, k2, {ID: 5, Secret: k2.Secret}}} {
		if _, err := b.SetKeys(bad); err == nil {
			t.Errorf("SetKeys(%v) accepted", bad)
		}
	}
	if changed, err := b.SetKeys([]wire.Key{k2}); changed || err != nil {
		t.Errorf("the same keys again: changed %v, %v", changed, err)
	}
	var m strings.Builder
	b.WritePrometheus(&m)
	for _, want := range []string{
		`go_pmtud_key_reloads_total{node="fake",result="applied"} 3`,
		`go_pmtud_key_reloads_total{node="fake",result="unchanged"} 1`,
		`go_pmtud_key_reloads_total{node="fake",result="error"} 4`,
	} {
		if !strings.Contains(m.String(), want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestHealth: a running relay is healthy while idle, and unhealthy when a
// loop stopped, NFLOG reads keep failing, a batch is stuck in a send, or
// the TUN device is gone; each reason says which.
func TestHealth(t *testing.T) {
	r, res := newFakeRelay(t, fakeA, fakeB)
	if err := r.Health(); err == nil {
		t.Fatal("healthy before Run")
	}
	r.running.Store(true) // as Run does; the fakes have no loops to start
	defer r.running.Store(false)
	if err := r.Health(); err != nil {
		t.Fatalf("an idle relay: %v", err)
	}
	long := time.Now().Add(-time.Minute).UnixNano()
	for _, tc := range []struct {
		name       string
		fail, mend func()
		want       string
	}{
		{"a loop stopped", func() { r.loopDown() }, func() { r.loopsDown.Store(0) }, "loops"},
		{"NFLOG reads failing", func() { r.readErrSince.Store(long); r.readErrLast.Store(time.Now().UnixNano()) }, func() { r.readErrSince.Store(0) }, "NFLOG reads"},
		{"a stuck send", func() { r.jobs[0].began.Store(long); r.jobs[0].set.Store(r.set.Load()) }, func() { r.jobs[0].set.Store(nil) }, "stuck"},
		{"the TUN device gone", func() { res.dev.down = errors.New("TUN device fake0 is gone") }, func() { res.dev.down = nil }, "gone"},
	} {
		tc.fail()
		if err := r.Health(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Health = %v, want an error about %q", tc.name, err, tc.want)
		}
		tc.mend()
		if err := r.Health(); err != nil {
			t.Errorf("after %s was mended: %v", tc.name, err)
		}
	}
	// Recent read errors are not yet a failure, and old ones that stopped
	// (the reader waits for the next datagram) are none.
	r.readErrSince.Store(time.Now().UnixNano())
	r.readErrLast.Store(time.Now().UnixNano())
	if err := r.Health(); err != nil {
		t.Errorf("a read error just now: %v", err)
	}
	r.readErrSince.Store(long)
	r.readErrLast.Store(long)
	if err := r.Health(); err != nil {
		t.Errorf("read errors that stopped a minute ago: %v", err)
	}
}

// TestEveryMetricIsDocumented: each series a udp relay serves, and each
// drop reason of both kinds, appears in docs/metrics.md in backquotes.
func TestEveryMetricIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	has := func(s string) bool {
		return bytes.Contains(doc, []byte("`"+s+"`")) || bytes.Contains(doc, []byte("`"+s+"{"))
	}
	r, _ := newFakeRelay(t, fakeA, fakeB)
	var m strings.Builder
	r.WritePrometheus(&m)
	seen := map[string]bool{}
	for _, line := range strings.Split(m.String(), "\n") {
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		name = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
		if name == "" || strings.HasPrefix(name, "#") || seen[name] {
			continue
		}
		seen[name] = true
		if !has(name) {
			t.Errorf("series %s is not in docs/metrics.md", name)
		}
	}
	for _, d := range DropReasons() {
		if !has(d.String()) {
			t.Errorf("drop reason %s is not in docs/metrics.md", d)
		}
	}
	for _, d := range RecvDropReasons() {
		if s := d.String(); !has(s) && !(strings.HasPrefix(s, "inner_") && has(strings.TrimPrefix(s, "inner_"))) {
			t.Errorf("receive drop reason %s is not in docs/metrics.md", s)
		}
	}
}

// TestReplayAcrossRestart replays a datagram node B accepted to a new relay
// at B, as after a restart, whose replay windows start empty: a version 2
// datagram is refused as stale_sequence, since it was sealed before the
// new relay started; a version 1 datagram, which carries no send time,
// gets through: the hole version 2 closes.
func TestReplayAcrossRestart(t *testing.T) {
	pkt := distinctFragNeeded(1)[0]
	for _, tc := range []struct {
		version int
		after   RecvDropReason
	}{{2, RecvStaleSequence}, {1, 0}} {
		cfg := Config{NodeName: "b", Mode: ModeUDP, Source: fakeB, Peers: PeersOf(fakeA), TTL: 10,
			Keys: []wire.Key{testKey}, Envelope: tc.version}
		b, err := newRelay(cfg, nil, &fakeResources{})
		if err != nil {
			t.Fatal(err)
		}
		d := sealed(t, tc.version, wire.NewSequence(time.Now()), time.Now(), pkt)
		if got := receiveAt(b, d, time.Now()); got != 0 {
			t.Fatalf("version %d: B refused a fresh datagram: %v", tc.version, got)
		}
		if got := receiveAt(b, d, time.Now()); got != RecvReplayed {
			t.Fatalf("version %d: B took it twice: %v, want replayed", tc.version, got)
		}
		b.Close()
		restarted, err := newRelay(cfg, nil, &fakeResources{})
		if err != nil {
			t.Fatal(err)
		}
		if got := receiveAt(restarted, d, time.Now()); got != tc.after {
			t.Errorf("version %d: the datagram replayed after a restart: %v, want %v", tc.version, got, tc.after)
		}
		restarted.Close()
	}
}

// TestSendTimeBounds: a version 2 datagram is accepted when it was sealed
// after the receiver started and no more than sendTimeSlack from its clock,
// either way; version 1 is accepted only with AcceptEnvelopeV1 (or when the
// node sends version 1 itself).
func TestSendTimeBounds(t *testing.T) {
	b, err := newRelay(Config{NodeName: "b", Mode: ModeUDP, Source: fakeB, Peers: PeersOf(fakeA), TTL: 10,
		Keys: []wire.Key{testKey}}, nil, &fakeResources{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	start := b.started
	now := start.Add(2 * sendTimeSlack) // B's clock when the datagrams arrive
	seq := wire.NewSequence(time.Now())
	pkts := distinctFragNeeded(8)
	for i, tc := range []struct {
		name    string
		version int
		sent    time.Time
		want    RecvDropReason
	}{
		{"just now", 2, now, 0},
		{"slack old", 2, now.Add(-sendTimeSlack), 0},
		{"slack ahead", 2, now.Add(sendTimeSlack), 0},
		{"older than slack", 2, now.Add(-sendTimeSlack - time.Nanosecond), RecvStaleSequence},
		{"further ahead than slack", 2, now.Add(sendTimeSlack + time.Nanosecond), RecvFutureSequence},
		{"version 1", 1, now, RecvDropReason(wire.ErrEnvelopeVersion)},
	} {
		d := sealed(t, tc.version, seq, tc.sent, pkts[i])
		if got := receiveAt(b, d, now); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	// Before the start, within the slack of the clock: stale all the same.
	if got := receiveAt(b, sealed(t, 2, seq, start.Add(-time.Nanosecond), pkts[6]), start.Add(time.Second)); got != RecvStaleSequence {
		t.Errorf("sealed before B started: %v, want stale_sequence", got)
	}
	if got := receiveAt(b, sealed(t, 2, seq, start, pkts[6]), start.Add(time.Second)); got != 0 {
		t.Errorf("sealed as B started: %v, want it injected", got)
	}

	v1, err := newRelay(Config{NodeName: "b", Mode: ModeUDP, Source: fakeB, Peers: PeersOf(fakeA), TTL: 10,
		Keys: []wire.Key{testKey}, AcceptEnvelopeV1: true}, nil, &fakeResources{})
	if err != nil {
		t.Fatal(err)
	}
	defer v1.Close()
	if got := receiveAt(v1, sealed(t, 1, seq, time.Time{}, pkts[7]), time.Now()); got != 0 {
		t.Errorf("version 1 with AcceptEnvelopeV1: %v, want it injected", got)
	}
}

// sealed returns the datagram fakeA seals for pkt with testKey: the given
// envelope version, the next number of seq, sent as its send time.
func sealed(t *testing.T, version int, seq *wire.Sequence, sent time.Time, pkt []byte) []byte {
	t.Helper()
	newSealer := wire.NewSealer
	switch version {
	case 1:
		newSealer = wire.NewSealerV1
	case 3:
		newSealer = wire.NewSealerPacked // pkt is a pack
	}
	s, err := newSealer(&testKey, seq, fakeA)
	if err != nil {
		t.Fatal(err)
	}
	var hdr [wire.EnvelopeLen]byte
	n := s.Seal(&hdr, pkt, sent)
	return append(hdr[:n:n], pkt...)
}

// receiveAt hands d from fakeA to r's receiver as a batch arriving at now and
// returns its verdict.
func receiveAt(r *Relay, d []byte, now time.Time) RecvDropReason {
	r.recvs[0].in = &testDatagram{src: fakeA, buf: d}
	r.recvs[0].stamp(now)
	return r.recvs[0].handle(0)
}

// TestReceivePacked: a version 3 datagram's packets are each checked and
// injected by themselves, after the datagram's send time and number are
// admitted once: a packet that fails the policy is counted and the others
// are injected; the datagram again is replayed as a whole; a pack that ends
// in a bad length has its earlier packets injected and counts bad_pack.
func TestReceivePacked(t *testing.T) {
	b, err := newRelay(Config{NodeName: "b", Mode: ModeUDP, Source: fakeB, Peers: PeersOf(fakeA), TTL: 10,
		Keys: []wire.Key{testKey}}, nil, &fakeResources{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	pkts := distinctFragNeeded(4)
	fromPeer := bytes.Clone(pkts[1])
	copy(fromPeer[12:16], fakeA.AsSlice())
	fixIPv4Checksum(fromPeer)
	pack := wire.AppendPacked(wire.AppendPacked(wire.AppendPacked(nil, pkts[0]), fromPeer), pkts[2])
	seq := wire.NewSequence(time.Now())
	d := sealed(t, 3, seq, time.Now(), pack)
	if got := receiveAt(b, d, time.Now()); got != recvCounted {
		t.Fatalf("pack: %v, want its packets counted one by one", got)
	}
	if st := b.Stats(); st.Injected != 2 || st.RelayDropped[RecvInnerFromPeer] != 1 {
		t.Fatalf("after the pack: %+v; want 2 injected and 1 inner_from_peer", st)
	}
	if got := receiveAt(b, d, time.Now()); got != RecvReplayed {
		t.Fatalf("the pack again: %v, want replayed", got)
	}
	broken := append(wire.AppendPacked(nil, pkts[3]), 0x7f, 0xff, 1)
	if got := receiveAt(b, sealed(t, 3, seq, time.Now(), broken), time.Now()); got != recvCounted {
		t.Fatalf("broken pack: %v", got)
	}
	if st := b.Stats(); st.Injected != 3 || st.RelayDropped[RecvBadPack] != 1 {
		t.Fatalf("after the broken pack: %+v; want 3 injected and 1 bad_pack", st)
	}
}

// TestPackedSendAndReceive: relay A seals a batch of 64 router ICMPs (56
// bytes each) in version 3 packs of up to PackBytes for its peers B and C,
// and a targeted one in a pack of its own; B opens A's datagrams and
// injects every packet, verbatim. The batch again allocates nothing.
func TestPackedSendAndReceive(t *testing.T) {
	res := &fakeResources{}
	a, err := newRelay(Config{NodeName: "a", Mode: ModeUDP, Source: fakeA, Peers: PeersOf(fakeB, fakeC), TTL: 10,
		Keys: []wire.Key{testKey}, Envelope: 3, DedupWindow: -1}, nil, res)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := newRelay(Config{NodeName: "b", Mode: ModeUDP, Source: fakeB, Peers: PeersOf(fakeA, fakeC), TTL: 10,
		Keys: []wire.Key{testKey}}, nil, &fakeResources{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := a.SetTargets([]Target{{Scope: ScopeService, Prefix: netip.MustParsePrefix("198.18.100.9/32"), Proto: 6, Port: 443, Nodes: []netip.Addr{fakeB}}}); err != nil {
		t.Fatal(err)
	}
	j := newJob()
	pkts := distinctFragNeeded(64)
	for _, p := range pkts {
		j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: p})
	}
	targeted := fragFrom(netip.MustParseAddr("198.18.100.9"), 6, 443, 7)
	j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: targeted})
	process(a, j)
	var toB [][]byte
	for _, s := range res.senders {
		for _, c := range s.copies {
			if c.peer == fakeB {
				toB = append(toB, c.datagram)
			}
		}
	}
	per := DefaultPackBytes / (2 + len(pkts[0]))
	if want := (64+per-1)/per + 1; len(toB) != want {
		t.Fatalf("B got %d datagrams, want %d (packs of %d, and the targeted one alone)", len(toB), want, per)
	}
	for _, d := range toB {
		if len(d) > wire.EnvelopeLen+DefaultPackBytes {
			t.Errorf("a %d-byte datagram: more than the pack size", len(d))
		}
		if got := receiveAt(b, d, time.Now()); got != recvCounted {
			t.Fatalf("B: %v", got)
		}
	}
	devB := b.recvs[0].tun.(*fakeTUN)
	if st := b.Stats(); st.Injected != 65 || len(devB.written) != 65 {
		t.Fatalf("B injected %d (%d written), want all 65: %+v", st.Injected, len(devB.written), st)
	}
	for i, p := range pkts {
		if !bytes.Equal(devB.written[i], p) {
			t.Fatalf("packet %d was not injected verbatim", i)
		}
	}
	if !bytes.Equal(devB.written[64], targeted) {
		t.Fatal("the targeted packet was not injected verbatim")
	}
	for _, s := range res.senders {
		s.copies = nil
	}
	c, err := newRelay(Config{NodeName: "c", Mode: ModeUDP, Source: fakeA, Peers: PeersOf(fakeB, fakeC), TTL: 10,
		Keys: []wire.Key{testKey}, Envelope: 3, DedupWindow: -1}, nil, &allocFreeResources{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	process(c, j)
	if n := testing.AllocsPerRun(100, func() { process(c, j) }); n != 0 {
		t.Errorf("packing a batch allocates %v times, want 0", n)
	}
}
