package pmtud

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// Mode selects how a copy travels to a peer.
type Mode uint8

const (
	// ModeICMP re-originates the ICMP message, byte for byte, in a new IPv4
	// packet from the node to the peer (the reference daemon's way). The peer
	// needs no daemon, but its conntrack sees the copy as INVALID.
	ModeICMP Mode = iota + 1
	// ModeUDP sends the router's packet, untouched, in an authenticated UDP
	// datagram to the peer's go-pmtud, which injects it into its kernel (veth pair or TUN device):
	// the peer's kernel sees exactly what the router sent (RELATED to the
	// flow, NAT reversed), so pods behind DNAT learn too.
	ModeUDP
	// ModeL2 sends the router's packet, untouched, in one Ethernet
	// broadcast frame on the cluster interface (L2Iface), whatever the
	// number of peers. Every node on the segment receives it as if from
	// the router; none needs a daemon. Nodes must share the segment.
	ModeL2
)

// Split says how work is divided among several workers.
type Split uint8

const (
	// SplitBatch hands each NFLOG datagram to the next free worker, which
	// parses it and sends it to every peer.
	SplitBatch Split = iota
	// SplitPeer has the reader parse each datagram and every worker send it
	// to its share of the peers.
	SplitPeer
)

// String returns the split's flag value.
func (s Split) String() string {
	if s == SplitPeer {
		return "peer"
	}
	return "batch"
}

// ParseSplit parses a --split value.
func ParseSplit(s string) (Split, error) {
	switch s {
	case "batch":
		return SplitBatch, nil
	case "peer":
		return SplitPeer, nil
	}
	return 0, fmt.Errorf("unknown split %q (want batch or peer)", s)
}

// Inject says how the udp relay injects the packets it receives from
// peers into this node's kernel.
type Inject uint8

const (
	// InjectAuto is InjectVeth where the veth pair can be made and
	// written (CAP_NET_ADMIN, CAP_NET_RAW, the veth driver), else
	// InjectTUN.
	InjectAuto Inject = iota
	// InjectTUN writes each packet into a TUN device: one write(2) per
	// packet; needs CAP_NET_ADMIN and /dev/net/tun.
	InjectTUN
	// InjectVeth sends the packets of a batch as Ethernet frames into a
	// veth pair in one sendmmsg(2); needs CAP_NET_ADMIN and CAP_NET_RAW.
	InjectVeth
)

// String returns the setting's flag value.
func (i Inject) String() string {
	switch i {
	case InjectTUN:
		return "tun"
	case InjectVeth:
		return "veth"
	}
	return "auto"
}

