// Package transport is how copies travel between nodes: the send half
// (Fanout: one payload to every peer with sendmmsg, over a raw ICMP socket
// for the icmp relay or a UDP socket for the udp relay) and the udp
// relay's receive half (Listener: relay datagrams in batches with
// recvmmsg). It owns the sockets and their buffers; what to send and what
// a received datagram means is the caller's.
package transport

import (
	"encoding/binary"
	"fmt"
	"math/bits"
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
	// icmp6DestUnreach is ICMPV6_DEST_UNREACH (include/uapi/linux/icmpv6.h);
	// Packet Too Big is a type of its own, never counted.
	icmp6DestUnreach = 1
	// icmp6Filter is ICMP6_FILTER (include/uapi/linux/icmpv6.h), the
	// IPPROTO_ICMPV6 option with a bitmask of ICMPv6 types a raw socket
	// does not receive (a set bit blocks the type).
	icmp6Filter = 1
)

// sockaddr holds a peer's socket address of either family: a
// RawSockaddrInet4 in its first bytes, or a RawSockaddrInet6.
type sockaddr = unix.RawSockaddrInet6

// Fanout sends each payload of a batch to every peer, with sendmmsg over
// one socket. The messages are prebuilt once: message i*P+j points at
// payload i's iovecs and at peer j's sockaddr, so per batch only the
// iovecs change. A message has one iovec (the payload) or two (a header,
// then the payload: the payload is never copied).
//
// The socket is blocking and stays out of the Go netpoller: a sendmmsg
// that waits for buffer space parks only its caller's thread (a worker's
// own, or the NFLOG reader's when a single worker sends from it), and the
// runtime hands that thread's P to other goroutines meanwhile. Registered with the netpoller, every packet the kernel frees
// would wake the poller (measured more than twice as costly per packet:
// docs/performance.md).
//
// A Fanout is owned by one goroutine; close it only when that goroutine
// no longer sends.
type Fanout struct {
	fd   int
	port uint16 // destination port; 0 for raw sockets

	peers []netip.Addr
	parts int // iovecs per message: 1, or 2 with a header
	// l2 is set for an L2 Fanout (NewL2).
	l2    *l2Dest
	addrs []sockaddr     // one per peer, of the socket's family
	v6    bool           // the socket is AF_INET6: peers are IPv6 addresses
	salen uint32         // the size of the family's sockaddr
	iovs  []unix.Iovec   // parts per payload of a group
	msgs  []unix.Mmsghdr // group * len(peers)

	// Targeted sends (SendSome): messages to chosen peers, built per
	// batch in buffers of their own, allocated on first use. somePeer[i]
	// is the peer of some[i]; someCount counts a flush's messages per peer.
	some      []unix.Mmsghdr
	someIovs  []unix.Iovec
	somePeer  []int32
	someCount []uint64

	// State of the send in progress: msgs or some, cur[off:end] to go;
	// curPeer names each message's peer (nil: message i goes to peer i%P).
	cur      []unix.Mmsghdr
	curPeer  []int32
	off, end int
	retries  int
	// stopping, when set and true, ends retries: the relay is shutting
	// down, and a wedged device must not hold the drain up for
	// sendRetries × sendTimeout per message.
	stopping *atomic.Bool
	errs     []uint64 // per peer, this group

	tally Tally

	// The udp relay's socket has IP_RECVERR: an ICMP error that a peer's
	// kernel sends back for an earlier datagram (port unreachable: no
	// go-pmtud listening) fails the next send once and queues a report
	// naming that peer; Tally.Unreachable counts them. resentAt is the
	// message last sent again after such a failure.
	recvErr  bool
	resentAt int
	errName  sockaddr
	errCtl   [128]byte

	// SendSegments' messages (one per peer), iovecs (header and payload
	// of each segment, shared by all peers) and UDP_SEGMENT control
	// message; noSegments once the kernel refused segmentation.
	segMsgs    []unix.Mmsghdr
	segIovs    []unix.Iovec
	segCtl     []byte
	noSegments bool
}

