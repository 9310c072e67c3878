package pmtud

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/internal/transport"
	"github.com/go-pmtud/go-pmtud/internal/tun"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// logEvery limits how often a recurring hot-path error is logged; the
// counters carry the exact numbers.
const logEvery = 10 * time.Second

// Relay replicates the frag-needed ICMPs of one NFLOG group to every peer.
// Create it with New, run it with Run; SetPeers changes the peers while it
// runs.
//
// One goroutine reads NFLOG datagrams into jobs from a small pool. Each
// worker owns a send socket and, but for a single unpinned worker whose
// batches the reader handles itself, an OS thread (pinned with
// Config.CPUs).
// With SplitBatch a job goes to the next free worker, which prepares it
// (parse, policy, dedup, seal) and sends it to every peer. With SplitPeer
// the reader prepares the job and every worker sends it to its share of
// the peers; the last one done returns it to the pool.
//
// Everything derived from the peers is one immutable peerSet behind an
// atomic pointer. A job records the set it uses from preparation until it
// returns to the pool; SetPeers publishes a new set, then waits until no
// job holds the old one.
type Relay struct {
	cfg   Config
	log   *slog.Logger
	set   atomic.Pointer[peerSet]
	setMu sync.Mutex // serialises SetPeers and SetTargets
	// targets are the ownership entries in force, Config.Targets and
	// those of the last SetTargets, rebuilt into every new peer set's
	// table. Guarded by setMu.
	targets []Target
	keyMu   sync.Mutex // serialises SetKeys
	policy  policy
	m       *relayMetrics

	reader *nl.Reader
	seq    *wire.Sequence // udp relay: one numbering for all sealers
	// started is when the udp relay started, with the monotonic clock
	// reading: the receiver refuses version 2 datagrams sealed before it.
	// The bound is kept as an age, so a clock stepped after the start
	// (NTP correcting a fast clock) moves it along.
	started time.Time
	keys    atomic.Pointer[keySet] // udp relay: the keys in force
	pre     *preparer              // SplitPeer: the reader's
	workers []*worker
	// inline is the only worker when it is not pinned: the reader handles
	// each batch itself, in its own goroutine, instead of handing it to the
	// worker's thread. The handoff (a futex wake of the locked thread per
	// NFLOG datagram, and the thread's sleep after) cost about a quarter of
	// the l2 relay's CPU per ICMP (docs/performance.md). nil otherwise.
	inline *worker
	open   resources
	tun    injector    // udp relay only
	recvs  []*receiver // udp relay only: one per transport family
	jobs   []*job      // the pool, every job
	free   chan *job   // jobs ready to be read into
	work   chan *job   // SplitBatch: jobs ready to be handled

	lastLog time.Time // of the reader's warnings
	// neigh is the l2 relay's neighbour table for unicast frames; nil
	// otherwise.
	neigh     *neighbours
	dedup     *dedup
	limit     *limiter       // nil: no rate limit
	srcLimit  *sourceLimiter // nil: no per-source limit
	closing   atomic.Bool    // Close was called: a closed reader is no failure
	stopping  atomic.Bool    // Close was called or Run's context ended: no send retries
	running   atomic.Bool    // Run is active: it tears down, Close only stops it
	closeOnce sync.Once
	closeErr  error

	// For Health: when NFLOG reads began failing without a success since
	// (Unix nanoseconds, 0: the last read worked), and loops that returned
	// while the relay was not stopping.
	readErrSince atomic.Int64
	readErrLast  atomic.Int64 // the latest of those failures
	loopsDown    atomic.Int32
}

// job is one NFLOG datagram on its way through the relay: the batch it was
// read into and what a preparer made of it. Jobs come from the Relay's
// pool and go back to it; nothing in them is allocated per packet.
type job struct {
	batch *nl.Batch
	start time.Time
	// lanes[f] are the batch's packets of family f (fam4, fam6), which go
	// to the peers' addresses the set routes f to.
	lanes [2]lane
	hdrs  [][wire.EnvelopeLen]byte // udp relay: sealed envelope headers
	// packBuf holds the version 3 packs of the batch in hand.
	packBuf []byte
	pending atomic.Int32 // SplitPeer: workers still sending it
	// set is the peer set the job is prepared and sent with; nil while it
	// is in the pool.
	set atomic.Pointer[peerSet]
	// began is when the job's preparation began (Unix nanoseconds), for
	// Health to spot a batch that never finishes.
	began atomic.Int64
}

// lane is a job's payloads of one packet family.
type lane struct {
	payloads [][]byte // views into batch: ICMP messages or whole packets, for every peer
	// heads[t] are the udp relay's envelope headers for transport t (the
	// sender's address differs), views into job.hdrs, one per payload;
	// nil for a transport the lane's packets do not take.
	heads [2][][]byte
	// Targeted payloads: for the peers their bitmap (a view into the
	// set's target table) names.
	somePayloads [][]byte
	someHeads    [2][][]byte
	someSets     [][]uint64
}

// empty reports whether the lane holds nothing to send.
func (l *lane) empty() bool { return len(l.payloads)+len(l.somePayloads) == 0 }

// reset empties the lane, keeping its arrays.
func (l *lane) reset() {
	l.payloads, l.somePayloads, l.someSets = l.payloads[:0], l.somePayloads[:0], l.someSets[:0]
	for t := range 2 {
		l.heads[t], l.someHeads[t] = l.heads[t][:0], l.someHeads[t][:0]
	}
}

