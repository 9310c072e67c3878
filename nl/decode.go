package nl

import (
	"encoding/binary"
	"errors"
	"syscall"
)

// Netlink framing (include/uapi/linux/netlink.h).
const (
	nlmsgHdrLen = 16 // sizeof(struct nlmsghdr): len u32, type u16, flags u16, seq u32, pid u32
	nlaHdrLen   = 4  // sizeof(struct nlattr): len u16, type u16

	nlmsgNoop  = 0x1 // NLMSG_NOOP
	nlmsgError = 0x2 // NLMSG_ERROR: int32 error (negative errno, 0 = ACK) + the request's header
	nlmsgDone  = 0x3 // NLMSG_DONE: ends a multi-message datagram

	nlmFRequest = 0x01 // NLM_F_REQUEST
	nlmFAck     = 0x04 // NLM_F_ACK

	// nlaTypeMask removes NLA_F_NESTED (0x8000) and NLA_F_NET_BYTEORDER
	// (0x4000) from nla_type: NLA_TYPE_MASK.
	nlaTypeMask = 0x3fff
)

// nfnetlink (include/uapi/linux/netfilter/nfnetlink.h).
const (
	nfgenmsgLen    = 4   // sizeof(struct nfgenmsg): family u8, version u8, res_id __be16
	nfnetlinkV0    = 0   // NFNETLINK_V0
	nfnlSubsysUlog = 0x4 // NFNL_SUBSYS_ULOG: nfnetlink_log's subsystem, the high byte of nlmsg_type
)

// nfnetlink_log messages and packet attributes
// (include/uapi/linux/netfilter/nfnetlink_log.h).
const (
	nfulnlMsgPacket = 0 // NFULNL_MSG_PACKET: packet from kernel to userspace
	nfulnlMsgConfig = 1 // NFULNL_MSG_CONFIG: bind and configure a group

	// msgTypePacket is the nlmsg_type of a logged packet.
	msgTypePacket = nfnlSubsysUlog<<8 | nfulnlMsgPacket
	// msgTypeConfig is the nlmsg_type of a configuration request.
	msgTypeConfig = nfnlSubsysUlog<<8 | nfulnlMsgConfig

	nfulaPacketHdr    = 1  // NFULA_PACKET_HDR: struct nfulnl_msg_packet_hdr {__be16 hw_protocol; u8 hook; u8 pad}
	nfulaTimestamp    = 3  // NFULA_TIMESTAMP: struct nfulnl_msg_packet_timestamp {__be64 sec; __be64 usec}
	nfulaIfindexIndev = 4  // NFULA_IFINDEX_INDEV: __be32
	nfulaPayload      = 9  // NFULA_PAYLOAD: the packet from the network header on, copy_range bytes at most
	nfulaSeq          = 12 // NFULA_SEQ: __be32 instance-local sequence number (NFULNL_CFG_F_SEQ)
	nfulaHwType       = 15 // NFULA_HWTYPE: __be16, the device's ARPHRD_* type (include/uapi/linux/if_arp.h)
	nfulaHwHeader     = 16 // NFULA_HWHEADER: the link-layer header the packet arrived with (Ethernet: destination, source, EtherType)
	arphrdEther       = 1  // ARPHRD_ETHER (include/uapi/linux/if_arp.h)

	packetHdrMin = 2  // bytes of NFULA_PACKET_HDR that Decode reads (hw_protocol)
	timestampLen = 16 // sizeof(struct nfulnl_msg_packet_timestamp)
)

// Packet is one logged packet, as decoded from an NFULNL_MSG_PACKET message.
// Payload is a view into the buffer the packet was decoded from (a Batch's,
// for Reader.Read): it is valid until the next Read into that Batch, and
// must be copied to be kept longer.
type Packet struct {
	// Payload is NFULA_PAYLOAD: the packet from its network (L3) header on,
	// truncated to the group's copy range. Its capacity ends with it, so an
	// append cannot overwrite the rest of the buffer. Nil when absent.
	Payload []byte
	// Seq is NFULA_SEQ, the group instance's sequence number; valid when
	// HasSeq. The kernel counts every packet it logs to the group, so a gap
	// between consecutive packets is packets it could not deliver.
	Seq    uint32
	HasSeq bool
	// InIfindex is NFULA_IFINDEX_INDEV, the interface the packet came in on;
	// 0 when absent (output hooks).
	InIfindex uint32
	// HwProto is the hw_protocol of NFULA_PACKET_HDR (an EtherType such as
	// 0x0800), converted to host order; 0 when absent.
	HwProto uint16
	// Timestamp is NFULA_TIMESTAMP as Unix nanoseconds (the kernel sends
	// microseconds); 0 when absent. The kernel includes it for the
	// PREROUTING, INPUT and FORWARD hooks only.
	Timestamp int64
	// HwHeader is NFULA_HWHEADER: the link-layer header the packet arrived
	// with, a view like Payload (on Ethernet 14 bytes: destination and
	// source address, EtherType). Nil when absent: the kernel includes it
	// for received packets whose device has one.
	HwHeader []byte
	// HwType is NFULA_HWTYPE, the receiving device's ARPHRD_* type (1:
	// Ethernet), host order; 0 when absent. It says what HwHeader is.
	HwType uint16
}

// Ethernet returns the packet's Ethernet header, or nil when it did not
// arrive on an Ethernet device with one: a tunnel's "hardware header" is
// something else (an ipgre device reports the outer IPv4 header).
func (p *Packet) Ethernet() []byte {
	if p.HwType != arphrdEther || len(p.HwHeader) != 14 {
		return nil
	}
	return p.HwHeader
}

