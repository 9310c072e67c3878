// Package nl receives packets that netfilter logs to an NFLOG group
// (nfnetlink_log), in batches, without allocating.
//
// # Receiving
//
// Listen opens a NETLINK_NETFILTER socket, binds one NFLOG group in copy
// mode "packet" with per-instance sequence numbers, and asks the kernel to
// batch: it queues up to Config.QThreshold packets (or Config.Timeout, or
// Config.BufSize bytes, whichever comes first) and sends them as one
// datagram of several NFULNL_MSG_PACKET messages. Reader.Read receives one
// such datagram into a Batch's buffer through the Go netpoller (a blocked
// Read parks a goroutine, not an OS thread) and decodes it in place:
// Packet.Payload is a view into that buffer, valid until the next Read into
// the same Batch. Nothing on that path allocates in steady state.
//
// # Losses
//
// Two things tell the caller that the kernel dropped packets. A full socket
// receive buffer makes the next Read return an error that matches
// unix.ENOBUFS; the Reader stays usable. And because every packet carries
// the instance's sequence number (NFULNL_CFG_F_SEQ), Batch.Lost counts the
// numbers that never arrived, whichever way they were lost.
//
// # Decoding
//
// Decode is the pure half: it walks a datagram's netlink messages
// (host-endian nlmsghdr), skips the nfgenmsg header of each packet message
// and reads its attributes (host-endian nlattr headers, big-endian values,
// the NLA_F_NESTED and NLA_F_NET_BYTEORDER type flags ignored). It never
// panics, never allocates, and rejects any length that does not add up with
// an error that matches ErrMalformed. It is fuzzed against
// github.com/mdlayher/netlink's framing and go-nflog's attribute decoding.
//
// # Namespaces
//
// A netlink socket belongs to the network namespace of the thread that
// created it, for its whole life. Listen therefore binds the group in the
// namespace of the calling thread; to listen in another namespace, call it
// from a goroutine locked to a thread that has joined that namespace. Read
// may then run on any goroutine.
//
// # One listener per group
//
// The kernel gives each NFLOG group of a namespace to a single netlink
// socket. Listen never unbinds another socket's instance: when the group is
// taken it fails with an error naming the group and, when it can tell, the
// netlink port that owns it (see /proc/net/netfilter/nfnetlink_log).
package nl
