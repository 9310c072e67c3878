//go:build linux

package nl

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nfnetlink_log configuration (include/uapi/linux/netfilter/nfnetlink_log.h).
const (
	nfulaCfgCmd      = 1 // NFULA_CFG_CMD: struct nfulnl_msg_config_cmd {u8 command}
	nfulaCfgMode     = 2 // NFULA_CFG_MODE: struct nfulnl_msg_config_mode {__be32 copy_range; u8 copy_mode; u8 pad}
	nfulaCfgNlbufsiz = 3 // NFULA_CFG_NLBUFSIZ: __be32
	nfulaCfgTimeout  = 4 // NFULA_CFG_TIMEOUT: __be32, 1/100 s
	nfulaCfgQthresh  = 5 // NFULA_CFG_QTHRESH: __be32
	nfulaCfgFlags    = 6 // NFULA_CFG_FLAGS: __be16

	nfulnlCfgCmdBind   = 1 // NFULNL_CFG_CMD_BIND
	nfulnlCfgCmdUnbind = 2 // NFULNL_CFG_CMD_UNBIND

	nfulnlCopyPacket = 0x02   // NFULNL_COPY_PACKET
	nfulnlCfgFSeq    = 0x0001 // NFULNL_CFG_F_SEQ: number the group's packets (NFULA_SEQ)
)

// configTimeout bounds how long Listen waits for the kernel's answer to a
// configuration request. The kernel answers synchronously, so this only
// matters if its answer was lost (a receive buffer already full of packets).
const configTimeout = 5 * time.Second

// Reader receives the packets logged to one NFLOG group. Read must not be
// called from several goroutines at once; Close may be called at any time,
// from any goroutine.
type Reader struct {
	f     *os.File
	rc    syscall.RawConn
	group uint16
	seq   uint32 // sequence number of the last configuration request

	// recvFn is r.recv, bound once so that Read passes the same func value to
	// RawConn.Read every time instead of allocating a closure.
	recvFn func(fd uintptr) bool
	// The read in progress: recv's input and outputs.
	rbuf   []byte
	rn     int
	rerrno syscall.Errno

	// Sequence tracking across Reads, for Batch.Lost.
	lastSeq uint32
	haveSeq bool

	closed atomic.Bool
}

// Listen opens a NETLINK_NETFILTER socket in the calling thread's network
// namespace, sets its receive buffer, binds NFLOG group cfg.Group in copy
// mode "packet" with cfg's copy range, queue threshold, timeout and buffer
// size and with per-instance sequence numbers (NFULNL_CFG_F_SEQ), and
// returns a Reader for it. Bind and configuration are one request, so the
// first logged packet already has them. Listen reads the kernel's answer
// itself; packets that arrive before it are discarded, not mistaken for
// errors. It fails, naming the group, when the group is bound by another
// socket: it never unbinds someone else's group.
//
// Listen allocates the Reader and a few small buffers; it never waits longer
// than a few seconds for the kernel.
func Listen(cfg Config) (*Reader, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nl: listen group %d: socket: %w", cfg.Group, err)
	}
	if err := setupSocket(fd, cfg.ReadBuffer); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nl: listen group %d: %w", cfg.Group, err)
	}
	// A non-blocking descriptor makes os.NewFile register it with the
	// runtime poller: RawConn.Read then parks the goroutine, not the thread.
	f := os.NewFile(uintptr(fd), "nflog")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("nl: listen group %d: %w", cfg.Group, err)
	}
	r := &Reader{f: f, rc: rc, group: cfg.Group}
	r.recvFn = r.recv
	if err := r.bind(cfg); err != nil {
		f.Close()
		return nil, err
	}
	return r, nil
}

// setupSocket binds the socket (the kernel picks the port ID) and sets its
// receive buffer.
func setupSocket(fd, readBuffer int) error {
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	// SO_RCVBUFFORCE ignores net.core.rmem_max but needs CAP_NET_ADMIN;
	// without it SO_RCVBUF gets as much as rmem_max allows.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, readBuffer); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, readBuffer); err != nil {
			return fmt.Errorf("set receive buffer to %d bytes: %w", readBuffer, err)
		}
	}
	return nil
}

