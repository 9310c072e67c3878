package netlab

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"
)

// Addresses of a Cluster. All lie in 198.18.0.0/15.
var (
	// Anycast is the service address every node holds (on lo).
	Anycast = netip.MustParseAddr("198.18.100.1")
	// ClientAddr is the client's address behind the router's narrow link.
	ClientAddr = netip.MustParseAddr("198.18.2.2")
	// RouterAddr is the router's address on the cluster segment.
	RouterAddr = netip.MustParseAddr("198.18.1.1")
	// RouterLoopback is the source of the router's ICMPs: outside the
	// nodes' subnet, as on a real router, so a daemon does not take them
	// for copies.
	RouterLoopback = netip.MustParseAddr("198.19.255.1")
)

// ClusterMTU is the MTU of the cluster segment (nodes, router, bridge).
const ClusterMTU = 9000

// NodeAddr returns node i's address on the cluster segment.
func NodeAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + i)}) }

// Cluster is the ECMP scene of shared/design.md:
//
//	client ──(narrow MTU)── router ──(9000)── bridge ── node 0 (A), node 1 (B), ...
//
// Every node holds Anycast on lo. The router sends the flows of Anycast to
// node 0 but its own ICMPs for Anycast to node 1, as an ECMP hash that
// treats ICMP (no ports) apart would: so node 0 owns the flows and node 1
// gets their "fragmentation needed" messages.
type Cluster struct {
	Router *NS
	Client *NS
	Switch *NS
	Nodes  []*NS
}

// BuildCluster builds a cluster with n >= 2 nodes and a router whose link
// to the client has MTU narrowMTU.
func BuildCluster(l *Lab, n int, narrowMTU int) (*Cluster, error) {
	if n < 2 {
		return nil, fmt.Errorf("netlab: a cluster needs 2 nodes, got %d", n)
	}
	c := &Cluster{}
	var err error
	if c.Switch, err = l.AddNS("sw"); err != nil {
		return nil, err
	}
	if c.Router, err = l.AddNS("router"); err != nil {
		return nil, err
	}
	if c.Client, err = l.AddNS("client"); err != nil {
		return nil, err
	}
	for i := range n {
		node, err := l.AddNS("node" + strconv.Itoa(i))
		if err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, node)
	}
	mtu := strconv.Itoa(ClusterMTU)
	narrow := strconv.Itoa(narrowMTU)
	steps := []step{
		{c.Switch, []string{"ip", "link", "add", "br0", "mtu", mtu, "type", "bridge"}},
		{c.Switch, []string{"ip", "link", "set", "br0", "up"}},
	}
	if err := c.run(steps); err != nil {
		return nil, err
	}
	attach := func(ns *NS, port, dev, addr string) error {
		if err := l.Link(c.Switch, port, ns, dev); err != nil {
			return err
		}
		return c.run([]step{
			{c.Switch, []string{"ip", "link", "set", port, "mtu", mtu, "master", "br0"}},
			{ns, []string{"ip", "link", "set", dev, "mtu", mtu}},
			{ns, []string{"ip", "addr", "add", addr + "/24", "dev", dev}},
		})
	}
	if err := attach(c.Router, "r", "eth1", RouterAddr.String()); err != nil {
		return nil, err
	}
	for i, node := range c.Nodes {
		if err := attach(node, "n"+strconv.Itoa(i), "eth0", NodeAddr(i).String()); err != nil {
			return nil, err
		}
	}
	if err := l.Link(c.Router, "eth0", c.Client, "eth0"); err != nil {
		return nil, err
	}
	steps = []step{
		{c.Router, []string{"ip", "link", "set", "eth0", "mtu", narrow}},
		{c.Router, []string{"ip", "addr", "add", "198.18.2.1/24", "dev", "eth0"}},
		{c.Router, []string{"ip", "addr", "add", RouterLoopback.String() + "/32", "dev", "lo"}},
		{c.Router, []string{"sysctl", "-q", "-w", "net.ipv4.ip_forward=1"}},
		{c.Router, []string{"ip", "route", "add", Anycast.String() + "/32", "via", NodeAddr(0).String()}},
		{c.Router, []string{"ip", "route", "add", Anycast.String() + "/32", "via", NodeAddr(1).String(), "src", RouterLoopback.String(), "table", "100"}},
		{c.Router, []string{"ip", "rule", "add", "pref", "100", "ipproto", "icmp", "table", "100"}},
		{c.Client, []string{"ip", "link", "set", "eth0", "mtu", narrow}},
		{c.Client, []string{"ip", "addr", "add", ClientAddr.String() + "/24", "dev", "eth0"}},
		// A jumbo MSS, or TCP settles on 1460 and never needs PMTUD.
		{c.Client, []string{"ip", "route", "add", "default", "via", "198.18.2.1", "advmss", "8960"}},
	}
	for _, node := range c.Nodes {
		steps = append(steps,
			step{node, []string{"ip", "addr", "add", Anycast.String() + "/32", "dev", "lo"}},
			step{node, []string{"ip", "route", "add", "default", "via", RouterAddr.String()}},
		)
	}
	if err := c.run(steps); err != nil {
		return nil, err
	}
	return c, nil
}

