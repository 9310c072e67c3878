package pmtud_test

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	pmtudrules "github.com/go-pmtud/go-pmtud/internal/rules"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// docNFTRules returns the nftables ruleset of docs/operations.md: the
// fenced block after the line that introduces it.
func docNFTRules(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "nftables equivalent")
	if ok {
		_, rest, ok = strings.Cut(rest, "```\n")
	}
	block, _, closed := strings.Cut(rest, "```")
	if !ok || !closed || !strings.Contains(block, "table ip6 pmtud") {
		t.Fatal("docs/operations.md has no nftables ruleset block for both families after \"nftables equivalent\"")
	}
	return block
}

// TestDocumentedRulesLogRouterErrors installs the documented rules
// (docs/operations.md), the iptables pair (netlab.NFLOGRule, NFLOGRule6)
// and the nftables ruleset (read from the document), on node B of a cluster, makes the
// kernel router send B a Fragmentation Needed and a Packet Too Big (node A
// sends oversized DF datagrams from the anycast addresses), and checks that
// NFLOG group 33 delivers both, and nothing else.
func TestDocumentedRulesLogRouterErrors(t *testing.T) {
	for _, rules := range []string{"iptables", "nft", "daemon-owned"} {
		t.Run(rules, func(t *testing.T) {
			c := dualStackCluster(t)
			a, b := c.Nodes[0], c.Nodes[1]
			if rules == "iptables" {
				if err := netlab.InstallNFLOGRule(b, group); err != nil {
					t.Fatal(err)
				}
				if err := netlab.InstallNFLOGRule6(b, group); err != nil {
					t.Fatal(err)
				}
			} else if rules == "daemon-owned" {
				// internal/rules, as --manage-rules nftables installs them:
				// twice (a second start, or a killed daemon's leftover
				// table) leaves one set.
				for range 2 {
					if err := b.Do(func() error { return pmtudrules.Install(group, "pmtud0") }); err != nil {
						t.Fatal(err)
					}
				}
				if out := b.MustRun(t, "nft", "list", "table", "inet", pmtudrules.Table); strings.Count(out, "log group 33") != 2 {
					t.Fatalf("after two installs the table holds:\n%s\nwant one rule per family", out)
				}
				t.Cleanup(func() {
					if err := b.Do(pmtudrules.Remove); err != nil {
						t.Errorf("remove: %v", err)
					}
					if out := b.MustRun(t, "nft", "list", "tables"); strings.Contains(out, pmtudrules.Table) {
						t.Errorf("the table is still there after Remove:\n%s", out)
					}
					if err := b.Do(pmtudrules.Remove); err != nil {
						t.Errorf("a second Remove: %v", err)
					}
				})
			} else {
				path := filepath.Join(t.TempDir(), "pmtud.nft")
				if err := os.WriteFile(path, []byte(docNFTRules(t)), 0o600); err != nil {
					t.Fatal(err)
				}
				b.MustRun(t, "nft", "-f", path)
			}
			var r *nl.Reader
			if err := b.Do(func() (err error) {
				r, err = nl.Listen(nl.Config{Group: group, QThreshold: 1})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			for _, dst := range []netip.Addr{netlab.ClientAddr, netlab.ClientAddr6} {
				sendOversized(t, a, dst)
			}
			seen := map[bool]bool{} // by IPv6
			b2 := nl.NewBatch()
			deadline := time.AfterFunc(5*time.Second, func() { r.Close() })
			defer deadline.Stop()
			for len(seen) < 2 {
				if err := r.Read(b2); err != nil {
					t.Fatalf("read NFLOG (so far: %v): %v", seen, err)
				}
				for _, p := range b2.Packets {
					f, err := wire.Parse(p.Payload)
					if err != nil {
						t.Fatalf("group %d delivered a packet that does not parse: %v", group, err)
					}
					if f.MTU != 1400 {
						t.Fatalf("logged a message with MTU %d, want 1400", f.MTU)
					}
					seen[f.Src.Is6()] = true
				}
			}
		})
	}
}

// sendOversized sends, from ns, a 2000-byte UDP datagram with DF (IPv4) or
// unfragmentable (IPv6) from the anycast address of dst's family to dst,
// port 9: the router's narrow link answers it.
func sendOversized(t *testing.T, ns *netlab.NS, dst netip.Addr) {
	t.Helper()
	src, network, level, opt := netlab.Anycast, "udp4", unix.IPPROTO_IP, unix.IP_MTU_DISCOVER
	if dst.Is6() {
		src, network, level, opt = netlab.Anycast6, "udp6", unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER
	}
	err := ns.Do(func() error {
		conn, err := net.DialUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
		if err != nil {
			return err
		}
		defer conn.Close()
		raw, err := conn.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), level, opt, unix.IP_PMTUDISC_PROBE)
		}); err != nil {
			return err
		}
		if serr != nil {
			return serr
		}
		_, err = conn.Write([]byte(strings.Repeat("x", 2000)))
		return err
	})
	if err != nil {
		t.Fatalf("send oversized datagram to %v: %v", dst, err)
	}
}
