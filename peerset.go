package pmtud

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/go-pmtud/go-pmtud/internal/transport"
	"github.com/go-pmtud/go-pmtud/wire"
)

// MaxPeers is the most peers a relay takes: far above any cluster's node
// count, so a larger set can only be a mistake, and it bounds what a bad
// peers file or API answer can make the relay allocate.
const MaxPeers = 65536

// Peer is one peer node: its address of each family it has, at least one.
// A relayed packet goes to the peer's address of the packet's own family
// where it has one, otherwise to its other one (see Config.RelayFamily).
type Peer struct {
	V4 netip.Addr // an IPv4 address, or the zero Addr
	V6 netip.Addr // an IPv6 address (not IPv4-mapped), or the zero Addr
}

// PeerOf returns the peer whose one address is a (IPv4-mapped: IPv4).
func PeerOf(a netip.Addr) Peer {
	if a = a.Unmap(); a.Is4() {
		return Peer{V4: a}
	}
	return Peer{V6: a}
}

// PeersOf returns one single-family Peer per address, in order.
func PeersOf(addrs ...netip.Addr) []Peer {
	ps := make([]Peer, len(addrs))
	for i, a := range addrs {
		ps[i] = PeerOf(a)
	}
	return ps
}

// String returns the peer's address, or both as "v4+v6".
func (p Peer) String() string {
	switch {
	case p.V4.IsValid() && p.V6.IsValid():
		return p.V4.String() + "+" + p.V6.String()
	case p.V4.IsValid():
		return p.V4.String()
	}
	return p.V6.String()
}

// Family indexes: a packet's (which address of a peer it goes to) and a
// transport's (which socket it leaves by).
const (
	fam4 = 0
	fam6 = 1
)

// span is the part addrs[lo:hi] of a peer set's addresses.
type span struct{ lo, hi int }

func (s span) len() int { return s.hi - s.lo }

// peerSet is everything derived from one set of peers. It is immutable once
// published through Relay.set; a batch keeps the one it started with, so
// the hot path reads it without a lock.
type peerSet struct {
	// addrs are the peers' addresses, each peer's of either family, in
	// the order: IPv4 of IPv4-only peers, IPv4 of dual-stack peers, IPv6
	// of dual-stack peers, IPv6 of IPv6-only peers (the given order within
	// each part). Every address is a peer of its own for the counters,
	// the replay windows and the receive side's check; sibling ties a
	// dual-stack peer's two together. The order makes the addresses a
	// packet of each family goes to over each transport one span.
	addrs []netip.Addr
	// sibling[k] is the index of the same peer's other address; -1: none.
	sibling []int32
	// nodes is the number of peers (nodes), not addresses.
	nodes int
	// spans[f][t] are the addresses a packet of family f goes to over
	// transport t (fam4, fam6): empty when this node does not send f's
	// packets over t. reach[f] is the number of peers they make.
	spans [2][2]span
	reach [2]int
	// broadcast: the l2 relay's frames reach every node, whose spans
	// cover all addresses; nA and nB are the numbers of IPv4-only and
	// dual-stack peers (countIn counts such a set's nodes once each).
	broadcast bool
	nA, nB    int
	// state[k] belongs to addrs[k]; a peer present in two consecutive sets
	// keeps its *peerState, so its counters and replay window carry over.
	state []*peerState
	// index maps a peer's address to its position (the receive side's
	// peer check).
	index map[netip.Addr]int
	// guard maps the addresses whose ICMPs are copies (peers, own
	// addresses) to the reason they are dropped. A map lookup on a
	// netip.Addr hashes a 24-byte value and allocates nothing.
	guard map[netip.Addr]DropReason
	// retired holds the state of up to maxRetired peers that left, the
	// latest last: a peer that comes back gets its counters and replay
	// window back, so datagrams it sent before it left cannot be replayed
	// into a fresh window.
	retired []*peerState
	// l2gen counts the republications of the same peers with new
	// link-layer addresses (the l2 relay's unicast frames): a worker whose
	// messages are built for another generation rebuilds them.
	l2gen uint64
	// targets maps a quoted flow's source to the peers that can own it
	// (nil: every ICMP goes to every peer). It is built for this set's
	// indexes; SetTargets publishes a copy of the set with a new table.
	targets *targetTable
}

