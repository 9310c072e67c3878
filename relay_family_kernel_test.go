package pmtud_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud"
	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/internal/transport"
	"github.com/go-pmtud/go-pmtud/wire"
)

// Stacks of the nodes in the family labs.
const (
	ipv6Only  = "ipv6-only"
	dualStack = "dual-stack"
)

// familyCluster builds an n-node cluster with a 1400-byte narrow link whose
// nodes have IPv6 addresses only (ipv6Only: checked) or both (dualStack).
func familyCluster(t *testing.T, n int, stack string) *netlab.Cluster {
	t.Helper()
	c, err := netlab.BuildCluster(netlab.NewT(t), n, 1400)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddIPv6(); err != nil {
		t.Fatal(err)
	}
	if stack == ipv6Only {
		if err := c.DropIPv4(); err != nil {
			t.Fatal(err)
		}
		for _, node := range c.Nodes {
			if out := node.MustRun(t, "ip", "-4", "-o", "addr", "show", "scope", "global"); strings.TrimSpace(out) != "" {
				t.Fatalf("%s keeps IPv4 addresses: %s", node.Name(), out)
			}
		}
	}
	return c
}

// familyPeer is node i as a peer of the stack.
func familyPeer(i int, stack string) pmtud.Peer {
	p := pmtud.Peer{V6: netlab.NodeAddr6(i)}
	if stack == dualStack {
		p.V4 = netlab.NodeAddr(i)
	}
	return p
}

// startFamilyDaemons installs the NFLOG rules of the stack's families and
// starts go-pmtud on the given nodes of c, each listing every node as a
// peer by its addresses of the stack, as a DaemonSet would. set adjusts
// each node's Config.
func startFamilyDaemons(t *testing.T, c *netlab.Cluster, stack string, mode pmtud.Mode, set func(*pmtud.Config), nodes ...int) []*pmtud.Relay {
	t.Helper()
	var peers []pmtud.Peer
	for i := range c.Nodes {
		peers = append(peers, familyPeer(i, stack))
	}
	var relays []*pmtud.Relay
	for _, i := range nodes {
		if err := netlab.InstallNFLOGRule6(c.Nodes[i], group); err != nil {
			t.Fatal(err)
		}
		cfg := pmtud.Config{
			Mode:       mode,
			L2Iface:    "eth0",
			Source6:    netlab.NodeAddr6(i),
			LocalAddrs: []netip.Addr{netlab.NodeAddr6(i), netlab.Anycast6},
			Peers:      peers,
			Keys:       testKeys(mode),
		}
		if stack == dualStack {
			if err := netlab.InstallNFLOGRule(c.Nodes[i], group); err != nil {
				t.Fatal(err)
			}
			cfg.Source = netlab.NodeAddr(i)
			cfg.LocalAddrs = append(cfg.LocalAddrs, netlab.NodeAddr(i), netlab.Anycast)
		}
		if set != nil {
			set(&cfg)
		}
		relays = append(relays, startRelay(t, c.Nodes[i], cfg))
	}
	return relays
}

// TestIPv6OnlyLearnsPathMTU: on nodes without an IPv4 address, A owns the
// flow and the router's Packet Too Big lands on B. Without go-pmtud the
// download stalls; with the udp relay on both nodes (over IPv6) and with
// the icmp relay on B alone (the Packet Too Big re-originated from B's
// IPv6 address, its checksum recomputed) A caches the path MTU and the
// download completes.
func TestIPv6OnlyLearnsPathMTU(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  pmtud.Mode
		nodes []int
	}{
		{"without go-pmtud", 0, nil},
		{"udp relay", pmtud.ModeUDP, []int{0, 1}},
		{"icmp relay", pmtud.ModeICMP, []int{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := familyCluster(t, 2, ipv6Only)
			var relays []*pmtud.Relay
			if tc.mode != 0 {
				relays = startFamilyDaemons(t, c, ipv6Only, tc.mode, nil, tc.nodes...)
			}
			a := c.Nodes[0]
			got, mtu := download6(t, c, a)
			if tc.mode == 0 {
				if got == 1<<20 || mtu != 0 {
					t.Fatalf("without go-pmtud: transferred %d bytes, A caches mtu %d; want a stall and none", got, mtu)
				}
				return
			}
			onB := relays[len(relays)-1]
			if got != 1<<20 || mtu != 1400 {
				t.Fatalf("transferred %d of %d bytes, A caches mtu %d; want all and 1400 (B's relay: %+v)", got, 1<<20, mtu, onB.Stats())
			}
			waitFor(t, "B's relay to count its copies", func() bool { return onB.Stats().Sent > 0 })
			if tc.mode == pmtud.ModeUDP {
				waitFor(t, "A's relay to inject the copies", func() bool { return relays[0].Stats().Injected > 0 })
			}
		})
	}
}