// bind sends the BIND-and-configure request and waits for its answer.
func (r *Reader) bind(cfg Config) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint8(nfulaCfgCmd, nfulnlCfgCmdBind)
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, cfg.CopyRange)
	mode[4] = nfulnlCopyPacket
	ae.Bytes(nfulaCfgMode, mode)
	ae.ByteOrder = binary.BigEndian
	ae.Uint32(nfulaCfgNlbufsiz, cfg.BufSize)
	ae.Uint32(nfulaCfgTimeout, cfg.timeoutTicks())
	ae.Uint32(nfulaCfgQthresh, cfg.QThreshold)
	ae.Uint16(nfulaCfgFlags, nfulnlCfgFSeq)
	attrs, err := ae.Encode()
	if err != nil {
		return fmt.Errorf("nl: bind group %d: encode: %w", r.group, err)
	}
	err = r.request(attrs, true)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EPERM):
		// nfulnl_recv_config answers EPERM when another socket owns the
		// group, and nfnetlink does for a caller without CAP_NET_ADMIN.
		if port, ok := groupOwner(r.group); ok {
			return fmt.Errorf("nl: bind group %d: the group is bound by another netlink socket (port ID %d; see /proc/net/netfilter/nfnetlink_log); one listener per group and namespace: %w", r.group, port, err)
		}
		return fmt.Errorf("nl: bind group %d: permission denied (needs CAP_NET_ADMIN in the socket's network namespace): %w", r.group, err)
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("nl: bind group %d: the group is already bound by this socket: %w", r.group, err)
	}
	return fmt.Errorf("nl: bind group %d: %w", r.group, err)
}

// request sends one NFULNL_MSG_CONFIG message with the given attributes for
// the Reader's group. With wait, it asks for an acknowledgement and returns
// the kernel's answer, discarding the packets that arrive meanwhile.
func (r *Reader) request(attrs []byte, wait bool) error {
	r.seq++
	data := make([]byte, nfgenmsgLen, nfgenmsgLen+len(attrs))
	data[0] = unix.AF_UNSPEC // nfgen_family: only the PF_(UN)BIND commands read it
	data[1] = nfnetlinkV0
	binary.BigEndian.PutUint16(data[2:], r.group) // res_id: the group
	data = append(data, attrs...)
	m := netlink.Message{
		Header: netlink.Header{
			Length:   uint32(align4(nlmsgHdrLen + len(data))),
			Type:     msgTypeConfig,
			Flags:    nlmFRequest,
			Sequence: r.seq,
		},
		Data: data,
	}
	if wait {
		m.Header.Flags |= nlmFAck
	}
	msg, err := m.MarshalBinary()
	if err != nil {
		return fmt.Errorf("marshal: %w", err)
	}
	var serr error
	err = r.rc.Write(func(fd uintptr) bool {
		// Netlink delivers to the kernel synchronously: no EAGAIN to wait on.
		serr = unix.Sendto(int(fd), msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return true
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if !wait {
		return nil
	}
	return r.awaitAck()
}

// awaitAck reads until the NLMSG_ERROR answering request r.seq arrives and
// returns its error (nil for an acknowledgement). Everything else, the
// group's first packets included, is discarded.
func (r *Reader) awaitAck() error {
	if err := r.f.SetReadDeadline(time.Now().Add(configTimeout)); err != nil {
		return fmt.Errorf("set deadline: %w", err)
	}
	defer r.f.SetReadDeadline(time.Time{})
	// An answer is a few dozen bytes; a batch of packets that does not fit is
	// truncated, which is fine for a datagram we discard.
	r.rbuf = make([]byte, 8192)
	defer func() { r.rbuf = nil }()
	for {
		if err := r.rc.Read(r.recvFn); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("no answer from the kernel within %v: %w", configTimeout, err)
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch r.rerrno {
		case 0:
		case unix.ENOBUFS:
			// Packets overflowed the buffer; the answer may still come.
			continue
		default:
			return fmt.Errorf("receive: %w", r.rerrno)
		}
		b := r.rbuf[:min(r.rn, len(r.rbuf))]
		for len(b) >= nlmsgHdrLen {
			n := int(binary.NativeEndian.Uint32(b))
			if n < nlmsgHdrLen || n > len(b) {
				break
			}
			typ := binary.NativeEndian.Uint16(b[4:])
			seq := binary.NativeEndian.Uint32(b[8:])
			if typ == nlmsgError && seq == r.seq {
				return messageError(b[nlmsgHdrLen:n])
			}
			b = b[min(align4(n), len(b)):]
		}
	}
}

// groupOwner returns the netlink port ID that owns NFLOG group g in the
// calling thread's network namespace, from /proc/net/netfilter/nfnetlink_log
// (one line per group: group, port ID, queue length, copy mode, copy range,
// timeout, use count).
func groupOwner(g uint16) (uint32, bool) {
	f, err := os.Open("/proc/thread-self/net/netfilter/nfnetlink_log")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 2 || fields[0] != strconv.Itoa(int(g)) {
			continue
		}
		port, err := strconv.ParseUint(fields[1], 10, 32)
		if err != nil {
			return 0, false
		}
		return uint32(port), true
	}
	return 0, false
}

// recv is the RawConn.Read callback: one recvfrom of a whole datagram into
// r.rbuf. MSG_TRUNC makes a netlink socket return the datagram's real length,
// so a datagram larger than the buffer shows as r.rn > len(r.rbuf). It calls
// the system call directly because unix.Recvfrom allocates the sender's
// address. It returns false, to wait for the poller, when nothing is queued.
func (r *Reader) recv(fd uintptr) bool {
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd,
			uintptr(unsafe.Pointer(unsafe.SliceData(r.rbuf))), uintptr(len(r.rbuf)),
			unix.MSG_TRUNC, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.rn, r.rerrno = int(n), errno
		return true
	}
}

// Drops returns how many datagrams (batches of packets, not packets) the
// kernel has dropped because the socket's receive buffer was full: the
// socket's drop count (SO_MEMINFO; the Drops column of /proc/net/netlink).
// Unlike ENOBUFS, which the kernel reports once per overrun episode, it
// counts every datagram dropped. It is a counter for the Reader's life, 0
// once closed. It makes one getsockopt call and may be called from any
// goroutine.
func (r *Reader) Drops() uint64 {
	var info [unix.SK_MEMINFO_VARS]uint32
	n := uint32(len(info) * 4)
	var errno syscall.Errno
	if err := r.rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&n)), 0)
	}); err != nil || errno != 0 || n < (unix.SK_MEMINFO_DROPS+1)*4 {
		return 0
	}
	return uint64(info[unix.SK_MEMINFO_DROPS])
}