// maxRetired bounds peerSet.retired: 1,024 departed peers' state (about
// 1 MiB with replay windows) is far more than a cluster churns between a
// node's leaving and its return.
const maxRetired = 1024

// peerState is what a relay keeps per peer across peer-set changes.
type peerState struct {
	addr netip.Addr
	// labels is the series' label set, {node="…",peer="…"}, rendered once.
	labels string
	// Copies sent to the peer, copies the kernel refused, and ICMP errors
	// reported for copies (udp relay).
	sent, errors, unreachable atomic.Uint64
	// replay is the peer's replay window (udp relay only: 1 KiB a peer).
	// Only the receiver's goroutine touches it.
	replay *wire.ReplayWindow
}

// newPeerSet derives a peer set from peers: without the node's own
// addresses and duplicates, ordered as peerSet.addrs says. A peer with
// one of the node's own addresses is the node itself and is left out
// whole. State of addresses in prev carries over. It allocates the whole
// set; it is not for the hot path.
func newPeerSet(c *Config, prev *peerSet, peers []Peer) *peerSet {
	own := c.ownAddrs()
	var only4, dual, only6 []Peer
	// index serves first as the set of addresses seen (positions come
	// once the peers are sorted by kind): one map, not two.
	index := make(map[netip.Addr]int, 2*len(peers))
	keep := func(a netip.Addr) netip.Addr {
		if !a.IsValid() {
			return a
		}
		if _, dup := index[a]; dup {
			return netip.Addr{} // the first peer with it keeps it
		}
		index[a] = -1
		return a
	}
	for _, p := range peers {
		p.V4 = p.V4.Unmap()
		if own[p.V4] || own[p.V6] {
			continue
		}
		p.V4, p.V6 = keep(p.V4), keep(p.V6)
		switch {
		case p.V4.IsValid() && p.V6.IsValid():
			dual = append(dual, p)
		case p.V4.IsValid():
			only4 = append(only4, p)
		case p.V6.IsValid():
			only6 = append(only6, p)
		}
	}
	nA, nB, nC := len(only4), len(dual), len(only6)
	addrs := make([]netip.Addr, 0, nA+2*nB+nC)
	sibling := make([]int32, 0, cap(addrs))
	for _, p := range only4 {
		addrs, sibling = append(addrs, p.V4), append(sibling, -1)
	}
	for i, p := range dual {
		addrs, sibling = append(addrs, p.V4), append(sibling, int32(nA+nB+i))
	}
	for i, p := range dual {
		addrs, sibling = append(addrs, p.V6), append(sibling, int32(nA+i))
	}
	for _, p := range only6 {
		addrs, sibling = append(addrs, p.V6), append(sibling, -1)
	}
	s := &peerSet{
		addrs:   addrs,
		sibling: sibling,
		nodes:   nA + nB + nC,
		state:   make([]*peerState, 0, len(addrs)),
		index:   index,
		guard:   make(map[netip.Addr]DropReason, len(addrs)+len(own)),
	}
	s.route(c, nA, nB)
	for k, a := range addrs {
		var st *peerState
		if prev != nil {
			if k, ok := prev.index[a]; ok {
				st = prev.state[k]
			} else if k := slices.IndexFunc(prev.retired, func(r *peerState) bool { return r.addr == a }); k >= 0 {
				st = prev.retired[k]
			}
		}
		if st == nil {
			st = &peerState{addr: a, labels: "{node=" + quote(c.NodeName) + ",peer=" + quote(a.String()) + "}"}
			if c.Mode == ModeUDP {
				st.replay = new(wire.ReplayWindow)
			}
		}
		s.index[a] = k
		s.state = append(s.state, st)
		s.guard[a] = DropFromPeer
	}
	// Own addresses win over peers: the same address in both lists is ours.
	for a := range own {
		s.guard[a] = DropFromSelf
	}
	if prev != nil {
		for _, st := range prev.retired {
			if _, back := s.index[st.addr]; !back {
				s.retired = append(s.retired, st)
			}
		}
		for _, st := range prev.state {
			if _, stays := s.index[st.addr]; !stays {
				s.retired = append(s.retired, st)
			}
		}
		if n := len(s.retired); n > maxRetired {
			s.retired = slices.Clone(s.retired[n-maxRetired:])
		}
	}
	return s
}