func newJob() *job {
	j := &job{
		batch: nl.NewBatch(),
		// A dual-stack node seals a packet once per transport.
		hdrs: make([][wire.EnvelopeLen]byte, 2*nl.DefaultQThreshold),
	}
	for f := range j.lanes {
		l := &j.lanes[f]
		l.payloads, l.somePayloads, l.someSets = make([][]byte, 0, 256), make([][]byte, 0, 256), make([][]uint64, 0, 256)
		for t := range 2 {
			l.heads[t], l.someHeads[t] = make([][]byte, 0, 256), make([][]byte, 0, 256)
		}
	}
	return j
}

// empty reports whether the job holds nothing to send.
func (j *job) empty() bool { return j.lanes[fam4].empty() && j.lanes[fam6].empty() }

// preparer turns a job's batch into payloads: injection-device check, parse, policy,
// dedup and, for the udp relay, sealing. One goroutine owns each (the
// sealer's HMAC state is not shared).
type preparer struct {
	r *Relay
	// sealers[t] seal for transport t (fam4, fam6), on behalf of the node's
	// source address of that family; nil where it has none (udp relay only).
	sealers [2]*wire.Sealer
	keys    *keySet // the set sealers seal for
	packed  bool    // the sealers seal version 3 packs (Config.Envelope 3)
}

// worker sends jobs with its own socket, to all peers (SplitBatch) or to
// its share of them (SplitPeer).
type worker struct {
	r    *Relay
	i, n int       // worker i of n
	cpu  int       // -1: not pinned
	pre  *preparer // SplitBatch only
	in   chan *job // SplitPeer only
	// legs[f][t] sends packets of family f over transport t (the set's
	// spans[f][t]); a leg the relay never uses has no sender.
	legs    [2][2]leg
	set     *peerSet // the set the legs' messages are built for
	lastLog time.Time
}

// leg is one of a worker's send sockets and the addresses it sends to.
type leg struct {
	fan  sender
	base int // index of fan's first peer in set.addrs
	n    int // fan's peers: set.addrs[base:base+n]
}

// New validates cfg and opens the NFLOG subscription and the send socket,
// in the network namespace of the calling thread. The caller must Run or
// Close the Relay.
func New(cfg Config, log *slog.Logger) (*Relay, error) { return newRelay(cfg, log, nil) }

// resources opens what a Relay needs from the kernel: system is the real
// thing; tests without root substitute fakes (a nil reader or listener
// means none: such a Relay is driven by its test, not Run).
type resources interface {
	sender(c *Config, src netip.Addr) (sender, error)
	tun(c *Config) (injector, error)
	listen(c *Config, src netip.Addr) (*transport.Listener, error)
	nflog(c *Config) (*nl.Reader, error)
}

// newRelay is New with the kernel resources of res; nil means system.
func newRelay(cfg Config, log *slog.Logger, res resources) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Mode == 0 {
		cfg.Mode = ModeICMP
	}
	if cfg.RelayPort == 0 {
		cfg.RelayPort = DefaultRelayPort
	}
	switch {
	case cfg.DedupWindow == 0:
		cfg.DedupWindow = DefaultDedupWindow
	case cfg.DedupWindow < 0:
		cfg.DedupWindow = 0 // off
	}
	if cfg.TUNName == "" {
		cfg.TUNName = "pmtud0"
	}
	if !cfg.TUNAddr.IsValid() {
		cfg.TUNAddr = DefaultTUNAddr
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := max(cfg.Workers, 1)
	r := &Relay{
		cfg:      cfg,
		log:      log,
		policy:   policy{ignore: cfg.IgnoreNetworks, trusted: cfg.TrustedSources},
		dedup:    newDedup(cfg.DedupWindow),
		limit:    newLimiter(cfg.RateLimit),
		srcLimit: newSourceLimiter(cfg.SourceRateLimit),
		// Two jobs per worker keep every worker busy while the reader fills
		// the next one; one more is in the reader's hands.
		free: make(chan *job, 2*n+1),
		work: make(chan *job, 2*n+1),
	}
	if res == nil {
		res = system{stopping: &r.stopping, log: r.log}
	}
	r.open = res
	first := newPeerSet(&r.cfg, nil, cfg.Peers)
	r.targets = slices.Clone(cfg.Targets)
	first.targets = newTargetTable(r.targets, first, r.cfg.ownAddrs())
	r.set.Store(first)
	var err error
	if r.neigh, err = openNeighbours(&r.cfg); err != nil {
		return nil, err
	}
	built := false
	defer func() {
		if !built && r.neigh != nil {
			r.neigh.conn.Close() // New failed: nothing else closes it
		}
	}()
	r.m = newRelayMetrics(cfg.NodeName, cfg.Mode, func() int { return r.set.Load().nodes })
	r.m.set.RegisterMetricsWriter(r.writePeerMetrics)
	r.m.set.RegisterMetricsWriter(r.writeTargetMetrics)
	if r.neigh != nil {
		r.cfg.resolve = r.neigh.resolve
		r.m.set.RegisterMetricsWriter(r.writeL2Metrics)
		r.solicit(first)
	}
	for range cap(r.free) {
		j := newJob()
		r.jobs = append(r.jobs, j)
		r.free <- j
	}
	if cfg.Mode == ModeUDP {
		now := time.Now()
		r.seq, r.started = wire.NewSequence(now), now
		if err := r.openUDP(); err != nil {
			r.closeWorkers()
			return nil, err
		}
	}
	if cfg.Split == SplitPeer {
		var err error
		if r.pre, err = r.newPreparer(); err != nil {
			r.closeWorkers() // and the udp relay's injection device and socket
			return nil, err
		}
	}
	for i := range n {
		w, err := r.newWorker(i, n)
		if err != nil {
			r.closeWorkers()
			return nil, err
		}
		r.workers = append(r.workers, w)
	}
	if n == 1 && r.workers[0].cpu < 0 {
		r.inline = r.workers[0]
		if r.inline.pre == nil { // SplitPeer: the reader's, all peers are its
			r.inline.pre = r.pre
		}
	}
	if r.reader, err = res.nflog(&r.cfg); err != nil {
		r.closeWorkers()
		return nil, err
	}
	if r.reader != nil {
		// Every NFLOG datagram the kernel dropped at the socket (ENOBUFS is
		// reported once per overrun, this counts each), read at scrape time.
		reader := r.reader
		r.m.set.NewGauge("go_pmtud_nflog_socket_drops_total"+nodeLabels(cfg.NodeName), func() float64 {
			return float64(reader.Drops())
		})
	}
	built = true
	return r, nil
}

