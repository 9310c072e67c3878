package transport

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// TestFilterPeers: the relay socket's classic BPF filter admits a datagram
// exactly when its source is one of the peers, wherever the source sits in
// the program (first, at the edges of the 250-test blocks, last) and for
// every size up to MaxFilterPeers; a datagram from elsewhere is dropped by
// the kernel and counted in Drops. IPv6 peers the same, spread over three
// /96 prefixes (blocks of up to 240 per prefix), and one whose last 32 bits
// are the sender's under another prefix. It runs in a namespace of its own.
func TestFilterPeers(t *testing.T) {
	ns, err := netlab.NewT(t).AddNS("filter")
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range []struct{ local, sender string }{{"198.18.77.1", "198.18.77.2"}, {"2001:db8:77::1", "2001:db8:77::2"}} {
		testFilterPeers(t, ns, netip.MustParseAddr(fam.local), netip.MustParseAddr(fam.sender))
	}
}

func testFilterPeers(t *testing.T, ns *netlab.NS, local, sender netip.Addr) {
	network := "udp4"
	if local.Is6() {
		network = "udp6"
	}
	ns.MustRun(t, "ip", "addr", "add", local.String(), "dev", "lo", "nodad")
	ns.MustRun(t, "ip", "addr", "add", sender.String(), "dev", "lo", "nodad")
	for _, tc := range []struct {
		n, pos int // peers, the sender's position (-1: not a peer)
	}{{0, -1}, {1, 0}, {250, 249}, {250, 0}, {251, 250}, {251, 249}, {600, 499}, {600, 500}, {600, 599}, {600, -1}, {MaxFilterPeers, MaxFilterPeers - 1}, {MaxFilterPeers, -1}} {
		var l *Listener
		if err := ns.Do(func() (err error) {
			l, err = Listen(local, 2734)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		peers := make([]netip.Addr, tc.n)
		for i := range peers {
			peers[i] = netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
			if local.Is6() {
				// Prefixes ...:76::, ...:77:: (the sender's) and ...:78::,
				// the same last 32 bits as the sender in the first.
				b := sender.As16()
				b[5] = byte(0x76 + i%3)
				b[14], b[15] = byte(i>>8), byte(i)
				if i == 0 {
					b[5], b[14], b[15] = 0x76, 0, 2
				}
				peers[i] = netip.AddrFrom16(b)
			}
		}
		if tc.pos >= 0 {
			peers[tc.pos] = sender
		}
		if err := l.FilterPeers(peers); err != nil {
			t.Fatal(err)
		}
		if err := ns.Do(func() error {
			c, err := net.DialUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(sender, 0)), net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 2734)))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("datagram"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		// Either the datagram is queued (Read returns it) or the kernel
		// dropped it (Drops counts it): wait for one, no timing involved.
		got := make(chan int, 1)
		go func() { n, _ := l.Read(); got <- n }()
		admitted := false
	wait:
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			select {
			case n := <-got:
				admitted = n == 1
				break wait
			default:
			}
			if l.Drops() == 1 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		l.Close()
		if want := tc.pos >= 0; admitted != want {
			t.Errorf("%d peers, sender at %d: admitted %v, want %v (drops %d)", tc.n, tc.pos, admitted, want, l.Drops())
		}
	}
}
