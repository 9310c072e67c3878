package netlab

import (
	"net/netip"
	"strconv"
)

// IPv6 addresses of a Cluster after AddIPv6. All lie in 2001:db8::/32.
var (
	// Anycast6 is the IPv6 service address every node holds (on lo).
	Anycast6 = netip.MustParseAddr("2001:db8:100::1")
	// ClientAddr6 is the client's IPv6 address behind the narrow link.
	ClientAddr6 = netip.MustParseAddr("2001:db8:2::2")
	// RouterAddr6 is the router's IPv6 address on the cluster segment.
	RouterAddr6 = netip.MustParseAddr("2001:db8:1::1")
	// RouterLoopback6 is the source of the router's Packet Too Big
	// messages, outside the nodes' subnet.
	RouterLoopback6 = netip.MustParseAddr("2001:db8:ff::1")
)

// NodeAddr6 returns node i's IPv6 address on the cluster segment.
func NodeAddr6(i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 14: 0, 15: byte(0x10 + i)})
}

// AddIPv6 gives the cluster the same scene over IPv6: addresses (without
// DAD), the router's forwarding, its ECMP-like split (flows of Anycast6 to
// node 0, its own ICMPv6 to node 1, from RouterLoopback6), and a jumbo MSS
// on the client. Linux never lowers an IPv6 path MTU below 1280, so the
// narrow MTU must be at least that for a test to see it.
func (c *Cluster) AddIPv6() error {
	const plen = "/64"
	steps := []step{
		{c.Router, []string{"sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"}},
		{c.Router, []string{"ip", "addr", "add", RouterAddr6.String() + plen, "dev", "eth1", "nodad"}},
		{c.Router, []string{"ip", "addr", "add", "2001:db8:2::1" + plen, "dev", "eth0", "nodad"}},
		{c.Router, []string{"ip", "addr", "add", RouterLoopback6.String() + "/128", "dev", "lo"}},
		{c.Router, []string{"ip", "-6", "route", "add", Anycast6.String() + "/128", "via", NodeAddr6(0).String()}},
		{c.Router, []string{"ip", "-6", "route", "add", Anycast6.String() + "/128", "via", NodeAddr6(1).String(), "src", RouterLoopback6.String(), "table", "100"}},
		{c.Router, []string{"ip", "-6", "rule", "add", "pref", "100", "ipproto", "ipv6-icmp", "table", "100"}},
		{c.Client, []string{"ip", "addr", "add", ClientAddr6.String() + plen, "dev", "eth0", "nodad"}},
		// MSS = MTU - 60 over IPv6.
		{c.Client, []string{"ip", "-6", "route", "add", "default", "via", "2001:db8:2::1", "advmss", strconv.Itoa(ClusterMTU - 60)}},
	}
	for i, node := range c.Nodes {
		steps = append(steps,
			step{node, []string{"ip", "addr", "add", NodeAddr6(i).String() + plen, "dev", "eth0", "nodad"}},
			step{node, []string{"ip", "addr", "add", Anycast6.String() + "/128", "dev", "lo"}},
			step{node, []string{"ip", "-6", "route", "add", "default", "via", RouterAddr6.String()}},
		)
	}
	return c.run(steps)
}

// NFLOGRule6 is the ip6tables rule go-pmtud expects, as arguments after
// "ip6tables": it logs every arriving ICMPv6 Packet Too Big to group.
func NFLOGRule6(group int) []string {
	return []string{"-t", "raw", "-A", "PREROUTING", "-p", "ipv6-icmp", "--icmpv6-type", "packet-too-big",
		"-j", "NFLOG", "--nflog-group", strconv.Itoa(group)}
}

// InstallNFLOGRule6 installs NFLOGRule6(group) in ns.
func InstallNFLOGRule6(ns *NS, group int) error {
	_, err := ns.Run(append([]string{"ip6tables"}, NFLOGRule6(group)...)...)
	return err
}

// DropIPv4 makes the nodes IPv6-only, after AddIPv6: it removes their IPv4
// addresses (but the loopback's 127.0.0.1) and with them their IPv4
// routes. The router and the client keep theirs.
func (c *Cluster) DropIPv4() error {
	var steps []step
	for _, node := range c.Nodes {
		steps = append(steps,
			step{node, []string{"ip", "-4", "addr", "flush", "dev", "eth0"}},
			step{node, []string{"ip", "addr", "del", Anycast.String() + "/32", "dev", "lo"}},
		)
	}
	return c.run(steps)
}