// ParseInject parses an --inject value.
func ParseInject(s string) (Inject, error) {
	for _, i := range []Inject{InjectAuto, InjectTUN, InjectVeth} {
		if s == i.String() {
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown inject %q (want auto, tun or veth)", s)
}

// DefaultRelayPort is the udp relay's default port: below the Kubernetes
// NodePort range (30000-32767) and the kernel's default ephemeral range
// (32768-60999), so neither a Service nor an outgoing connection takes it.
const DefaultRelayPort = 2734

// String returns the mode's flag value.
func (m Mode) String() string {
	switch m {
	case ModeICMP:
		return "icmp"
	case ModeUDP:
		return "udp"
	case ModeL2:
		return "l2"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// ParseMode parses a --relay value.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "icmp":
		return ModeICMP, nil
	case "udp":
		return ModeUDP, nil
	case "l2":
		return ModeL2, nil
	}
	return 0, fmt.Errorf("unknown relay mode %q (want udp, icmp or l2)", s)
}

// MaxWorkers is the largest Config.Workers.
const MaxWorkers = 16

// maxBatchPackets is the most packets one NFLOG datagram holds: the kernel
// sent a 261,204-byte datagram with nlbufsiz 131072, and a frag-needed is
// at least 56 bytes plus about 100 of NFLOG attributes. In the udp relay
// each worker numbers a whole batch before sending it, so Workers ×
// min(QThreshold, maxBatchPackets) numbers may be in flight, and they must
// fit in the peers' replay window (wire.ReplayWindowSize).
const maxBatchPackets = 1700

// MaxRateLimit is the largest Config.RateLimit: far above what one node
// can send, so a higher value could only be a typo.
const MaxRateLimit = 100_000_000

// maxCPUs is CPU_SETSIZE (include/bits/cpu-set.h in glibc), the CPUs a
// unix.CPUSet can name.
const maxCPUs = 1024

// DefaultDedupWindow is how long an ICMP is remembered by default: far
// longer than a copy takes to come back around, far shorter than a TCP
// retransmission timeout repeats a quote byte for byte (the IP ID differs).
const DefaultDedupWindow = time.Second

// DefaultTUNAddr is the TUN device's address when one is needed: link-local,
// so it is never routed beyond the node, and a /32, so it adds no route.
var DefaultTUNAddr = netip.MustParseAddr("169.254.42.1")

// Config is everything a Relay needs, resolved: addresses, not interface
// names. Validate checks it; New calls Validate.
type Config struct {
	// NodeName labels every metric ("node").
	NodeName string
	// Mode is how copies travel; zero means ModeICMP.
	Mode Mode
	// Source is the node's IPv4 address on the cluster interface: the
	// source of every copy that travels over IPv4. Invalid on a node
	// without one.
	Source netip.Addr
	// Source6 is the node's IPv6 address on the cluster interface: the
	// source of every copy that travels over IPv6. Invalid on a node
	// without one. At least one of Source and Source6 is valid.
	Source6 netip.Addr
	// RelayFamily restricts the transport of every copy to one family:
	// FamilyAuto (zero) sends each packet to a peer's address of the
	// packet's family where it has one, else to its other one.
	RelayFamily Family
	// LocalAddrs are all of the node's own addresses. ICMPs from them are
	// never replicated, and they are removed from Peers.
	LocalAddrs []netip.Addr
	// Peers are the nodes that get a copy of every accepted ICMP, until
	// Relay.SetPeers replaces them.
	Peers []Peer
	// DynamicPeers says that a peer source calls Relay.SetPeers at run
	// time, so Peers may start empty (ICMPs are then dropped as no_peers).
	DynamicPeers bool
	// IgnoreNetworks: ICMPs whose outer source lies inside one of them are
	// never replicated.
	IgnoreNetworks []netip.Prefix
	// TrustedSources, when set, are the only networks whose ICMPs are
	// relayed (the routers' addresses); others are counted as
	// untrusted_source. The udp relay's receiver applies it, as the rest
	// of the policy, to the packet in each datagram too.
	TrustedSources []netip.Prefix
	// TTL of the copies, 1..255.
	TTL int
	// NFLOG is the subscription to the kernel's log group.
	NFLOG nl.Config
	// Workers is the number of send sockets, each with a goroutine locked
	// to an OS thread that handles whole batches; 0 means 1. A single
	// worker without CPUs has no goroutine: the reader handles the batches.
	Workers int
	// CPUs, when set, pins worker i's thread to CPUs[i % len(CPUs)].
	CPUs []int
	// Split divides the work among the workers.
	Split Split
	// DedupWindow: an ICMP relayed or injected is not relayed again within
	// it (loop safety for the udp relay, and storm relief). 0 means
	// DefaultDedupWindow; negative turns deduplication off.
	DedupWindow time.Duration
	// RateLimit caps the ICMPs this node relays per second (each goes to
	// every peer), with a burst of one second's worth; 0 means no limit.
	// What exceeds it is dropped and counted as rate_limited.
	RateLimit int
	// Targets are static ownership entries (--peer-groups): an ICMP about a
	// flow that left from a target's addresses goes to its nodes only.
	// SetTargets adds to them at run time.
	Targets []Target
	// SourceRateLimit caps the ICMPs relayed per second from any one outer
	// source address (a router), with a burst of one second's worth,
	// checked before RateLimit, so one flooding source cannot use up the
	// node's budget; 0 means no limit. What exceeds it is counted as
	// source_rate_limited.
	SourceRateLimit int

	// L2Iface names the interface the l2 relay sends its frames on: the
	// cluster segment (ModeL2 only).
	L2Iface string
	// L2Dest is where the l2 relay's frames go: L2Broadcast ("" means it)
	// or L2Peers.
	L2Dest string
	// resolve gives the l2 relay's Fanouts the peers' link-layer addresses
	// (L2Peers); set by the relay on its own copy.
	resolve func(netip.Addr) ([6]byte, bool)

	// The udp relay's settings; ignored in ModeICMP.

	// RelayPort is the UDP port of every node's go-pmtud; 0 means
	// DefaultRelayPort.
	RelayPort uint16
	// Keys authenticate relay datagrams: Keys[0] seals, every key (at most
	// two: the current and the previous, during a rotation) opens. Without
	// keys the relay is unauthenticated and accepts datagrams from current
	// peers' addresses only, which anyone on the path can spoof: Validate
	// refuses that unless InsecureNoAuth is set.
	Keys []wire.Key
	// InsecureNoAuth lets the udp relay run without Keys.
	InsecureNoAuth bool
	// Envelope is the version of the datagrams this node sends: 2, which
	// carries the send time (0 means 2), or 1, the only version releases
	// before it understand, during a rolling upgrade from one.
	Envelope int
	// PackBytes bounds a version 3 pack (Envelope 3): the packets and
	// their 2-byte lengths, so that the datagram fits the path between
	// nodes; 0 means DefaultPackBytes. A packet longer than it travels in
	// a pack of its own.
	PackBytes int
	// AcceptEnvelopeV1 makes the receiver accept version 1 datagrams. They
	// carry no send time: one captured before this node restarted is
	// accepted after the restart. Envelope 1 implies it. Without it they are
	// dropped as bad_version.
	AcceptEnvelopeV1 bool
	// Inject is how the udp relay injects received packets.
	Inject Inject
	// TUNName names the device the relay creates and injects through (the
	// TUN device, or the veth end the packets arrive on); "" means
	// "pmtud0".
	TUNName string
	// TUNAddr becomes the injection device's /32 address when
	// net.ipv4.conf.all.rp_filter is not 0: loose mode on the device then
	// accepts injected packets only if the device has an address. Invalid
	// means DefaultTUNAddr.
	TUNAddr netip.Addr
}

// DefaultPackBytes fills a 1,500-byte path: 1500 - 20 (IPv4) - 8 (UDP) -
// 40 (the envelope header).
const DefaultPackBytes = 1432

func (c *Config) packBytes() int {
	if c.PackBytes > 0 {
		return c.PackBytes
	}
	return DefaultPackBytes
}

// acceptsEnvelopeV1 reports whether the receiver takes version 1 datagrams.
func (c *Config) acceptsEnvelopeV1() bool { return c.AcceptEnvelopeV1 || c.Envelope == 1 }

// Validate reports the first thing wrong with c, in words an operator can
// act on. It does not touch the system.
func (c *Config) Validate() error {
	switch c.Mode {
	case 0, ModeICMP:
	case ModeUDP:
		if len(c.Keys) == 0 && !c.InsecureNoAuth {
			return errors.New("the udp relay needs relay keys (--relay-key-file); --insecure-no-auth runs it unauthenticated, trusting the peers' source addresses")
		}
		if err := checkKeys(c.Keys); err != nil {
			return err
		}
		if c.Envelope < 0 || c.Envelope > 3 {
			return fmt.Errorf("relay envelope version %d is not 1, 2 or 3", c.Envelope)
		}
		if c.PackBytes < 0 || c.PackBytes > 65000 {
			return fmt.Errorf("pack size %d is outside 0..65000 bytes", c.PackBytes)
		}
		if len(c.TUNName) >= unix.IFNAMSIZ {
			return fmt.Errorf("TUN name %q is longer than %d bytes", c.TUNName, unix.IFNAMSIZ-1)
		}
		if c.TUNAddr.IsValid() && !c.TUNAddr.Is4() {
			return fmt.Errorf("TUN address %v is not an IPv4 address", c.TUNAddr)
		}
	case ModeL2:
		if c.L2Iface == "" {
			return errors.New("the l2 relay needs the interface of the cluster segment (--iface)")
		}
		if c.L2Dest != "" && c.L2Dest != L2Broadcast && c.L2Dest != L2Peers {
			return fmt.Errorf("l2 destination %q is not %s or %s", c.L2Dest, L2Broadcast, L2Peers)
		}
		if c.L2Dest != L2Peers && c.Split == SplitPeer && c.Workers > 1 {
			// Every worker would send the whole batch's frames.
			return errors.New("the l2 relay's broadcast frames cannot be split by peer: use --split batch")
		}
	default:
		return fmt.Errorf("relay mode %v is not supported", c.Mode)
	}
	if c.Source.IsValid() && !c.Source.Is4() {
		return fmt.Errorf("source address %v is not an IPv4 address", c.Source)
	}
	if c.Source6.IsValid() && (!c.Source6.Is6() || c.Source6.Is4In6() || c.Source6.Zone() != "" || !c.Source6.IsGlobalUnicast()) {
		return fmt.Errorf("IPv6 source address %v is not a global IPv6 address", c.Source6)
	}
	if !c.Source.IsValid() && !c.Source6.IsValid() {
		return errors.New("no source address: the node needs an IPv4 or IPv6 address on the cluster interface")
	}
	switch c.RelayFamily {
	case FamilyAuto:
	case FamilyIPv4, FamilyIPv6:
		if c.Mode != ModeL2 && !c.source(int(c.RelayFamily)-1).IsValid() {
			return fmt.Errorf("relay family %v: the node has no %v address on the cluster interface", c.RelayFamily, c.RelayFamily)
		}
	default:
		return fmt.Errorf("relay family %v is not auto, ipv4 or ipv6", c.RelayFamily)
	}
	if c.TTL < 1 || c.TTL > 255 {
		return fmt.Errorf("ttl %d is outside 1..255", c.TTL)
	}
	if len(c.Peers) == 0 && !c.DynamicPeers {
		return errors.New("no peers: give --peers a comma-separated list of node addresses, --peers-file or --peers-from kubernetes")
	}
	if err := checkPeers(c.Peers); err != nil {
		return err
	}
	if s := newPeerSet(c, nil, c.Peers); s.nodes == 0 && !c.DynamicPeers {
		return fmt.Errorf("no peers left after removing the node's own addresses from %v", c.Peers)
	} else if s.nodes > 0 && s.reach[fam4] == 0 && s.reach[fam6] == 0 {
		return fmt.Errorf("no peer can get a copy: the node's source addresses are %v and %v, relay %v, relay family %v, and the peers have no address of a family this node sends over", c.Source, c.Source6, c.Mode, c.RelayFamily)
	}
	// Workers take sequence numbers concurrently; what one worker holds
	// in flight must stay within the peers' replay window.
	if c.Workers < 0 || c.Workers > MaxWorkers {
		return fmt.Errorf("workers %d is outside 1..%d", c.Workers, MaxWorkers)
	}
	if c.Mode == ModeUDP {
		q := int(c.NFLOG.QThreshold)
		if q == 0 {
			q = nl.DefaultQThreshold
		}
		// A dual-stack node may seal a packet once per transport, each
		// seal taking a number.
		seals := 0
		for _, can := range c.transports() {
			if can {
				seals++
			}
		}
		w, batch := max(c.Workers, 1), min(q, maxBatchPackets)*seals
		if w*batch > wire.ReplayWindowSize {
			return fmt.Errorf("%d workers × %d sequence numbers per NFLOG batch (%d packets, sealed for %d transports) put %d in flight, more than the peers' replay window of %d: lower --workers or --nflog-qthreshold",
				w, batch, batch/seals, seals, w*batch, wire.ReplayWindowSize)
		}
	}
	if err := checkTargets(c.Targets); err != nil {
		return err
	}
	if c.RateLimit < 0 || c.RateLimit > MaxRateLimit {
		return fmt.Errorf("rate limit %d is outside 0..%d ICMPs per second", c.RateLimit, MaxRateLimit)
	}
	if c.SourceRateLimit < 0 || c.SourceRateLimit > MaxRateLimit {
		return fmt.Errorf("source rate limit %d is outside 0..%d ICMPs per second", c.SourceRateLimit, MaxRateLimit)
	}
	if c.DedupWindow > time.Minute {
		return fmt.Errorf("dedup window %v is longer than a minute", c.DedupWindow)
	}
	for _, cpu := range c.CPUs {
		if cpu < 0 || cpu >= maxCPUs {
			return fmt.Errorf("cpu %d is outside 0..%d", cpu, maxCPUs-1)
		}
	}
	for _, n := range c.IgnoreNetworks {
		if !n.IsValid() {
			return fmt.Errorf("ignore network %v is not a valid prefix", n)
		}
	}
	for _, n := range c.TrustedSources {
		if !n.IsValid() {
			return fmt.Errorf("trusted source network %v is not a valid prefix", n)
		}
	}
	return nil
}

// RemotePeers returns the addresses of Peers without duplicates and
// without the node's own addresses (a peer with one is the node itself),
// in the order of a peer set: IPv4-only peers', dual-stack peers' IPv4,
// their IPv6, IPv6-only peers'.
func (c *Config) RemotePeers() []netip.Addr { return newPeerSet(c, nil, c.Peers).addrs }

// ownAddrs returns the node's own addresses, Source, Source6 and
// LocalAddrs, unmapped.
func (c *Config) ownAddrs() map[netip.Addr]bool {
	own := make(map[netip.Addr]bool, len(c.LocalAddrs)+2)
	for _, a := range append([]netip.Addr{c.Source, c.Source6}, c.LocalAddrs...) {
		if a.IsValid() {
			own[a.Unmap()] = true
		}
	}
	return own
}

// source returns the node's source address of family f (fam4, fam6).
func (c *Config) source(f int) netip.Addr {
	if f == fam6 {
		return c.Source6
	}
	return c.Source
}

// transports reports, per family (fam4, fam6), whether copies may leave
// over it: the node has a source address of the family (the l2 relay needs
// none), and RelayFamily allows it.
func (c *Config) transports() [2]bool {
	var can [2]bool
	for f := range 2 {
		can[f] = (c.Mode == ModeL2 || c.source(f).IsValid()) &&
			(c.RelayFamily == FamilyAuto || int(c.RelayFamily)-1 == f)
	}
	return can
}

// leg reports whether workers send packets of family f over transport t
// (see peerSet.route): the icmp relay re-originates an ICMP in its own
// family only; the l2 relay's broadcast frames use one socket for both.
func (c *Config) leg(f, t int) bool {
	switch {
	case c.Mode == ModeL2 && c.L2Dest != L2Peers:
		return t == fam4
	case c.Mode == ModeICMP || c.Mode == 0:
		return f == t && c.transports()[t]
	}
	return c.transports()[t]
}

// Family restricts the relay's transport to one address family.
type Family uint8

const (
	// FamilyAuto: each packet to the peer's address of its own family
	// where the peer has one, else to its other one.
	FamilyAuto Family = iota
	// FamilyIPv4: every copy over IPv4; peers without an IPv4 address get
	// none.
	FamilyIPv4
	// FamilyIPv6: every copy over IPv6; peers without an IPv6 address get
	// none.
	FamilyIPv6
)

// String returns the family's --relay-family value.
func (f Family) String() string {
	switch f {
	case FamilyAuto:
		return "auto"
	case FamilyIPv4:
		return "ipv4"
	case FamilyIPv6:
		return "ipv6"
	}
	return fmt.Sprintf("Family(%d)", uint8(f))
}

// ParseFamily parses a --relay-family value.
func ParseFamily(s string) (Family, error) {
	switch s {
	case "auto":
		return FamilyAuto, nil
	case "ipv4":
		return FamilyIPv4, nil
	case "ipv6":
		return FamilyIPv6, nil
	}
	return 0, fmt.Errorf("unknown relay family %q (want auto, ipv4 or ipv6)", s)
}
