package main

import (
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/wire"
)

// TestPeerGroupsSendToOwnersOnly runs the real binary on three nodes with
// the udp relay. The service address is served by A alone, which node B
// says with --peer-groups. The router's ICMPs about A's flow land on B: B
// sends them to A only, A caches the path MTU and the stalled download
// completes, and C receives nothing. An ICMP about a port no group names
// goes to A and C both: ownership unknown, every peer.
func TestPeerGroupsSendToOwnersOnly(t *testing.T) {
	c, err := netlab.BuildCluster(netlab.NewT(t), 3, 1400)
	if err != nil {
		t.Fatal(err)
	}
	bin, keyFile := buildDaemon(t), writeKeyFile(t)
	peers := netlab.NodeAddr(0).String() + "," + netlab.NodeAddr(1).String() + "," + netlab.NodeAddr(2).String()
	common := []string{"PMTUD_IGNORE_NETWORKS=198.18.1.0/24", "PMTUD_RELAY_KEY_FILE=" + keyFile, "PMTUD_PEERS=" + peers}
	a := startDaemon(t, bin, c.Nodes[0], netlab.NodeAddr(0), append(common, "NODE_NAME=node-a")...)
	b := startDaemon(t, bin, c.Nodes[1], netlab.NodeAddr(1), append(common, "NODE_NAME=node-b",
		fmt.Sprintf("PMTUD_PEER_GROUPS=%s/32:%d=%s; 198.18.200.0/24=%s", netlab.Anycast, netlab.TransferPort, netlab.NodeAddr(0), netlab.NodeAddr(2)))...)
	cd := startDaemon(t, bin, c.Nodes[2], netlab.NodeAddr(2), append(common, "NODE_NAME=node-c")...)
	for _, d := range []*daemon{a, b, cd} {
		d.get("/metrics")
	}
	b.waitMetric(`go_pmtud_target_entries{node="node-b",scope="group"} 2`)

	got, mtu := download(t, c, c.Nodes[0])
	_, mb := b.get("/metrics")
	if got != downloadSize || mtu != 1400 {
		t.Fatalf("transferred %d of %d bytes, A caches mtu %d; want all and 1400\nB's metrics:\n%s", got, downloadSize, mtu, mb)
	}
	if strings.Contains(mb, `go_pmtud_targeted_total{node="node-b",scope="group"} 0`+"\n") {
		t.Errorf("B targeted nothing by group:\n%s", mb)
	}
	for _, line := range []string{
		`go_pmtud_targeted_total{node="node-b",scope="all"} 0`,
		`go_pmtud_sent_packets_peer{node="node-b",peer="198.18.1.12"} 0`,
	} {
		if !strings.Contains(mb, line+"\n") {
			t.Errorf("B's metrics lack %q:\n%s", line, mb)
		}
	}
	if _, mc := cd.get("/metrics"); !strings.Contains(mc, `go_pmtud_relay_received_total{node="node-c"} 0`+"\n") {
		t.Errorf("C received copies of A's flow:\n%s", mc)
	}

	// A flow from another port: no group names it.
	router := openIn(t, c.Router, unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	q := wire.AppendQuote(nil, netlab.Anycast, netlab.ClientAddr, unix.IPPROTO_TCP, 63, 1500, []byte{0x23, 0x28, 0xc3, 0x50, 0, 0, 0, 9})
	icmp := wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, q))
	if err := unix.Sendto(router, icmp, 0, &unix.SockaddrInet4{Addr: netlab.NodeAddr(1).As4()}); err != nil {
		t.Fatal(err)
	}
	b.waitMetric(`go_pmtud_targeted_total{node="node-b",scope="all"} 1`)
	cd.waitMetric(`go_pmtud_relay_injected_total{node="node-c"} 1`)
}