// errOverrun is Read's error for ENOBUFS, preallocated because under
// overload it can come back often.
var errOverrun = fmt.Errorf("nl: read: receive buffer overrun, the kernel dropped packets: %w", unix.ENOBUFS)

// closedError is Read's error after Close. It matches both net.ErrClosed and
// os.ErrClosed.
type closedError struct{}

func (closedError) Error() string { return "nl: read: reader closed" }

func (closedError) Is(target error) bool { return target == net.ErrClosed || target == os.ErrClosed }

// Read blocks until a datagram arrives (parking the goroutine in the Go
// netpoller, not an OS thread), reads it into b's buffer and decodes it in
// place: b.Packets holds its packets, views into the buffer valid until the
// next Read into b, and b.Lost the packets the kernel numbered but never
// delivered since the previous Read. Read allocates nothing, except
// b.Packets growing past its capacity.
//
// Errors:
//   - the kernel dropped datagrams because the socket receive buffer was
//     full: an error matching unix.ENOBUFS; the Reader stays usable, and
//     the drop shows in a later Batch.Lost;
//   - after Close: an error matching net.ErrClosed (and os.ErrClosed);
//   - a datagram that does not decode (or did not fit the buffer): an error
//     matching ErrMalformed, with the packets decoded before the fault in
//     b.Packets;
//   - an error message from the kernel: its syscall.Errno, wrapped.
func (r *Reader) Read(b *Batch) error {
	if b.buf == nil {
		b.buf = make([]byte, maxDatagram)
	}
	b.Packets = b.Packets[:0]
	b.Lost = 0
	r.rbuf = b.buf
	err := r.rc.Read(r.recvFn)
	r.rbuf = nil
	if err != nil {
		if r.closed.Load() {
			return closedError{}
		}
		return fmt.Errorf("nl: read: %w", err)
	}
	switch r.rerrno {
	case 0:
	case unix.ENOBUFS:
		return errOverrun
	default:
		return fmt.Errorf("nl: read: %w", r.rerrno)
	}
	n := r.rn
	if n > len(b.buf) {
		n = len(b.buf)
		err = errTruncated
	}
	b.Packets, err = decodeInto(b.buf[:n], b.Packets, err)
	r.count(b)
	return err
}

// decodeInto decodes datagram d, keeping a prior error (truncation) over
// Decode's own, and wraps a kernel error message.
func decodeInto(d []byte, pkts []Packet, prior error) ([]Packet, error) {
	pkts, err := Decode(d, pkts)
	if prior != nil {
		return pkts, prior
	}
	if errno, ok := err.(syscall.Errno); ok {
		return pkts, fmt.Errorf("nl: read: error message from the kernel: %w", errno)
	}
	return pkts, err
}

// count adds the sequence-number gaps in b.Packets to b.Lost. The first
// numbered packet a Reader sees sets the base. A jump of 2^31 or more is not
// a loss but a restart (or reordering) and only moves the base.
func (r *Reader) count(b *Batch) {
	for i := range b.Packets {
		p := &b.Packets[i]
		if !p.HasSeq {
			continue
		}
		if r.haveSeq {
			if gap := p.Seq - r.lastSeq - 1; gap < 1<<31 {
				b.Lost += uint64(gap)
			}
		}
		r.lastSeq, r.haveSeq = p.Seq, true
	}
}

// Close unbinds the group (best effort: closing the socket releases it too)
// and closes the socket. A Read blocked in another goroutine returns an
// error matching net.ErrClosed. Calls after the first do nothing and return
// nil.
func (r *Reader) Close() error {
	if !r.closed.CompareAndSwap(false, true) {
		return nil
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint8(nfulaCfgCmd, nfulnlCfgCmdUnbind)
	if attrs, err := ae.Encode(); err == nil {
		_ = r.request(attrs, false)
	}
	if err := r.f.Close(); err != nil {
		return fmt.Errorf("nl: close group %d: %w", r.group, err)
	}
	return nil
}
