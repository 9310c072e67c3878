package pmtud

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// maxMmsg is the most messages one sendmmsg takes: UIO_MAXIOV
	// (include/uapi/linux/uio.h); the kernel silently caps vlen there.
	maxMmsg = 1024
	// icmpFilter is ICMP_FILTER (include/uapi/linux/icmp.h), the SOL_RAW
	// option with a bitmask of ICMP types a raw socket does not receive.
	icmpFilter = 1
	// sendRetries bounds the retries of a message the kernel refused with
	// ENOBUFS (qdisc or neighbour queue full) or EAGAIN (no buffer space
	// within sendTimeout) before it is counted as an error.
	sendRetries = 3
	// sendTimeout is SO_SNDTIMEO of the blocking send sockets.
	sendTimeout = 100 * time.Millisecond
	// maxReports bounds the error-queue reads at a time.
	maxReports = 64
	// icmpDestUnreach and icmpFragNeededCode (include/uapi/linux/icmp.h):
	// reports of these types are peers out of reach.
	icmpDestUnreach    = 3
	icmpFragNeededCode = 4
)

// fanout sends each payload of a batch to every peer, with sendmmsg over
// one socket. The messages are prebuilt once: message i*P+j points at
// payload i's iovecs and at peer j's sockaddr, so per batch only the
// iovecs change. A message has one iovec (the payload) or two (a header,
// then the payload: the payload is never copied).
//
// The socket is blocking and stays out of the Go netpoller: a worker owns
// its OS thread, so a sendmmsg that waits for buffer space parks only that
// thread. Registered with the netpoller, every packet the kernel frees
// would wake the poller (measured: 8 µs per packet instead of 3.3 on the
// development VM).
//
// A fanout is owned by one goroutine; close it only when that goroutine
// no longer sends.
type fanout struct {
	fd   int
	port uint16 // destination port; 0 for raw sockets

	peers []netip.Addr
	parts int                     // iovecs per message: 1, or 2 with a header
	addrs []unix.RawSockaddrInet4 // one per peer
	iovs  []unix.Iovec            // parts per payload of a group
	msgs  []unix.Mmsghdr          // group * len(peers)

	// State of the send in progress.
	off, end int
	retries  int
	// stopping, when set and true, ends retries: the relay is shutting
	// down, and a wedged device must not hold the drain up for
	// sendRetries × sendTimeout per message.
	stopping *atomic.Bool
	errs     []uint64 // per peer, this group

	// The last send error and its peer, kept as values (not a formatted
	// error) so a dead peer costs no allocation.
	lastErrno syscall.Errno
	lastPeer  int

	// Totals per peer, for the metrics; reset by the caller.
	sent    []uint64
	sendErr []uint64

	// The udp relay's socket has IP_RECVERR: an ICMP error that a peer's
	// kernel sends back for an earlier datagram (port unreachable: no
	// go-pmtud listening) fails the next send once and queues a report
	// naming that peer. unreachable counts the destination-unreachable
	// reports per peer; reset by the caller. resentAt is the message last
	// sent again after such a failure.
	recvErr     bool
	resentAt    int
	errName     unix.RawSockaddrInet4
	errCtl      [128]byte
	unreachable []uint64
}