// Tally is what a Fanout's sends came to, per peer (index k is the k-th
// peer given to SetPeers) since the caller last called Reset.
type Tally struct {
	Sent   []uint64 // copies the kernel took
	Errors []uint64 // copies the kernel refused (after retries)
	// Unreachable counts ICMP destination-unreachable reports for earlier
	// copies (udp only: port unreachable means no go-pmtud listening).
	Unreachable []uint64
	// The last send error and its peer, kept as values (not a formatted
	// error) so a dead peer costs no allocation; LastErrno 0: none.
	LastErrno syscall.Errno
	LastPeer  int
}

// Reset zeroes the tally. It allocates nothing.
func (t *Tally) Reset() {
	clear(t.Sent)
	clear(t.Errors)
	clear(t.Unreachable)
	t.LastErrno, t.LastPeer = 0, 0
}

// NewICMP opens a raw IPPROTO_ICMP socket bound to src, with TTL ttl, that
// receives nothing, and prepares messages to peers (see SetPeers): each
// payload is an ICMP message, re-originated from src. For an IPv6 src it
// opens a raw IPPROTO_ICMPV6 socket instead, with hop limit ttl, whose
// payloads are ICMPv6 messages: the kernel computes their checksum over
// the new pseudo-header (RFC 3542 3.1: always on for ICMPv6 raw sockets).
// Peers must be of src's family.
func NewICMP(src netip.Addr, ttl int, peers []netip.Addr) (*Fanout, error) {
	if src.Is6() {
		return newICMP6(src, ttl, peers)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return nil, fmt.Errorf("transport: raw ICMP socket: %w", err)
	}
	setup := func() error {
		// Without the filter a raw ICMP socket queues a copy of every ICMP
		// the node receives, and nobody reads it: block all 32 types.
		if err := unix.SetsockoptInt(fd, unix.SOL_RAW, icmpFilter, -1); err != nil {
			return fmt.Errorf("transport: set ICMP_FILTER: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl); err != nil {
			return fmt.Errorf("transport: set IP_TTL %d: %w", ttl, err)
		}
		sa := &unix.SockaddrInet4{Addr: src.As4()}
		if err := unix.Bind(fd, sa); err != nil {
			return fmt.Errorf("transport: bind raw socket to %v: %w", src, err)
		}
		return nil
	}
	if err := setup(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return newFanout(fd, "icmp", peers, 0, 1, nil)
}

// newICMP6 is NewICMP for an IPv6 source.
func newICMP6(src netip.Addr, ttl int, peers []netip.Addr) (*Fanout, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		return nil, fmt.Errorf("transport: raw ICMPv6 socket: %w", err)
	}
	setup := func() error {
		// Block all 256 types: nothing reads the socket (struct
		// icmp6_filter, include/uapi/linux/icmpv6.h: eight 32-bit words).
		var block [32]byte
		for i := range block {
			block[i] = 0xff
		}
		if err := unix.SetsockoptString(fd, unix.IPPROTO_ICMPV6, icmp6Filter, string(block[:])); err != nil {
			return fmt.Errorf("transport: set ICMP6_FILTER: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, ttl); err != nil {
			return fmt.Errorf("transport: set IPV6_UNICAST_HOPS %d: %w", ttl, err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: src.As16()}); err != nil {
			return fmt.Errorf("transport: bind raw ICMPv6 socket to %v: %w", src, err)
		}
		return nil
	}
	if err := setup(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f, err := newFanout(fd, "icmp6", nil, 0, 1, nil)
	if f != nil {
		f.setFamily(true)
		f.SetPeers(peers)
	}
	return f, err
}

// setFamily makes the Fanout's peer addresses IPv6 ones (v6) or IPv4 ones.
func (f *Fanout) setFamily(v6 bool) {
	f.v6, f.salen = v6, unix.SizeofSockaddrInet4
	if v6 {
		f.salen = unix.SizeofSockaddrInet6
	}
}

// NewUDP opens a UDP socket bound to src (any port) whose messages carry a
// header (an envelope) and a payload (the router's packet) to port on
// every peer. A peer's ICMP errors for earlier datagrams are read and
// counted in Tally.Unreachable. The socket is of src's family (IPv6 only
// for an IPv6 src, with hop limit ttl); peers must be of that family.
func NewUDP(src netip.Addr, ttl int, peers []netip.Addr, port uint16) (*Fanout, error) {
	fam, lvl, ttlOpt, errOpt := unix.AF_INET, unix.IPPROTO_IP, unix.IP_TTL, unix.IP_RECVERR
	if src.Is6() {
		fam, lvl, ttlOpt, errOpt = unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, unix.IPV6_RECVERR
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("transport: UDP socket: %w", err)
	}
	setup := func() error {
		if err := unix.SetsockoptInt(fd, lvl, ttlOpt, ttl); err != nil {
			return fmt.Errorf("transport: set TTL/hop limit %d: %w", ttl, err)
		}
		if err := bindAddr(fd, src, 0); err != nil {
			return fmt.Errorf("transport: bind UDP socket to %v: %w", src, err)
		}
		// A peer without go-pmtud answers with port unreachable; without
		// IP_RECVERR an unconnected socket never hears of it.
		if err := unix.SetsockoptInt(fd, lvl, errOpt, 1); err != nil {
			return fmt.Errorf("transport: set IP_RECVERR: %w", err)
		}
		// Nothing reads the socket's receive queue, and error reports share
		// its budget: a stray datagram to its port must not fill it and
		// crowd them out. A filter that returns 0 drops everything.
		drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: 1, Filter: &drop[0]}); err != nil {
			return fmt.Errorf("transport: attach drop-all filter: %w", err)
		}
		return nil
	}
	if err := setup(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f, err := newFanout(fd, "udp", nil, port, 2, nil)
	if f != nil {
		f.recvErr = true
		f.setFamily(src.Is6())
		f.SetPeers(peers)
	}
	return f, err
}

// bindAddr binds fd, a socket of a's family (IPv6 only for an IPv6 a), to
// a and port.
func bindAddr(fd int, a netip.Addr, port int) error {
	if a.Is6() {
		// An AF_INET6 socket must not take IPv4-mapped traffic: the IPv4
		// socket has its own filter and peers.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrInet6{Addr: a.As16(), Port: port})
	}
	return unix.Bind(fd, &unix.SockaddrInet4{Addr: a.As4(), Port: port})
}

// segment is the one destination of a broadcast L2 Fanout (the
// interface's segment) and of NewL2To's.
var segment = []netip.Addr{{}}

// l2Dest is what an L2 Fanout sends to.
type l2Dest struct {
	ifindex int32
	// resolve returns a peer's link-layer address; nil: broadcast.
	resolve func(netip.Addr) ([6]byte, bool)
	// ll[j] are peer j's destinations for IPv4 and IPv6 payloads (one
	// entry, the broadcast address, without resolve).
	ll [][2]unix.RawSockaddrLinklayer
}

// set makes d (IPv4 and IPv6) the link-layer destination mac.
func (l *l2Dest) set(d *[2]unix.RawSockaddrLinklayer, mac [6]byte) {
	for i, proto := range [2]uint16{unix.ETH_P_IP, unix.ETH_P_IPV6} {
		a := &d[i]
		a.Family = unix.AF_PACKET
		// sll_protocol is in network byte order.
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&a.Protocol))[:], proto)
		a.Ifindex = l.ifindex
		a.Halen = 6
		copy(a.Addr[:6], mac[:])
	}
}

