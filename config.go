package pmtud

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/go-pmtud/go-pmtud/nl"
)

// Mode selects how a copy travels to a peer.
type Mode uint8

const (
	// ModeICMP re-originates the ICMP message, byte for byte, in a new IPv4
	// packet from the node to the peer (the reference daemon's way). The peer
	// needs no daemon, but its conntrack sees the copy as INVALID.
	ModeICMP Mode = iota + 1
)

// String returns the mode's flag value.
func (m Mode) String() string {
	switch m {
	case ModeICMP:
		return "icmp"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// ParseMode parses a --relay value.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "icmp":
		return ModeICMP, nil
	}
	return 0, fmt.Errorf("unknown relay mode %q (want icmp)", s)
}

// maxCPUs is CPU_SETSIZE (include/bits/cpu-set.h in glibc), the CPUs a
// unix.CPUSet can name.
const maxCPUs = 1024

// Config is everything a Relay needs, resolved: addresses, not interface
// names. Validate checks it; New calls Validate.
type Config struct {
	// NodeName labels every metric ("node").
	NodeName string
	// Mode is how copies travel; zero means ModeICMP.
	Mode Mode
	// Source is the node's address on the cluster interface: the source of
	// every copy.
	Source netip.Addr
	// LocalAddrs are all of the node's own addresses. ICMPs from them are
	// never replicated, and they are removed from Peers.
	LocalAddrs []netip.Addr
	// Peers are the nodes that get a copy of every accepted ICMP.
	Peers []netip.Addr
	// IgnoreNetworks: ICMPs whose outer source lies inside one of them are
	// never replicated.
	IgnoreNetworks []netip.Prefix
	// TTL of the copies, 1..255.
	TTL int
	// NFLOG is the subscription to the kernel's log group.
	NFLOG nl.Config
	// Workers is the number of send sockets, each with a goroutine locked
	// to an OS thread that handles whole batches; 0 means 1.
	Workers int
	// CPUs, when set, pins worker i's thread to CPUs[i % len(CPUs)].
	CPUs []int
}

// Validate reports the first thing wrong with c, in words an operator can
// act on. It does not touch the system.
func (c *Config) Validate() error {
	if c.Mode != 0 && c.Mode != ModeICMP {
		return fmt.Errorf("relay mode %v is not supported", c.Mode)
	}
	if !c.Source.Is4() {
		return fmt.Errorf("source address %v is not an IPv4 address", c.Source)
	}
	if c.TTL < 1 || c.TTL > 255 {
		return fmt.Errorf("ttl %d is outside 1..255", c.TTL)
	}
	if len(c.Peers) == 0 {
		return errors.New("no peers: give --peers a comma-separated list of node addresses")
	}
	for _, p := range c.Peers {
		if !p.Is4() {
			return fmt.Errorf("peer %v is not an IPv4 address", p)
		}
	}
	if len(c.RemotePeers()) == 0 {
		return fmt.Errorf("no peers left after removing the node's own addresses from %v", c.Peers)
	}
	if c.Workers < 0 || c.Workers > 64 {
		return fmt.Errorf("workers %d is outside 1..64", c.Workers)
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
	return nil
}

// RemotePeers returns Peers without duplicates and without the node's own
// addresses, in the order given.
func (c *Config) RemotePeers() []netip.Addr {
	var out []netip.Addr
	for _, p := range c.Peers {
		p = p.Unmap()
		if p == c.Source || slices.Contains(c.LocalAddrs, p) || slices.Contains(out, p) {
			continue
		}
		out = append(out, p)
	}
	return out
}
