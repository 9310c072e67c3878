package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// ListenBatch is how many datagrams one Read may return.
	ListenBatch = 64
	// recvBufLen holds the largest UDP datagram there is, so that no
	// packet a peer may send is cut (Linux quotes 576 bytes; others more).
	// Only the pages a datagram touches become resident.
	recvBufLen = 1 << 16
)

// Listener is the udp relay's receive socket: it reads datagrams in
// batches of up to ListenBatch with one recvmmsg, into buffers allocated
// once (4 MiB of address space; only touched pages are resident). It is
// read by one goroutine; Close may come from any.
type Listener struct {
	file *os.File
	rc   syscall.RawConn

	bufs  []byte // ListenBatch * recvBufLen
	iovs  []unix.Iovec
	names []sockaddr
	msgs  []unix.Mmsghdr
	v6    bool // an AF_INET6 socket
	// ctls are the messages' control buffers: a UDP_GRO segment size.
	ctls []byte

	// The read in progress: recvFn's outputs.
	n      int
	errno  syscall.Errno
	recvFn func(fd uintptr) bool
}

// Listen binds a UDP socket to src:port, with an 8 MiB receive buffer to
// absorb a storm's bursts from many peers (SO_RCVBUFFORCE where allowed).
// The socket is of src's family (IPv6 only for an IPv6 src).
func Listen(src netip.Addr, port uint16) (*Listener, error) {
	fam := unix.AF_INET
	if src.Is6() {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("transport: UDP socket: %w", err)
	}
	if err := bindAddr(fd, src, int(port)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("transport: bind relay port %v:%d: %w", src, port, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	// UDP_GRO (include/uapi/linux/udp.h): a sender's segmented send
	// arrives whole, one read for all its datagrams (Segment says where
	// they part). Kernels before 5.0 lack it; they deliver datagrams one
	// by one, as without.
	unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	file := os.NewFile(uintptr(fd), "pmtud-relay")
	rc, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("transport: relay socket: %w", err)
	}
	l := &Listener{
		file:  file,
		rc:    rc,
		bufs:  make([]byte, ListenBatch*recvBufLen),
		iovs:  make([]unix.Iovec, ListenBatch),
		names: make([]sockaddr, ListenBatch),
		msgs:  make([]unix.Mmsghdr, ListenBatch),
		v6:    src.Is6(),
		ctls:  make([]byte, ListenBatch*ctlLen),
	}
	for i := range l.msgs {
		l.iovs[i].Base = &l.bufs[i*recvBufLen]
		l.iovs[i].SetLen(recvBufLen)
		h := &l.msgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&l.names[i]))
		h.Iov = &l.iovs[i]
		h.SetIovlen(1)
	}
	l.recvFn = l.recvmmsg
	return l, nil
}

// recvmmsg is the RawConn read callback: one recvmmsg call for up to
// ListenBatch datagrams; false waits for the socket to become readable.
func (l *Listener) recvmmsg(fd uintptr) bool {
	for i := range l.msgs {
		l.msgs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		l.msgs[i].Hdr.Flags = 0
		l.msgs[i].Hdr.Control = &l.ctls[i*ctlLen]
		l.msgs[i].Hdr.SetControllen(ctlLen)
	}
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd,
			uintptr(unsafe.Pointer(&l.msgs[0])), uintptr(len(l.msgs)), 0, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		l.n, l.errno = int(n), errno
		return true
	}
}

// ErrClosed is returned by Read once the Listener is closed.
var ErrClosed = errors.New("transport: listener closed")

// Read waits for datagrams and returns how many the batch holds; Datagram
// returns each until the next Read. It returns ErrClosed once the Listener
// is closed, and a socket error (a syscall.Errno) as it comes, after
// which Read may be called again. It allocates nothing.
func (l *Listener) Read() (int, error) {
	if err := l.rc.Read(l.recvFn); err != nil {
		return 0, ErrClosed
	}
	if l.errno != 0 {
		return 0, l.errno
	}
	return l.n, nil
}