// newICMPFanout opens a raw IPPROTO_ICMP socket bound to src, with TTL ttl,
// that receives nothing, and prepares messages to peers.
func newICMPFanout(src netip.Addr, ttl int, peers []netip.Addr) (*fanout, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return nil, fmt.Errorf("pmtud: raw ICMP socket: %w", err)
	}
	setup := func() error {
		// Without the filter a raw ICMP socket queues a copy of every ICMP
		// the node receives, and nobody reads it: block all 32 types.
		if err := unix.SetsockoptInt(fd, unix.SOL_RAW, icmpFilter, -1); err != nil {
			return fmt.Errorf("pmtud: set ICMP_FILTER: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl); err != nil {
			return fmt.Errorf("pmtud: set IP_TTL %d: %w", ttl, err)
		}
		sa := &unix.SockaddrInet4{Addr: src.As4()}
		if err := unix.Bind(fd, sa); err != nil {
			return fmt.Errorf("pmtud: bind raw socket to %v: %w", src, err)
		}
		return nil
	}
	if err := setup(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return newFanout(fd, "icmp", peers, 0, 1)
}

// newFanout takes ownership of the blocking socket fd and prepares messages
// to peers; port is the destination port (0 for raw sockets), parts the
// iovecs per message (2: header and payload).
func newFanout(fd int, name string, peers []netip.Addr, port uint16, parts int) (*fanout, error) {
	// A send that waits longer than this for buffer space gives up and is
	// retried, then counted: a wedged device must not wedge the worker.
	tv := unix.NsecToTimeval(sendTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pmtud: %s socket: set SO_SNDTIMEO: %w", name, err)
	}
	f := &fanout{fd: fd, port: port, parts: parts}
	f.setPeers(peers)
	return f, nil
}

// setPeers prebuilds the messages to peers, which the fanout keeps (the
// caller must not modify them). It reuses the fanout's buffers and
// allocates only when a set needs larger ones than any before; call it
// when the peer set changes, not per batch. With more than maxMmsg peers a
// group is one payload, whose messages sendmmsg takes in several calls.
func (f *fanout) setPeers(peers []netip.Addr) {
	p := len(peers)
	group := 0 // payloads per group: one sendmmsg's worth
	if p > 0 {
		group = max(1, maxMmsg/p)
	}
	f.peers = peers
	f.addrs = resize(f.addrs, p)
	f.iovs = resize(f.iovs, group*f.parts)
	f.msgs = resize(f.msgs, group*p)
	f.errs = resize(f.errs, p)
	f.sent = resize(f.sent, p)
	f.sendErr = resize(f.sendErr, p)
	f.unreachable = resize(f.unreachable, p)
	for j, a := range peers {
		f.addrs[j] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		// sin_port is in network byte order.
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&f.addrs[j].Port))[:], f.port)
	}
	for i := range group {
		for j := range f.addrs {
			h := &f.msgs[i*p+j].Hdr
			h.Name = (*byte)(unsafe.Pointer(&f.addrs[j]))
			h.Namelen = unix.SizeofSockaddrInet4
			h.Iov = &f.iovs[i*f.parts]
			h.SetIovlen(f.parts)
		}
	}
}

// resize returns s with length n and every element zero, reusing its
// array when it is large enough.
func resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	s = s[:n]
	clear(s)
	return s
}

// send sends every payload, preceded by its header when the fanout has two
// parts (heads[i] goes with payloads[i]; heads is nil otherwise), to every
// peer. It blocks while the socket buffer is full and allocates nothing.
// Failures are counted per peer in f.sendErr (the last one in f.lastErrno),
// successes in f.sent.
func (f *fanout) send(heads, payloads [][]byte) {
	p := len(f.peers)
	if p == 0 {
		return // no peers: nothing to send
	}
	for len(payloads) > 0 {
		g := min(len(payloads), len(f.iovs)/f.parts)
		for i, b := range payloads[:g] {
			iov := f.iovs[i*f.parts : (i+1)*f.parts]
			if f.parts == 2 {
				iov[0].Base = unsafe.SliceData(heads[i])
				iov[0].SetLen(len(heads[i]))
			}
			iov[f.parts-1].Base = unsafe.SliceData(b)
			iov[f.parts-1].SetLen(len(b))
		}
		clear(f.errs)
		f.off, f.end, f.retries, f.resentAt = 0, g*p, 0, -1
		f.sendmmsg()
		f.account(g)
		payloads = payloads[g:]
		if heads != nil {
			heads = heads[g:]
		}
	}
}

// account adds the outcome of a group of g payloads to the totals.
func (f *fanout) account(g int) {
	for j := range f.sent {
		f.sent[j] += uint64(g) - f.errs[j]
		f.sendErr[j] += f.errs[j]
	}
}

