package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/wire"
)

// relay is how go-pmtud's copies travel, its --relay flag: the harness
// builds the ceiling's socket and payload and reads the copies in the sink
// accordingly.
type relay string

const (
	// relayICMP: the ICMP message, re-originated from a raw ICMP socket.
	relayICMP relay = "icmp"
	// relayUDP: an envelope header and the router's whole packet, in a UDP
	// datagram to relayPort.
	relayUDP relay = "udp"
	// relayL2: the router's whole packet in one Ethernet broadcast frame on
	// the node's eth0 per ICMP, whatever P: the sink counts one copy per
	// ICMP.
	relayL2 relay = "l2"
)

// relayPort is the udp relay's port, passed to the daemon.
const relayPort = 2734

// parseRelay validates a -relay value.
func parseRelay(s string) (relay, error) {
	switch r := relay(s); r {
	case relayICMP, relayUDP, relayL2:
		return r, nil
	}
	return "", fmt.Errorf("-relay %q is not icmp, udp or l2", s)
}

// daemonFlags returns the go-pmtud flags that select the relay.
func (r relay) daemonFlags() []string {
	switch r {
	case relayUDP:
		// Unauthenticated, as the measured figures are (the sinks run no
		// daemon); the receive mode adds a key file, which wins.
		return []string{"--relay", "udp", "--relay-port", strconv.Itoa(relayPort), "--insecure-no-auth"}
	case relayL2:
		return []string{"--relay", "l2", "--iface", "eth0"}
	}
	return []string{"--relay", "icmp"}
}

// socketKind names the socket the daemon sends copies from.
func (r relay) socketKind() string {
	switch r {
	case relayUDP:
		return "UDP"
	case relayL2:
		return "AF_PACKET broadcast"
	}
	return "raw ICMP"
}

// payload returns what the daemon sends to each peer for the injected
// packet pkt: its ICMP message, or an (all-zero) envelope header and pkt.
func (r relay) payload(pkt []byte) []byte {
	switch r {
	case relayUDP:
		return append(make([]byte, wire.EnvelopeLen, wire.EnvelopeLen+len(pkt)), pkt...)
	case relayL2:
		return append([]byte(nil), pkt...)
	}
	return append([]byte(nil), pkt[offICMP:]...)
}

// ceilingSocket opens, in the calling thread's namespace, a socket set up
// as go-pmtud sets up its own (bound to nodeAddr, TTL 10; a raw socket
// receives nothing), but blocking, and returns it with the destination port
// of the copies.
func (r relay) ceilingSocket() (fd int, port uint16, err error) {
	if r == relayL2 {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, 0, fmt.Errorf("ceiling: AF_PACKET socket: %w", err)
		}
		return fd, 0, nil
	}
	typ, proto := unix.SOCK_RAW, unix.IPPROTO_ICMP
	if r == relayUDP {
		typ, proto, port = unix.SOCK_DGRAM, unix.IPPROTO_UDP, relayPort
	}
	fd, err = unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, 0, fmt.Errorf("ceiling: %s socket: %w", r, err)
	}
	errs := []error{
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, 10),
		unix.Bind(fd, &unix.SockaddrInet4{Addr: nodeAddr.As4()}),
	}
	if r == relayICMP {
		const icmpFilter = 1 // ICMP_FILTER: receive no ICMP type
		errs = append(errs, unix.SetsockoptInt(fd, unix.SOL_RAW, icmpFilter, -1))
	}
	if err := errors.Join(errs...); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("ceiling: set up %s socket: %w", r, err)
	}
	return fd, port, nil
}

// listen opens, in the calling thread's namespace, the socket on which the
// copies arrive: a raw ICMP socket, or a UDP socket on relayPort.
func (r relay) listen() (int, error) {
	if r == relayICMP {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return -1, fmt.Errorf("sink: raw ICMP socket: %w", err)
		}
		return fd, nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("sink: UDP socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: relayPort}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("sink: bind UDP port %d: %w", relayPort, err)
	}
	return fd, nil
}

// seq returns the sequence number stamped into the injected packet that
// copy b (as listen's socket returns it) carries, and whether b is a copy.
func (r relay) seq(b []byte) (uint32, bool) {
	if r == relayICMP {
		// A raw socket returns the IPv4 header too.
		if len(b) < 20 {
			return 0, false
		}
		return quotedSeq(b[int(b[0]&0x0f)*4:])
	}
	if len(b) < wire.EnvelopeLen {
		return 0, false
	}
	inner := b[wire.EnvelopeLen:]
	if len(inner) < 20 {
		return 0, false
	}
	return quotedSeq(inner[int(inner[0]&0x0f)*4:])
}

// quotedSeq returns the TCP sequence number quoted by icmp, an ICMP
// message, and whether it is a frag-needed that quotes one.
func quotedSeq(icmp []byte) (uint32, bool) {
	if len(icmp) < 8+20 || icmp[0] != 3 || icmp[1] != 4 {
		return 0, false
	}
	q := icmp[8:]
	tcp := int(q[0]&0x0f) * 4
	if len(q) < tcp+8 {
		return 0, false
	}
	return binary.BigEndian.Uint32(q[tcp+4:]), true
}

// sockaddrs returns one sockaddr per peer, with port.
func sockaddrs(t *topology, port uint16) []unix.RawSockaddrInet4 {
	addrs := make([]unix.RawSockaddrInet4, len(t.peers))
	for j, a := range t.peers {
		addrs[j] = sockaddrInet4(a, port)
	}
	return addrs
}

// fanout returns the copies one injected ICMP gives: one per peer, or one
// broadcast frame.
func (r relay) fanout(peers int) int {
	if r == relayL2 {
		return 1
	}
	return peers
}

// broadcastSockaddr returns the sockaddr_ll of an IPv4 broadcast frame out
// of interface ifindex.
func broadcastSockaddr(ifindex int) unix.RawSockaddrLinklayer {
	sa := unix.RawSockaddrLinklayer{Family: unix.AF_PACKET, Ifindex: int32(ifindex), Halen: 6}
	// sll_protocol is in network byte order.
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Protocol))[:], unix.ETH_P_IP)
	copy(sa.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	return sa
}

// sockaddrInet4 returns the sockaddr of IPv4 address a and port.
func sockaddrInet4(a netip.Addr, port uint16) unix.RawSockaddrInet4 {
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
	// sin_port is in network byte order.
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], port)
	return sa
}