var broadcastMAC = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// NewL2 opens an AF_PACKET socket that sends each payload, a whole IPv4 or
// IPv6 packet, in Ethernet frames out of the interface ifindex: the kernel
// adds the link-layer header (the interface's address as source, EtherType
// by the payload's version). The socket receives nothing (protocol 0). It
// needs CAP_NET_RAW.
//
// With a nil resolve it sends one broadcast frame per payload, whatever the
// peers: its Tally has one entry, the segment; SetPeers's peers are ignored
// and SendSome sends to all. With resolve it sends one unicast frame per
// peer, to the address resolve returns when SetPeers builds the messages
// (a peer resolve has no address for gets broadcast frames until the next
// SetPeers), like the other Fanouts.
func NewL2(ifindex int, resolve func(netip.Addr) ([6]byte, bool)) (*Fanout, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("transport: AF_PACKET socket: %w", err)
	}
	return newFanout(fd, "l2", nil, 0, 1, &l2Dest{ifindex: int32(ifindex), resolve: resolve})
}

// NewL2To is NewL2 to a single destination, the link-layer address mac on
// interface ifindex (a veth pair's other end): each payload goes in one
// unicast frame, and the Tally has one entry. SetPeers must not be
// called.
func NewL2To(ifindex int, mac [6]byte) (*Fanout, error) {
	f, err := NewL2(ifindex, func(netip.Addr) ([6]byte, bool) { return mac, true })
	if err != nil {
		return nil, err
	}
	f.SetPeers(segment)
	return f, nil
}

