package main

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud"
	"github.com/go-pmtud/go-pmtud/internal/peers"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// The budgets' defaults. Linux routers do not rate-limit "fragmentation
// needed" or Packet Too Big at all (icmpv4_mask_allow and
// icmpv6_xrlim_allow exempt them): a router sends one per oversized packet
// it drops, so a genuine burst after a path's MTU shrinks is about one per
// flow sending full-size segments, times the few segments in flight before
// the first copy lands. 1,000 per second from one router (the most the
// storm-control issue allows) covers a busy router's burst; 5,000 in all
// lets five such routers, or one flooding source and four others, through
// at once, and bounds what a node sends at 5,000 × P copies per second.
const (
	DefaultRateLimit       = 5000
	DefaultSourceRateLimit = 1000
)

// options are the command line as given, before resolution.
type options struct {
	peers           string
	peersFile       string
	peersFrom       string
	targetServices  bool
	kubeconfig      string
	nodeSelector    string
	nodeAddressType string
	iface           string
	nodeName        string
	group           uint
	metricsPort     uint
	metricsAddress  string
	ttl             int
	ignoreNetworks  string
	trustedSources  string
	peerGroups      string
	logLevel        string
	logFormat       string
	manageRules     string
	version         bool
	relay           string
	qthreshold      uint
	timeout         time.Duration
	bufsize         uint
	workers         int
	cpus            string
	relayPort       uint
	relayKeyFile    string
	insecureNoAuth  bool
	relayEnvelope   uint
	relayFamily     string
	packBytes       int
	l2Dest          string
	acceptV1        bool
	tunName         string
	inject          string
	tunAddress      string
	dedupWindow     time.Duration
	split           string
	rateLimit       int
	srcRateLimit    int
}

// settings is the resolved configuration of one run.
type settings struct {
	relay pmtud.Config
	// The peer source, when not --peers: a file, or the Kubernetes API.
	peersFile string
	kube      *peers.KubernetesConfig
	// targetServices: with kube, follow Services and EndpointSlices too.
	targetServices bool
	// keyFile is the udp relay's key file, followed at run time; keyData
	// its content at start-up.
	keyFile     string
	keyData     []byte
	metricsAddr string // host:port, empty to serve no metrics
	logLevel    slog.Level
	logJSON     bool
	// manageRules: the daemon installs its nftables table at start-up and
	// removes it on exit; rulesAuto: unless the kernel has no nf_tables.
	manageRules bool
	rulesAuto   bool
}

