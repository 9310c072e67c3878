package pmtud

import (
	"errors"
	"net/netip"
	"time"

	"github.com/go-pmtud/go-pmtud/internal/transport"
	"github.com/go-pmtud/go-pmtud/internal/tun"
	"github.com/go-pmtud/go-pmtud/wire"
)

// injector writes received packets where the kernel takes them as if
// they had arrived from the router: a *tun.Device, or a fake in tests.
type injector interface {
	// Writer returns a writer for one receiver goroutine.
	Writer() (tun.Writer, error)
	IPv6() bool // whether IPv6 packets are taken
	Name() string
	Index() int // the interface index NFLOG reports for injected packets
	Up() error  // nil while the device exists and is up; it allocates
	Close() error
}

var (
	_ injector = (*tun.Device)(nil)
	_ injector = (*tun.Veth)(nil)
)

// RecvDropReason says why a relay datagram from a peer was not injected.
// Its String is the reason label of go_pmtud_relay_dropped_total.
type RecvDropReason uint8

// The first values are the envelope's rejections, in wire.EnvelopeError
// order; then the inner packet's, in wire.Error order; then the rest.
const (
	// recvInnerBase + e is the reason for inner packet error e.
	recvInnerBase = RecvDropReason(wire.EnvelopeErrorCount) - 1
	// recvOwnBase is the first reason of this package's own.
	recvOwnBase = recvInnerBase + RecvDropReason(wire.ErrorCount)
)

const (
	// RecvNotPeer: the datagram's source is not a current peer.
	RecvNotPeer = recvOwnBase + iota
	// RecvReplayed: the sequence number was seen before or is too old.
	RecvReplayed
	// RecvDuplicate: this node relayed or injected the same ICMP within the
	// dedup window (it got it from the router too, or by another path).
	RecvDuplicate
	// RecvTruncated: the datagram did not fit the receive buffer. The
	// buffer holds the largest UDP payload, so this is a guard on the
	// kernel's MSG_TRUNC, not an expected outcome.
	RecvTruncated
	// RecvInjectFailed: the injection device refused the packet (a TUN write or a sendmmsg message failed).
	RecvInjectFailed
	// RecvFutureSequence: a keyed datagram whose sequence number says its
	// sender started more than futureSlack after this node's clock reads,
	// or a version 2 datagram sealed more than sendTimeSlack after it. Its
	// clock is wrong; fed to the replay window, its numbers would make the
	// sender's genuine ones look old once its clock is put right, and its
	// send times would outlive a restart of this node.
	RecvFutureSequence
	// RecvIPv6Off: an IPv6 packet, but this node's injection device takes none
	// (IPv6 is off on the host): the kernel would drop it unseen.
	RecvIPv6Off
	// RecvBadPack: a version 3 datagram whose pack ends in a malformed
	// length: the packets before it are handled.
	RecvBadPack
	// RecvStaleSequence: a version 2 datagram sealed before this node's
	// relay started, or more than sendTimeSlack before its clock reads: a
	// replay from before a restart (the replay windows start empty), or a
	// sender whose clock is behind.
	RecvStaleSequence
	// RecvInnerFromPeer, RecvInnerFromSelf, RecvInnerIgnoredNetwork,
	// RecvInnerUntrustedSource: the packet fails this node's policy, as it
	// would have failed it arriving from the router: its source is a peer
	// or this node (a copy, which no sender relays), in an ignored network,
	// or outside the trusted sources.
	RecvInnerFromPeer
	RecvInnerFromSelf
	RecvInnerIgnoredNetwork
	RecvInnerUntrustedSource
	recvDropReasonCount
)