// route sets the spans: which addresses a packet of each family goes to
// over each transport, given nA IPv4-only peers and nB dual-stack ones
// before the IPv6-only ones. With both transports (udp and l2 to peers,
// RelayFamily auto, the node has addresses of both families) a packet goes
// to a peer's address of its own family, else to its other one; with one
// transport, to every peer's address of that family; the icmp relay sends
// a packet of family f over f only.
func (s *peerSet) route(c *Config, nA, nB int) {
	all := [2]span{{0, nA + nB}, {nA + nB, len(s.addrs)}} // every address of a family
	can := c.transports()
	s.nA, s.nB = nA, nB
	switch {
	case c.Mode == ModeL2 && c.L2Dest != L2Peers:
		s.broadcast = true
		// One broadcast frame reaches every node: the spans only count.
		s.spans[fam4][fam4], s.spans[fam6][fam4] = span{0, len(s.addrs)}, span{0, len(s.addrs)}
		s.reach = [2]int{s.nodes, s.nodes}
		return
	case c.Mode == ModeICMP || c.Mode == 0:
		for f := range 2 {
			if can[f] {
				s.spans[f][f] = all[f]
			}
		}
	case can[fam4] && can[fam6]:
		s.spans[fam4][fam4] = all[fam4]
		s.spans[fam4][fam6] = span{nA + 2*nB, len(s.addrs)} // IPv6-only peers
		s.spans[fam6][fam6] = all[fam6]
		s.spans[fam6][fam4] = span{0, nA} // IPv4-only peers
	default:
		for t := range 2 {
			if can[t] {
				s.spans[fam4][t], s.spans[fam6][t] = all[t], all[t]
			}
		}
	}
	for f := range 2 {
		s.reach[f] = s.spans[f][fam4].len() + s.spans[f][fam6].len()
	}
}

// countIn returns the number of peers set names that a packet of family f
// reaches: a population count per word of its spans.
func (s *peerSet) countIn(set []uint64, f int) int {
	n := 0
	spans := s.spans[f]
	if s.broadcast {
		// Every node once: by its IPv4 address, else its IPv6 one.
		spans = [2]span{{0, s.nA + s.nB}, {s.nA + 2*s.nB, len(s.addrs)}}
	}
	for _, sp := range spans {
		for w := sp.lo / 64; w*64 < sp.hi && w < len(set); w++ {
			word := set[w]
			if lo := sp.lo - w*64; lo > 0 {
				word &^= 1<<lo - 1 // bits below the span
			}
			if hi := sp.hi - w*64; hi < 64 {
				word &= 1<<hi - 1 // bits above it
			}
			n += bits.OnesCount64(word)
		}
	}
	return n
}

// diff counts the peers of s that are not in prev (added) and those of
// prev that are not in s (removed).
func (s *peerSet) diff(prev *peerSet) (added, removed int) {
	for _, a := range s.addrs {
		if _, ok := prev.index[a]; !ok {
			added++
		}
	}
	return added, len(prev.addrs) - (len(s.addrs) - added)
}

// PeerChange says what a SetPeers call changed.
type PeerChange struct {
	Added, Removed int // peer addresses that joined and left
	Peers          int // peers in force now
}