// newPreparer returns a preparer with its own sealer for the udp relay.
func (r *Relay) newPreparer() (*preparer, error) {
	c := &r.cfg
	p := &preparer{r: r}
	if c.Mode != ModeUDP {
		return p, nil
	}
	if err := p.rekey(r.keys.Load()); err != nil {
		return nil, err
	}
	return p, nil
}

// newWorker opens worker i of n's send socket.
func (r *Relay) newWorker(i, n int) (*worker, error) {
	c := &r.cfg
	w := &worker{r: r, i: i, n: n, cpu: -1}
	if len(c.CPUs) > 0 {
		w.cpu = c.CPUs[i%len(c.CPUs)]
	}
	set := r.set.Load()
	if c.Split == SplitPeer {
		w.in = make(chan *job, cap(r.free))
	} else {
		var err error
		if w.pre, err = r.newPreparer(); err != nil {
			return nil, err
		}
	}
	for f := range 2 {
		for t := range 2 {
			if !c.leg(f, t) {
				continue
			}
			if c.Mode == ModeL2 && c.L2Dest != L2Peers && f == fam6 {
				w.legs[f][t] = w.legs[fam4][t] // one broadcast socket for both
				continue
			}
			fan, err := r.open.sender(c, c.source(t))
			if err != nil {
				w.close()
				return nil, err
			}
			w.legs[f][t].fan = fan
		}
	}
	w.use(set)
	return w, nil
}

// close closes the worker's senders, each once.
func (w *worker) close() error {
	var errs []error
	for f := range 2 {
		for t := range 2 {
			l := &w.legs[f][t]
			if l.fan == nil || f == fam6 && w.legs[fam4][t].fan == l.fan {
				continue
			}
			errs = append(errs, l.fan.Close())
		}
	}
	return errors.Join(errs...)
}

// sender is a transport's send half: it sends each payload of a batch (with
// its header, if any) to every peer of its last SetPeers, and tallies the
// outcome per peer. A *transport.Fanout, or a fake in tests.
type sender interface {
	SetPeers(peers []netip.Addr) // allocates only for a larger set than any before
	// Send sends payload i, after heads[i] if heads is not empty, to
	// every peer.
	Send(heads, payloads [][]byte)
	// SendSome sends payload i to the peers bitmap sets[i] names, bit
	// base+k for peer k.
	SendSome(heads, payloads [][]byte, sets [][]uint64, base int)
	Tally() *transport.Tally
	Close() error
}

var _ sender = (*transport.Fanout)(nil)

// system opens the relay's kernel resources; tests substitute fakes
// (see Relay.open).
type system struct {
	stopping *atomic.Bool
	log      *slog.Logger
}

// tun creates the device the udp relay injects through: a veth pair
// (InjectVeth, or InjectAuto where AF_PACKET sockets may be opened), else
// a TUN device.
func (s system) tun(c *Config) (injector, error) {
	var vethErr error
	if c.Inject != InjectTUN {
		v, err := openVeth(c)
		if err == nil {
			return v, nil
		}
		if c.Inject == InjectVeth {
			return nil, fmt.Errorf("pmtud: %w%s", err, needs(err, "CAP_NET_ADMIN and CAP_NET_RAW"))
		}
		vethErr = err
	}
	d, err := tun.Open(c.TUNName, c.TUNAddr)
	if err != nil {
		if vethErr != nil {
			err = fmt.Errorf("%w (and no veth pair: %v)", err, vethErr)
		}
		return nil, fmt.Errorf("pmtud: %w%s", err, needs(err, "CAP_NET_ADMIN and /dev/net/tun"))
	}
	if vethErr != nil {
		s.log.Warn("injecting through a TUN device, one write per packet, instead of a veth pair"+needs(vethErr, "CAP_NET_RAW")+"; --inject tun chooses this without the warning", "err", vethErr)
	}
	return d, nil
}