// sendmmsg sends msgs[off:end], resuming after partial sends.
func (f *fanout) sendmmsg() {
	p := len(f.peers)
	for f.off < f.end {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(f.fd),
			uintptr(unsafe.Pointer(&f.msgs[f.off])), uintptr(min(f.end-f.off, maxMmsg)), 0, 0, 0)
		switch {
		case errno == 0:
			if f.recvErr && int(n) < min(f.end-f.off, maxMmsg) {
				// A message after the first failed and the kernel kept
				// quiet about why: maybe an earlier datagram's report.
				f.readReports()
			}
			f.off += int(n)
			f.retries = 0
			continue
		case errno == unix.EINTR:
			continue
		case f.recvErr && f.resentAt != f.off:
			// An ICMP error for an earlier datagram fails one send, this
			// one, which was not sent: count the reports, send it once
			// more. (Even with no report queued: a full queue drops the
			// report but not the error.) A second failure is its own.
			f.readReports()
			f.resentAt = f.off
			continue
		case (errno == unix.EAGAIN || errno == unix.ENOBUFS) && f.stopping != nil && f.stopping.Load():
			// Shutting down: count it below, do not wait.
		case errno == unix.EAGAIN && f.retries < sendRetries:
			// SO_SNDTIMEO expired: the socket buffer did not drain.
			f.retries++
			continue
		case errno == unix.ENOBUFS && f.retries < sendRetries:
			// A device queue is full: give it a moment to drain.
			f.retries++
			time.Sleep(time.Duration(f.retries) * 50 * time.Microsecond)
			continue
		}
		// The first message of the call failed: count it against its peer
		// and go on with the next, so one unreachable peer never stops
		// the others.
		f.errs[f.off%p]++
		f.lastErrno, f.lastPeer = errno, f.off%p
		f.off++
		f.retries = 0
	}
}

// readReports empties the socket's error queue, counting each ICMP
// destination-unreachable report (but fragmentation needed) against the
// peer it names: the destination of the datagram that caused it. The
// socket sets no other option that adds control messages, so each entry
// carries one: a cmsghdr and struct sock_extended_err
// (include/uapi/linux/errqueue.h). It allocates nothing.
func (f *fanout) readReports() {
	eeLen := int(unsafe.Sizeof(unix.SockExtendedErr{}))
	for range maxReports {
		var msg unix.Msghdr
		msg.Name = (*byte)(unsafe.Pointer(&f.errName))
		msg.Namelen = unix.SizeofSockaddrInet4
		msg.Control = &f.errCtl[0]
		msg.SetControllen(len(f.errCtl))
		_, _, errno := unix.Syscall(unix.SYS_RECVMSG, uintptr(f.fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if errno != 0 {
			return // EAGAIN: the queue is empty
		}
		h := (*unix.Cmsghdr)(unsafe.Pointer(&f.errCtl[0]))
		if int(msg.Controllen) < unix.CmsgLen(eeLen) || int(h.Len) < unix.CmsgLen(eeLen) ||
			h.Level != unix.IPPROTO_IP || h.Type != unix.IP_RECVERR {
			continue
		}
		ee := (*unix.SockExtendedErr)(unsafe.Pointer(&f.errCtl[unix.CmsgLen(0)]))
		if ee.Origin != unix.SO_EE_ORIGIN_ICMP || ee.Type != icmpDestUnreach || ee.Code == icmpFragNeededCode {
			continue
		}
		for k := range f.addrs {
			if f.addrs[k].Addr == f.errName.Addr {
				f.unreachable[k]++
				break
			}
		}
	}
}

// close closes the socket. Call it once, when nothing sends any more.
func (f *fanout) close() error {
	if err := unix.Close(f.fd); err != nil {
		return fmt.Errorf("pmtud: close socket: %w", err)
	}
	return nil
}