// SetPeers makes peers the relay's peers, while packets flow: the node's
// own addresses and duplicates are left out, addresses present before keep
// their counters and replay window. A batch in progress finishes with the
// peers it started with; SetPeers returns once no batch uses the previous
// set, so a peer that left gets no copy after it returns, and a peer that
// joined gets copies from the next batch on. It logs one line per change
// and counts the update in go_pmtud_peer_updates_total (applied or
// unchanged); an invalid peer, or more than MaxPeers, leave the set in
// force and count as error. Calls are serialised; it allocates the new
// set and is meant for peer sources, not the packet path.
func (r *Relay) SetPeers(peers []Peer) (PeerChange, error) {
	r.setMu.Lock()
	defer r.setMu.Unlock()
	if err := checkPeers(peers); err != nil {
		r.m.updError.Inc()
		return PeerChange{Peers: r.set.Load().nodes}, err
	}
	prev := r.set.Load()
	s := newPeerSet(&r.cfg, prev, peers)
	s.targets = newTargetTable(r.targets, s, r.cfg.ownAddrs())
	added, removed := s.diff(prev)
	ch := PeerChange{Added: added, Removed: removed, Peers: s.nodes}
	// The same addresses grouped into other peers (a node that became
	// dual-stack, or was split) route differently: a change too.
	if added == 0 && removed == 0 && s.spans == prev.spans && slices.Equal(s.sibling, prev.sibling) {
		r.m.updUnchanged.Inc()
		return ch, nil
	}
	// The relay socket's filter admits both sets while the swap is in
	// progress: a peer that joins is not refused by the kernel before the
	// set that names it is in force.
	if added > 0 {
		union := slices.Clone(prev.addrs)
		for _, a := range s.addrs {
			if _, ok := prev.index[a]; !ok {
				union = append(union, a)
			}
		}
		r.filterPeers(union)
	}
	r.set.Store(s)
	r.quiesce(prev)
	r.filterPeers(s.addrs)
	r.solicit(s)
	r.m.updApplied.Inc()
	r.log.Info("peer set changed", "added", added, "removed", removed, "peers", s.nodes, "addresses", len(s.addrs))
	return ch, nil
}

// filterPeers restricts the udp relay's sockets to datagrams from addrs,
// each socket to those of its family (a kernel filter: see
// transport.Listener.FilterPeers). A set too large for a filter leaves the
// socket unfiltered; the receiver's own peer check still applies.
func (r *Relay) filterPeers(addrs []netip.Addr) {
	for _, rv := range r.recvs {
		if rv.l == nil {
			continue
		}
		switch err := rv.l.FilterPeers(addrs); {
		case errors.Is(err, transport.ErrTooManyPeers):
			r.log.Warn("relay socket unfiltered: more peers than a socket filter holds; the receiver still checks every datagram's source", "err", err)
		case err != nil:
			r.m.errors.Inc()
			r.log.Warn("relay socket filter not updated", "err", err)
		}
	}
}

// SetTargets makes ts the relay's knowledge of which nodes own which flows
// (see Target), while packets flow: from the next batch on, an ICMP whose
// quoted flow left from a target's addresses goes only to that target's
// peers, and every other ICMP to every peer. ts replaces the targets of the
// previous call; Config.Targets stay (nil leaves only those). The
// table is rebuilt for every later peer set. It returns an error, and
// keeps the targets in force, for an invalid entry or more than
// MaxTargets. Calls are serialised with SetPeers; it allocates the table
// (a bitmap over the peers per entry) and is meant for target sources,
// not the packet path.
func (r *Relay) SetTargets(ts []Target) error {
	if err := checkTargets(ts); err != nil {
		return err
	}
	r.setMu.Lock()
	defer r.setMu.Unlock()
	if slices.EqualFunc(ts, r.targets[len(r.cfg.Targets):], Target.equal) {
		return nil // unchanged: no new table, no log line
	}
	prev := r.set.Load()
	s := *prev
	r.targets = append(slices.Clone(r.cfg.Targets), ts...)
	s.targets = newTargetTable(r.targets, &s, r.cfg.ownAddrs())
	r.set.Store(&s)
	// A later SetPeers waits only for jobs on the set it replaces: none
	// may still hold this one's predecessor.
	r.quiesce(prev)
	nService, nGroup, unknown := 0, 0, 0
	if t := s.targets; t != nil {
		nService, nGroup, unknown = t.nService, t.nGroup, t.unknown
	}
	r.log.Info("targets changed", "services", nService, "groups", nGroup, "unknown_owners", unknown)
	return nil
}

// writeTargetMetrics writes the size of the target table in force.
func (r *Relay) writeTargetMetrics(w io.Writer) {
	var nService, nGroup, unknown int
	if t := r.set.Load().targets; t != nil {
		nService, nGroup, unknown = t.nService, t.nGroup, t.unknown
	}
	n := quote(r.cfg.NodeName)
	metrics.WriteGaugeUint64(w, "go_pmtud_target_entries{node="+n+`,scope="service"}`, uint64(nService))
	metrics.WriteGaugeUint64(w, "go_pmtud_target_entries{node="+n+`,scope="group"}`, uint64(nGroup))
	metrics.WriteGaugeUint64(w, "go_pmtud_target_unknown_owners{node="+n+"}", uint64(unknown))
}