// openVeth creates the veth pair and checks that a writer can be opened
// for it: without CAP_NET_RAW the pair is of no use.
func openVeth(c *Config) (*tun.Veth, error) {
	v, err := tun.OpenVeth(c.TUNName, c.TUNAddr)
	if err != nil {
		return nil, err
	}
	w, err := v.Writer()
	if err != nil {
		v.Close()
		return nil, err
	}
	w.Close()
	return v, nil
}

// listen opens the udp relay's receive socket for src's family.
func (system) listen(c *Config, src netip.Addr) (*transport.Listener, error) {
	l, err := transport.Listen(src, c.RelayPort)
	if err != nil {
		return nil, fmt.Errorf("pmtud: %w", err)
	}
	return l, nil
}

// nflog subscribes to the NFLOG group.
// nl names the capability itself.
func (system) nflog(c *Config) (*nl.Reader, error) { return nl.Listen(c.NFLOG) }

// needs returns " (needs CAPS)" when err is a refused permission, so the
// one start-up line names what the container lacks; "" otherwise.
func needs(err error, caps string) string {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return " (needs " + caps + ")"
	}
	return ""
}

// sender opens a worker's send socket for the relay mode, from src (the
// node's address of the transport's family; ignored by the l2 relay).
func (s system) sender(c *Config, src netip.Addr) (sender, error) {
	var f *transport.Fanout
	var err error
	switch c.Mode {
	case ModeL2:
		var ifi *net.Interface
		if ifi, err = net.InterfaceByName(c.L2Iface); err != nil {
			return nil, fmt.Errorf("pmtud: l2 relay interface: %w", err)
		}
		f, err = transport.NewL2(ifi.Index, c.resolve)
	case ModeUDP:
		f, err = transport.NewUDP(src, c.TTL, nil, c.RelayPort)
	default:
		f, err = transport.NewICMP(src, c.TTL, nil)
	}
	if err != nil {
		caps := "CAP_NET_ADMIN"
		if c.Mode != ModeUDP {
			caps = "CAP_NET_RAW"
		}
		return nil, fmt.Errorf("pmtud: %w%s", err, needs(err, caps))
	}
	f.StopRetries(s.stopping)
	return f, nil
}

// use rebuilds the worker's messages for the peer set s, unless they are
// built for it already. Worker i of n sends over each leg to all of its
// span (SplitBatch) or to its share of it (SplitPeer: shares differ by one
// at most). It allocates only when the set has changed.
func (w *worker) use(s *peerSet) {
	if w.set == s {
		return
	}
	if w.set != nil && sameAddrs(w.set.addrs, s.addrs) && w.set.spans == s.spans && w.set.l2gen == s.l2gen {
		w.set = s // new targets, same peers: the messages stand
		return
	}
	for f := range 2 {
		for t := range 2 {
			l := &w.legs[f][t]
			if l.fan == nil {
				continue
			}
			sp := s.spans[f][t]
			lo, hi := sp.lo, sp.hi
			if w.r.cfg.Split == SplitPeer {
				lo, hi = sp.lo+w.i*sp.len()/w.n, sp.lo+(w.i+1)*sp.len()/w.n
			}
			l.fan.SetPeers(s.addrs[lo:hi])
			l.base, l.n = lo, hi-lo
		}
	}
	w.set = s
}

// openUDP creates the udp relay's injection device, receive sockets and writers.
func (r *Relay) openUDP() error {
	c := &r.cfg
	ks, err := newKeySet(c.Keys)
	if err != nil {
		return err
	}
	r.keys.Store(ks)
	if r.tun, err = r.open.tun(c); err != nil {
		return err
	}
	r.policy.tunIndex = uint32(r.tun.Index())
	// A socket per transport family, each for the peers' addresses of its
	// family.
	can := c.transports()
	for t := range 2 {
		if !can[t] {
			continue
		}
		l, err := r.open.listen(c, c.source(t))
		if err != nil {
			return err // the caller closes the device and the sockets
		}
		rv := &receiver{r: r, l: l, tun: r.tun, fam: t}
		if l != nil {
			rv.in = l
		}
		r.recvs = append(r.recvs, rv) // from here on closeWorkers closes l
		if rv.w, err = r.tun.Writer(); err != nil {
			return err // the caller closes the device and the sockets
		}
	}
	r.filterPeers(r.set.Load().addrs)
	// The kernel counts the drops; the series reads its count at scrape
	// time.
	r.m.set.NewGauge("go_pmtud_relay_socket_drops_total"+nodeLabels(c.NodeName), func() float64 {
		return float64(r.socketDrops())
	})
	if len(c.Keys) == 0 {
		r.log.Warn("the udp relay is unauthenticated: datagrams are accepted from the peers' addresses, unverified; give --relay-key-file")
	}
	return nil
}