// newFanout takes ownership of the blocking socket fd and prepares messages
// to peers; port is the destination port (0 for raw sockets), parts the
// iovecs per message (2: header and payload).
func newFanout(fd int, name string, peers []netip.Addr, port uint16, parts int, l2 *l2Dest) (*Fanout, error) {
	// A send that waits longer than this for buffer space gives up and is
	// retried, then counted: a wedged device must not wedge the worker.
	tv := unix.NsecToTimeval(sendTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("transport: %s socket: set SO_SNDTIMEO: %w", name, err)
	}
	f := &Fanout{fd: fd, port: port, parts: parts, l2: l2, salen: unix.SizeofSockaddrInet4}
	f.SetPeers(peers)
	return f, nil
}

// SetPeers prebuilds the messages to peers, which the Fanout keeps (the
// caller must not modify them), and resizes the Tally to them. It reuses
// the Fanout's buffers and allocates only when a set needs larger ones
// than any before; call it when the peer set changes, not per batch. With
// more than maxMmsg peers a group is one payload, whose messages sendmmsg
// takes in several calls.
func (f *Fanout) SetPeers(peers []netip.Addr) {
	if f.l2 != nil && f.l2.resolve == nil {
		peers = segment
	}
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
	f.someCount = resize(f.someCount, p)
	f.tally.Sent = resize(f.tally.Sent, p)
	f.tally.Errors = resize(f.tally.Errors, p)
	f.tally.Unreachable = resize(f.tally.Unreachable, p)
	f.tally.LastErrno, f.tally.LastPeer = 0, 0
	if l := f.l2; l != nil {
		l.ll = resize(l.ll, p)
		for j, a := range peers {
			mac := broadcastMAC
			if l.resolve != nil {
				if m, ok := l.resolve(a); ok {
					mac = m
				}
			}
			l.set(&l.ll[j], mac)
		}
	}
	for j, a := range peers {
		if f.l2 != nil {
			break // Send names the link-layer destination of the payload's family
		}
		f.addrs[j] = f.sockaddrOf(a)
	}
	for i := range group {
		for j := range f.addrs {
			h := &f.msgs[i*p+j].Hdr
			h.Name = (*byte)(unsafe.Pointer(&f.addrs[j]))
			h.Namelen = f.salen
			if f.l2 != nil {
				h.Namelen = unix.SizeofSockaddrLinklayer
			}
			h.Iov = &f.iovs[i*f.parts]
			h.SetIovlen(f.parts)
		}
	}
}

// sockaddrOf returns the socket address of a, at the Fanout's port, in
// its family's form.
func (f *Fanout) sockaddrOf(a netip.Addr) sockaddr {
	var sa sockaddr
	if f.v6 {
		sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
	} else {
		*(*unix.RawSockaddrInet4)(unsafe.Pointer(&sa)) = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.Unmap().As4()}
	}
	// sin_port and sin6_port are at the same offset, in network byte order.
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], f.port)
	return sa
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

// Peers returns the peers of the last SetPeers.
func (f *Fanout) Peers() []netip.Addr { return f.peers }