// envName returns the environment variable that can set flag name.
func envName(name string) string {
	return "PMTUD_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// parseFlags parses args (without the program name), then fills every flag
// not given on the command line from its PMTUD_<NAME> environment variable.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("go-pmtud", flag.ContinueOnError)
	// Errors are reported by the caller in one line; the usage is printed
	// only when asked for.
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.peers, "peers", "", "comma-separated addresses of the peer nodes that get a copy of every ICMP, IPv4 or IPv6, or IPv4+IPv6 for a dual-stack node (own addresses are removed); one of --peers, --peers-file, --peers-from")
	fs.StringVar(&o.relayFamily, "relay-family", "auto", "the address family copies travel over: auto (each packet to the peer's address of its own family where the peer has one, else to its other one; the icmp relay re-originates an ICMP in its own family only), ipv4 or ipv6 (every copy over that family; peers without an address of it get none)")
	fs.StringVar(&o.peersFile, "peers-file", "", "file of peer addresses (separated by commas, blank space or newlines; # comments), read again when it changes, as a mounted ConfigMap does")
	fs.StringVar(&o.peersFrom, "peers-from", "", "kubernetes: the peers are the Node objects' addresses, followed through the API")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "with --peers-from kubernetes: kubeconfig file (default: the in-cluster service account)")
	fs.StringVar(&o.nodeSelector, "node-selector", "", "with --peers-from kubernetes: label selector of the nodes that are peers (default: all)")
	fs.BoolVar(&o.targetServices, "target-services", true, "with --peers-from kubernetes: also watch Services and EndpointSlices, and send an ICMP about a flow from an externalTrafficPolicy Local Service's load-balancer or external IP and port only to the nodes with its endpoints")
	fs.StringVar(&o.nodeAddressType, "node-address-type", "InternalIP", "with --peers-from kubernetes: the node address type that is a peer's address: InternalIP or ExternalIP")
	fs.StringVar(&o.iface, "iface", "", "cluster interface: copies leave from its first IPv4 address that is not link-local (default: the interface of the default route)")
	fs.StringVar(&o.nodeName, "nodename", "", "node name for the metrics' node label (default $NODE_NAME, then the hostname)")
	fs.UintVar(&o.group, "nflog-group", 33, "NFLOG group the iptables rule logs to (0..65535)")
	fs.UintVar(&o.metricsPort, "metrics-port", 30040, "port of the /metrics, /healthz and /readyz endpoints, served on the --iface address (0 disables them)")
	fs.StringVar(&o.metricsAddress, "metrics-address", "", "host:port of the /metrics, /healthz and /readyz endpoints, overriding the --iface address and --metrics-port")
	fs.IntVar(&o.ttl, "ttl", 10, "TTL of the copies (1..255)")
	fs.StringVar(&o.ignoreNetworks, "ignore-networks", "", "comma-separated CIDRs: ICMPs whose outer source lies inside are never replicated")
	fs.StringVar(&o.peerGroups, "peer-groups", "", "entries CIDR[:PORT]=NODE,NODE,... separated by ';': an ICMP about a flow that left from the prefix (and port) goes only to those nodes (the anycast prefixes only some nodes serve); the most specific entry wins")
	fs.StringVar(&o.trustedSources, "trusted-sources", "", "comma-separated CIDRs: when set, only ICMPs whose outer source (the router) lies inside are relayed; the rest are dropped as untrusted_source")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text (logfmt) or json")
	fs.StringVar(&o.manageRules, "manage-rules", "auto", "nftables: install the rules that log ICMPs to --nflog-group as a table of the daemon's own (inet go_pmtud), replacing a leftover one, and remove it on exit; auto: the same where the kernel has nf_tables; none: the rules are managed elsewhere")
	fs.BoolVar(&o.version, "version", false, "print the version (module version and VCS revision of the build) and exit")
	fs.StringVar(&o.relay, "relay", "udp", "how copies travel: udp (the router's packet, authenticated, to the peer's go-pmtud, which injects it into its kernel: see --inject), icmp (re-originated ICMP from a raw socket; peers need no daemon) or l2 (the router's packet in one Ethernet broadcast frame on --iface, whatever the number of peers; nodes must share that segment and need no daemon)")
	fs.StringVar(&o.l2Dest, "l2-dest", pmtud.L2Broadcast, "with --relay l2: broadcast (one frame per ICMP on --iface) or peers (one unicast frame per peer, to its address in the neighbour table; pods behind DNAT learn too)")
	fs.UintVar(&o.relayPort, "relay-port", uint(pmtud.DefaultRelayPort), "UDP port of the udp relay on every node")
	fs.StringVar(&o.relayKeyFile, "relay-key-file", "", "file of relay keys, one ID:HEX-SECRET per line (secret >= 16 bytes); the first seals, both open (rotation); read again when it changes and on SIGHUP. The udp relay needs it unless --insecure-no-auth")
	fs.BoolVar(&o.insecureNoAuth, "insecure-no-auth", false, "run the udp relay without --relay-key-file: datagrams are accepted from the peers' addresses, unverified (anyone who can spoof a peer's address can inject)")
	fs.UintVar(&o.relayEnvelope, "relay-envelope", 2, "udp relay datagram version this node sends: 2 (with the send time, so a datagram captured before a receiver restarted is refused after it), 3 (as 2, with several packets per datagram: every node must run a release that accepts it) or 1 (what releases before 2 understand; implies --relay-accept-v1), for a rolling upgrade")
	fs.IntVar(&o.packBytes, "relay-pack-bytes", pmtud.DefaultPackBytes, "with --relay-envelope 3: the most bytes of packets (with their 2-byte lengths) one datagram carries; 1432 fills a 1500-byte path, 8932 a 9000-byte one")
	fs.BoolVar(&o.acceptV1, "relay-accept-v1", false, "also accept version 1 udp relay datagrams, which carry no send time (a datagram captured before this node restarted is accepted after it): only while peers still send version 1")
	fs.StringVar(&o.tunName, "tun-name", "pmtud0", "device the udp relay creates to inject received packets: the TUN device, or the veth end they arrive on (the other end is this name's first 12 bytes + \"-tx\")")
	fs.StringVar(&o.inject, "inject", "auto", "how the udp relay injects received packets: veth (a veth pair, a batch per sendmmsg; needs CAP_NET_RAW), tun (a TUN device, one write per packet) or auto (veth where CAP_NET_RAW allows, else tun)")
	fs.StringVar(&o.tunAddress, "tun-address", pmtud.DefaultTUNAddr.String(), "/32 address given to the injection device (--tun-name) when net.ipv4.conf.all.rp_filter is not 0")
	fs.UintVar(&o.qthreshold, "nflog-qthreshold", uint(nl.DefaultQThreshold), "packets the kernel batches into one NFLOG datagram (1..65535)")
	fs.DurationVar(&o.timeout, "nflog-timeout", 10*time.Millisecond, "longest the kernel holds a batch before sending it (10ms steps)")
	fs.UintVar(&o.bufsize, "nflog-bufsize", 131072, "NFLOG kernel batch buffer in bytes (nlbufsiz; the kernel ignores values above 131072)")
	fs.IntVar(&o.workers, "workers", 1, "send sockets, each with its own goroutine locked to an OS thread (1..16); one unpinned worker sends from the NFLOG reader's goroutine")
	fs.StringVar(&o.split, "split", "batch", "how several workers divide the work: batch (each takes whole NFLOG datagrams) or peer (each sends every ICMP to its share of the peers)")
	fs.DurationVar(&o.dedupWindow, "dedup-window", pmtud.DefaultDedupWindow, "an ICMP relayed or injected is not relayed again within this window (loop safety of the udp relay; 0 disables)")
	fs.IntVar(&o.rateLimit, "rate-limit", DefaultRateLimit, "ICMPs this node relays per second on average, each to every peer, in bursts of up to that many (0: no limit); the rest are dropped as rate_limited")
	fs.IntVar(&o.srcRateLimit, "source-rate-limit", DefaultSourceRateLimit, "ICMPs relayed per second on average from any one outer source address (a router), in bursts of up to that many, checked before --rate-limit (0: no limit); the rest are dropped as source_rate_limited")
	fs.StringVar(&o.cpus, "cpus", "", "CPU list such as 2,3 or 2-3: pins the worker threads, round-robin (default: not pinned)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "Usage: go-pmtud (--peers IP,IP,... | --peers-file PATH | --peers-from kubernetes) [flags]; every flag also as PMTUD_<NAME>")
			fs.PrintDefaults()
			return o, err
		}
		// The flag package repeats an unknown flag as typed; the error
		// must stay one line.
		return o, errors.New(printable(err.Error()))
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		v := getenv(envName(f.Name))
		if given[f.Name] || v == "" || err != nil {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = fmt.Errorf("invalid value %q for %s: %v", v, envName(f.Name), e)
		}
	})
	return o, err
}