// Run reads, validates and replicates until ctx is done or reading fails
// for good. On cancellation it finishes the batches in hand, closes its
// sockets and returns nil.
func (r *Relay) Run(ctx context.Context) error {
	r.running.Store(true)
	stop := context.AfterFunc(ctx, func() {
		r.stopping.Store(true)
		r.reader.Close()
	})
	defer stop()
	defer r.teardown() // after every worker and the receiver have stopped
	defer r.running.Store(false)
	if r.closing.Load() {
		return nil
	}

	errc := make(chan error, len(r.workers)+len(r.recvs))
	var wg sync.WaitGroup
	if r.neigh != nil {
		nctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { r.refreshNeighbours(nctx); close(done) }()
		defer func() { cancel(); <-done }()
	}
	for _, w := range r.workers {
		if w == r.inline {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- w.run()
			r.loopDown()
		}()
	}
	for _, rv := range r.recvs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- rv.run()
			r.loopDown()
		}()
	}
	err := r.read(ctx)
	// The workers drain what is queued, then stop.
	if r.cfg.Split == SplitPeer {
		for _, w := range r.workers {
			close(w.in)
		}
	} else {
		close(r.work)
	}
	for _, rv := range r.recvs {
		rv.close() // ends its run
	}
	wg.Wait()
	close(errc)
	for e := range errc {
		err = errors.Join(err, e)
	}
	return err
}

// read is the reader loop: it fills batches and queues them for the
// workers until the reader is closed.
func (r *Relay) read(ctx context.Context) error {
	for {
		j := <-r.free
		err := r.reader.Read(j.batch)
		if b := j.batch; len(b.Packets) > 0 || b.Lost > 0 {
			r.dispatch(j)
		} else {
			r.free <- j
		}
		// Only failures of the socket itself count against health, and
		// only while they keep coming (the loop retries every 10 ms): a
		// malformed datagram or an overrun means the socket works.
		failing := err != nil && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, nl.ErrMalformed) && !errors.Is(err, net.ErrClosed)
		if !failing {
			if r.readErrSince.Load() != 0 {
				r.readErrSince.Store(0)
			}
		} else {
			now := time.Now().UnixNano()
			r.readErrSince.CompareAndSwap(0, now)
			r.readErrLast.Store(now)
		}
		switch {
		case err == nil:
		case errors.Is(err, net.ErrClosed):
			if ctx.Err() != nil || r.closing.Load() {
				return nil
			}
			return fmt.Errorf("pmtud: NFLOG reader closed: %w", err)
		case errors.Is(err, unix.ENOBUFS):
			// The kernel dropped datagrams because we were slow; sequence
			// gaps count the packets. Keep reading.
			r.m.overruns.Inc()
		case errors.Is(err, nl.ErrMalformed):
			r.m.malformed.Inc()
			if throttled(&r.lastLog) {
				r.log.Warn("malformed NFLOG datagram (repeats are counted in go_pmtud_nflog_malformed_total)", "err", err)
			}
		default:
			r.m.errors.Inc()
			if throttled(&r.lastLog) {
				r.log.Warn("NFLOG read failed (repeats are counted in go_pmtud_error_total)", "err", err)
			}
			time.Sleep(10 * time.Millisecond) // do not spin on a persistent error
		}
	}
}

// dispatch hands a job that holds packets to the workers.
func (r *Relay) dispatch(j *job) {
	if w := r.inline; w != nil {
		w.handle(j)
		r.done(j)
		return
	}
	if r.cfg.Split != SplitPeer {
		r.work <- j
		return
	}
	r.pre.prepare(j)
	if j.empty() {
		r.done(j)
		return
	}
	j.pending.Store(int32(len(r.workers)))
	for _, w := range r.workers {
		w.in <- j
	}
}

// done records a finished job, releases its peer set and returns it to the
// pool.
func (r *Relay) done(j *job) {
	r.m.duration.UpdateDuration(j.start)
	j.set.Store(nil)
	r.free <- j
}

// run is a worker's loop, on an OS thread of its own, pinned to w.cpu if
// set. The thread is never unlocked: it exits with the goroutine, so a
// pinned thread never returns to the Go scheduler.
func (w *worker) run() error {
	runtime.LockOSThread()
	if w.cpu >= 0 {
		var set unix.CPUSet
		set.Set(w.cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			// Keep working unpinned: a wrong CPU list must not stop the
			// relay, but the operator must know.
			w.r.log.Error("cannot pin worker thread", "cpu", w.cpu, "err", err)
		}
	}
	if w.in != nil {
		for j := range w.in {
			w.send(j)
			if j.pending.Add(-1) == 0 {
				w.r.done(j)
			}
		}
		return nil
	}
	for j := range w.r.work {
		w.handle(j)
		w.r.done(j)
	}
	return nil
}

// handle prepares a job and sends it to every peer (SplitBatch). It
// allocates nothing.
func (w *worker) handle(j *job) {
	w.pre.prepare(j)
	if !j.empty() {
		w.send(j)
	}
}

