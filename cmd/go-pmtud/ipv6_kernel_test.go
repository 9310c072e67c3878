package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// TestIPv6OnlyDaemons runs the real binary on nodes without an IPv4
// address, started as the DaemonSet starts it (no --iface: the interface
// of the IPv6 default route), with the peers listed by IPv6 address and
// the udp relay on both: the rules the daemons install log the router's
// Packet Too Big on B, B's datagram reaches A over IPv6, A caches the path
// MTU and the download completes; /metrics answers on the node's IPv6
// address; A relays nothing back.
func TestIPv6OnlyDaemons(t *testing.T) {
	c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddIPv6(); err != nil {
		t.Fatal(err)
	}
	if err := c.DropIPv4(); err != nil {
		t.Fatal(err)
	}
	bin, keyFile := buildDaemon(t), writeKeyFile(t)
	peers := netlab.NodeAddr6(0).String() + "," + netlab.NodeAddr6(1).String()
	var ds []*daemon
	for i, name := range []string{"node-a", "node-b"} {
		ds = append(ds, startDaemon(t, bin, c.Nodes[i], netlab.NodeAddr6(i), "NODE_NAME="+name,
			"PMTUD_PEERS="+peers, "PMTUD_RELAY_KEY_FILE="+keyFile))
	}
	for _, d := range ds {
		if code, body := d.get("/readyz"); code != 200 {
			t.Fatalf("/readyz = %d %q\n%s", code, body, d.stderr.String())
		}
	}
	a := c.Nodes[0]
	got, err := c.TransferTo(a, netlab.Anycast6, downloadSize, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	mtu, err := a.CachedMTU(netlab.ClientAddr6.String())
	if err != nil {
		t.Fatal(err)
	}
	if got != downloadSize || mtu != 1400 {
		_, mb := ds[1].get("/metrics")
		t.Fatalf("transferred %d of %d bytes, A caches mtu %d; want all and 1400\nB's metrics:\n%s\nB's log:\n%s", got, downloadSize, mtu, mb, ds[1].stderr.String())
	}
	sentTo := regexp.MustCompile(`(?m)^go_pmtud_sent_packets_peer\{node="node-b",peer="` + regexp.QuoteMeta(netlab.NodeAddr6(0).String()) + `"\} [1-9]`)
	if _, mb := ds[1].get("/metrics"); !sentTo.MatchString(mb) {
		t.Errorf("B's metrics lack copies to A's IPv6 address:\n%s", mb)
	}
	_, ma := ds[0].get("/metrics")
	if !regexp.MustCompile(`(?m)^go_pmtud_relay_injected_total\{node="node-a"\} [1-9]`).MatchString(ma) ||
		!strings.Contains(ma, `go_pmtud_sent_packets_total{node="node-a"} 0`) {
		t.Errorf("A's metrics: want injected copies and nothing sent:\n%s", ma)
	}
}
