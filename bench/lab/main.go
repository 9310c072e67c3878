// Command lab shows go-pmtud doing its job, on this machine, in network
// namespaces it creates and deletes again:
//
//	client ──(MTU 1400)── router ──(MTU 9000)── node A, node B (anycast 198.18.100.1)
//
// Node A serves a download from the anycast address; the router's
// "fragmentation needed" for it lands on node B. The lab downloads once
// without go-pmtud (it stalls: A never learns the path MTU), then starts
// go-pmtud on both nodes, each listing both as peers, as the DaemonSet does,
// and downloads again (it completes), and prints A's route to the client
// and the relays' counters each time. With -ipv6 the same happens over
// IPv6 (anycast 2001:db8:100::1): the router's ICMPv6 Packet Too Big lands
// on B, and the udp relay carries it to A over the nodes' IPv4 addresses.
//
// Run it as root: sudo go run ./bench/lab [-ipv6] [-relay icmp]
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-pmtud/go-pmtud"
	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

func main() {
	size := flag.Int("size", 4<<20, "bytes to download")
	mtu := flag.Int("mtu", 1400, "MTU of the router's link to the client")
	stall := flag.Duration("stall", 3*time.Second, "a download that makes no progress this long has stalled")
	relay := flag.String("relay", "udp", "relay mode of the daemons: udp or icmp")
	ipv6 := flag.Bool("ipv6", false, "download over IPv6: the router sends ICMPv6 Packet Too Big")
	flag.Parse()
	mode, err := pmtud.ParseMode(*relay)
	if err == nil && *ipv6 && *mtu < 1280 {
		err = fmt.Errorf("-mtu %d: IPv6 needs at least 1280 (Linux never lowers an IPv6 path MTU below it)", *mtu)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(2)
	}
	if err := run(*size, *mtu, *stall, mode, *ipv6); err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(1)
	}
}

func run(size, mtu int, stall time.Duration, mode pmtud.Mode, ipv6 bool) error {
	lab, err := netlab.New("pmtud-lab")
	if err != nil {
		return err
	}
	defer lab.Close()
	// Delete the namespaces on Ctrl-C too.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; lab.Close(); os.Exit(130) }()

	c, err := netlab.BuildCluster(lab, 2, mtu)
	if err != nil {
		return err
	}
	a := c.Nodes[0]
	svc, client := netlab.Anycast, netlab.ClientAddr.String()
	if ipv6 {
		if err := c.AddIPv6(); err != nil {
			return err
		}
		svc, client = netlab.Anycast6, netlab.ClientAddr6.String()
	}
	fmt.Printf("lab: client %s ── MTU %d ── router ── MTU %d ── node A %s, node B %s; anycast %s\n\n",
		client, mtu, netlab.ClusterMTU, netlab.NodeAddr(0), netlab.NodeAddr(1), svc)

	route := func() string {
		out, err := a.Run("ip", "route", "get", client)
		if err != nil {
			return err.Error()
		}
		return strings.Join(strings.Fields(out), " ")
	}
	download := func() {
		start := time.Now()
		n, err := c.TransferTo(c.Nodes[0], svc, size, stall)
		switch {
		case err != nil:
			fmt.Printf("  download: %v\n", err)
		case n == size:
			fmt.Printf("  download: %d of %d bytes, complete in %v\n", n, size, time.Since(start).Round(time.Millisecond))
		default:
			fmt.Printf("  download: %d of %d bytes, stalled (no progress for %v)\n", n, size, stall)
		}
	}

	fmt.Println("1. without go-pmtud")
	fmt.Printf("  A before: ip route get %s: %s\n", client, route())
	download()
	fmt.Printf("  A after:  ip route get %s: %s\n\n", client, route())

	fmt.Printf("2. with go-pmtud (--relay %v) on A and B, each with --peers %v,%v\n", mode, netlab.NodeAddr(0), netlab.NodeAddr(1))
	fmt.Printf("   iptables %s\n", strings.Join(netlab.NFLOGRule(33), " "))
	if ipv6 {
		fmt.Printf("   ip6tables %s\n", strings.Join(netlab.NFLOGRule6(33), " "))
	}
	var keys []wire.Key
	if mode == pmtud.ModeUDP {
		// What --relay-key-file would hold: one key, the same on every node.
		secret := make([]byte, 32)
		rand.Read(secret)
		keys = []wire.Key{{ID: 1, Secret: secret}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var relays []*pmtud.Relay
	done := make(chan error, len(c.Nodes))
	for i, node := range c.Nodes {
		if err := netlab.InstallNFLOGRule(node, 33); err != nil {
			cancel()
			return err
		}
		if ipv6 {
			if err := netlab.InstallNFLOGRule6(node, 33); err != nil {
				cancel()
				return err
			}
		}
		var relay *pmtud.Relay
		stopAll := func() {
			cancel()
			for range relays {
				<-done
			}
		}
		if err := node.Do(func() (err error) {
			relay, err = pmtud.New(pmtud.Config{
				NodeName:   string(rune('a' + i)),
				Mode:       mode,
				Source:     netlab.NodeAddr(i),
				LocalAddrs: []netip.Addr{netlab.NodeAddr(i), netlab.Anycast, netlab.NodeAddr6(i), netlab.Anycast6},
				Peers:      pmtud.PeersOf(netlab.NodeAddr(0), netlab.NodeAddr(1)),
				TTL:        10,
				Keys:       keys,
				NFLOG:      nl.Config{Group: 33},
			}, slog.New(slog.NewTextHandler(os.Stderr, nil)))
			return err
		}); err != nil {
			stopAll()
			return err
		}
		relays = append(relays, relay)
		go func() { done <- relay.Run(ctx) }()
	}
	fmt.Printf("  A before: ip route get %s: %s\n", client, route())
	download()
	fmt.Printf("  A after:  ip route get %s: %s\n", client, route())
	time.Sleep(100 * time.Millisecond) // let the counters settle
	cancel()
	for range relays {
		if err := <-done; err != nil {
			return err
		}
	}

	for i, relay := range relays {
		fmt.Printf("\n  go-pmtud counters on %c (non-zero):\n", 'A'+i)
		var buf bytes.Buffer
		relay.WritePrometheus(&buf)
		for sc := bufio.NewScanner(&buf); sc.Scan(); {
			line := sc.Text()
			if strings.HasPrefix(line, "go_pmtud_") && !strings.HasSuffix(line, " 0") && !strings.Contains(line, "_bucket") {
				fmt.Println("   ", line)
			}
		}
	}
	return nil
}
