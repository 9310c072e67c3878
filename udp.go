package pmtud

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/wire"
)

// newUDPFanout opens a UDP socket bound to src (any port) whose messages
// carry an envelope header and the router's packet to port on every peer.
func newUDPFanout(src netip.Addr, ttl int, peers []netip.Addr, port uint16) (*fanout, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("pmtud: UDP socket: %w", err)
	}
	setup := func() error {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl); err != nil {
			return fmt.Errorf("pmtud: set IP_TTL %d: %w", ttl, err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
			return fmt.Errorf("pmtud: bind UDP socket to %v: %w", src, err)
		}
		// A peer without go-pmtud answers with port unreachable; without
		// IP_RECVERR an unconnected socket never hears of it.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1); err != nil {
			return fmt.Errorf("pmtud: set IP_RECVERR: %w", err)
		}
		// Nothing reads the socket's receive queue, and error reports share
		// its budget: a stray datagram to its port must not fill it and
		// crowd them out. A filter that returns 0 drops everything.
		drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: 1, Filter: &drop[0]}); err != nil {
			return fmt.Errorf("pmtud: attach drop-all filter: %w", err)
		}
		return nil
	}
	if err := setup(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f, err := newFanout(fd, "udp", peers, port, 2)
	if f != nil {
		f.recvErr = true
	}
	return f, err
}

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
	// RecvInjectFailed: the write into the TUN device failed.
	RecvInjectFailed
	// RecvFutureSequence: a keyed datagram whose sequence number says its
	// sender started more than futureSlack after this node's clock reads.
	// Its clock is wrong; fed to the replay window, its numbers would make
	// the sender's genuine ones look old once its clock is put right.
	RecvFutureSequence
	// RecvIPv6Off: an IPv6 packet, but this node's TUN device takes none
	// (IPv6 is off on the host): the kernel would drop it unseen.
	RecvIPv6Off
	recvDropReasonCount
)

// String returns the reason's label: an envelope reason ("bad_tag"), an
// inner packet reason prefixed "inner_" ("inner_bad_checksum"), or
// "not_peer", "replayed", "duplicate", "truncated", "inject_failed",
// "future_sequence", "ipv6_off".
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

const (
	// recvBatch is how many datagrams one recvmmsg may return.
	recvBatch = 64
	// recvBufLen holds the largest UDP datagram there is, so that no
	// packet a peer may send is cut (Linux quotes 576 bytes; others more).
	// Only the pages a datagram touches become resident.
	recvBufLen = 1 << 16
)

// receiver reads relay datagrams from peers in batches, verifies them and
// injects the router's packets into the TUN device. It is owned by one
// goroutine; its buffers are allocated once.
type receiver struct {
	r      *Relay
	file   *os.File
	rc     syscall.RawConn
	tun    *tunDevice
	opener *wire.Opener

	bufs  []byte // recvBatch * recvBufLen
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	msgs  []unix.Mmsghdr

	// The read in progress: recvFn's outputs.
	n      int
	errno  syscall.Errno
	recvFn func(fd uintptr) bool

	lastLog time.Time
	// set is the peer set the batch in hand is judged by: a source that is
	// not in it is no peer; each peer's replay window is its state's.
	set     *peerSet
	now     uint64 // dedup time of the batch in hand
	nowUnix uint64 // Unix seconds of the batch in hand
}

// SK_MEMINFO_VARS and SK_MEMINFO_DROPS (include/uapi/linux/sock_diag.h):
// the length of SO_MEMINFO's array and the index of the drop count.
const (
	skMeminfoVars  = 9
	skMeminfoDrops = 8
)

// newReceiver binds a UDP socket to src:port and prepares the batch buffers.
func newReceiver(r *Relay, src netip.Addr, port uint16, tun *tunDevice, opener *wire.Opener) (*receiver, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("pmtud: UDP socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4(), Port: int(port)}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pmtud: bind relay port %v:%d: %w", src, port, err)
	}
	// A large receive buffer absorbs a storm's bursts from many peers.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	file := os.NewFile(uintptr(fd), "pmtud-relay")
	rc, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("pmtud: relay socket: %w", err)
	}
	rv := &receiver{
		r:      r,
		file:   file,
		rc:     rc,
		tun:    tun,
		opener: opener,
		bufs:   make([]byte, recvBatch*recvBufLen),
		iovs:   make([]unix.Iovec, recvBatch),
		names:  make([]unix.RawSockaddrInet4, recvBatch),
		msgs:   make([]unix.Mmsghdr, recvBatch),
	}
	for i := range rv.msgs {
		rv.iovs[i].Base = &rv.bufs[i*recvBufLen]
		rv.iovs[i].SetLen(recvBufLen)
		h := &rv.msgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&rv.names[i]))
		h.Iov = &rv.iovs[i]
		h.SetIovlen(1)
	}
	rv.recvFn = rv.recvmmsg
	return rv, nil
}