// prepare fills j's lanes (payloads, heads) with what to send for each packet
// of j.batch that passes the checks, and counts the rest. It allocates
// nothing once the job has seen its largest batch.
func (p *preparer) prepare(j *job) {
	r := p.r
	b := j.batch
	j.start = time.Now()
	set := r.acquire(j)
	if p.keys != nil {
		if ks := r.keys.Load(); ks != p.keys {
			if err := p.rekey(ks); err != nil {
				// Not reached: SetKeys checked the keys. Keep sealing with
				// the previous key rather than stop.
				r.m.errors.Inc()
			}
		}
	}
	now := r.dedup.now(j.start)
	var lnow, snow int64
	if r.limit != nil {
		lnow = r.limit.now(j.start)
	}
	if r.srcLimit != nil {
		snow = r.srcLimit.now(j.start)
	}
	limited := r.limit != nil || r.srcLimit != nil
	r.m.recv.Add(len(b.Packets))
	if b.Lost > 0 {
		r.m.lost.AddInt64(int64(b.Lost))
	}
	j.lanes[fam4].reset()
	j.lanes[fam6].reset()
	sealed := 0 // headers sealed into j.hdrs
	for i := range b.Packets {
		pkt := &b.Packets[i]
		if pkt.InIfindex != 0 && pkt.InIfindex == r.policy.tunIndex {
			r.m.dropped[DropFromTUN].Inc()
			continue
		}
		if pkt.L2Group() || r.neigh != nil && r.neigh.copyFromPeer(pkt.Ethernet()) {
			r.m.dropped[DropL2Copy].Inc()
			continue
		}
		f, err := wire.Parse(pkt.Payload)
		if err != nil {
			if we, ok := err.(wire.Error); ok && we > 0 && we < wire.ErrorCount {
				r.m.dropped[dropReasonOf(we)].Inc()
			} else {
				r.m.errors.Inc()
			}
			continue
		}
		if reason := r.policy.check(&f, set); reason != 0 {
			r.m.dropped[reason].Inc()
			continue
		}
		if set.nodes == 0 {
			r.m.dropped[DropNoPeers].Inc()
			continue
		}
		fam := fam4
		if f.Src.Is6() {
			fam = fam6
		}
		if set.reach[fam] == 0 {
			r.m.dropped[DropNoFamilyPeers].Inc()
			continue
		}
		key := r.dedup.key(f.Src, f.Dst, f.ICMP)
		// With rate limits, an ICMP is remembered only once it is
		// relayed: copies coming back use no budget, and one dropped for
		// a limit may pass when it comes again. The source's budget comes
		// first, so a flooding source does not use up the node's.
		if limited && !r.dedup.contains(key, now) {
			if r.srcLimit != nil && !r.srcLimit.allow(f.Src, snow) {
				r.m.dropped[DropSourceRateLimited].Inc()
				continue
			}
			if r.limit != nil && !r.limit.allow(lnow) {
				r.m.dropped[DropRateLimited].Inc()
				continue
			}
		}
		if r.dedup.seen(key, now) {
			r.m.dropped[DropDuplicate].Inc()
			continue
		}
		scope, targets := set.targets.lookup(&f)
		n := set.reach[fam]
		if scope != ScopeAll {
			n = set.countIn(targets, fam)
		}
		r.m.targeted[scope].Inc()
		r.m.targetedPeers[scope].Add(n)
		if n == 0 {
			continue // the flow's owners are this node alone: it has the ICMP
		}
		// The router's packet (udp, l2), or its ICMP message, re-originated.
		payload := f.Packet
		if r.cfg.Mode == ModeICMP {
			payload = f.ICMP
		}
		l := &j.lanes[fam]
		if scope == ScopeAll {
			l.payloads = append(l.payloads, payload)
		} else {
			l.somePayloads, l.someSets = append(l.somePayloads, payload), append(l.someSets, targets)
		}
		if p.packed {
			continue // sealed in packs once the batch is sorted: see pack
		}
		for t, s := range p.sealers {
			if s == nil || set.spans[fam][t].len() == 0 {
				continue
			}
			head := p.seal(j, &sealed, s, payload)
			if scope == ScopeAll {
				l.heads[t] = append(l.heads[t], head)
			} else {
				l.someHeads[t] = append(l.someHeads[t], head)
			}
		}
	}
	if p.packed {
		for fam := range j.lanes {
			p.pack(j, fam, set, &sealed)
		}
	}
}

// seal seals body with s into the next of j's headers and returns it.
func (p *preparer) seal(j *job, sealed *int, s *wire.Sealer, body []byte) []byte {
	if *sealed == len(j.hdrs) {
		j.hdrs = append(j.hdrs, [wire.EnvelopeLen]byte{}) // a bigger batch than ever: grows once
		j.hdrs = j.hdrs[:cap(j.hdrs)]
	}
	n := s.Seal(&j.hdrs[*sealed], body, j.start)
	*sealed++
	return j.hdrs[*sealed-1][:n]
}

// pack turns the packets the preparer left in lane fam of j into version 3
// datagrams: the packets for every peer into packs of up to
// Config.PackBytes bytes, each targeted packet into a pack of its own (its
// peers are its own), each pack sealed once per transport it takes. The
// packets are copied into the job's pack buffer (fam4's first), which
// grows only for a bigger batch than any before.
func (p *preparer) pack(j *job, fam int, set *peerSet, sealed *int) {
	l := &j.lanes[fam]
	if l.empty() {
		return
	}
	if fam == fam4 || j.lanes[fam4].empty() {
		need := 0
		for f := range j.lanes {
			for _, b := range j.lanes[f].payloads {
				need += 2 + len(b)
			}
			for _, b := range j.lanes[f].somePayloads {
				need += 2 + len(b)
			}
		}
		if cap(j.packBuf) < need {
			j.packBuf = make([]byte, 0, 2*need) // a bigger batch than ever
		}
		j.packBuf = j.packBuf[:0]
	}
	buf := j.packBuf
	limit := p.r.cfg.packBytes()
	seal := func(body []byte, some bool) {
		for t, s := range p.sealers {
			if s == nil || set.spans[fam][t].len() == 0 {
				continue
			}
			if some {
				l.someHeads[t] = append(l.someHeads[t], p.seal(j, sealed, s, body))
			} else {
				l.heads[t] = append(l.heads[t], p.seal(j, sealed, s, body))
			}
		}
	}
	pkts := l.payloads
	l.payloads = l.payloads[:0]
	start := len(buf) // of the pack being filled
	// The packs overwrite the list of packets as they are read: there are
	// never more packs than packets read so far.
	for _, b := range pkts {
		if len(buf) > start && len(buf)-start+2+len(b) > limit {
			seal(buf[start:], false)
			l.payloads = append(l.payloads, buf[start:len(buf):len(buf)])
			start = len(buf)
		}
		buf = wire.AppendPacked(buf, b)
	}
	if len(buf) > start {
		seal(buf[start:], false)
		l.payloads = append(l.payloads, buf[start:len(buf):len(buf)])
		start = len(buf)
	}
	some := l.somePayloads
	l.somePayloads = l.somePayloads[:0]
	for _, b := range some {
		buf = wire.AppendPacked(buf, b)
		seal(buf[start:], true)
		l.somePayloads = append(l.somePayloads, buf[start:len(buf):len(buf)])
		start = len(buf)
	}
	j.packBuf = buf
}

