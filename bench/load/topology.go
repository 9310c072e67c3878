package main

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// The address plan. Everything lies in 198.18.0.0/15.
var (
	// routerAddr is the injector's address on the router-node link.
	routerAddr = netip.MustParseAddr("198.18.0.1")
	// nodeUplink is the node's address on that link: the destination of
	// the injected ICMPs.
	nodeUplink = netip.MustParseAddr("198.18.0.2")
	// nodeAddr is the node's cluster address (--iface eth0): the source of
	// the copies and of the ceiling's packets.
	nodeAddr = netip.MustParseAddr("198.18.1.2")
	// sinkAddr is the sink's own address on the cluster link.
	sinkAddr = netip.MustParseAddr("198.18.1.1")
	// icmpSource is the outer source of the injected ICMPs: a router
	// loopback outside the node's subnets, as in production, so the
	// daemon's loop guard does not take them for copies.
	icmpSource = netip.MustParseAddr("198.19.255.1")
)

// nflogGroup is the NFLOG group of the node's iptables rule and the daemon.
const nflogGroup = 33

// peerAddr returns peer i's address, held by the sink.
func peerAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 1, byte(100 + i)}) }

// topology is the scene of one run.
type topology struct {
	router, node, sink *netlab.NS
	peers              []netip.Addr
	// spare is an address beyond the P peers that the sink also holds
	// (peer P's), the one a swap puts in place of the last peer; invalid
	// without swaps.
	spare netip.Addr
}

// buildTopology creates the router, node and sink namespaces, with p peer
// addresses in the sink (and the spare address, with spare), and registers
// their removal with cl. dir holds the sink's nft ruleset file. With
// dropLogged the node drops the injected ICMPs right after logging them
// (see dropLoggedRule).
func buildTopology(p int, spare, dropLogged bool, dir string, cl *cleanups) (*topology, error) {
	lab, err := netlab.New("pmtud-load")
	if err != nil {
		return nil, err
	}
	cl.add(func() {
		if err := lab.Close(); err != nil {
			progress("%v", err)
		}
	})
	t := &topology{}
	for _, ns := range []struct {
		p    **netlab.NS
		name string
	}{{&t.router, "router"}, {&t.node, "node"}, {&t.sink, "sink"}} {
		if *ns.p, err = lab.AddNS(ns.name); err != nil {
			return nil, err
		}
	}
	if err := lab.Link(t.router, "eth0", t.node, "eth1"); err != nil {
		return nil, err
	}
	if err := lab.Link(t.node, "eth0", t.sink, "eth0"); err != nil {
		return nil, err
	}
	for i := range p {
		t.peers = append(t.peers, peerAddr(i))
	}
	if spare {
		t.spare = peerAddr(p)
	}
	if err := t.address(); err != nil {
		return nil, err
	}
	if err := t.resolveNeighbours(); err != nil {
		return nil, err
	}
	if err := netlab.InstallNFLOGRule(t.node, nflogGroup); err != nil {
		return nil, err
	}
	if dropLogged {
		if _, err := t.node.Run(dropLoggedRule()...); err != nil {
			return nil, err
		}
	}
	if err := setupSink(t.sink, dir); err != nil {
		return nil, err
	}
	return t, nil
}

// address assigns the addresses and routes of the address plan.
func (t *topology) address() error {
	steps := []struct {
		ns   *netlab.NS
		args []string
	}{
		{t.router, []string{"ip", "addr", "add", routerAddr.String() + "/24", "dev", "eth0"}},
		{t.router, []string{"ip", "addr", "add", icmpSource.String() + "/32", "dev", "lo"}},
		{t.node, []string{"ip", "addr", "add", nodeUplink.String() + "/24", "dev", "eth1"}},
		{t.node, []string{"ip", "addr", "add", nodeAddr.String() + "/24", "dev", "eth0"}},
		{t.node, []string{"ip", "route", "add", "default", "via", routerAddr.String()}},
		{t.sink, []string{"ip", "addr", "add", sinkAddr.String() + "/24", "dev", "eth0"}},
	}
	for _, s := range steps {
		if _, err := s.ns.Run(s.args...); err != nil {
			return err
		}
	}
	for _, a := range t.sinkAddrs() {
		if _, err := t.sink.Run("ip", "addr", "add", a.String()+"/32", "dev", "eth0"); err != nil {
			return err
		}
	}
	return nil
}

// sinkAddrs returns the peer addresses the sink holds: the P peers and the
// spare, if any.
func (t *topology) sinkAddrs() []netip.Addr {
	if t.spare.IsValid() {
		return append(t.peers[:len(t.peers):len(t.peers)], t.spare)
	}
	return t.peers
}

// resolveNeighbours installs permanent neighbour entries for every
// destination the measured traffic has, so no packet waits for ARP or is
// dropped from a full neighbour queue.
func (t *topology) resolveNeighbours() error {
	nodeMAC, err := macOf(t.node, "eth1")
	if err != nil {
		return err
	}
	sinkMAC, err := macOf(t.sink, "eth0")
	if err != nil {
		return err
	}
	if err := setNeighbour(t.router, "eth0", nodeUplink, nodeMAC); err != nil {
		return err
	}
	for _, a := range append([]netip.Addr{sinkAddr}, t.sinkAddrs()...) {
		if err := setNeighbour(t.node, "eth0", a, sinkMAC); err != nil {
			return err
		}
	}
	return nil
}

// macOf returns the hardware address of dev in ns.
func macOf(ns *netlab.NS, dev string) (net.HardwareAddr, error) {
	var mac net.HardwareAddr
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return fmt.Errorf("look up %s in %s: %w", dev, ns.Name(), err)
		}
		mac = ifi.HardwareAddr
		return nil
	})
	return mac, err
}

// setNeighbour adds a permanent neighbour entry for a on dev in ns.
func setNeighbour(ns *netlab.NS, dev string, a netip.Addr, mac net.HardwareAddr) error {
	_, err := ns.Run("ip", "neigh", "replace", a.String(), "lladdr", mac.String(), "dev", dev, "nud", "permanent")
	return err
}

// dropLoggedRule is the iptables command of -drop-logged: after the NFLOG
// rule (raw PREROUTING, the DaemonSet's rule) has logged an injected ICMP,
// drop it. On veth the node's whole receive path runs in the injector's
// softirq, on the injector's CPU; without routing and local delivery
// (ip_route_input, icmp_rcv, tcp_v4_err) it costs about 40% less there. The
// daemon's work is the same either way: it reads the logged copy.
func dropLoggedRule() []string {
	return []string{"iptables", "-t", "raw", "-A", "PREROUTING", "-p", "icmp",
		"-s", icmpSource.String(), "--icmp-type", "fragmentation-needed", "-j", "DROP"}
}

// jumboMTU is the node segment's MTU for the receive mode's large packs.
const jumboMTU = 9000

// jumbo sets the MTU of the node–sink segment, both ends, to jumboMTU.
func (t *topology) jumbo() error {
	for _, ns := range []*netlab.NS{t.node, t.sink} {
		if _, err := ns.Run("ip", "link", "set", "eth0", "mtu", strconv.Itoa(jumboMTU)); err != nil {
			return err
		}
	}
	return nil
}
