package nl

import (
	"fmt"
	"time"
)

// DefaultQThreshold is the QThreshold of a zero Config: packets per NFLOG
// datagram under load. 200 is about what the default 128 KiB batch buffer
// holds of the 576-byte ICMPs Linux routers send: the daemon's cost per
// datagram (its wake-up) is spread over as many packets as fit. It does
// not lengthen the wait at low rates, which Timeout bounds.
const DefaultQThreshold = 200

// Defaults for the other zero fields of a Config.
const (
	defaultCopyRange  = 0xffff
	defaultTimeout    = 10 * time.Millisecond
	defaultBufSize    = 131072
	defaultReadBuffer = 8 << 20
)

// Config configures one NFLOG group subscription. Zero fields get the
// documented defaults.
type Config struct {
	// Group is the NFLOG group (iptables --nflog-group, nft log group).
	Group uint16

	// CopyRange is how many bytes of each packet the kernel copies into
	// NFULA_PAYLOAD (copy mode NFULNL_COPY_PACKET). It is not a buffer size.
	// Default 0xffff; the kernel caps it at 0xffff-4 (NFULNL_COPY_RANGE_MAX)
	// because an attribute length is 16 bits.
	CopyRange uint32

	// QThreshold is NFULA_CFG_QTHRESH: how many packets the kernel queues
	// before it sends them as one datagram. Default 200. An iptables rule's
	// --nflog-threshold or an nft rule's queue-threshold lowers it for the
	// packets that rule logs.
	QThreshold uint32

	// Timeout is NFULA_CFG_TIMEOUT: how long the kernel holds a queue that
	// has not reached QThreshold before it sends it anyway. The kernel
	// counts in 1/100 s: the value is rounded up to the next tick, and is at
	// least one tick. Default 10ms.
	Timeout time.Duration

	// BufSize is NFULA_CFG_NLBUFSIZ: the size of the kernel's batch buffer;
	// a queue that would overflow it is sent early. Default 131072. The
	// kernel silently keeps its previous value (a page, NLMSG_GOODSIZE, at
	// first) for values below a page or above 131072.
	BufSize uint32

	// ReadBuffer is the socket receive buffer (SO_RCVBUFFORCE, or SO_RCVBUF
	// capped by net.core.rmem_max without CAP_NET_ADMIN): the datagrams the
	// kernel can hold for a slow reader before it drops packets and Read
	// reports ENOBUFS. Default 8 MiB. The kernel doubles the value for its
	// bookkeeping.
	ReadBuffer int
}

// withDefaults returns c with zero fields set to the defaults, or an error
// for a value no default can fix.
func (c Config) withDefaults() (Config, error) {
	if c.CopyRange == 0 {
		c.CopyRange = defaultCopyRange
	}
	if c.QThreshold == 0 {
		c.QThreshold = DefaultQThreshold
	}
	switch {
	case c.Timeout == 0:
		c.Timeout = defaultTimeout
	case c.Timeout < 0:
		return c, fmt.Errorf("nl: listen group %d: negative timeout %v", c.Group, c.Timeout)
	}
	if c.BufSize == 0 {
		c.BufSize = defaultBufSize
	}
	switch {
	case c.ReadBuffer == 0:
		c.ReadBuffer = defaultReadBuffer
	case c.ReadBuffer < 0:
		return c, fmt.Errorf("nl: listen group %d: negative read buffer %d", c.Group, c.ReadBuffer)
	}
	return c, nil
}

// timeoutTicks converts Timeout to the kernel's 1/100 s units, rounding up
// so that a short timeout never becomes 0, which would make the kernel flush
// at the next jiffy and defeat batching.
func (c Config) timeoutTicks() uint32 {
	const tick = 10 * time.Millisecond
	t := (c.Timeout + tick - 1) / tick
	if t < 1 {
		t = 1
	}
	if t > 1<<32-1 {
		t = 1<<32 - 1
	}
	return uint32(t)
}