// send fans the job's payloads out to the worker's peers in the job's peer
// set, each lane over its legs, and moves the per-peer tallies into the
// metrics.
func (w *worker) send(j *job) {
	w.use(j.set.Load())
	for f := range j.lanes {
		ln := &j.lanes[f]
		if ln.empty() {
			continue
		}
		for t := range 2 {
			l := &w.legs[f][t]
			if l.fan == nil || l.n == 0 {
				continue
			}
			if len(ln.payloads) > 0 {
				// Packs of one size go out segmented: a message per peer.
				if s, ok := l.fan.(segmenter); !ok || w.r.cfg.Envelope != 3 || !s.SendSegments(ln.heads[t], ln.payloads) {
					l.fan.Send(ln.heads[t], ln.payloads)
				}
			}
			if len(ln.somePayloads) > 0 {
				l.fan.SendSome(ln.someHeads[t], ln.somePayloads, ln.someSets, l.base)
			}
			w.account(l)
		}
	}
}

// segmenter is a sender that can hand the kernel several same-sized
// datagrams per peer at once (UDP segmentation offload).
type segmenter interface {
	SendSegments(heads, payloads [][]byte) bool
}

// account moves a leg's tally into the metrics.
func (w *worker) account(l *leg) {
	r := w.r
	t := l.fan.Tally()
	if r.cfg.Mode == ModeL2 {
		// Frames, to the segment or to peers' link-layer addresses (a
		// broadcast one for a peer not resolved yet): no per-peer counts.
		var sent, errs uint64
		for k := range t.Sent {
			sent, errs = sent+t.Sent[k], errs+t.Errors[k]
		}
		r.m.sent.AddInt64(int64(sent))
		if errs > 0 {
			r.m.sendErrors.Add(errs)
			r.m.errors.AddInt64(int64(errs))
		}
		if t.LastErrno != 0 && throttled(&w.lastLog) {
			r.log.Warn("l2 relay send failed (repeats are counted in go_pmtud_error_total)", "iface", r.cfg.L2Iface, "err", t.LastErrno)
		}
		t.Reset()
		return
	}
	state := w.set.state[l.base : l.base+l.n]
	var total uint64
	for k, st := range state {
		if n := t.Sent[k]; n > 0 {
			st.sent.Add(n)
			total += n
		}
		if n := t.Errors[k]; n > 0 {
			st.errors.Add(n)
			r.m.sendErrors.Add(n)
			r.m.errors.AddInt64(int64(n))
		}
		if n := t.Unreachable[k]; n > 0 {
			st.unreachable.Add(n)
		}
	}
	r.m.sent.AddInt64(int64(total))
	if t.LastErrno != 0 && throttled(&w.lastLog) {
		r.log.Warn("send to peer failed (repeats are counted in go_pmtud_sent_error_peer_total)", "peer", w.set.addrs[l.base+t.LastPeer], "err", t.LastErrno)
	}
	t.Reset()
}

// throttled reports whether a recurring hot-path warning may be logged now:
// at most once per logEvery per caller, whose own timestamp last is, so no
// lock is shared. Callers check it before building the log arguments, which
// would allocate.
func throttled(last *time.Time) bool {
	now := time.Now()
	if now.Sub(*last) < logEvery {
		return false
	}
	*last = now
	return true
}

// Close stops the relay. While Run is active it only stops reading: Run
// then finishes the batches in hand, closes the sockets and returns nil.
// Otherwise it closes everything. It is safe to call more than once and
// from any goroutine.
func (r *Relay) Close() error {
	r.closing.Store(true)
	r.stopping.Store(true)
	if r.running.Load() && r.reader != nil {
		return r.reader.Close()
	}
	return r.teardown()
}

// teardown closes the reader and every socket, once.
func (r *Relay) teardown() error {
	r.closeOnce.Do(func() {
		var err error
		if r.reader != nil {
			err = r.reader.Close()
		}
		if r.neigh != nil {
			err = errors.Join(err, r.neigh.conn.Close())
		}
		r.closeErr = errors.Join(err, r.closeWorkers())
	})
	return r.closeErr
}