// String returns the reason's label: an envelope reason ("bad_tag"), an
// inner packet reason prefixed "inner_" ("inner_bad_checksum"), or
// "not_peer", "replayed", "duplicate", "truncated", "inject_failed",
// "future_sequence", "ipv6_off", "stale_sequence", "bad_pack", or one of the policy's on the inner packet:
// "inner_from_peer", "inner_from_self", "inner_ignored_network",
// "inner_untrusted_source".
func (r RecvDropReason) String() string {
	switch {
	case r == 0:
	case r < RecvDropReason(wire.EnvelopeErrorCount):
		return wire.EnvelopeError(r).String()
	case r < RecvNotPeer:
		return "inner_" + wire.Error(r-recvInnerBase).String()
	case r == RecvNotPeer:
		return "not_peer"
	case r == RecvReplayed:
		return "replayed"
	case r == RecvTruncated:
		return "truncated"
	case r == RecvDuplicate:
		return "duplicate"
	case r == RecvInjectFailed:
		return "inject_failed"
	case r == RecvFutureSequence:
		return "future_sequence"
	case r == RecvIPv6Off:
		return "ipv6_off"
	case r == RecvStaleSequence:
		return "stale_sequence"
	case r == RecvBadPack:
		return "bad_pack"
	case r == RecvInnerFromPeer:
		return "inner_from_peer"
	case r == RecvInnerFromSelf:
		return "inner_from_self"
	case r == RecvInnerIgnoredNetwork:
		return "inner_ignored_network"
	case r == RecvInnerUntrustedSource:
		return "inner_untrusted_source"
	}
	return "unknown"
}

// RecvDropReasons returns every receive drop reason, in a fixed order.
func RecvDropReasons() []RecvDropReason {
	rs := make([]RecvDropReason, 0, recvDropReasonCount-1)
	for r := RecvDropReason(1); r < recvDropReasonCount; r++ {
		rs = append(rs, r)
	}
	return rs
}

// futureSlack is how far ahead of this node's clock a sender's start time
// (a sequence number's high 32 bits, Unix seconds) may be: clock skew
// between synchronised nodes is far below it.
const futureSlack = 5 * 60

// sendTimeSlack is how far a version 2 datagram's send time may lie from
// this node's clock, either way: the clocks of synchronised nodes agree to
// milliseconds, and a datagram spends microseconds on the way. Older is
// stale_sequence, newer future_sequence. It bounds what a restart can let
// through: a sender whose clock runs ahead by d has its datagrams of the
// last d before this node restarted accepted once after it.
const sendTimeSlack = 30 * time.Second

// datagrams is a batch of relay datagrams: a *transport.Listener's, or a
// test's.
type datagrams interface {
	// Datagram returns datagram i: its source (zero if not of the
	// socket's family), its bytes, and whether it was cut. It allocates
	// nothing.
	Datagram(i int) (src netip.Addr, b []byte, truncated bool)
}

var _ datagrams = (*transport.Listener)(nil)

// receiver reads relay datagrams from peers in batches, verifies them and
// injects the router's packets through the injection device (veth pair or TUN device). It is owned by one
// goroutine.
type receiver struct {
	r      *Relay
	fam    int // the socket's family (fam4, fam6)
	l      *transport.Listener
	in     datagrams // the batch in hand: l, or a test's
	tun    injector
	w      tun.Writer   // this receiver's: packets queued until flush
	opener *wire.Opener // of the batch in hand: the key set in force

	lastLog time.Time
	// set is the peer set the batch in hand is judged by: a source that is
	// not in it is no peer; each peer's replay window is its state's.
	set     *peerSet
	now     uint64 // dedup time of the batch in hand
	nowUnix uint64 // Unix seconds of the batch in hand
	// sentMin and sentMax bound the send times of version 2 datagrams the
	// batch in hand accepts, in Unix nanoseconds.
	sentMin, sentMax int64
}

