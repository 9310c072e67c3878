// Package nflogbase is the comparison baseline: go-nflog v2.3.0's decode
// path reproduced through its public pieces.
//
// go-nflog (github.com/florianl/go-nflog/v2) does not export its decoder:
// Nflog.RegisterWithErrorFunc receives with (*netlink.Conn).Receive and
// hands each message to an unexported extractAttributes. This package does
// the same work with the same public calls, so that benchmarks and the
// regression gate measure go-nflog's per-datagram cost without a socket,
// and so that nl's fuzz test has an independent reference decoder:
//
//   - framing as github.com/mdlayher/netlink's Conn.Receive does it: each
//     message through netlink.Message.UnmarshalBinary, appended to a
//     []netlink.Message, NLMSG_ERROR codes turned into errors;
//   - for each message up to the first NLMSG_DONE, go-nflog's attribute
//     decoding into an nflog.Attribute with a netlink.AttributeDecoder,
//     value by value as go-nflog v2.3.0 does it (pointers to fresh copies,
//     the same ByteOrder switches, bytes.Reader for the timestamp), then the
//     caller's nflog.HookFunc.
//
// Not reproduced: the socket read. Receive first peeks at the datagram's
// size (recvmsg MSG_PEEK|MSG_TRUNC) and allocates a fresh buffer of that
// size for every datagram, then reads it: two system calls and one
// datagram-sized allocation on top of what Decode costs.
//
// Where go-nflog v2.3.0 would index out of range (a panic in its receive
// goroutine) on a short NFULA_PACKET_HDR, NFULA_TIMESTAMP, NFULA_HWADDR or
// nfgenmsg, ParseMessage returns ErrShortAttribute instead.
package nflogbase

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	nflog "github.com/florianl/go-nflog/v2"
	"github.com/mdlayher/netlink"
)

// ErrShortAttribute reports input on which go-nflog v2.3.0 would panic
// (index out of range): an attribute or header shorter than it assumes.
var ErrShortAttribute = errors.New("nflogbase: attribute shorter than go-nflog v2.3.0 assumes (it would panic)")

// Attribute types of a packet message, as go-nflog numbers them
// (include/uapi/linux/netfilter/nfnetlink_log.h enum nfulnl_attr_type).
const (
	attrPacketHdr      = 1
	attrMark           = 2
	attrTimestamp      = 3
	attrIfindexIndev   = 4
	attrIfindexOutdev  = 5
	attrIfindexPhysIn  = 6
	attrIfindexPhysOut = 7
	attrHwaddr         = 8
	attrPayload        = 9
	attrPrefix         = 10
	attrUID            = 11
	attrSeq            = 12
	attrSeqGlobal      = 13
	attrGID            = 14
	attrHwType         = 15
	attrHwHeader       = 16
	attrHwLen          = 17
	attrCt             = 18
	attrCtInfo         = 19
	attrVlan           = 20
	attrL2Hdr          = 21

	vlanProto = 1 // NFULA_VLAN_PROTO
	vlanTCI   = 2 // NFULA_VLAN_TCI
)

const (
	nlmsgHeaderLen = 16 // sizeof(struct nlmsghdr), include/uapi/linux/netlink.h
	nfnetlinkV0    = 0  // NFNETLINK_V0, include/uapi/linux/netfilter/nfnetlink.h

	// Address families (include/linux/socket.h) whose nfgenmsg go-nflog skips.
	afInet   = 2  // AF_INET
	afInet6  = 10 // AF_INET6
	afBridge = 7  // AF_BRIDGE
)

// Decode decodes one NFLOG datagram b the way go-nflog v2.3.0's receive loop
// does, calling fn with the nflog.Attribute of each message, in order, until
// fn returns non-zero. Like go-nflog it stops at the first NLMSG_DONE and
// skips (go-nflog logs at debug level) a message whose attributes do not
// decode; a framing error or an NLMSG_ERROR with a non-zero code fails the
// whole datagram, as (*netlink.Conn).Receive does.
//
// Cost: everything go-nflog allocates per datagram except the receive
// buffer: the []netlink.Message, an AttributeDecoder per message, two copies
// of most attribute values and a heap pointer per field.
func Decode(b []byte, fn nflog.HookFunc) error {
	msgs, err := receive(b)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type == netlink.Done {
			break
		}
		a, err := ParseMessage(m.Data)
		if err != nil {
			continue
		}
		if fn(a) != 0 {
			return nil
		}
	}
	return nil
}

// receive splits a datagram into messages as mdlayher/netlink's
// Conn.Receive does: whole aligned messages, a trailing piece shorter than a
// header ignored, error messages checked.
func receive(b []byte) ([]netlink.Message, error) {
	var msgs []netlink.Message
	for len(b) >= nlmsgHeaderLen {
		n := int(binary.NativeEndian.Uint32(b))
		if n < nlmsgHeaderLen {
			return nil, errors.New("nflogbase: message length shorter than its header")
		}
		an := (n + 3) &^ 3
		if an > len(b) {
			return nil, errors.New("nflogbase: message longer than the datagram")
		}
		var m netlink.Message
		if err := m.UnmarshalBinary(b[:an]); err != nil {
			return nil, err
		}
		if err := checkMessage(m); err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
		b = b[an:]
	}
	return msgs, nil
}