// step is one command in one namespace.
type step struct {
	ns   *NS
	args []string
}

func (c *Cluster) run(steps []step) error {
	for _, s := range steps {
		if _, err := s.ns.Run(s.args...); err != nil {
			return err
		}
	}
	return nil
}

// NFLOGRule is the iptables rule go-pmtud expects, as arguments after
// "iptables": it logs every arriving ICMP "fragmentation needed" to group.
func NFLOGRule(group int) []string {
	return []string{"-t", "raw", "-A", "PREROUTING", "-p", "icmp", "--icmp-type", "fragmentation-needed",
		"-j", "NFLOG", "--nflog-group", strconv.Itoa(group)}
}

// InstallNFLOGRule installs NFLOGRule(group) in ns.
func InstallNFLOGRule(ns *NS, group int) error {
	_, err := ns.Run(append([]string{"iptables"}, NFLOGRule(group)...)...)
	return err
}

// TransferPort is the TCP port of Transfer's server on node 0.
const TransferPort = 8080

// Transfer serves size bytes on TransferPort from server (node 0, or a pod
// behind it) and fetches them from the client at Anycast:TransferPort, as a
// stalled download would be in production. It returns how many bytes
// arrived before the stream ended or made no progress for stall.
func (c *Cluster) Transfer(server *NS, size int, stall time.Duration) (int, error) {
	return c.TransferTo(server, Anycast, size, stall)
}

// TransferTo is Transfer to service address svc: Anycast, or Anycast6 after
// AddIPv6.
func (c *Cluster) TransferTo(server *NS, svc netip.Addr, size int, stall time.Duration) (int, error) {
	addr := net.JoinHostPort(svc.String(), strconv.Itoa(TransferPort))
	network := "tcp4"
	if svc.Is6() {
		network = "tcp6"
	}
	var ln net.Listener
	if err := server.Do(func() (err error) {
		ln, err = net.Listen(network, ":"+strconv.Itoa(TransferPort))
		return err
	}); err != nil {
		return 0, fmt.Errorf("netlab: listen: %w", err)
	}
	defer ln.Close()
	served := make(chan struct{})
	var mu sync.Mutex
	var sconn net.Conn // the server's side, closed early when the download stalls
	var finished bool
	go func() {
		defer close(served)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		mu.Lock()
		sconn = conn
		done := finished
		mu.Unlock()
		defer conn.Close()
		if !done {
			conn.Write(make([]byte, size))
		}
	}()
	var conn net.Conn
	if err := c.Client.Do(func() (err error) {
		conn, err = net.DialTimeout(network, addr, 5*time.Second)
		return err
	}); err != nil {
		return 0, fmt.Errorf("netlab: dial: %w", err)
	}
	defer func() {
		conn.Close()
		ln.Close()
		mu.Lock()
		finished = true
		if sconn != nil {
			sconn.Close()
		}
		mu.Unlock()
		<-served
	}()
	buf := make([]byte, 65536)
	n := 0
	for {
		conn.SetReadDeadline(time.Now().Add(stall))
		k, err := conn.Read(buf)
		n += k
		if err == io.EOF || errors.Is(err, os.ErrDeadlineExceeded) {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("netlab: read: %w", err)
		}
	}
}

// The pod AddPod builds behind node 0, in a subnet of its own.
var (
	PodAddr    = netip.MustParseAddr("198.18.3.2")
	PodGateway = netip.MustParseAddr("198.18.3.1")
)

// AddPod puts a pod namespace behind node 0 and DNATs the anycast service
// port to it as kube-proxy does, with conntrack INVALID dropped on every
// node and strict reverse-path filtering, as hardened hosts have.
func (c *Cluster) AddPod(l *Lab) (*NS, error) {
	pod, err := l.AddNS("pod")
	if err != nil {
		return nil, err
	}
	a := c.Nodes[0]
	if err := l.Link(a, "pod0", pod, "eth0"); err != nil {
		return nil, err
	}
	mtu, port := strconv.Itoa(ClusterMTU), strconv.Itoa(TransferPort)
	steps := []step{
		{a, []string{"ip", "link", "set", "pod0", "mtu", mtu}},
		{a, []string{"ip", "addr", "add", PodGateway.String() + "/24", "dev", "pod0"}},
		{a, []string{"sysctl", "-q", "-w", "net.ipv4.ip_forward=1"}},
		{a, []string{"iptables", "-t", "nat", "-A", "PREROUTING", "-d", Anycast.String(), "-p", "tcp", "--dport", port,
			"-j", "DNAT", "--to-destination", PodAddr.String() + ":" + port}},
	}
	for _, node := range c.Nodes {
		steps = append(steps, step{node, []string{"sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=1"}})
		for _, chain := range []string{"INPUT", "FORWARD"} {
			steps = append(steps, step{node, []string{"iptables", "-A", chain, "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"}})
		}
	}
	steps = append(steps,
		step{pod, []string{"ip", "link", "set", "eth0", "mtu", mtu}},
		step{pod, []string{"ip", "addr", "add", PodAddr.String() + "/24", "dev", "eth0"}},
		step{pod, []string{"ip", "route", "add", "default", "via", PodGateway.String()}},
	)
	return pod, c.run(steps)
}
