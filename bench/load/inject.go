package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/wire"
)

// Layout of an injected packet: outer IPv4 header, ICMP header, the quoted
// IPv4 header, the quoted TCP header (its first 8 bytes at least).
const (
	offICMP      = 20
	offICMPCsum  = offICMP + 2
	offQuoted    = offICMP + 8
	offQuotedTCP = offQuoted + 20
	offSport     = offQuotedTCP     // quoted TCP source port
	offSeq       = offQuotedTCP + 4 // quoted TCP sequence number

	// minQuote is the shortest quote that holds the fields stamped per
	// packet: the IPv4 header and 8 bytes of TCP (RFC 792).
	minQuote = 28
	// maxMmsg is the most messages one sendmmsg takes (UIO_MAXIOV).
	maxMmsg = 1024
)

// The quoted flow: a server on the anycast address answering a client
// behind a narrow link, as in netlab.BuildCluster.
var (
	quotedSrc = netlab.Anycast
	quotedDst = netlab.ClientAddr
)

// template is an injected packet with its per-packet fields zero: the quoted
// TCP source port and sequence number, stamped by stamp.
type template struct {
	pkt  []byte
	csum uint16 // the ICMP checksum with those fields zero
}

// newTemplate builds a frag-needed (next-hop MTU 1400) from icmpSource to
// dst quoting quote bytes of a 9000-byte DF TCP segment, and checks that a
// stamped copy parses.
func newTemplate(quote int, dst netip.Addr) (template, error) {
	tcp := make([]byte, quote-20)
	binary.BigEndian.PutUint16(tcp[2:], 443) // destination port
	if len(tcp) >= 14 {
		tcp[12] = 5 << 4 // data offset
		tcp[13] = 0x10   // ACK
	}
	orig := wire.AppendIPv4(nil, quotedSrc, quotedDst, 6, 64, tcp)
	binary.BigEndian.PutUint16(orig[2:], 9000) // the length of the packet the router dropped
	orig = orig[:quote]
	icmp := wire.AppendFragNeeded(nil, 1400, orig)
	t := template{pkt: wire.AppendIPv4(nil, icmpSource, dst, 1, 64, icmp)}
	t.csum = binary.BigEndian.Uint16(t.pkt[offICMPCsum:])

	b := append([]byte(nil), t.pkt...)
	t.stamp(b, 0xdeadbeef)
	f, err := wire.ParseFragNeeded(b)
	if err != nil {
		return t, fmt.Errorf("injected packet does not parse: %w", err)
	}
	if f.Inner.SrcPort != sport(0xdeadbeef) {
		return t, fmt.Errorf("injected packet quotes source port %d, want %d", f.Inner.SrcPort, sport(0xdeadbeef))
	}
	return t, nil
}

// sport returns the quoted source port of packet seq: 1024..65535.
func sport(seq uint32) uint16 { return uint16(1024 + seq%(65536-1024)) }

// stamp writes seq and its source port into b, a copy of t.pkt, and fixes
// the ICMP checksum incrementally (RFC 1624): the fields are zero in the
// template, so their words add to its one's-complement sum.
func (t template) stamp(b []byte, seq uint32) {
	p := sport(seq)
	binary.BigEndian.PutUint16(b[offSport:], p)
	binary.BigEndian.PutUint32(b[offSeq:], seq)
	sum := uint32(^t.csum) + uint32(p) + seq>>16 + seq&0xffff
	sum = sum&0xffff + sum>>16
	sum = sum&0xffff + sum>>16
	binary.BigEndian.PutUint16(b[offICMPCsum:], ^uint16(sum))
}

// injector sends stamped copies of a template from the router namespace
// with sendmmsg over an IP_HDRINCL raw socket.
type injector struct {
	fd   int
	tmpl template
	dst  unix.RawSockaddrInet4
	bufs [][]byte
	iovs []unix.Iovec
	msgs []unix.Mmsghdr
	seq  uint32 // the next packet's sequence number
}