// checkMessage turns an NLMSG_ERROR (or NLMSG_DONE with NLM_F_MULTI) that
// carries a non-zero code into an error, as mdlayher/netlink does.
func checkMessage(m netlink.Message) error {
	switch {
	case m.Header.Type == netlink.Error:
	case m.Header.Type == netlink.Done && m.Header.Flags&netlink.Multi != 0:
		if len(m.Data) == 0 {
			return nil
		}
	default:
		return nil
	}
	if len(m.Data) < 4 {
		return errors.New("nflogbase: error message too short")
	}
	if c := int32(binary.NativeEndian.Uint32(m.Data)); c != 0 {
		return fmt.Errorf("nflogbase: netlink error %d", c)
	}
	return nil
}

// ParseMessage decodes the data of one NFULNL_MSG_PACKET message (its
// nfgenmsg header and attributes) into an nflog.Attribute, as go-nflog
// v2.3.0's extractAttributes does. Like go-nflog it skips the 4-byte
// nfgenmsg only when its family is AF_INET, AF_INET6 or AF_BRIDGE and its
// version NFNETLINK_V0, and otherwise parses attributes from the first byte.
//
// Cost: one AttributeDecoder, a copy of every attribute value (two for most)
// and one heap pointer per field found.
func ParseMessage(data []byte) (nflog.Attribute, error) {
	var a nflog.Attribute
	if len(data) < 2 {
		return a, ErrShortAttribute
	}
	off := 0
	if (data[0] == afInet || data[0] == afInet6 || data[0] == afBridge) && data[1] == nfnetlinkV0 {
		off = 4
	}
	if off > len(data) {
		return a, ErrShortAttribute
	}
	err := parseAttributes(&a, data[off:])
	return a, err
}

// parseAttributes is go-nflog v2.3.0's extractAttribute: each ad.Bytes()
// call below is one of go-nflog's (a fresh copy each), the length checks
// reuse the first copy so that the guards add no work.
func parseAttributes(a *nflog.Attribute, data []byte) error {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return err
	}
	ad.ByteOrder = binary.NativeEndian
	// be32 reads a big-endian u32 the way go-nflog does: by switching the
	// decoder's byte order around ad.Uint32.
	be32 := func() *uint32 {
		ad.ByteOrder = binary.BigEndian
		v := ad.Uint32()
		ad.ByteOrder = binary.NativeEndian
		return &v
	}
	be16 := func() *uint16 {
		ad.ByteOrder = binary.BigEndian
		v := ad.Uint16()
		ad.ByteOrder = binary.NativeEndian
		return &v
	}
	for ad.Next() {
		switch ad.Type() {
		case attrPacketHdr:
			b := ad.Bytes()
			if len(b) < 3 {
				return ErrShortAttribute
			}
			proto := binary.BigEndian.Uint16(b[:2])
			a.HwProtocol = &proto
			hook := ad.Bytes()[2]
			a.Hook = &hook
		case attrMark:
			a.Mark = be32()
		case attrTimestamp:
			b := ad.Bytes()
			if len(b) < 8 {
				return ErrShortAttribute
			}
			var sec, usec int64
			if err := binary.Read(bytes.NewReader(b[:8]), binary.BigEndian, &sec); err != nil {
				return err
			}
			if err := binary.Read(bytes.NewReader(ad.Bytes()[8:]), binary.BigEndian, &usec); err != nil {
				return err
			}
			ts := time.Unix(sec, usec*1000)
			a.Timestamp = &ts
		case attrIfindexIndev:
			a.InDev = be32()
		case attrIfindexOutdev:
			a.OutDev = be32()
		case attrIfindexPhysIn:
			a.PhysInDev = be32()
		case attrIfindexPhysOut:
			a.PhysOutDev = be32()
		case attrHwaddr:
			b := ad.Bytes()
			if len(b) < 2 {
				return ErrShortAttribute
			}
			n := int(binary.BigEndian.Uint16(b[:2]))
			if len(b) < 4+n {
				return ErrShortAttribute
			}
			addr := ad.Bytes()[4 : 4+n]
			a.HwAddr = &addr
		case attrPayload:
			p := ad.Bytes()
			a.Payload = &p
		case attrPrefix:
			s := ad.String()
			a.Prefix = &s
		case attrUID:
			a.UID = be32()
		case attrSeq:
			a.Seq = be32()
		case attrSeqGlobal:
			a.SeqGlobal = be32()
		case attrGID:
			a.GID = be32()
		case attrHwType:
			a.HwType = be16()
		case attrHwHeader:
			h := ad.Bytes()
			a.HwHeader = &h
		case attrHwLen:
			a.HwLen = be16()
		case attrCt:
			ct := ad.Bytes()
			a.Ct = &ct
		case attrCtInfo:
			a.CtInfo = be32()
		case attrL2Hdr:
			h := ad.Bytes()
			a.Layer2Hdr = &h
		case attrVlan:
			v := &nflog.VLAN{}
			if err := parseVLAN(ad.Bytes(), v); err != nil {
				return err
			}
			a.VLAN = v
		}
	}
	return ad.Err()
}

// parseVLAN is go-nflog v2.3.0's extractVLAN: native byte order (as
// go-nflog reads it), unknown attributes an error, decoder errors ignored.
func parseVLAN(data []byte, v *nflog.VLAN) error {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return err
	}
	for ad.Next() {
		switch ad.Type() {
		case vlanProto:
			v.Proto = ad.Uint16()
		case vlanTCI:
			v.TCI = ad.Uint16()
		default:
			return fmt.Errorf("nflogbase: unknown VLAN attribute %d", ad.Type())
		}
	}
	return nil
}