// host is what resolve needs to know about the machine.
type host interface {
	defaultRouteInterface() (string, error)
	interfaceAddrs(name string) ([]netip.Addr, error) // error if there is no such interface
	allAddrs() ([]netip.Addr, error)
	hostname() (string, error)
	allowedCPU(cpu int) bool // whether this process may run on cpu
}

// resolve turns options into settings: parses addresses, looks up the
// interface, and validates everything in one place.
func resolve(o options, getenv func(string) string, h host) (settings, error) {
	var s settings
	c := &s.relay
	var err error
	if c.Mode, err = pmtud.ParseMode(o.relay); err != nil {
		return s, fmt.Errorf("--relay: %w", err)
	}
	if err := resolvePeers(o, &s); err != nil {
		return s, err
	}
	if c.IgnoreNetworks, err = parsePrefixes(o.ignoreNetworks); err != nil {
		return s, fmt.Errorf("--ignore-networks: %w", err)
	}
	if c.TrustedSources, err = parsePrefixes(o.trustedSources); err != nil {
		return s, fmt.Errorf("--trusted-sources: %w", err)
	}
	if c.Targets, err = parsePeerGroups(o.peerGroups); err != nil {
		return s, fmt.Errorf("--peer-groups: %w", err)
	}
	if o.group > 65535 {
		return s, fmt.Errorf("--nflog-group %d is outside 0..65535", o.group)
	}
	if o.qthreshold < 1 || o.qthreshold > 65535 {
		return s, fmt.Errorf("--nflog-qthreshold %d is outside 1..65535", o.qthreshold)
	}
	if o.timeout <= 0 || o.timeout > time.Minute {
		return s, fmt.Errorf("--nflog-timeout %v is outside (0, 1m]", o.timeout)
	}
	if o.bufsize < 4096 || o.bufsize > 1<<20 {
		return s, fmt.Errorf("--nflog-bufsize %d is outside 4096..1048576", o.bufsize)
	}
	if o.metricsPort > 65535 {
		return s, fmt.Errorf("--metrics-port %d is outside 0..65535", o.metricsPort)
	}
	if err := s.logLevel.UnmarshalText([]byte(o.logLevel)); err != nil {
		return s, fmt.Errorf("--log-level: %q is not one of debug, info, warn, error", o.logLevel)
	}
	switch o.manageRules {
	case "none":
	case "nftables":
		s.manageRules = true
	case "auto":
		s.manageRules, s.rulesAuto = true, true
	default:
		return s, fmt.Errorf("--manage-rules: %q is not auto, nftables or none", printable(o.manageRules))
	}
	switch o.logFormat {
	case "text":
	case "json":
		s.logJSON = true
	default:
		return s, fmt.Errorf("--log-format: %q is not text or json", printable(o.logFormat))
	}
	c.TTL = o.ttl
	c.Workers = o.workers
	if o.relayPort < 1 || o.relayPort > 65535 {
		return s, fmt.Errorf("--relay-port %d is outside 1..65535", o.relayPort)
	}
	c.RelayPort = uint16(o.relayPort)
	c.TUNName = o.tunName
	c.InsecureNoAuth = o.insecureNoAuth
	if o.relayEnvelope < 1 || o.relayEnvelope > 3 {
		return s, fmt.Errorf("--relay-envelope %d is not 1, 2 or 3", o.relayEnvelope)
	}
	c.Envelope = int(o.relayEnvelope)
	if c.RelayFamily, err = pmtud.ParseFamily(o.relayFamily); err != nil {
		return s, fmt.Errorf("--relay-family: %w", err)
	}
	if o.packBytes < 64 || o.packBytes > 65000 {
		return s, fmt.Errorf("--relay-pack-bytes %d is outside 64..65000", o.packBytes)
	}
	c.PackBytes = o.packBytes
	c.AcceptEnvelopeV1 = o.acceptV1
	if c.TUNAddr, err = netip.ParseAddr(o.tunAddress); err != nil || !c.TUNAddr.Is4() {
		return s, fmt.Errorf("--tun-address: %q is not an IPv4 address", o.tunAddress)
	}
	if c.Inject, err = pmtud.ParseInject(o.inject); err != nil {
		return s, fmt.Errorf("--inject: %w", err)
	}
	if c.Split, err = pmtud.ParseSplit(o.split); err != nil {
		return s, fmt.Errorf("--split: %w", err)
	}
	if o.rateLimit < 0 || o.rateLimit > pmtud.MaxRateLimit {
		return s, fmt.Errorf("--rate-limit %d is outside 0..%d", o.rateLimit, pmtud.MaxRateLimit)
	}
	c.RateLimit = o.rateLimit
	if o.srcRateLimit < 0 || o.srcRateLimit > pmtud.MaxRateLimit {
		return s, fmt.Errorf("--source-rate-limit %d is outside 0..%d", o.srcRateLimit, pmtud.MaxRateLimit)
	}
	c.SourceRateLimit = o.srcRateLimit
	c.DedupWindow = o.dedupWindow
	switch {
	case o.dedupWindow < 0:
		return s, fmt.Errorf("--dedup-window %v is negative", o.dedupWindow)
	case o.dedupWindow == 0:
		c.DedupWindow = -1 // off
	}
	// The icmp relay has no use for keys; a key file left in a shared
	// configuration is not an error.
	if o.relayKeyFile != "" && c.Mode == pmtud.ModeUDP {
		if s.keyData, err = os.ReadFile(o.relayKeyFile); err != nil {
			return s, fmt.Errorf("--relay-key-file: %w", err)
		}
		if c.Keys, err = parseKeys(s.keyData); err != nil {
			return s, fmt.Errorf("--relay-key-file: %w", err)
		}
		s.keyFile = o.relayKeyFile
	}
	if c.CPUs, err = parseCPUList(o.cpus); err != nil {
		return s, fmt.Errorf("--cpus: %w", err)
	}
	for _, cpu := range c.CPUs {
		if !h.allowedCPU(cpu) {
			return s, fmt.Errorf("--cpus: CPU %d is not in this process's CPU set", cpu)
		}
	}
	if o.workers < 1 || o.workers > pmtud.MaxWorkers {
		return s, fmt.Errorf("--workers %d is outside 1..%d", o.workers, pmtud.MaxWorkers)
	}
	c.NFLOG = nl.Config{
		Group:      uint16(o.group),
		QThreshold: uint32(o.qthreshold),
		Timeout:    o.timeout,
		BufSize:    uint32(o.bufsize),
	}

	c.NodeName = o.nodeName
	if c.NodeName == "" {
		c.NodeName = getenv("NODE_NAME")
	}
	if c.NodeName == "" {
		if c.NodeName, err = h.hostname(); err != nil {
			return s, fmt.Errorf("--nodename not given and no hostname: %w", err)
		}
	}

	iface := o.iface
	if iface == "" {
		if iface, err = h.defaultRouteInterface(); err != nil {
			return s, fmt.Errorf("--iface not given and %w", err)
		}
	}
	addrs, err := h.interfaceAddrs(iface)
	if err != nil {
		return s, fmt.Errorf("--iface %q: %w", iface, err)
	}
	c.L2Iface = iface
	if o.l2Dest != pmtud.L2Broadcast && o.l2Dest != pmtud.L2Peers {
		return s, fmt.Errorf("--l2-dest %q: want %s or %s", printable(o.l2Dest), pmtud.L2Broadcast, pmtud.L2Peers)
	}
	c.L2Dest = o.l2Dest
	// The first address of each family that can leave the segment: a
	// link-local one cannot be a peer's address elsewhere.
	for _, a := range addrs {
		switch {
		case a.Is4() && !a.IsLinkLocalUnicast() && !c.Source.IsValid():
			c.Source = a
		case a.Is6() && !a.Is4In6() && a.IsGlobalUnicast() && !c.Source6.IsValid():
			c.Source6 = a.WithZone("")
		}
	}
	if !c.Source.IsValid() && !c.Source6.IsValid() {
		return s, fmt.Errorf("--iface %q has no IPv4 and no global IPv6 address", iface)
	}
	if c.LocalAddrs, err = h.allAddrs(); err != nil {
		return s, fmt.Errorf("list local addresses: %w", err)
	}

	switch {
	case o.metricsAddress != "":
		if _, _, err := net.SplitHostPort(o.metricsAddress); err != nil {
			return s, fmt.Errorf("--metrics-address %q is not host:port", o.metricsAddress)
		}
		s.metricsAddr = o.metricsAddress
	case o.metricsPort != 0:
		host := c.Source
		if !host.IsValid() {
			host = c.Source6 // an IPv6-only node
		}
		s.metricsAddr = net.JoinHostPort(host.String(), strconv.Itoa(int(o.metricsPort)))
	}
	return s, c.Validate()
}

