package nl

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// This file builds datagrams the way the kernel does, for the decode tests,
// the fuzz seeds and the benchmarks.

// appendMsg appends one netlink message (header, body, padding).
func appendMsg(b []byte, typ, flags uint16, seq uint32, body []byte) []byte {
	var h [nlmsgHdrLen]byte
	binary.NativeEndian.PutUint32(h[0:], uint32(nlmsgHdrLen+len(body)))
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags)
	binary.NativeEndian.PutUint32(h[8:], seq)
	b = append(b, h[:]...)
	b = append(b, body...)
	return append(b, make([]byte, align4(len(body))-len(body))...)
}

// appendAttr appends one attribute (header, value, padding).
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	var h [nlaHdrLen]byte
	binary.NativeEndian.PutUint16(h[0:], uint16(nlaHdrLen+len(v)))
	binary.NativeEndian.PutUint16(h[2:], typ)
	b = append(b, h[:]...)
	b = append(b, v...)
	return append(b, make([]byte, align4(len(v))-len(v))...)
}

// nfgen returns a packet message's nfgenmsg: family AF_INET, version 0,
// res_id the group.
func nfgen(group uint16) []byte {
	return []byte{2, nfnetlinkV0, byte(group >> 8), byte(group)}
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// Attribute types the kernel sends that Decode skips
// (include/uapi/linux/netfilter/nfnetlink_log.h).
const (
	nfulaHwaddr = 8
	nfulaPrefix = 10
	nfulaHwLen  = 17
)

// kernelPacket returns the body of an NFULNL_MSG_PACKET message with the
// attributes, in the order, that Linux 6.18 sends for an IPv4 packet logged
// at PREROUTING on lo with NFULNL_CFG_F_SEQ (TestKernelAttributeLayout
// checks this against the real thing).
func kernelPacket(group uint16, payload []byte, seq, ifindex uint32, tsSec, tsUsec uint64) []byte {
	b := nfgen(group)
	b = appendAttr(b, nfulaPacketHdr, []byte{0x08, 0x00, 0 /* NF_INET_PRE_ROUTING */, 0})
	b = appendAttr(b, nfulaPrefix, []byte{0}) // iptables NFLOG without --nflog-prefix: ""
	b = appendAttr(b, nfulaIfindexIndev, be32(ifindex))
	b = appendAttr(b, nfulaHwaddr, []byte{0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	b = appendAttr(b, nfulaHwType, be16(772)) // ARPHRD_LOOPBACK
	b = appendAttr(b, nfulaHwLen, be16(14))   // ETH_HLEN
	b = appendAttr(b, nfulaHwHeader, []byte{0: 0, 12: 0x08, 13: 0x00})
	ts := binary.BigEndian.AppendUint64(nil, tsSec)
	ts = binary.BigEndian.AppendUint64(ts, tsUsec)
	b = appendAttr(b, nfulaTimestamp, ts)
	b = appendAttr(b, nfulaSeq, be32(seq))
	return appendAttr(b, nfulaPayload, payload)
}

// kernelDatagram returns a datagram of n packet messages carrying the
// payloads in turn, sequence numbers from seq0, and the NLMSG_DONE the
// kernel appends to a datagram of more than one message.
func kernelDatagram(payloads [][]byte, n int, seq0 uint32) []byte {
	var b []byte
	for i := range n {
		b = appendMsg(b, msgTypePacket, 0, 0,
			kernelPacket(33, payloads[i%len(payloads)], seq0+uint32(i), 1, 1700000000, uint64(i)))
	}
	if n > 1 {
		b = appendMsg(b, nlmsgDone, 0, 0, nfgen(33))
	}
	return b
}

// checksum is the RFC 1071 Internet checksum.
func checksum(b []byte) uint16 {
	var s uint32
	for ; len(b) >= 2; b = b[2:] {
		s += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// ipv4 returns an IPv4 header (DF set, checksum computed) followed by
// payload.
func ipv4(src, dst [4]byte, proto uint8, id uint16, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(h[4:], id)
	h[6] = 0x40 // DF
	h[8] = 64
	h[9] = proto
	copy(h[12:], src[:])
	copy(h[16:], dst[:])
	binary.BigEndian.PutUint16(h[10:], checksum(h))
	return append(h, payload...)
}

// fragNeeded returns an ICMPv4 "fragmentation needed" packet of size bytes
// from src to dst, advertising mtu and quoting the start of a 1500-byte TCP
// packet from dst, as a router does (RFC 1812: as much as fits in 576).
func fragNeeded(src, dst [4]byte, mtu, id uint16, size int) []byte {
	inner := ipv4(dst, [4]byte{198, 19, 0, 1}, 6, id, make([]byte, 1480))
	quoted := inner[:size-20-8]
	icmp := make([]byte, 8, 8+len(quoted))
	icmp[0], icmp[1] = 3, 4
	binary.BigEndian.PutUint16(icmp[6:], mtu)
	icmp = append(icmp, quoted...)
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	return ipv4(src, dst, 1, id, icmp)
}

// writeSeed stores b in the fuzz corpus of FuzzDecode as testdata file name,
// in the format of go test fuzz v1, when NL_WRITE_SEEDS=1.
func writeSeed(t testing.TB, name string, b []byte) {
	t.Helper()
	if os.Getenv("NL_WRITE_SEEDS") != "1" {
		return
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
	if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote seed %s (%d bytes)", name, len(b))
}