// run receives until the socket is closed.
func (rv *receiver) run() error {
	for {
		n, err := rv.l.Read()
		if errors.Is(err, transport.ErrClosed) {
			return nil
		}
		if err != nil {
			rv.r.m.errors.Inc()
			if throttled(&rv.lastLog) {
				rv.r.log.Warn("relay receive failed (repeats are counted in go_pmtud_error_total)", "err", err)
			}
			time.Sleep(10 * time.Millisecond) // do not spin on a persistent error
			continue
		}
		rv.stamp(time.Now())
		got := 0 // datagrams, a coalesced read's each counted
		for i := range n {
			src, d, truncated := rv.in.Datagram(i)
			// A sender's segmented send may arrive whole (UDP_GRO): its
			// datagrams, each seg bytes but the last, are handled apart.
			seg := rv.l.Segment(i)
			if seg <= 0 || truncated {
				seg = len(d)
			}
			for off := 0; off < len(d) || off == 0; off += seg {
				got++
				rv.count(rv.handleFrom(src, d[off:min(off+seg, len(d))], truncated))
				if seg == 0 {
					break
				}
			}
		}
		rv.r.m.relayRecv.Add(got)
		// The queued packets are views into the batch's buffers: inject
		// them before the next Read.
		rv.flush()
	}
}

// flush injects the packets queued in rv.w and counts them: injected, or
// dropped as inject_failed. It returns how many failed.
func (rv *receiver) flush() (failed int) {
	n, failed, err := rv.w.Flush()
	m := rv.r.m
	if n > failed {
		m.injected.Add(n - failed)
	}
	if failed > 0 {
		m.relayDropped[RecvInjectFailed].Add(failed)
		if throttled(&rv.lastLog) {
			rv.r.log.Warn("inject failed (repeats are counted in go_pmtud_relay_dropped_total)", "dev", rv.tun.Name(), "err", err)
		}
	}
	return failed
}

// stamp sets the time and the peer set handle judges the datagrams in hand
// by.
func (rv *receiver) stamp(t time.Time) {
	rv.set = rv.r.set.Load()
	rv.opener = rv.r.keys.Load().openers[rv.fam]
	rv.now = rv.r.dedup.now(t)
	rv.nowUnix = uint64(t.Unix())
	n := t.UnixNano()
	rv.sentMin = n - int64(min(max(t.Sub(rv.r.started), 0), sendTimeSlack))
	rv.sentMax = n + int64(sendTimeSlack)
}

// count counts a datagram's outcome.
func (rv *receiver) count(reason RecvDropReason) {
	switch reason {
	case 0: // queued: flush counts it
	case recvCounted:
	default:
		rv.r.m.relayDropped[reason].Inc()
	}
}

// handle checks datagram i, injects its packets and counts the injected
// ones; 0 means injected (recvCounted: a pack, whose packets were counted
// each). Call stamp first.
func (rv *receiver) handle(i int) RecvDropReason {
	src, d, truncated := rv.in.Datagram(i)
	reason := rv.handleFrom(src, d, truncated)
	if rv.flush() > 0 && reason == 0 {
		return RecvInjectFailed
	}
	return reason
}

// handleFrom checks datagram d from src and injects its packet.
func (rv *receiver) handleFrom(src netip.Addr, d []byte, truncated bool) RecvDropReason {
	if truncated {
		return RecvTruncated
	}
	k, ok := rv.set.index[src]
	if !ok {
		return RecvNotPeer
	}
	window := rv.set.state[k].replay
	env, err := rv.opener.Open(d, src)
	if err != nil {
		if e, ok := err.(wire.EnvelopeError); ok && e > 0 && e < wire.EnvelopeErrorCount {
			return RecvDropReason(e)
		}
		return RecvDropReason(wire.ErrEnvelopeTag)
	}
	if env.Version == 1 && !rv.r.cfg.acceptsEnvelopeV1() {
		return RecvDropReason(wire.ErrEnvelopeVersion)
	}
	if env.Version == 3 {
		return rv.handlePacked(&env, window)
	}
	f, reason := rv.check(env.Packet)
	if reason != 0 {
		return reason // before the packet may move the window
	}
	if reason := rv.admit(&env, window); reason != 0 {
		return reason
	}
	return rv.inject(&f)
}