// Datagram returns datagram i of the batch Read returned: its source (the
// zero Addr if it is not of the socket's family), its bytes (a view into the Listener's
// buffer, valid until the next Read) and whether it was longer than the
// buffer and cut.
func (l *Listener) Datagram(i int) (src netip.Addr, b []byte, truncated bool) {
	m, sa := &l.msgs[i], &l.names[i]
	switch sa.Family {
	case unix.AF_INET:
		src = netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(sa)).Addr)
	case unix.AF_INET6:
		src = netip.AddrFrom16(sa.Addr)
	}
	return src, l.bufs[i*recvBufLen : i*recvBufLen+int(m.Len)], m.Hdr.Flags&unix.MSG_TRUNC != 0
}

// ctlLen holds one control message with an int: UDP_GRO's segment size.
var ctlLen = unix.CmsgSpace(4)

// Segment returns the size of the datagrams that datagram i of the batch
// Read returned is made of, when the kernel delivered a sender's
// segmented send whole (UDP_GRO): every that many bytes but the last part
// are one datagram. 0 means datagram i is one datagram. It allocates
// nothing.
func (l *Listener) Segment(i int) int {
	h := &l.msgs[i].Hdr
	if h.Controllen < uint64(unix.CmsgLen(4)) {
		return 0
	}
	c := (*unix.Cmsghdr)(unsafe.Pointer(&l.ctls[i*ctlLen]))
	if c.Level != unix.IPPROTO_UDP || c.Type != unix.UDP_GRO {
		return 0
	}
	return int(*(*int32)(unsafe.Pointer(&l.ctls[i*ctlLen+unix.CmsgLen(0)])))
}

// Drops returns how many datagrams the kernel dropped because the
// socket's receive buffer was full (SO_MEMINFO's drop count, kept by the
// kernel for the socket's life: a counter). It makes one getsockopt call;
// 0 once the socket is closed.
func (l *Listener) Drops() uint64 {
	var info [unix.SK_MEMINFO_VARS]uint32
	n := uint32(len(info) * 4)
	var errno syscall.Errno
	if err := l.rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&n)), 0)
	}); err != nil || errno != 0 || n < (unix.SK_MEMINFO_DROPS+1)*4 {
		return 0
	}
	return uint64(info[unix.SK_MEMINFO_DROPS])
}

// Close closes the socket, which ends a Read in progress. It is safe to
// call twice.
func (l *Listener) Close() error {
	if err := l.file.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("transport: close relay socket: %w", err)
	}
	return nil
}

// SKF_NET_OFF (include/uapi/linux/filter.h): a classic BPF load at this
// offset plus k reads the network header, whatever the socket's layer.
const skfNetOff = -0x100000

// MaxFilterPeers is the most IPv4 peers FilterPeers compiles into a
// filter: a classic BPF program has at most 4,096 instructions
// (BPF_MAXINSNS, include/uapi/linux/bpf_common.h), and each peer takes
// one. IPv6 peers take one each plus nine per block of up to 240 that
// share their first 96 bits, and at most this many too.
const MaxFilterPeers = 3900

// maxInsns is BPF_MAXINSNS (include/uapi/linux/bpf_common.h).
const maxInsns = 4096

// ErrTooManyPeers is FilterPeers' error for a set larger than
// MaxFilterPeers: the socket is then left without a filter.
var ErrTooManyPeers = errors.New("transport: too many peers for a socket filter")

// tooManyPeers is ErrTooManyPeers with the number of the socket's peers.
type tooManyPeers int

func (n tooManyPeers) Error() string {
	return fmt.Sprintf("%v: %d peers of the socket's family, at most %d", ErrTooManyPeers, int(n), MaxFilterPeers)
}
func (tooManyPeers) Unwrap() error { return ErrTooManyPeers }