// resolvePeers checks that exactly one peer source is given and fills in
// its settings: the static list, the file's path or the Kubernetes
// selection.
func resolvePeers(o options, s *settings) error {
	given := 0
	for _, v := range []string{o.peers, o.peersFile, o.peersFrom} {
		if v != "" {
			given++
		}
	}
	switch {
	case given == 0:
		return errors.New("no peers: give --peers IP,IP,..., --peers-file PATH or --peers-from kubernetes")
	case given > 1:
		return errors.New("give exactly one of --peers, --peers-file and --peers-from")
	case o.peersFrom != "" && o.peersFrom != "kubernetes":
		return fmt.Errorf("--peers-from %q: the only source is kubernetes", printable(o.peersFrom))
	}
	if o.peersFrom == "" {
		for _, f := range []struct{ name, v, unset string }{
			{"--kubeconfig", o.kubeconfig, ""}, {"--node-selector", o.nodeSelector, ""}, {"--node-address-type", o.nodeAddressType, "InternalIP"},
		} {
			if f.v != f.unset {
				return fmt.Errorf("%s applies only with --peers-from kubernetes", f.name)
			}
		}
	}
	switch {
	case o.peers != "":
		var ps []peers.Peer
		for _, f := range splitList(o.peers) {
			p, err := peers.ParsePeer(f)
			if err != nil {
				return fmt.Errorf("--peers: %w", err)
			}
			ps = append(ps, p)
		}
		s.relay.Peers = relayPeers(ps)
	case o.peersFile != "":
		s.peersFile = o.peersFile
		s.relay.DynamicPeers = true
	default:
		if o.nodeAddressType != "InternalIP" && o.nodeAddressType != "ExternalIP" {
			return fmt.Errorf("--node-address-type %q: want InternalIP or ExternalIP", printable(o.nodeAddressType))
		}
		s.kube = &peers.KubernetesConfig{Kubeconfig: o.kubeconfig, NodeSelector: o.nodeSelector, AddressType: o.nodeAddressType}
		s.relay.DynamicPeers = true
		s.targetServices = o.targetServices
	}
	return nil
}