// newInjector opens the raw socket in ns and prepares maxMmsg messages to
// dst.
func newInjector(ns *netlab.NS, dst netip.Addr, t template) (*injector, error) {
	in := &injector{
		fd:   -1,
		tmpl: t,
		dst:  unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dst.As4()},
		bufs: make([][]byte, maxMmsg),
		iovs: make([]unix.Iovec, maxMmsg),
		msgs: make([]unix.Mmsghdr, maxMmsg),
	}
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("injector: raw socket: %w", err)
		}
		in.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20); err != nil {
			return fmt.Errorf("injector: set SO_SNDBUFFORCE: %w", err)
		}
		return nil
	})
	if err != nil {
		in.close()
		return nil, err
	}
	for i := range in.msgs {
		in.bufs[i] = append([]byte(nil), t.pkt...)
		in.iovs[i].Base = &in.bufs[i][0]
		in.iovs[i].SetLen(len(t.pkt))
	}
	pointMsgs(in.msgs, in.iovs, &in.dst)
	return in, nil
}

// pointMsgs makes msgs[i] send iovs[i], one iovec, to dst.
func pointMsgs(msgs []unix.Mmsghdr, iovs []unix.Iovec, dst *unix.RawSockaddrInet4) {
	for i := range msgs {
		h := &msgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(dst))
		h.Namelen = unix.SizeofSockaddrInet4
		h.Iov = &iovs[i]
		h.Iovlen = 1
	}
}

// close closes the socket.
func (in *injector) close() {
	if in.fd >= 0 {
		unix.Close(in.fd)
		in.fd = -1
	}
}

// injection is the outcome of one injector run.
type injection struct {
	sent    uint64        // packets the kernel took
	failed  uint64        // packets it refused (ENOBUFS)
	elapsed time.Duration // first call to the end of the last
}

// rate returns the achieved packets per second.
func (j injection) rate() float64 { return float64(j.sent) / j.elapsed.Seconds() }

// run sends at rate packets per second for d, paced by pace. When onSend
// is not nil it is called before each call with the first sequence number,
// the message count and the time.
func (in *injector) run(rate float64, d time.Duration, onSend func(first uint32, n int, at time.Time)) (injection, error) {
	return pace(rate, d, func(n int, now time.Time) (sent, failed int, err error) {
		for i := range n {
			in.tmpl.stamp(in.bufs[i], in.seq+uint32(i))
		}
		if onSend != nil {
			onSend(in.seq, n, now)
		}
		in.seq += uint32(n)
		sent, failed, err = sendAll(in.fd, in.msgs[:n])
		if err != nil {
			err = fmt.Errorf("injector: %w", err)
		}
		return sent, failed, err
	})
}

// pace calls batch to send rate packets per second for d, paced by a token
// bucket that holds at most maxMmsg packets: it sleeps until enough tokens
// for a batch (about 5000 calls per second at most) have accumulated, then
// asks batch to send all it has, at time now, in one sendmmsg. It stops at
// batch's first error.
func pace(rate float64, d time.Duration, batch func(n int, now time.Time) (sent, failed int, err error)) (injection, error) {
	minBatch := max(1, rate/5000)
	var res injection
	start := time.Now()
	last, end := start, start.Add(d)
	tokens := minBatch // start with one batch
	for {
		now := time.Now()
		if !now.Before(end) {
			break
		}
		tokens = min(tokens+rate*now.Sub(last).Seconds(), maxMmsg)
		last = now
		if tokens < minBatch {
			time.Sleep(time.Duration((minBatch - tokens) / rate * float64(time.Second)))
			continue
		}
		n := int(tokens)
		tokens -= float64(n)
		sent, failed, err := batch(n, now)
		res.sent += uint64(sent)
		res.failed += uint64(failed)
		if err != nil {
			return res, err
		}
	}
	res.elapsed = time.Since(start)
	return res, nil
}

// probe sends one packet outside any paced run. The daemon counts NFLOG
// sequence gaps when the packet after a gap arrives, so a probe at the end
// of a run makes its losses visible in its own counters.
func (in *injector) probe() error {
	in.tmpl.stamp(in.bufs[0], in.seq)
	in.seq++
	if _, _, err := sendAll(in.fd, in.msgs[:1]); err != nil {
		return fmt.Errorf("injector: probe: %w", err)
	}
	return nil
}

