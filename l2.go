package pmtud

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/go-pmtud/go-pmtud/internal/neigh"
)

// L2 destinations of the l2 relay (Config.L2Dest).
const (
	// L2Broadcast: one broadcast frame per ICMP, whatever the peers.
	L2Broadcast = "broadcast"
	// L2Peers: one unicast frame per peer, to its address in the kernel's
	// neighbour table. Unlike a broadcast frame, the receiving kernel
	// forwards it, so pods behind DNAT learn too.
	L2Peers = "peers"
)

// l2Refresh is how often the l2 relay re-reads the neighbour table for its
// peers' addresses (a dump of the table over rtnetlink): a peer's address
// changes when its machine is replaced. For l2Eager after a peer was
// solicited it reads the table every l2Retry, so the peer gets unicast
// frames within milliseconds of its answer; a peer that does not answer
// (powered off) is solicited again at most once a second and then costs
// a dump every l2Refresh.
const (
	l2Refresh = 2 * time.Second
	l2Retry   = 50 * time.Millisecond
	l2Eager   = 3 * time.Second
)

// neighbours is the l2 relay's view of the kernel's neighbour table on
// L2Iface, for unicast frames.
type neighbours struct {
	conn    *neigh.Conn // in the namespace the relay was created in
	ifindex int
	// macs is the last table read (never nil); the Fanouts resolve peers
	// from it when the workers rebuild their messages.
	macs atomic.Pointer[map[netip.Addr]neigh.MAC]
	// peerMACs holds the link-layer addresses of the peers in force: a
	// frame from one of them is a peer's copy (l2_copy), never relayed.
	peerMACs atomic.Pointer[map[neigh.MAC]bool]
	// lastLog throttles the warnings; guarded by the Relay's setMu.
	lastLog time.Time
	// solicited is when each peer was last solicited; guarded by setMu.
	solicited map[netip.Addr]time.Time
	// lastSolicit is when any peer was last solicited (Unix ns).
	lastSolicit atomic.Int64
	// segment holds the prefixes of the interface's addresses: a peer
	// outside them is not on the segment, no frame reaches it, and it is
	// not solicited.
	segment []netip.Prefix
	// offSegment counts the peers in force outside segment.
	offSegment atomic.Int64
}

// onSegment reports whether a lies in one of the interface's prefixes.
func (n *neighbours) onSegment(a netip.Addr) bool {
	for _, p := range n.segment {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// copyFromPeer reports whether the frame whose link-layer header is hw
// came from a peer: an Ethernet header's source address (bytes 6-11) is in
// peerMACs. It allocates nothing.
func (n *neighbours) copyFromPeer(hw []byte) bool {
	if len(hw) < 14 {
		return false
	}
	return (*n.peerMACs.Load())[neigh.MAC(hw[6:12])]
}

// setPeerMACs makes the addresses of s's peers on the segment in macs the
// peers' MACs. A MAC that more than one IPv4 address or more than one IPv6
// link-local address of the table resolves to, or the addresses of more
// than one peer, is left out: behind proxy
// ARP or NDP (some clouds answer every address with one MAC) it may be the
// router's, whose ICMPs must not look like copies. One node's IPv6
// addresses (link-local and global) and its IPv4 one share a MAC by
// nature: that is no sign. It returns the number left out.
func (n *neighbours) setPeerMACs(s *peerSet, macs map[netip.Addr]neigh.MAC) (shared int) {
	// A host has one IPv4 and one IPv6 link-local address on a segment:
	// a second of either kind behind a MAC is another host's.
	proxied := make(map[neigh.MAC]bool)
	seen4, seenLL := make(map[neigh.MAC]bool, len(macs)), make(map[neigh.MAC]bool)
	for a, mac := range macs {
		seen := seen4
		switch {
		case a.Is4():
		case a.IsLinkLocalUnicast():
			seen = seenLL
		default:
			continue
		}
		if seen[mac] {
			proxied[mac] = true
		}
		seen[mac] = true
	}
	// The node (its first address's index) each peer MAC belongs to.
	node := make(map[neigh.MAC]int, len(s.addrs))
	for k, a := range s.addrs {
		mac, ok := macs[a]
		if !ok || !n.onSegment(a) {
			continue
		}
		id := k
		if sib := int(s.sibling[k]); sib >= 0 && sib < k {
			id = sib
		}
		if o, seen := node[mac]; seen && o != id {
			proxied[mac] = true // two peers
		}
		node[mac] = id
	}
	m := make(map[neigh.MAC]bool, len(s.addrs))
	for _, a := range s.addrs {
		mac, ok := macs[a]
		switch {
		case !ok || !n.onSegment(a):
		case proxied[mac]:
			shared++
		default:
			m[mac] = true
		}
	}
	n.peerMACs.Store(&m)
	return shared
}

// openNeighbours reads the neighbour table of c.L2Iface. It returns nil
// for the other relays and for broadcast frames.
func openNeighbours(c *Config) (*neighbours, error) {
	if c.Mode != ModeL2 || c.L2Dest != L2Peers {
		return nil, nil
	}
	ifi, err := net.InterfaceByName(c.L2Iface)
	if err != nil {
		return nil, fmt.Errorf("pmtud: l2 relay interface: %w", err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("pmtud: l2 relay interface %s: %w", c.L2Iface, err)
	}
	var segment []netip.Prefix
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			segment = append(segment, p.Masked())
		}
	}
	conn, err := neigh.Dial()
	if err != nil {
		return nil, fmt.Errorf("pmtud: %w", err)
	}
	n := &neighbours{conn: conn, ifindex: ifi.Index, solicited: map[netip.Addr]time.Time{}, segment: segment}
	macs, err := conn.Table(n.ifindex)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("pmtud: %w%s", err, needs(err, "CAP_NET_ADMIN"))
	}
	n.macs.Store(&macs)
	n.peerMACs.Store(&map[neigh.MAC]bool{})
	return n, nil
}

