package transport

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// TestUDPBothFamilies: for each family, a udp Fanout bound to the sender
// delivers header and payload to a Listener of the same family, which
// reports the sender's address; the Listener's peer filter admits the
// sender and drops a non-peer; and a peer with nothing listening is
// counted unreachable from its ICMP or ICMPv6 port-unreachable report.
// Addresses live on a namespace's lo.
func TestUDPBothFamilies(t *testing.T) {
	ns, err := netlab.NewT(t).AddNS("fam")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ local, sender, stranger, dead string }{
		{"198.18.79.1", "198.18.79.2", "198.18.79.3", "198.18.79.4"},
		{"2001:db8:79::1", "2001:db8:79::2", "2001:db8:79::3", "2001:db8:79::4"},
	} {
		local, sender, stranger, dead := netip.MustParseAddr(tc.local), netip.MustParseAddr(tc.sender), netip.MustParseAddr(tc.stranger), netip.MustParseAddr(tc.dead)
		for _, a := range []netip.Addr{local, sender, stranger, dead} {
			bits := 32
			if a.Is6() {
				bits = 128
			}
			ns.MustRun(t, "ip", "addr", "add", netip.PrefixFrom(a, bits).String(), "dev", "lo", "nodad")
		}
		var l *Listener
		var fan, other *Fanout
		if err := ns.Do(func() (err error) {
			if l, err = Listen(local, 2734); err != nil {
				return err
			}
			if fan, err = NewUDP(sender, 10, []netip.Addr{local, dead}, 2734); err != nil {
				return err
			}
			other, err = NewUDP(stranger, 10, []netip.Addr{local}, 2734)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if err := l.FilterPeers([]netip.Addr{sender}); err != nil {
			t.Fatal(err)
		}
		head, payload := []byte("head:"), []byte("payload")
		other.Send([][]byte{head}, [][]byte{payload}) // dropped by the filter
		fan.Send([][]byte{head}, [][]byte{payload})
		n, err := l.Read()
		if err != nil {
			t.Fatal(err)
		}
		src, b, _ := l.Datagram(0)
		if n != 1 || src != sender || !bytes.Equal(b, []byte("head:payload")) {
			t.Errorf("%v: got %d datagrams, the first %q from %v; want 1, %q from %v", local, n, b, src, "head:payload", sender)
		}
		// The stranger's datagram was sent first: it is dropped, counted.
		if d := l.Drops(); d != 1 {
			t.Errorf("%v: %d drops, want 1 (the stranger's datagram)", local, d)
		}
		// dead's port unreachable fails a later send once and is counted.
		for deadline := time.Now().Add(10 * time.Second); fan.Tally().Unreachable[1] == 0 && time.Now().Before(deadline); {
			fan.Send([][]byte{head}, [][]byte{payload})
			time.Sleep(time.Millisecond)
		}
		if tl := fan.Tally(); tl.Unreachable[1] == 0 || tl.Unreachable[0] != 0 {
			t.Errorf("%v: unreachable counts %v, want dead's (index 1) only", local, tl.Unreachable)
		}
		l.Close()
		fan.Close()
		other.Close()
	}
}

// TestICMPv6Reoriginates: an ICMPv6 Fanout sends the message from its
// source with hop limit ttl, the body byte for byte, and the kernel fills
// in the checksum over the new pseudo-header (checked here by hand).
func TestICMPv6Reoriginates(t *testing.T) {
	ns, err := netlab.NewT(t).AddNS("icmp6")
	if err != nil {
		t.Fatal(err)
	}
	src, dst := netip.MustParseAddr("2001:db8:7a::1"), netip.MustParseAddr("2001:db8:7a::2")
	for _, a := range []netip.Addr{src, dst} {
		ns.MustRun(t, "ip", "addr", "add", a.String()+"/128", "dev", "lo", "nodad")
	}
	var fan *Fanout
	var rd int
	if err := ns.Do(func() (err error) {
		// A packet socket on lo sees the whole IPv6 packet, hop limit and all.
		if rd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IPV6))); err != nil {
			return err
		}
		fan, err = NewICMP(src, 7, []netip.Addr{dst})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rd)
	defer fan.Close()
	tv := unix.NsecToTimeval(int64(5 * time.Second))
	unix.SetsockoptTimeval(rd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	// A Packet Too Big (type 2) with a bogus checksum (the kernel's must
	// replace it), MTU 1400, and a quoted packet's first bytes.
	msg := []byte{2, 0, 0xde, 0xad, 0, 0, 0x05, 0x78, 0x60, 0, 0, 0, 0, 8, 17, 64, 1, 2, 3, 4}
	fan.Send(nil, [][]byte{msg})
	if tl := fan.Tally(); tl.Sent[0] != 1 || tl.Errors[0] != 0 {
		t.Fatalf("tally %+v, want one sent", tl)
	}
	buf := make([]byte, 2048)
	for {
		n, _, err := unix.Recvfrom(rd, buf, 0)
		if err != nil {
			t.Fatalf("no ICMPv6 packet seen on lo: %v", err)
		}
		p := buf[:n]
		if len(p) < 40+len(msg) || p[6] != unix.IPPROTO_ICMPV6 {
			continue // DAD, router solicitations and the like
		}
		if s, d := netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40])); s != src || d != dst {
			t.Errorf("sent from %v to %v, want %v to %v", s, d, src, dst)
		}
		if p[7] != 7 {
			t.Errorf("hop limit %d, want 7", p[7])
		}
		body := p[40:]
		if !bytes.Equal(body[:2], msg[:2]) || !bytes.Equal(body[4:], msg[4:]) {
			t.Errorf("body % x, want % x but the checksum", body, msg)
		}
		if c := checksum6(src, dst, body); c != 0 {
			t.Errorf("checksum does not verify over the new pseudo-header (sum %#04x)", c)
		}
		return
	}
}