// handlePacked handles a version 3 datagram: once its send time and number
// are admitted, each packet of the pack goes its own way and is counted by
// itself, as if it had come alone. It returns recvCounted, or the reason
// the whole datagram was refused.
func (rv *receiver) handlePacked(env *wire.Envelope, window *wire.ReplayWindow) RecvDropReason {
	if reason := rv.admit(env, window); reason != 0 {
		return reason
	}
	m := rv.r.m
	for rest := env.Packet; len(rest) > 0; {
		pkt, r, ok := wire.NextPacked(rest)
		if !ok {
			m.relayDropped[RecvBadPack].Inc()
			break
		}
		rest = r
		f, reason := rv.check(pkt)
		if reason == 0 {
			reason = rv.inject(&f)
		}
		if reason != 0 {
			m.relayDropped[reason].Inc()
		} // else queued: flush counts it
	}
	return recvCounted
}

// recvCounted is what handle returns for a datagram whose packets it
// counted itself (version 3); it is no drop reason.
const recvCounted RecvDropReason = 255

// check parses a packet from a datagram and applies the policy it would
// have met arriving from the router.
func (rv *receiver) check(pkt []byte) (wire.FragNeeded, RecvDropReason) {
	f, err := wire.Parse(pkt)
	if err != nil {
		if e, ok := err.(wire.Error); ok && e > 0 && e < wire.ErrorCount {
			return f, recvInnerBase + RecvDropReason(e)
		}
		return f, recvInnerBase + RecvDropReason(wire.ErrTruncated)
	}
	switch rv.r.policy.check(&f, rv.set) {
	case 0:
		return f, 0
	case DropFromPeer:
		return f, RecvInnerFromPeer
	case DropFromSelf:
		return f, RecvInnerFromSelf
	case DropIgnoredNetwork:
		return f, RecvInnerIgnoredNetwork
	default:
		return f, RecvInnerUntrustedSource
	}
}

// admit checks a datagram's send time (versions 2 and 3) and, keyed, its
// sequence number, which it records in the sender's window.
func (rv *receiver) admit(env *wire.Envelope, window *wire.ReplayWindow) RecvDropReason {
	// A datagram sealed before this node started may have been captured
	// before it: the windows below are new. Unauthenticated send times
	// prove nothing, but checking them costs nothing either.
	if env.Version >= 2 {
		if env.UnixNano < rv.sentMin {
			return RecvStaleSequence
		}
		if env.UnixNano > rv.sentMax {
			return RecvFutureSequence
		}
	}
	// Only a verified datagram may move the window, or a forger could push
	// it forward and make genuine copies look old. Unauthenticated ones are
	// not verified, so they skip it: a replayed copy is harmless, a window
	// pushed past a peer's numbers would silence that peer.
	if env.KeyID != 0 {
		if env.Seq>>32 > rv.nowUnix+futureSlack {
			return RecvFutureSequence
		}
		if !window.Check(env.Seq) {
			return RecvReplayed
		}
	}
	return 0
}

// inject queues a checked packet on the receiver's writer (flush injects
// it), unless this node cannot take it or has had it already.
func (rv *receiver) inject(f *wire.FragNeeded) RecvDropReason {
	if f.Src.Is6() && !rv.tun.IPv6() {
		return RecvIPv6Off
	}
	if rv.r.dedup.seen(rv.r.dedup.key(f.Src, f.Dst, f.ICMP), rv.now) {
		return RecvDuplicate
	}
	if rv.w.Queue(f.Packet) {
		rv.flush()
	}
	return 0
}

// close closes the socket, which ends run. It is safe to call twice.
func (rv *receiver) close() error {
	if rv.l == nil {
		return nil
	}
	return rv.l.Close()
}