// sendAll sends msgs with sendmmsg on the blocking socket fd, resuming
// after partial sends. A message refused with ENOBUFS is skipped and
// counted as failed; any other error ends the call.
func sendAll(fd int, msgs []unix.Mmsghdr) (sent, failed int, err error) {
	for off := 0; off < len(msgs); {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd),
			uintptr(unsafe.Pointer(&msgs[off])), uintptr(len(msgs)-off), 0, 0, 0)
		switch {
		case errno == 0:
			off += int(n)
			sent += int(n)
		case errno == unix.EINTR || errno == unix.EAGAIN:
		case errno == unix.ENOBUFS:
			off++
			failed++
		default:
			return sent, failed, fmt.Errorf("sendmmsg: %w", errno)
		}
	}
	return sent, failed, nil
}

// ceiling is what a plain sendmmsg loop delivers to the peers.
type ceiling struct {
	sent    uint64 // messages the kernel took
	arrived uint64 // counted by the sink
	elapsed time.Duration
	cpu     time.Duration // CPU time of the sending thread, kernel included
	others  time.Duration // CPU time of other processes meanwhile
	rate    float64       // arrived per second
}

// cpuPerMillion returns the sending thread's CPU seconds per million
// arrived packets.
func (c ceiling) cpuPerMillion() float64 { return c.cpu.Seconds() / float64(c.arrived) * 1e6 }

// measureCeiling sends the daemon's payload for one injected packet to the
// peers flat out for d, from one socket in the node namespace of the kind
// the daemon uses for rl, 1024 messages per sendmmsg, and counts what
// arrives at the sink.
func measureCeiling(t *topology, rl relay, payload []byte, d time.Duration) (ceiling, error) {
	before, err := arrivals(t.sink)
	if err != nil {
		return ceiling{}, err
	}
	cpu0, err := sampleCPU(0)
	if err != nil {
		return ceiling{}, err
	}
	var c ceiling
	err = t.node.Do(func() error {
		fd, port, err := rl.ceilingSocket()
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		addrs := sockaddrs(t, port)
		iov := unix.Iovec{Base: &payload[0]}
		iov.SetLen(len(payload))
		// Whole rounds of P peers per call, so every peer gets as many.
		msgs := make([]unix.Mmsghdr, maxMmsg/len(addrs)*len(addrs))
		var ll unix.RawSockaddrLinklayer
		if rl == relayL2 {
			ifi, err := net.InterfaceByName("eth0")
			if err != nil {
				return err
			}
			ll = broadcastSockaddr(ifi.Index)
		}
		for i := range msgs {
			h := &msgs[i].Hdr
			h.Name = (*byte)(unsafe.Pointer(&addrs[i%len(addrs)]))
			h.Namelen = unix.SizeofSockaddrInet4
			if rl == relayL2 {
				h.Name, h.Namelen = (*byte)(unsafe.Pointer(&ll)), unix.SizeofSockaddrLinklayer
			}
			h.Iov = &iov
			h.Iovlen = 1
		}
		cpu0, err := threadCPU()
		if err != nil {
			return err
		}
		start := time.Now()
		for time.Since(start) < d {
			n, _, err := sendAll(fd, msgs)
			c.sent += uint64(n)
			if err != nil {
				return fmt.Errorf("ceiling: %w", err)
			}
		}
		c.elapsed = time.Since(start)
		cpu1, err := threadCPU()
		c.cpu = cpu1 - cpu0
		return err
	})
	if err != nil {
		return c, err
	}
	cpu1, err := sampleCPU(0)
	if err != nil {
		return c, err
	}
	c.others = cpu1.sub(cpu0).others()
	after, err := settle(t.sinkCount, 2*time.Second)
	if err != nil {
		return c, err
	}
	c.arrived = after - before
	c.rate = float64(c.arrived) / c.elapsed.Seconds()
	return c, nil
}

// threadCPU returns the CPU time, user and system, of the calling thread.
func threadCPU() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