// download6 downloads 1 MiB from server (node A) to the client over IPv6,
// stalling after 3 s without progress, and returns the bytes that arrived
// and the path MTU A then caches toward the client.
func download6(t *testing.T, c *netlab.Cluster, server *netlab.NS) (int, int) {
	t.Helper()
	if mtu, err := server.CachedMTU(netlab.ClientAddr6.String()); err != nil || mtu != 0 {
		t.Fatalf("before the transfer %s caches mtu %d (%v), want none", server.Name(), mtu, err)
	}
	got, err := c.TransferTo(server, netlab.Anycast6, 1<<20, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	mtu, err := server.CachedMTU(netlab.ClientAddr6.String())
	if err != nil {
		t.Fatal(err)
	}
	return got, mtu
}

// TestIPv6OnlyDaemonsDoNotPingPong runs go-pmtud on two and on three
// IPv6-only nodes that list each other, with no --ignore-networks: one
// router Packet Too Big to each node gives exactly one copy to every other
// node, and the copies are not copied again. On dual-stack nodes, listed
// with both addresses, the same with a frag-needed and a Packet Too Big to
// each node.
func TestIPv6OnlyDaemonsDoNotPingPong(t *testing.T) {
	for _, stack := range []string{ipv6Only, dualStack} {
		for _, n := range []int{2, 3} {
			for _, tc := range []struct {
				mode pmtud.Mode
				dest string
			}{{pmtud.ModeICMP, ""}, {pmtud.ModeUDP, ""}, {pmtud.ModeL2, pmtud.L2Broadcast}, {pmtud.ModeL2, pmtud.L2Peers}} {
				t.Run(fmt.Sprintf("%s/%d daemons/%v relay %s", stack, n, tc.mode, tc.dest), func(t *testing.T) {
					noPingPongFamily(t, stack, n, tc.mode, tc.dest)
				})
			}
		}
	}
}

func noPingPongFamily(t *testing.T, stack string, n int, mode pmtud.Mode, dest string) {
	c := familyCluster(t, n, stack)
	nodes := make([]int, n)
	for i := range nodes {
		nodes[i] = i
	}
	relays := startFamilyDaemons(t, c, stack, mode, func(cfg *pmtud.Config) { cfg.L2Dest = dest }, nodes...)
	inj6, per := newInjector6(t, c.Router), 1
	var inj4 *injector
	if stack == dualStack {
		inj4, per = newInjector(t, c.Router), 2
	}
	oneCopyEach(t, relays, mode, dest, per, func(i int) {
		inj6.send(t, netlab.NodeAddr6(i), packetTooBig(netlab.RouterLoopback6, 1400, uint16(41000+i)))
		if inj4 != nil {
			inj4.send(t, netlab.NodeAddr(i), fragNeeded(netlab.RouterLoopback, 1400, uint16(41000+i)))
		}
	})
}

// packetTooBig returns a router's Packet Too Big from src to the IPv6
// anycast address, about a 1,440-byte TCP segment from its port 8080 to
// the client's port sport.
func packetTooBig(src netip.Addr, mtu uint32, sport uint16) []byte {
	q := make([]byte, 40+8)
	q[0] = 6 << 4
	binary.BigEndian.PutUint16(q[4:], 1400) // payload length: 1,440 bytes in all
	q[6], q[7] = unix.IPPROTO_TCP, 63
	s, d := netlab.Anycast6.As16(), netlab.ClientAddr6.As16()
	copy(q[8:], s[:])
	copy(q[24:], d[:])
	binary.BigEndian.PutUint16(q[40:], netlab.TransferPort)
	binary.BigEndian.PutUint16(q[42:], sport)
	return wire.AppendPacketTooBig(nil, src, netlab.Anycast6, 64, mtu, q)
}

// TestDualStackLearnsPathMTU: nodes with both families, each peer listed
// with both addresses. A learns the path MTU of an IPv4 and of an IPv6
// download from B's copies, with the udp relay on both nodes and with the
// icmp relay on B alone; each family's copy travels over that family (B's
// per-peer series for A's IPv4 and IPv6 addresses count one each). With
// --relay-family ipv4 both travel over IPv4.
func TestDualStackLearnsPathMTU(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mode   pmtud.Mode
		family pmtud.Family
		nodes  []int
	}{
		{"udp relay", pmtud.ModeUDP, pmtud.FamilyAuto, []int{0, 1}},
		{"icmp relay", pmtud.ModeICMP, pmtud.FamilyAuto, []int{1}},
		{"udp relay over ipv4", pmtud.ModeUDP, pmtud.FamilyIPv4, []int{0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := familyCluster(t, 2, dualStack)
			relays := startFamilyDaemons(t, c, dualStack, tc.mode, func(cfg *pmtud.Config) { cfg.RelayFamily = tc.family }, tc.nodes...)
			a, onB := c.Nodes[0], relays[len(relays)-1]
			got6, mtu6 := download6(t, c, a)
			got4, err := c.Transfer(a, 1<<20, 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			mtu4, err := a.CachedMTU(netlab.ClientAddr.String())
			if err != nil {
				t.Fatal(err)
			}
			if got4 != 1<<20 || mtu4 != 1400 || got6 != 1<<20 || mtu6 != 1400 {
				t.Fatalf("IPv4: %d bytes, mtu %d; IPv6: %d bytes, mtu %d; want 1 MiB and 1400 each (B: %+v)", got4, mtu4, got6, mtu6, onB.Stats())
			}
			want4, want6 := 1, 1
			if tc.family == pmtud.FamilyIPv4 {
				want4, want6 = 2, 0
			}
			// A download may see a Packet Too Big more than once (the
			// router repeats it for a retransmission): at least one copy
			// per family, and none over a family that is not to be used.
			waitFor(t, "B's per-peer counts", func() bool {
				n4, n6 := sentTo(t, onB, netlab.NodeAddr(0)), sentTo(t, onB, netlab.NodeAddr6(0))
				return n4 >= want4 && n6 >= want6 && (want6 > 0 || n6 == 0)
			})
		})
	}
}

// sentTo returns r's go_pmtud_sent_packets_peer for peer address a.
func sentTo(t *testing.T, r *pmtud.Relay, a netip.Addr) int {
	t.Helper()
	var m strings.Builder
	r.WritePrometheus(&m)
	re := regexp.MustCompile(`(?m)^go_pmtud_sent_packets_peer\{[^}]*peer="` + regexp.QuoteMeta(a.String()) + `"\} (\d+)$`)
	s := re.FindStringSubmatch(m.String())
	if s == nil {
		t.Fatalf("no go_pmtud_sent_packets_peer series for %v in:\n%s", a, m.String())
	}
	var n int
	fmt.Sscan(s[1], &n)
	return n
}

// TestIPv6HostPolicies: on IPv6-only nodes, what A's host policy lets
// through. A filters reverse paths strictly (nftables' fib expression, as
// a strict rpfilter does), or drops what conntrack calls INVALID. The
// icmp relay's copy comes from B's address over the segment, so strict
// rpfilter passes it; its outer destination is A, not the address the
// quoted packet left from, so conntrack calls it INVALID (as the IPv4
// copy) and a host that drops INVALID never learns. The udp relay's
// injected packet is the router's own, which conntrack relates; but it
// arrives on the TUN device, where no route leads back to the router, so
// a strict rpfilter drops it unless its rule exempts the device (IPv6 has
// no per-device rp_filter sysctl that the daemon could loosen, and a drop
// in another table cannot be overridden). All asserted as measured.
func TestIPv6HostPolicies(t *testing.T) {
	policies := []struct {
		name  string
		rules string // an nftables ruleset for A
	}{
		{"strict rpfilter", "table ip6 pol {\n chain pre {\n  type filter hook prerouting priority raw\n  fib saddr . iif oif missing counter drop\n }\n}"},
		{"strict rpfilter but pmtud0", "table ip6 pol {\n chain pre {\n  type filter hook prerouting priority raw\n  iifname != \"pmtud0\" fib saddr . iif oif missing counter drop\n }\n}"},
		{"INVALID dropped", "table ip6 pol {\n chain in {\n  type filter hook input priority filter\n  ct state invalid counter drop\n }\n}"},
	}
	for _, p := range policies {
		for _, tc := range []struct {
			mode   pmtud.Mode
			nodes  []int
			learns bool
		}{
			{pmtud.ModeICMP, []int{1}, p.name != "INVALID dropped"},
			{pmtud.ModeUDP, []int{0, 1}, p.name != "strict rpfilter"},
		} {
			t.Run(p.name+"/"+tc.mode.String()+" relay", func(t *testing.T) {
				c := familyCluster(t, 2, ipv6Only)
				a := c.Nodes[0]
				rules := filepath.Join(t.TempDir(), "policy.nft")
				if err := os.WriteFile(rules, []byte(p.rules+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				a.MustRun(t, "nft", "-f", rules)
				relays := startFamilyDaemons(t, c, ipv6Only, tc.mode, nil, tc.nodes...)
				got, mtu := download6(t, c, a)
				dropped := a.MustRun(t, "nft", "list", "table", "ip6", "pol")
				if learned := got == 1<<20 && mtu == 1400; learned != tc.learns {
					t.Fatalf("transferred %d bytes, A caches mtu %d: learned %v, want %v (B: %+v)\n%s", got, mtu, learned, tc.learns, relays[len(relays)-1].Stats(), dropped)
				}
				if !tc.learns && !strings.Contains(dropped, "counter packets") || !tc.learns && strings.Contains(dropped, "counter packets 0 ") {
					t.Fatalf("the policy dropped nothing, yet A did not learn:\n%s", dropped)
				}
			})
		}
	}
}

// TestSegmentedPacksAreAllInjected: B packs a burst of router ICMPs into
// same-sized version 3 datagrams, which go to A as one segmented send
// (UDP GSO), and A's socket may take them whole (UDP GRO): A injects
// every packet of every pack, over IPv4 and over IPv6, and drops none.
func TestSegmentedPacksAreAllInjected(t *testing.T) {
	const n = 20
	for _, fam := range []pmtud.Family{pmtud.FamilyIPv4, pmtud.FamilyIPv6} {
		t.Run(fam.String(), func(t *testing.T) {
			c := familyCluster(t, 2, dualStack)
			relays := startFamilyDaemons(t, c, dualStack, pmtud.ModeUDP, func(cfg *pmtud.Config) {
				cfg.Envelope, cfg.PackBytes, cfg.RelayFamily = 3, 600, fam
				cfg.NFLOG.QThreshold = n // one batch for the burst
			}, 0, 1)
			inj := newInjector(t, c.Router)
			for i := range n {
				inj.send(t, netlab.NodeAddr(1), fragNeeded(netlab.RouterLoopback, 1400, uint16(42000+i)))
			}
			onA, onB := relays[0], relays[1]
			waitFor(t, "A to inject every packet", func() bool { return onA.Stats().Injected == n })
			if st := onA.Stats(); len(st.RelayDropped) != 0 || st.Injected != n {
				t.Fatalf("A: %+v; want %d injected, none dropped (B: %+v)", st, n, onB.Stats())
			}
		})
	}
}

// TestReceiverSplitsCoalescedPacks: a peer's segmented send of packs
// reaches the receiving socket whole over lo (UDP GRO), one read holding
// several datagrams; the receiver opens each and injects every packet.
func TestReceiverSplitsCoalescedPacks(t *testing.T) {
	ns, err := netlab.NewT(t).AddNS("gro")
	if err != nil {
		t.Fatal(err)
	}
	node, sender := netip.MustParseAddr("198.18.83.1"), netip.MustParseAddr("198.18.83.2")
	for _, a := range []netip.Addr{node, sender} {
		ns.MustRun(t, "ip", "addr", "add", a.String()+"/32", "dev", "lo")
	}
	relay := startRelay(t, ns, pmtud.Config{Mode: pmtud.ModeUDP, Source: node, Peers: pmtud.PeersOf(sender), Keys: testKeys(pmtud.ModeUDP)})
	var fan *transport.Fanout
	if err := ns.Do(func() (err error) {
		fan, err = transport.NewUDP(sender, 10, []netip.Addr{node}, pmtud.DefaultRelayPort)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer fan.Close()
	key := testKeys(pmtud.ModeUDP)[0]
	sealer, err := wire.NewSealerPacked(&key, wire.NewSequence(time.Now()), sender)
	if err != nil {
		t.Fatal(err)
	}
	// 8 packs of 3 packets each, all of one size.
	const packs, per = 8, 3
	heads, bodies := make([][]byte, packs), make([][]byte, packs)
	for i := range packs {
		for k := range per {
			bodies[i] = wire.AppendPacked(bodies[i], fragNeeded(netlab.RouterLoopback, 1400, uint16(43000+i*per+k)))
		}
		var h [wire.EnvelopeLen]byte
		heads[i] = h[:sealer.Seal(&h, bodies[i], time.Now())]
	}
	if !fan.SendSegments(heads, bodies) {
		t.Fatal("the packs did not go out segmented")
	}
	waitFor(t, "every packet injected", func() bool { return relay.Stats().Injected == packs*per })
	if st := relay.Stats(); st.RelayReceived != packs || len(st.RelayDropped) != 0 {
		t.Fatalf("receiver: %+v; want %d datagrams, %d packets injected, none dropped", st, packs, packs*per)
	}
}
