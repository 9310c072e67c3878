package pmtud_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud"
	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// TestPeerLearnsPathMTUIPv6 is TestPeerLearnsPathMTU over IPv6: the router
// sends its Packet Too Big for the anycast flow to B; A owns the flow. The
// nodes and the relay traffic between them stay on IPv4 (node addresses are
// the peers); only the relayed packet is IPv6. Without go-pmtud the
// download stalls; with the udp relay A's kernel caches the MTU and the
// download completes; the icmp relay cannot re-originate an ICMPv6 message
// (its checksum covers the router's addresses), so it drops it by reason and
// the download stalls.
func TestPeerLearnsPathMTUIPv6(t *testing.T) {
	const size = 1 << 20
	for _, mode := range []pmtud.Mode{0, pmtud.ModeICMP, pmtud.ModeUDP} {
		name := "without go-pmtud"
		if mode != 0 {
			name = mode.String() + " relay"
		}
		t.Run(name, func(t *testing.T) {
			c := dualStackCluster(t)
			a := c.Nodes[0]
			client := netlab.ClientAddr6.String()
			if mtu, err := a.CachedMTU(client); err != nil || mtu != 0 {
				t.Fatalf("before the transfer A caches mtu %d (%v), want none", mtu, err)
			}
			var relays []*pmtud.Relay
			switch mode {
			case pmtud.ModeICMP:
				relays = startDaemons(t, c, mode, 1)
			case pmtud.ModeUDP:
				relays = startDaemons(t, c, mode, 0, 1)
			}
			var capture *nl.Reader
			if mode != 0 {
				// A second group sees the router's real Packet Too Big.
				c.Nodes[1].MustRun(t, append([]string{"ip6tables"}, netlab.NFLOGRule6(group+1)...)...)
				if err := c.Nodes[1].Do(func() (err error) {
					capture, err = nl.Listen(nl.Config{Group: group + 1})
					return err
				}); err != nil {
					t.Fatal(err)
				}
				defer capture.Close()
			}
			got, err := c.TransferTo(a, netlab.Anycast6, size, 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			mtu, err := a.CachedMTU(client)
			if err != nil {
				t.Fatal(err)
			}
			if mode != pmtud.ModeUDP {
				if got == size || mtu != 0 {
					t.Fatalf("transferred %d of %d bytes, A caches mtu %d; want a stall and no cached MTU", got, size, mtu)
				}
				if mode == pmtud.ModeICMP {
					checkRealPacketTooBig(t, capture)
					if st := relays[0].Stats(); st.Dropped[pmtud.DropIPv6ICMPRelay] == 0 || st.Sent != 0 {
						t.Fatalf("icmp relay: %+v; want ipv6_icmp_relay drops and nothing sent", st)
					}
				}
				return
			}
			onB := relays[1]
			if got != size || mtu != 1400 {
				t.Fatalf("transferred %d of %d bytes, A caches mtu %d; want all and 1400 (B's relay: %+v)", got, size, mtu, onB.Stats())
			}
			checkRealPacketTooBig(t, capture)
			waitFor(t, "B's relay to count its copies", func() bool { return onB.Stats().Sent > 0 })
			waitFor(t, "A's relay to inject the copies", func() bool { return relays[0].Stats().Injected > 0 })
			// A logs what it injected on pmtud0 again and drops it there.
			waitFor(t, "A's relay to drop its own injection", func() bool { return relays[0].Stats().Dropped[pmtud.DropFromTUN] > 0 })
		})
	}
}

// checkRealPacketTooBig reads what the kernel router sent to the capture
// group and checks that every message parses as the Packet Too Big the
// scene produces.
func checkRealPacketTooBig(t *testing.T, capture *nl.Reader) {
	t.Helper()
	b := readCapture(t, capture)
	for i, p := range b.Packets {
		f, err := wire.Parse(p.Payload)
		if err != nil {
			t.Fatalf("the router's Packet Too Big does not parse: %v", err)
		}
		if f.Src != netlab.RouterLoopback6 || f.Dst != netlab.Anycast6 || f.MTU != 1400 ||
			f.Inner.Src != netlab.Anycast6 || f.Inner.Dst != netlab.ClientAddr6 || f.Inner.SrcPort != netlab.TransferPort {
			t.Fatalf("router's Packet Too Big: %v -> %v MTU %d inner %+v", f.Src, f.Dst, f.MTU, f.Inner)
		}
		if i == 0 && os.Getenv("PMTUD_WRITE_SEEDS") == "1" {
			writeSeed(t, "wire/testdata/fuzz/FuzzParsePacketTooBig/kernel-router", fmt.Sprintf("[]byte(%q)\nbool(false)\n", p.Payload))
		}
	}
}

// dualStackCluster builds a two-node cluster with a 1400-byte narrow link,
// over IPv4 and IPv6.
func dualStackCluster(t *testing.T) *netlab.Cluster {
	t.Helper()
	c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddIPv6(); err != nil {
		t.Fatal(err)
	}
	return c
}