// relayPeers converts a source's peers to the relay's.
func relayPeers(ps []peers.Peer) []pmtud.Peer {
	out := make([]pmtud.Peer, len(ps))
	for i, p := range ps {
		out[i] = pmtud.Peer(p)
	}
	return out
}

// parsePeerGroups parses --peer-groups: entries separated by ";" or blank
// space, each CIDR[:PORT]=NODE,NODE,... (the nodes that serve the flows
// leaving from the prefix, and port if given). Nodes may include this
// node's own addresses.
func parsePeerGroups(s string) ([]pmtud.Target, error) {
	var out []pmtud.Target
	for _, e := range strings.FieldsFunc(s, func(r rune) bool { return r == ';' || unicode.IsSpace(r) }) {
		lhs, rhs, ok := strings.Cut(e, "=")
		if !ok || rhs == "" {
			return nil, fmt.Errorf("%q is not CIDR[:PORT]=NODE,NODE,...", printable(e))
		}
		t := pmtud.Target{Scope: pmtud.ScopeGroup}
		// The port follows the prefix length: after the "/".
		if slash := strings.IndexByte(lhs, '/'); slash >= 0 {
			if c := strings.IndexByte(lhs[slash:], ':'); c >= 0 {
				port, err := strconv.ParseUint(lhs[slash+c+1:], 10, 16)
				if err != nil || port == 0 {
					return nil, fmt.Errorf("%q: port %q is not 1..65535", printable(e), printable(lhs[slash+c+1:]))
				}
				t.Port, lhs = uint16(port), lhs[:slash+c]
			}
		}
		p, err := netip.ParsePrefix(lhs)
		if err != nil {
			return nil, fmt.Errorf("%q: %q is not a CIDR such as 198.18.100.0/24", printable(e), printable(lhs))
		}
		t.Prefix = p.Masked()
		for _, n := range strings.Split(rhs, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(n))
			if err != nil || a.Zone() != "" {
				return nil, fmt.Errorf("%q: node %q is not an IP address", printable(e), printable(n))
			}
			t.Nodes = append(t.Nodes, a.Unmap())
		}
		out = append(out, t)
	}
	return out, nil
}