// Tally returns the Fanout's per-peer tally, which Send adds to; the caller
// reads and resets it between sends.
func (f *Fanout) Tally() *Tally { return &f.tally }

// StopRetries makes sends give up retrying once stopping is true: a relay
// that shuts down must not wait on a wedged device.
func (f *Fanout) StopRetries(stopping *atomic.Bool) { f.stopping = stopping }

// Send sends every payload, preceded by its header when the Fanout has two
// parts (heads[i] goes with payloads[i]; heads is ignored otherwise), to every
// peer. It blocks while the socket buffer is full and allocates nothing.
// Outcomes are added to the Tally.
func (f *Fanout) Send(heads, payloads [][]byte) {
	p := len(f.peers)
	if p == 0 {
		return // no peers: nothing to send
	}
	for len(payloads) > 0 {
		g := min(len(payloads), len(f.iovs)/f.parts)
		for i, b := range payloads[:g] {
			f.point(f.iovs[i*f.parts:(i+1)*f.parts], heads, i, b)
			if f.l2 != nil {
				fam := family(b)
				for j := range p {
					f.msgs[i*p+j].Hdr.Name = (*byte)(unsafe.Pointer(&f.l2.ll[j][fam]))
				}
			}
		}
		clear(f.errs)
		f.cur, f.curPeer = f.msgs, nil
		f.off, f.end, f.retries, f.resentAt = 0, g*p, 0, -1
		f.sendmmsg()
		f.account(g)
		payloads = payloads[g:]
		if f.parts == 2 { // heads are used, and sliced, only then
			heads = heads[g:]
		}
	}
}

// SendSome sends each payload, preceded by its header as Send does, to the
// peers its bitmap names: sets[i] is a bitmap over a peer list of which
// this Fanout's peers are the part from index base on, so bit base+k
// selects peer k (bits outside that part are someone else's, and bits
// beyond the bitmap are clear). It batches the messages of many payloads
// into each sendmmsg, blocks while the socket buffer is full, and adds the
// outcomes to the Tally. It allocates its message buffers on first use
// (about 100 KiB), then nothing. Unlike Send it writes a message and its
// iovecs per copy: a few more stores per copy, for few copies.
func (f *Fanout) SendSome(heads, payloads [][]byte, sets [][]uint64, base int) {
	p := len(f.peers)
	if p == 0 {
		return
	}
	if f.l2 != nil && f.l2.resolve == nil {
		f.Send(heads, payloads) // one frame reaches every node anyway
		return
	}
	if f.some == nil {
		f.some = make([]unix.Mmsghdr, maxMmsg)
		f.someIovs = make([]unix.Iovec, maxMmsg*f.parts)
		f.somePeer = make([]int32, maxMmsg)
	}
	n := 0 // messages filled; message n uses someIovs[n*parts:]
	for i, b := range payloads {
		set := sets[i]
		lo, hi := base, min(base+p, len(set)*64)
		for w := lo / 64; w*64 < hi; w++ {
			word := set[w]
			for word != 0 {
				k := w*64 + bits.TrailingZeros64(word)
				word &= word - 1
				if k < lo || k >= hi {
					continue
				}
				if n == len(f.some) {
					f.flushSome(n)
					n = 0
				}
				v := f.someIovs[n*f.parts : (n+1)*f.parts]
				f.point(v, heads, i, b)
				h := &f.some[n].Hdr
				h.Name = (*byte)(unsafe.Pointer(&f.addrs[k-base]))
				h.Namelen = f.salen
				if f.l2 != nil {
					h.Name = (*byte)(unsafe.Pointer(&f.l2.ll[k-base][family(b)]))
					h.Namelen = unix.SizeofSockaddrLinklayer
				}
				h.Iov = &v[0]
				h.SetIovlen(f.parts)
				f.somePeer[n] = int32(k - base)
				f.someCount[k-base]++
				n++
			}
		}
	}
	f.flushSome(n)
}

// family is 1 for an IPv6 packet, 0 otherwise: the index of its
// link-layer destination.
func family(pkt []byte) int {
	if len(pkt) > 0 && pkt[0]>>4 == 6 {
		return 1
	}
	return 0
}