func (r *Relay) closeWorkers() error {
	var errs []error
	for _, w := range r.workers {
		errs = append(errs, w.close())
	}
	for _, rv := range r.recvs {
		errs = append(errs, rv.close())
		if rv.w != nil { // after run has returned: it flushes into w
			errs = append(errs, rv.w.Close())
			rv.w = nil
		}
	}
	if r.tun != nil {
		errs = append(errs, r.tun.Close())
	}
	return errors.Join(errs...)
}

// WritePrometheus writes the relay's metrics in the Prometheus text format.
func (r *Relay) WritePrometheus(w io.Writer) { r.m.set.WritePrometheus(w) }

// Stats is a snapshot of a relay's counters.
type Stats struct {
	Received   uint64                // packets read from NFLOG
	Sent       uint64                // copies sent, all peers
	SendErrors uint64                // copies the kernel refused, all peers
	Dropped    map[DropReason]uint64 // packets not replicated, by reason
	Overruns   uint64                // ENOBUFS on the NFLOG socket
	Lost       uint64                // packets the kernel dropped (sequence gaps)
	// Unreachable counts, per peer in force, the ICMP errors (port
	// unreachable: no go-pmtud listening) reported for udp relay copies.
	Unreachable map[netip.Addr]uint64

	// The udp relay's receive side.
	RelayReceived uint64                    // datagrams from peers
	SocketDrops   uint64                    // datagrams the kernel dropped: receive buffer full
	Injected      uint64                    // packets injected through the injection device
	RelayDropped  map[RecvDropReason]uint64 // datagrams not injected, by reason
}

// Stats returns the current counters. It allocates; it is for tests and
// tools, not the hot path.
func (r *Relay) Stats() Stats {
	s := Stats{
		Received:   r.m.recv.Get(),
		Sent:       r.m.sent.Get(),
		SendErrors: r.m.sendErrors.Load(),
		Dropped:    make(map[DropReason]uint64),
		Overruns:   r.m.overruns.Get(),
		Lost:       r.m.lost.Get(),
	}
	set := r.set.Load()
	for k, st := range set.state {
		if n := st.unreachable.Load(); n > 0 {
			if s.Unreachable == nil {
				s.Unreachable = make(map[netip.Addr]uint64)
			}
			s.Unreachable[set.addrs[k]] = n
		}
	}
	for _, d := range DropReasons() {
		if n := r.m.dropped[d].Get(); n > 0 {
			s.Dropped[d] = n
		}
	}
	if r.m.relayRecv != nil {
		s.RelayReceived = r.m.relayRecv.Get()
		s.SocketDrops = r.socketDrops()
		s.Injected = r.m.injected.Get()
		s.RelayDropped = make(map[RecvDropReason]uint64)
		for _, d := range RecvDropReasons() {
			if n := r.m.relayDropped[d].Get(); n > 0 {
				s.RelayDropped[d] = n
			}
		}
	}
	return s
}

// socketDrops returns the datagrams the kernel dropped at the udp relay's
// sockets, all families.
func (r *Relay) socketDrops() uint64 {
	var n uint64
	for _, rv := range r.recvs {
		if rv.l != nil {
			n += rv.l.Drops()
		}
	}
	return n
}

// stuckAfter is how long a batch may be in hand before Health calls the
// relay stuck: far longer than a batch takes (microseconds), or than a
// send waiting on full buffers gives up after (SO_SNDTIMEO and retries).
const stuckAfter = 30 * time.Second

// loopDown records a worker or receiver loop that returned; outside a
// shutdown that means the relay no longer works.
func (r *Relay) loopDown() {
	if !r.stopping.Load() {
		r.loopsDown.Add(1)
	}
}

// Health returns nil while the relay works, or what is wrong: it is not
// running, a worker or receiver loop has stopped, NFLOG reads have failed
// for stuckAfter, a batch has been in hand for stuckAfter (a send is
// stuck), or the udp relay's injection device is gone, down or
// readdressed. An idle relay is healthy. It is for probes: it asks the
// kernel about the injection device and may allocate.
func (r *Relay) Health() error {
	if !r.running.Load() {
		return errors.New("the relay is not running")
	}
	if n := r.loopsDown.Load(); n > 0 {
		return fmt.Errorf("%d relay loops (workers, receiver) have stopped", n)
	}
	now := time.Now()
	if t := r.readErrSince.Load(); t != 0 && now.Sub(time.Unix(0, t)) > stuckAfter && now.Sub(time.Unix(0, r.readErrLast.Load())) < time.Second {
		return fmt.Errorf("NFLOG reads have failed for %v (see go_pmtud_error_total)", now.Sub(time.Unix(0, t)).Round(time.Second))
	}
	for _, j := range r.jobs {
		// set before began: acquire stores began first, so a job seen
		// holding a set has the matching start.
		if j.set.Load() == nil {
			continue
		}
		if t := j.began.Load(); now.Sub(time.Unix(0, t)) > stuckAfter {
			return fmt.Errorf("a batch has been in hand for %v: a send is stuck", now.Sub(time.Unix(0, t)).Round(time.Second))
		}
	}
	if r.tun != nil {
		return r.tun.Up()
	}
	return nil
}

// sameAddrs reports whether a and b are the same slice: a set that only
// changed its targets shares its predecessor's addresses.
func sameAddrs(a, b []netip.Addr) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