func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range splitList(s) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR such as 198.18.0.0/15", f)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// readKeys reads the relay key file at path (see parseKeys).
func readKeys(path string) ([]wire.Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseKeys(b)
}

// parseKeys parses relay keys: one "ID:HEX-SECRET" per line, blank lines
// and lines starting with # skipped; the first key seals. Errors name the
// line, never its content: the file holds secrets.
func parseKeys(b []byte) ([]wire.Key, error) {
	var keys []wire.Key
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, secret, ok := strings.Cut(line, ":")
		i, err := strconv.ParseUint(id, 10, 16)
		if !ok || err != nil || i == 0 {
			return nil, fmt.Errorf("line %d: want ID:HEX-SECRET with ID in 1..65535", n+1)
		}
		k, err := hex.DecodeString(secret)
		if err != nil || len(k) < wire.MinSecretLen {
			return nil, fmt.Errorf("line %d: the secret must be at least %d bytes in hex (openssl rand -hex 32)", n+1, wire.MinSecretLen)
		}
		keys = append(keys, wire.Key{ID: uint16(i), Secret: k})
	}
	if len(keys) == 0 {
		return nil, errors.New("no keys in the file")
	}
	return keys, nil
}

// parseCPUList parses a Linux CPU list: "2", "2,3", "0-3,6".
func parseCPUList(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		lo, hi, isRange := strings.Cut(f, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a || b-a > 1023 {
			return nil, fmt.Errorf("%q is not a CPU number or range such as 2-3", f)
		}
		for cpu := a; cpu <= b; cpu++ {
			out = append(out, cpu)
		}
	}
	return out, nil
}