// L2Group reports whether the packet arrived in an Ethernet broadcast or
// multicast frame: a destination address with the group bit (the least
// significant bit of its first byte) set. A router sends its ICMPs to one
// host; such a frame is another node's l2 relay copy.
func (p *Packet) L2Group() bool { e := p.Ethernet(); return e != nil && e[0]&1 == 1 }

// ErrMalformed is matched (errors.Is) by every error Decode and Reader.Read
// return for a datagram that does not parse: a length that overruns its
// container, an attribute too short for its type, bytes after the last
// message or attribute. The error's text says which.
var ErrMalformed = errors.New("nl: malformed netlink message")

// malformedError is one reason for ErrMalformed. The reasons are
// preallocated package values, so returning one costs nothing.
type malformedError struct{ reason string }

func (e *malformedError) Error() string { return ErrMalformed.Error() + ": " + e.reason }
func (e *malformedError) Unwrap() error { return ErrMalformed }

var (
	errTrailing     = &malformedError{"trailing bytes after the last message"}
	errMsgLen       = &malformedError{"message length shorter than its header or longer than the datagram"}
	errShortErr     = &malformedError{"error message shorter than its error code"}
	errPositiveErr  = &malformedError{"error message with a positive error code"}
	errShortNfgen   = &malformedError{"packet message shorter than its nfgenmsg header"}
	errAttrTrailing = &malformedError{"trailing bytes after the last attribute"}
	errAttrZero     = &malformedError{"zero-length attribute"}
	errAttrLen      = &malformedError{"attribute length shorter than its header or longer than the message"}
	errAttrSize     = &malformedError{"attribute too short for its type"}
	errTruncated    = &malformedError{"datagram larger than the receive buffer (truncated)"}
)

// Decode appends to pkts the packets of one netlink datagram b, in order,
// and returns the extended slice. b may hold several messages (the kernel
// batches up to the group's queue threshold into one datagram): each
// NFULNL_MSG_PACKET message becomes a Packet; NLMSG_DONE, NLMSG_NOOP,
// acknowledgements (NLMSG_ERROR with error 0) and messages of other types
// are skipped. An NLMSG_ERROR with a negative error code stops decoding and
// returns that code as a syscall.Errno (unix.Errno).
//
// Malformed input stops decoding with an error that matches ErrMalformed;
// the packets decoded before the fault stay in the returned slice. Packet
// payloads are views into b.
//
// Decode is pure and never panics. It allocates nothing unless pkts must
// grow to hold the datagram's packets.
func Decode(b []byte, pkts []Packet) ([]Packet, error) {
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return pkts, errTrailing
		}
		n := int(binary.NativeEndian.Uint32(b))
		if n < nlmsgHdrLen || n > len(b) {
			return pkts, errMsgLen
		}
		body := b[nlmsgHdrLen:n]
		switch binary.NativeEndian.Uint16(b[4:]) {
		case msgTypePacket:
			pkts = append(pkts, Packet{})
			if err := decodePacket(body, &pkts[len(pkts)-1]); err != nil {
				return pkts[:len(pkts)-1], err
			}
		case nlmsgError:
			if err := messageError(body); err != nil {
				return pkts, err
			}
		}
		// Messages are padded to 4 bytes; a last message may lack its pad.
		b = b[min(align4(n), len(b)):]
	}
	return pkts, nil
}

// decodePacket reads the attributes of one NFULNL_MSG_PACKET message body
// into p. A later attribute of the same type overrides an earlier one.
func decodePacket(body []byte, p *Packet) error {
	if len(body) < nfgenmsgLen {
		return errShortNfgen
	}
	a := body[nfgenmsgLen:]
	for len(a) > 0 {
		if len(a) < nlaHdrLen {
			return errAttrTrailing
		}
		n := int(binary.NativeEndian.Uint16(a))
		switch {
		case n == 0:
			return errAttrZero
		case n < nlaHdrLen || n > len(a):
			return errAttrLen
		}
		v := a[nlaHdrLen:n:n]
		switch binary.NativeEndian.Uint16(a[2:]) & nlaTypeMask {
		case nfulaPacketHdr:
			if len(v) < packetHdrMin {
				return errAttrSize
			}
			p.HwProto = binary.BigEndian.Uint16(v)
		case nfulaTimestamp:
			if len(v) < timestampLen {
				return errAttrSize
			}
			sec := int64(binary.BigEndian.Uint64(v))
			usec := int64(binary.BigEndian.Uint64(v[8:]))
			p.Timestamp = sec*1e9 + usec*1e3
		case nfulaIfindexIndev:
			if len(v) != 4 {
				return errAttrSize
			}
			p.InIfindex = binary.BigEndian.Uint32(v)
		case nfulaPayload:
			p.Payload = v
		case nfulaHwHeader:
			p.HwHeader = v
		case nfulaHwType:
			if len(v) < 2 {
				return errAttrSize
			}
			p.HwType = binary.BigEndian.Uint16(v)
		case nfulaSeq:
			if len(v) != 4 {
				return errAttrSize
			}
			p.Seq = binary.BigEndian.Uint32(v)
			p.HasSeq = true
		}
		a = a[min(align4(n), len(a)):]
	}
	return nil
}

// messageError returns the error an NLMSG_ERROR message body carries: nil
// for an acknowledgement (error 0), the errno for a negative code.
func messageError(body []byte) error {
	if len(body) < 4 {
		return errShortErr
	}
	code := int32(binary.NativeEndian.Uint32(body))
	switch {
	case code == 0:
		return nil
	case code > 0:
		return errPositiveErr
	}
	return syscall.Errno(-int64(code))
}

// align4 rounds n up to the netlink alignment (NLMSG_ALIGN, NLA_ALIGN).
func align4(n int) int { return (n + 3) &^ 3 }
