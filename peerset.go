package pmtud

import (
	"errors"
	"fmt"
	"io"
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

// peerSet is everything derived from one set of peers. It is immutable once
// published through Relay.set; a batch keeps the one it started with, so
// the hot path reads it without a lock.
type peerSet struct {
	addrs []netip.Addr
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

// newPeerSet derives a peer set from addrs: without duplicates and without
// the node's own addresses, in the order given. State of peers in prev
// carries over. It allocates the whole set; it is not for the hot path.
func newPeerSet(c *Config, prev *peerSet, addrs []netip.Addr) *peerSet {
	own := c.ownAddrs()
	addrs = remote(own, addrs)
	s := &peerSet{
		addrs: addrs,
		state: make([]*peerState, 0, len(addrs)),
		index: make(map[netip.Addr]int, len(addrs)),
		guard: make(map[netip.Addr]DropReason, len(addrs)+len(own)),
	}
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
	Added, Removed int // peers that joined and left
	Peers          int // peers in force now
}

// SetPeers makes addrs the relay's peers, while packets flow: the node's
// own addresses and duplicates are left out, peers present before keep
// their counters and replay window. A batch in progress finishes with the
// peers it started with; SetPeers returns once no batch uses the previous
// set, so a peer that left gets no copy after it returns, and a peer that
// joined gets copies from the next batch on. It logs one line per change
// and counts the update in go_pmtud_peer_updates_total (applied or
// unchanged); an address that is not IPv4, or more than MaxPeers, leave
// the set in force and count as error. Calls are serialised; it allocates
// the new set and is meant for peer sources, not the packet path.
func (r *Relay) SetPeers(addrs []netip.Addr) (PeerChange, error) {
	r.setMu.Lock()
	defer r.setMu.Unlock()
	if err := checkPeers(addrs); err != nil {
		r.m.updError.Inc()
		return PeerChange{Peers: len(r.set.Load().addrs)}, err
	}
	prev := r.set.Load()
	s := newPeerSet(&r.cfg, prev, addrs)
	s.targets = newTargetTable(r.targets, s, r.cfg.ownAddrs())
	added, removed := s.diff(prev)
	ch := PeerChange{Added: added, Removed: removed, Peers: len(s.addrs)}
	if added == 0 && removed == 0 {
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
	r.log.Info("peer set changed", "added", added, "removed", removed, "peers", len(s.addrs))
	return ch, nil
}

// filterPeers restricts the udp relay's socket to datagrams from addrs (a
// kernel filter: see transport.Listener.FilterPeers). A set too large for
// a filter leaves the socket unfiltered; the receiver's own peer check
// still applies.
func (r *Relay) filterPeers(addrs []netip.Addr) {
	if r.recv == nil || r.recv.l == nil {
		return
	}
	switch err := r.recv.l.FilterPeers(addrs); {
	case errors.Is(err, transport.ErrTooManyPeers):
		r.log.Warn("relay socket unfiltered: more peers than a socket filter holds; the receiver still checks every datagram's source", "peers", len(addrs), "max", transport.MaxFilterPeers)
	case err != nil:
		r.m.errors.Inc()
		r.log.Warn("relay socket filter not updated", "err", err)
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
	r.log.Warn("peer update failed; the peers in force stay", "peers", len(r.set.Load().addrs), "err", err)
}

// checkPeers reports what makes addrs unusable as a peer set.
func checkPeers(addrs []netip.Addr) error {
	if len(addrs) > MaxPeers {
		return fmt.Errorf("%d peers: at most %d are supported", len(addrs), MaxPeers)
	}
	for _, a := range addrs {
		if !a.Unmap().Is4() {
			return fmt.Errorf("peer %v is not an IPv4 address", a)
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

// Peers returns the peers that get copies now: the configured or last set
// without duplicates and without the node's own addresses. The caller must
// not modify it.
func (r *Relay) Peers() []netip.Addr { return r.set.Load().addrs }

// writePeerMetrics writes the per-peer series of the peers in force, so
// series are bounded by the current set: a peer that left has none.
func (r *Relay) writePeerMetrics(w io.Writer) {
	if r.cfg.Mode == ModeL2 {
		return // frames go to the segment: nothing is per peer
	}
	s := r.set.Load()
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