// FilterPeers attaches a classic BPF filter to the socket that admits only
// datagrams whose source is one of peers (of the socket's family; others
// are left out): the kernel drops the rest
// before they are queued (counted in Drops, as the socket's drops), so a
// flood from anyone else cannot crowd out the peers' copies. It replaces
// the previous filter atomically. For more than MaxFilterPeers peers it
// detaches any filter and returns an error that is ErrTooManyPeers. Cost
// per datagram: one comparison per peer, in the kernel.
func (l *Listener) FilterPeers(peers []netip.Addr) error {
	peers = slices.DeleteFunc(slices.Clone(peers), func(a netip.Addr) bool { return a.Is4() == l.v6 })
	var prog []unix.SockFilter
	if len(peers) <= MaxFilterPeers {
		if l.v6 {
			prog = peerFilter6(peers)
		} else {
			prog = peerFilter(peers)
		}
	}
	if len(peers) > MaxFilterPeers || len(prog) > maxInsns {
		var errno syscall.Errno
		l.rc.Control(func(fd uintptr) {
			if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DETACH_FILTER, 0); err != nil && err != unix.ENOENT {
				errno, _ = err.(syscall.Errno)
			}
		})
		if errno != 0 {
			return fmt.Errorf("transport: detach socket filter: %w", errno)
		}
		return tooManyPeers(len(peers))
	}
	var err error
	if cerr := l.rc.Control(func(fd uintptr) {
		err = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
			&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
	}); cerr != nil {
		return fmt.Errorf("transport: attach socket filter: %w", cerr)
	}
	if err != nil {
		return fmt.Errorf("transport: attach socket filter for %d peers: %w", len(peers), err)
	}
	return nil
}

// peerFilter compiles the filter: load the IPv4 source, then blocks of up
// to 250 equality tests (a conditional jump reaches at most 255
// instructions ahead), each block ending in a jump over its own "accept";
// drop when no test matched.
func peerFilter(peers []netip.Addr) []unix.SockFilter {
	const block = 250
	src := int32(skfNetOff + 12) // the IPv4 source address
	prog := []unix.SockFilter{{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: uint32(src)}}
	for len(peers) > 0 {
		n := min(len(peers), block)
		for i, a := range peers[:n] {
			b := a.As4()
			// True: to this block's accept, n-i instructions ahead.
			prog = append(prog, unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K,
				K: binary.BigEndian.Uint32(b[:]), Jt: uint8(n - i), Jf: 0})
		}
		prog = append(prog,
			unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JA, K: 1}, // to the next block
			unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff})
		peers = peers[n:]
	}
	return append(prog, unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: 0})
}

// peerFilter6 compiles the IPv6 filter. The peers, sorted, fall into
// blocks of up to 240 that share their first 96 bits: a block compares
// the source's first three words to its prefix (a mismatch jumps to the
// next block), then the last word to each peer's, as peerFilter does.
// Node addresses of one cluster usually share a /64, so a peer costs about
// one instruction.
func peerFilter6(peers []netip.Addr) []unix.SockFilter {
	const block = 240
	off := int32(skfNetOff + 8) // the IPv6 source address
	src := uint32(off)
	peers = slices.Clone(peers)
	slices.SortFunc(peers, netip.Addr.Compare)
	word := func(a netip.Addr, i int) uint32 {
		b := a.As16()
		return binary.BigEndian.Uint32(b[4*i:])
	}
	var prog []unix.SockFilter
	for len(peers) > 0 {
		n := 1
		for n < len(peers) && n < block && word(peers[n], 0) == word(peers[0], 0) &&
			word(peers[n], 1) == word(peers[0], 1) && word(peers[n], 2) == word(peers[0], 2) {
			n++
		}
		// The block: 6 prefix instructions, a load, n tests, a jump over
		// the accept, the accept. A prefix mismatch jumps to the next
		// block, ahead of it by what remains of this one.
		rest := 1 + n + 2 // after the prefix
		for i := range 3 {
			prog = append(prog,
				unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: src + uint32(4*i)},
				unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: word(peers[0], i), Jf: uint8(2*(2-i) + rest)})
		}
		prog = append(prog, unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: src + 12})
		for i, a := range peers[:n] {
			prog = append(prog, unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: word(a, 3), Jt: uint8(n - i)})
		}
		prog = append(prog,
			unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JA, K: 1},
			unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff})
		peers = peers[n:]
	}
	return append(prog, unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: 0})
}