// checksum6 folds the ICMPv6 checksum over the pseudo-header and body
// (RFC 8200 8.1): 0 when the body's checksum field is right.
func checksum6(src, dst netip.Addr, body []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	s, d := src.As16(), dst.As16()
	add(s[:])
	add(d[:])
	add([]byte{0, 0, byte(len(body) >> 8), byte(len(body)), 0, 0, 0, unix.IPPROTO_ICMPV6})
	add(body)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// TestSendSegments: same-sized datagrams (the last shorter) reach every peer
// as separate datagrams, header and payload intact and in order, from one
// segmented message per peer; the Tally counts each datagram; datagrams of
// mixed sizes are refused (false, nothing sent); a repeat allocates nothing.
// On a route whose MTU is below the segment size the kernel refuses
// segmentation: the Fanout says so once, sends nothing, and stops trying.
func TestSendSegments(t *testing.T) {
	ns, err := netlab.NewT(t).AddNS("gso")
	if err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddr("198.18.81.1")
	peers := []netip.Addr{netip.MustParseAddr("198.18.81.2"), netip.MustParseAddr("198.18.81.3")}
	for _, a := range append([]netip.Addr{src}, peers...) {
		ns.MustRun(t, "ip", "addr", "add", a.String()+"/32", "dev", "lo")
	}
	var fan *Fanout
	ls := make([]*Listener, len(peers))
	if err := ns.Do(func() (err error) {
		for i, p := range peers {
			if ls[i], err = Listen(p, 2734); err != nil {
				return err
			}
		}
		fan, err = NewUDP(src, 10, peers, 2734)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer fan.Close()
	for _, l := range ls {
		defer l.Close()
	}
	const k = 6
	heads, payloads := make([][]byte, k), make([][]byte, k)
	for i := range k {
		heads[i] = []byte(fmt.Sprintf("head %d:", i))
		payloads[i] = bytes.Repeat([]byte{byte('a' + i)}, 1000)
	}
	payloads[k-1] = payloads[k-1][:300] // the last may be shorter
	if !fan.SendSegments(heads, payloads) {
		t.Fatal("SendSegments refused same-sized datagrams")
	}
	coalesced := 0 // reads that held several datagrams
	for j, l := range ls {
		got := 0
		for got < k {
			n, err := l.Read()
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				from, whole, _ := l.Datagram(i)
				// With UDP_GRO the segmented send may arrive whole.
				seg := l.Segment(i)
				if seg == 0 {
					seg = len(whole)
				}
				if seg > 0 && seg < len(whole) {
					coalesced++
				}
				for off := 0; off < len(whole); off += seg {
					b := whole[off:min(off+seg, len(whole))]
					want := append(append([]byte(nil), heads[got]...), payloads[got]...)
					if from != src || !bytes.Equal(b, want) {
						t.Fatalf("peer %d, datagram %d: %d bytes from %v, want %d from %v", j, got, len(b), from, len(want), src)
					}
					got++
				}
			}
		}
		if tl := fan.Tally(); tl.Sent[j] != k || tl.Errors[j] != 0 {
			t.Errorf("peer %d: tally sent %d errors %d, want %d and 0", j, tl.Sent[j], tl.Errors[j], k)
		}
	}
	t.Logf("%d of the peers' reads held a whole segmented send (UDP_GRO)", coalesced)
	mixed := [][]byte{payloads[0], payloads[5], payloads[1]}
	if fan.SendSegments(heads[:3], mixed) {
		t.Error("SendSegments took a short datagram before the last")
	}
	if allocs := testing.AllocsPerRun(20, func() { fan.SendSegments(heads, payloads) }); allocs != 0 {
		t.Errorf("SendSegments allocates %.1f times per call", allocs)
	}

	// A route with MTU 576 to an address behind a veth pair's end.
	far := netip.MustParseAddr("198.18.82.9")
	ns.MustRun(t, "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ns.MustRun(t, "ip", "link", "set", "v0", "up")
	ns.MustRun(t, "ip", "link", "set", "v1", "up")
	ns.MustRun(t, "ip", "route", "add", far.String()+"/32", "dev", "v0", "mtu", "lock", "576")
	var narrow *Fanout
	if err := ns.Do(func() (err error) {
		narrow, err = NewUDP(src, 10, []netip.Addr{far}, 2734)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer narrow.Close()
	if narrow.SendSegments(heads, payloads) {
		t.Fatalf("SendSegments sent 1,007-byte segments over a 576-byte route: %+v", narrow.Tally())
	}
	if tl := narrow.Tally(); tl.Sent[0] != 0 || tl.Errors[0] != 0 || tl.LastErrno != 0 || !narrow.noSegments {
		t.Errorf("after the refusal: tally %+v, noSegments %v; want nothing counted and segmentation off", tl, narrow.noSegments)
	}
}