// printable escapes the control characters of s, as strconv.Quote does,
// so a message that repeats what an operator typed stays one line.
func printable(s string) string {
	if !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// system is the host the daemon runs on.
type system struct{}

// defaultRouteInterface reads the IPv4 default route from /proc/net/route.
func (system) defaultRouteInterface() (string, error) {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return "", fmt.Errorf("cannot read the routing table: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		// Iface Destination Gateway Flags ... Mask; the default route has
		// destination and mask 0.
		if len(f) >= 8 && f[1] == "00000000" && f[7] == "00000000" {
			return f[0], nil
		}
	}
	// An IPv6-only node.
	if b, err := os.ReadFile("/proc/net/ipv6_route"); err == nil {
		if name, ok := defaultRoute6(b); ok {
			return name, nil
		}
	}
	return "", errors.New("there is no IPv4 or IPv6 default route to take it from")
}

// defaultRoute6 returns the interface of the first IPv6 default route in
// the text of /proc/net/ipv6_route: destination and prefix length 0, not
// on lo (where the kernel keeps its unreachable entries).
func defaultRoute6(b []byte) (string, bool) {
	for _, line := range strings.Split(string(b), "\n") {
		// dest plen src srcplen nexthop metric refcnt use flags iface
		f := strings.Fields(line)
		if len(f) == 10 && f[0] == strings.Repeat("0", 32) && f[1] == "00" && f[9] != "lo" {
			return f[9], true
		}
	}
	return "", false
}

func (system) interfaceAddrs(name string) ([]netip.Addr, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, errors.New("no such interface")
	}
	as, err := ifi.Addrs()
	if err != nil {
		return nil, err
	}
	return netAddrs(as), nil
}

func (system) allAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	return netAddrs(as), nil
}

func (system) hostname() (string, error) { return os.Hostname() }

func (system) allowedCPU(cpu int) bool {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return true // cannot tell: let pinning report it
	}
	return set.IsSet(cpu)
}

func netAddrs(as []net.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}