// resolve returns a peer's link-layer address from the last table read,
// for the l2 relay's Fanouts. It allocates nothing.
func (n *neighbours) resolve(a netip.Addr) ([6]byte, bool) {
	m, ok := (*n.macs.Load())[a]
	return m, ok
}

// solicit asks the kernel to resolve the peers of s that the table does
// not hold; their copies go out as broadcast frames meanwhile. Call it with
// setMu held.
func (r *Relay) solicit(s *peerSet) {
	if r.neigh == nil {
		return
	}
	macs := *r.neigh.macs.Load()
	if shared := r.neigh.setPeerMACs(s, macs); shared > 0 && throttled(&r.neigh.lastLog) {
		r.log.Warn("peers share their MAC address with other neighbours (proxy ARP?): their copies cannot be told from the router's by source address", "peers", shared)
	}
	now := time.Now()
	for a := range r.neigh.solicited {
		if _, ok := s.index[a]; !ok {
			delete(r.neigh.solicited, a) // not a peer any more
		}
	}
	off := 0
	for _, a := range s.addrs {
		if !r.neigh.onSegment(a) {
			off++
			continue
		}
		if _, ok := macs[a]; ok || now.Sub(r.neigh.solicited[a]) < time.Second {
			continue // resolved, or asked for within the last second
		}
		r.neigh.solicited[a] = now
		r.neigh.lastSolicit.Store(now.UnixNano())
		if err := r.neigh.conn.Resolve(r.neigh.ifindex, a); err != nil && throttled(&r.neigh.lastLog) {
			r.log.Warn("cannot solicit a peer's link-layer address", "peer", a, "err", err)
		}
	}
	if prev := r.neigh.offSegment.Swap(int64(off)); off > 0 && int64(off) != prev {
		r.log.Warn("peers outside the l2 relay's segment get no frame they can receive (go_pmtud_l2_offsegment_peers)", "peers", off, "iface", r.cfg.L2Iface)
	}
}

// refreshNeighbours re-reads the neighbour table every l2Refresh until ctx
// is done. When a peer's address changed or appeared, it publishes the
// peer set again (the same peers, a new generation), and the workers
// rebuild their messages with the new addresses.
func (r *Relay) refreshNeighbours(ctx context.Context) {
	t := time.NewTicker(l2Retry)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			eager := now.Sub(time.Unix(0, r.neigh.lastSolicit.Load())) < l2Eager && r.unresolved() > 0
			if now.Sub(last) < l2Refresh && !eager {
				continue
			}
			last = now
		}
		macs, err := r.neigh.conn.Table(r.neigh.ifindex)
		r.setMu.Lock()
		if err != nil {
			r.m.errors.Inc()
			if throttled(&r.neigh.lastLog) {
				r.log.Warn("cannot read the neighbour table; the l2 relay's addresses stay", "err", err)
			}
			r.setMu.Unlock()
			continue
		}
		prev := r.set.Load()
		old := *r.neigh.macs.Load()
		changed := false
		for _, a := range prev.addrs {
			o, had := old[a]
			n, has := macs[a]
			if had != has || o != n {
				changed = true
				break
			}
		}
		r.neigh.macs.Store(&macs)
		if changed {
			s := *prev
			s.l2gen++
			r.set.Store(&s)
			r.quiesce(prev)
		}
		r.solicit(r.set.Load())
		r.setMu.Unlock()
	}
}

// unresolved returns the number of peers in force on the segment whose
// link-layer address the table did not hold at the last read.
func (r *Relay) unresolved() int {
	macs := *r.neigh.macs.Load()
	n := 0
	for _, a := range r.set.Load().addrs {
		if _, ok := macs[a]; !ok && r.neigh.onSegment(a) {
			n++
		}
	}
	return n
}

// writeL2Metrics writes go_pmtud_l2_unresolved_peers.
func (r *Relay) writeL2Metrics(w io.Writer) {
	if r.neigh != nil {
		n := nodeLabels(r.cfg.NodeName)
		metrics.WriteGaugeUint64(w, "go_pmtud_l2_unresolved_peers"+n, uint64(r.unresolved()))
		metrics.WriteGaugeUint64(w, "go_pmtud_l2_offsegment_peers"+n, uint64(r.neigh.offSegment.Load()))
	}
}