// point sets a message's iovecs v to heads[i] (with two parts) and payload.
func (f *Fanout) point(v []unix.Iovec, heads [][]byte, i int, payload []byte) {
	if f.parts == 2 {
		v[0].Base = unsafe.SliceData(heads[i])
		v[0].SetLen(len(heads[i]))
	}
	v[f.parts-1].Base = unsafe.SliceData(payload)
	v[f.parts-1].SetLen(len(payload))
}

// flushSome sends the first n targeted messages and accounts for them.
func (f *Fanout) flushSome(n int) {
	if n == 0 {
		return
	}
	clear(f.errs)
	f.cur, f.curPeer = f.some, f.somePeer
	f.off, f.end, f.retries, f.resentAt = 0, n, 0, -1
	f.sendmmsg()
	for k, c := range f.someCount {
		if c > 0 {
			f.tally.Sent[k] += c - f.errs[k]
			f.tally.Errors[k] += f.errs[k]
			f.someCount[k] = 0
		}
	}
}

// account adds the outcome of a group of g payloads to the totals.
func (f *Fanout) account(g int) {
	for j := range f.tally.Sent {
		f.tally.Sent[j] += uint64(g) - f.errs[j]
		f.tally.Errors[j] += f.errs[j]
	}
}

// sendmmsg sends cur[off:end], resuming after partial sends.
func (f *Fanout) sendmmsg() {
	p := len(f.peers)
	for f.off < f.end {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(f.fd),
			uintptr(unsafe.Pointer(&f.cur[f.off])), uintptr(min(f.end-f.off, maxMmsg)), 0, 0, 0)
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
		k := f.off % p
		if f.curPeer != nil {
			k = int(f.curPeer[f.off])
		}
		f.errs[k]++
		f.tally.LastErrno, f.tally.LastPeer = errno, k
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
func (f *Fanout) readReports() {
	eeLen := int(unsafe.Sizeof(unix.SockExtendedErr{}))
	for range maxReports {
		var msg unix.Msghdr
		msg.Name = (*byte)(unsafe.Pointer(&f.errName))
		msg.Namelen = f.salen
		msg.Control = &f.errCtl[0]
		msg.SetControllen(len(f.errCtl))
		_, _, errno := unix.Syscall(unix.SYS_RECVMSG, uintptr(f.fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if errno != 0 {
			return // EAGAIN: the queue is empty
		}
		h := (*unix.Cmsghdr)(unsafe.Pointer(&f.errCtl[0]))
		level, typ := int32(unix.IPPROTO_IP), int32(unix.IP_RECVERR)
		if f.v6 {
			level, typ = unix.IPPROTO_IPV6, unix.IPV6_RECVERR
		}
		if int(msg.Controllen) < unix.CmsgLen(eeLen) || int(h.Len) < unix.CmsgLen(eeLen) ||
			h.Level != level || h.Type != typ {
			continue
		}
		ee := (*unix.SockExtendedErr)(unsafe.Pointer(&f.errCtl[unix.CmsgLen(0)]))
		switch {
		case f.v6 && ee.Origin == unix.SO_EE_ORIGIN_ICMP6 && ee.Type == icmp6DestUnreach:
		case !f.v6 && ee.Origin == unix.SO_EE_ORIGIN_ICMP && ee.Type == icmpDestUnreach && ee.Code != icmpFragNeededCode:
		default:
			continue
		}
		for k := range f.addrs {
			if f.sameAddr(&f.addrs[k], &f.errName) {
				f.tally.Unreachable[k]++
				break
			}
		}
	}
}

// sameAddr reports whether two socket addresses of the Fanout's family
// name the same host.
func (f *Fanout) sameAddr(a, b *sockaddr) bool {
	if f.v6 {
		return a.Addr == b.Addr
	}
	return (*unix.RawSockaddrInet4)(unsafe.Pointer(a)).Addr == (*unix.RawSockaddrInet4)(unsafe.Pointer(b)).Addr
}

// Close closes the socket. Call it once, when nothing sends any more.
func (f *Fanout) Close() error {
	if err := unix.Close(f.fd); err != nil {
		return fmt.Errorf("transport: close socket: %w", err)
	}
	return nil
}

// Segmentation offload (UDP_SEGMENT, include/uapi/linux/udp.h: SOL_UDP
// option and control message type 103): the kernel splits one send into
// datagrams of the given size, the last possibly shorter.
const (
	// maxSegments stays below UDP_MAX_SEGMENTS (include/linux/udp.h: 64
	// before Linux 5.5, 128 since).
	maxSegments = 64
	// maxSegmentBytes bounds one segmented send: the payload of one IP
	// packet of 64 KiB, with room for the headers.
	maxSegmentBytes = 65000
)

// SendSegments sends the datagrams heads[i] || payloads[i] to every peer
// with UDP segmentation offload: one message per peer and up to 64
// datagrams, which the kernel splits, instead of a message per datagram.
// Every datagram but the last must have the same length; it returns false,
// having sent nothing, when they do not, when the Fanout is not a UDP one,
// or when the kernel refused segmentation (once refused, the Fanout stops
// trying: the path's MTU is below a segment, or the kernel lacks it), and
// the caller sends them with Send. Outcomes are added to the Tally, a
// datagram per segment. It allocates its buffers on first use, then
// nothing.
func (f *Fanout) SendSegments(heads, payloads [][]byte) bool {
	p := len(f.peers)
	if !f.recvErr || f.noSegments || len(payloads) < 2 || p == 0 {
		return false
	}
	seg := len(heads[0]) + len(payloads[0])
	for i := range payloads {
		n := len(heads[i]) + len(payloads[i])
		if n != seg && (i < len(payloads)-1 || n > seg) {
			return false
		}
	}
	if f.segIovs == nil {
		f.segIovs = make([]unix.Iovec, 2*maxSegments)
		f.segCtl = make([]byte, unix.CmsgSpace(2))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&f.segCtl[0]))
		h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
	}
	if p > len(f.segMsgs) {
		f.segMsgs = make([]unix.Mmsghdr, p)
	}
	*(*uint16)(unsafe.Pointer(&f.segCtl[unix.CmsgLen(0)])) = uint16(seg)
	per := max(1, min(maxSegments, maxSegmentBytes/seg))
	for first := true; len(payloads) > 0; first = false {
		k := min(len(payloads), per)
		for i := range k {
			f.point(f.segIovs[2*i:2*i+2], heads, i, payloads[i])
		}
		msgs := f.segMsgs[:p]
		for j := range msgs {
			h := &msgs[j].Hdr
			h.Name = (*byte)(unsafe.Pointer(&f.addrs[j]))
			h.Namelen = f.salen
			h.Iov = &f.segIovs[0]
			h.SetIovlen(2 * k)
			h.Control = &f.segCtl[0]
			h.SetControllen(len(f.segCtl))
		}
		clear(f.errs)
		f.cur, f.curPeer = msgs, nil
		f.off, f.end, f.retries, f.resentAt = 0, p, 0, -1
		f.sendmmsg()
		if e := f.tally.LastErrno; first && f.sentNone() && (e == unix.EMSGSIZE || e == unix.EINVAL || e == unix.EIO) {
			// No segmentation on this path (EMSGSIZE, EINVAL before Linux
			// 6.x: a segment above the path MTU; EIO: a device without
			// checksum offload), and nothing went out: the caller sends
			// them unsegmented, from now on.
			f.noSegments = true
			f.tally.LastErrno, f.tally.LastPeer = 0, 0
			return false
		}
		for j := range f.tally.Sent {
			f.tally.Sent[j] += uint64(k) * (1 - f.errs[j])
			f.tally.Errors[j] += uint64(k) * f.errs[j]
		}
		payloads, heads = payloads[k:], heads[k:]
	}
	return true
}

// sentNone reports whether every message of the send in progress failed.
func (f *Fanout) sentNone() bool {
	for _, e := range f.errs {
		if e == 0 {
			return false
		}
	}
	return true
}