// recvmmsg is the RawConn read callback: one recvmmsg call for up to
// recvBatch datagrams; false waits for the socket to become readable.
func (rv *receiver) recvmmsg(fd uintptr) bool {
	for i := range rv.msgs {
		rv.msgs[i].Hdr.Namelen = unix.SizeofSockaddrInet4
		rv.msgs[i].Hdr.Flags = 0
	}
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd,
			uintptr(unsafe.Pointer(&rv.msgs[0])), uintptr(len(rv.msgs)), 0, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		rv.n, rv.errno = int(n), errno
		return true
	}
}

// socketDrops returns how many datagrams the kernel dropped because the
// socket's receive buffer was full (SO_MEMINFO's drop count, kept by the
// kernel for the socket's life: a counter). It is read when the metrics
// are, not on the receive path; 0 once the socket is closed.
func (rv *receiver) socketDrops() uint64 {
	var info [skMeminfoVars]uint32
	l := uint32(len(info) * 4)
	var errno syscall.Errno
	if err := rv.rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&l)), 0)
	}); err != nil || errno != 0 || l < (skMeminfoDrops+1)*4 {
		return 0
	}
	return uint64(info[skMeminfoDrops])
}

// run receives until the socket is closed.
func (rv *receiver) run() error {
	for {
		if err := rv.rc.Read(rv.recvFn); err != nil {
			return nil // closed
		}
		if rv.errno != 0 {
			rv.r.m.errors.Inc()
			if throttled(&rv.lastLog) {
				rv.r.log.Warn("relay receive failed (repeats are counted in go_pmtud_error_total)", "err", rv.errno)
			}
			time.Sleep(10 * time.Millisecond) // do not spin on a persistent error
			continue
		}
		rv.r.m.relayRecv.Add(rv.n)
		rv.stamp(time.Now())
		for i := range rv.n {
			if reason := rv.handle(i); reason != 0 {
				rv.r.m.relayDropped[reason].Inc()
			} else {
				rv.r.m.injected.Inc()
			}
		}
	}
}

// stamp sets the time and the peer set handle judges the datagrams in hand
// by.
func (rv *receiver) stamp(t time.Time) {
	rv.set = rv.r.set.Load()
	rv.now = rv.r.dedup.now(t)
	rv.nowUnix = uint64(t.Unix())
}

// handle checks datagram i and injects its packet; 0 means injected.
// Call stamp first.
func (rv *receiver) handle(i int) RecvDropReason {
	m := &rv.msgs[i]
	if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
		return RecvTruncated
	}
	sa := &rv.names[i]
	src := netip.AddrFrom4(sa.Addr)
	k, ok := rv.set.index[src]
	if !ok || sa.Family != unix.AF_INET {
		return RecvNotPeer
	}
	window := rv.set.state[k].replay
	d := rv.bufs[i*recvBufLen : i*recvBufLen+int(m.Len)]
	env, err := rv.opener.Open(d, src)
	if err != nil {
		if e, ok := err.(wire.EnvelopeError); ok && e > 0 && e < wire.EnvelopeErrorCount {
			return RecvDropReason(e)
		}
		return RecvDropReason(wire.ErrEnvelopeTag)
	}
	f, err := wire.Parse(env.Packet)
	if err != nil {
		if e, ok := err.(wire.Error); ok && e > 0 && e < wire.ErrorCount {
			return recvInnerBase + RecvDropReason(e)
		}
		return recvInnerBase + RecvDropReason(wire.ErrTruncated)
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
	if f.Src.Is6() && !rv.tun.ipv6 {
		return RecvIPv6Off
	}
	if rv.r.dedup.seen(rv.r.dedup.key(f.Src, f.Dst, f.ICMP), rv.now) {
		return RecvDuplicate
	}
	if err := rv.tun.write(env.Packet); err != nil {
		if throttled(&rv.lastLog) {
			rv.r.log.Warn("inject into TUN failed (repeats are counted in go_pmtud_relay_dropped_total)", "dev", rv.tun.name, "err", err)
		}
		return RecvInjectFailed
	}
	return 0
}

// close closes the socket, which ends run. It is safe to call twice.
func (rv *receiver) close() error {
	if err := rv.file.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("pmtud: close relay socket: %w", err)
	}
	return nil
}