// PeerUpdateFailed records that a peer source could not produce a set:
// the one in force stays, go_pmtud_peer_updates_total{result="error"}
// counts it, and one line is logged.
func (r *Relay) PeerUpdateFailed(err error) {
	r.m.updError.Inc()
	r.log.Warn("peer update failed; the peers in force stay", "peer_addrs", len(r.set.Load().addrs), "err", err)
}

// checkPeers reports what makes peers unusable as a peer set.
func checkPeers(peers []Peer) error {
	if len(peers) > MaxPeers {
		return fmt.Errorf("%d peers: at most %d are supported", len(peers), MaxPeers)
	}
	for _, p := range peers {
		switch {
		case !p.V4.IsValid() && !p.V6.IsValid():
			return errors.New("a peer without an address")
		case p.V4.IsValid() && !p.V4.Unmap().Is4():
			return fmt.Errorf("peer %v: %v is not an IPv4 address", p, p.V4)
		case p.V6.IsValid() && (!p.V6.Is6() || p.V6.Is4In6()):
			return fmt.Errorf("peer %v: %v is not an IPv6 address", p, p.V6)
		case p.V6.Zone() != "":
			return fmt.Errorf("peer %v: a zoned address cannot be a peer", p)
		case p.V4.IsValid() && !p.V4.Unmap().IsGlobalUnicast(), p.V6.IsValid() && !p.V6.IsGlobalUnicast():
			return fmt.Errorf("peer %v: not a unicast address a node can be reached at (unspecified, loopback, link-local, multicast or broadcast)", p)
		}
	}
	return nil
}

// acquire returns the peer set in force and records in j that the job
// uses it, from j.start until done releases it. The second load closes the
// race with SetPeers: a set that was replaced between the load and the
// record is not used.
func (r *Relay) acquire(j *job) *peerSet {
	j.began.Store(j.start.UnixNano())
	for {
		s := r.set.Load()
		j.set.Store(s)
		if r.set.Load() == s {
			return s
		}
	}
}

// quiesce waits until no job of the relay's pool uses prev. A job holds a
// set for one batch: microseconds, or a send timeout at worst.
func (r *Relay) quiesce(prev *peerSet) {
	for _, j := range r.jobs {
		for j.set.Load() == prev {
			time.Sleep(20 * time.Microsecond)
		}
	}
}

// Peers returns the peers' addresses in force: the configured or last set
// without duplicates and without the node's own addresses, both addresses
// of a dual-stack peer, also those --relay-family leaves unreached. The
// caller must not modify it.
func (r *Relay) Peers() []netip.Addr { return r.set.Load().addrs }

// writePeerMetrics writes the per-peer series of the peers in force, so
// series are bounded by the current set: a peer that left has none.
func (r *Relay) writePeerMetrics(w io.Writer) {
	s := r.set.Load()
	n := quote(r.cfg.NodeName)
	metrics.WriteGaugeUint64(w, "go_pmtud_peers_unreached{node="+n+`,family="ipv4"}`, uint64(s.nodes-s.reach[fam4]))
	metrics.WriteGaugeUint64(w, "go_pmtud_peers_unreached{node="+n+`,family="ipv6"}`, uint64(s.nodes-s.reach[fam6]))
	if r.cfg.Mode == ModeL2 {
		return // frames go to the segment: nothing is per peer
	}
	for _, st := range s.state {
		metrics.WriteCounterUint64(w, "go_pmtud_sent_packets_peer"+st.labels, st.sent.Load())
	}
	for _, st := range s.state {
		metrics.WriteCounterUint64(w, "go_pmtud_sent_error_peer_total"+st.labels, st.errors.Load())
	}
	if r.cfg.Mode == ModeUDP {
		for _, st := range s.state {
			metrics.WriteCounterUint64(w, "go_pmtud_relay_unreachable_total"+st.labels, st.unreachable.Load())
		}
	}
}
