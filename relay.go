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
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// logEvery limits how often a recurring hot-path error is logged; the
// counters carry the exact numbers.
const logEvery = 10 * time.Second

// Relay replicates the frag-needed ICMPs of one NFLOG group to every peer.
// Create it with New, run it with Run.
//
// One goroutine reads NFLOG datagrams into batches from a small pool and
// hands each whole batch to the next free worker; each worker owns a send
// socket and an OS thread (pinned with Config.CPUs), parses, filters and
// fans out its batch, and returns the batch to the pool.
type Relay struct {
	cfg    Config
	log    *slog.Logger
	peers  []netip.Addr
	policy policy
	m      *relayMetrics

	reader  *nl.Reader
	seq     *wire.Sequence // udp relay: one numbering for all workers
	workers []*worker
	tun     *tunDevice     // udp relay only
	recv    *receiver      // udp relay only
	free    chan *nl.Batch // batches ready to be read into
	work    chan *nl.Batch // batches ready to be handled

	lastLog   time.Time // of the reader's warnings
	dedup     *dedup
	closing   atomic.Bool // Close was called: a closed reader is no failure
	running   atomic.Bool // Run is active: it tears down, Close only stops it
	closeOnce sync.Once
	closeErr  error
}

// worker handles whole batches with its own send socket.
type worker struct {
	r        *Relay
	cpu      int // -1: not pinned
	fan      *fanout
	payloads [][]byte // views into the batch in hand, reused
	lastLog  time.Time

	// udp relay only: the envelope header of each payload, sealed once
	// and sent to every peer.
	sealer *wire.Sealer
	hdrs   [][wire.EnvelopeLen]byte
	heads  [][]byte // views into hdrs, reused
}

// New validates cfg and opens the NFLOG subscription and the send socket,
// in the network namespace of the calling thread. The caller must Run or
// Close the Relay.
func New(cfg Config, log *slog.Logger) (*Relay, error) {
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
	peers := cfg.RemotePeers()
	n := max(cfg.Workers, 1)
	r := &Relay{
		cfg:    cfg,
		log:    log,
		peers:  peers,
		policy: newPolicy(&cfg, peers),
		dedup:  newDedup(cfg.DedupWindow),
		m:      newRelayMetrics(cfg.NodeName, cfg.Mode, peers),
		// Two batches per worker keep every worker busy while the reader
		// fills the next one; one more is in the reader's hands.
		free: make(chan *nl.Batch, 2*n+1),
		work: make(chan *nl.Batch, 2*n+1),
	}
	for range cap(r.free) {
		r.free <- nl.NewBatch()
	}
	if cfg.Mode == ModeUDP {
		r.seq = wire.NewSequence(time.Now())
		if err := r.openUDP(); err != nil {
			r.closeWorkers()
			return nil, err
		}
	}
	for i := range n {
		w, err := r.newWorker(i)
		if err != nil {
			r.closeWorkers()
			return nil, err
		}
		r.workers = append(r.workers, w)
	}
	var err error
	if r.reader, err = nl.Listen(cfg.NFLOG); err != nil {
		r.closeWorkers()
		return nil, err
	}
	return r, nil
}

// newWorker opens worker i's send socket.
func (r *Relay) newWorker(i int) (*worker, error) {
	c := &r.cfg
	w := &worker{r: r, cpu: -1, payloads: make([][]byte, 0, 256)}
	if len(c.CPUs) > 0 {
		w.cpu = c.CPUs[i%len(c.CPUs)]
	}
	var err error
	if c.Mode == ModeICMP {
		w.fan, err = newICMPFanout(c.Source, c.TTL, r.peers)
		return w, err
	}
	var key *wire.Key
	if len(c.Keys) > 0 {
		key = &c.Keys[0]
	}
	if w.sealer, err = wire.NewSealer(key, r.seq, c.Source); err != nil {
		return nil, fmt.Errorf("pmtud: relay key: %w", err)
	}
	w.hdrs = make([][wire.EnvelopeLen]byte, 256)
	w.heads = make([][]byte, 0, 256)
	w.fan, err = newUDPFanout(c.Source, c.TTL, r.peers, c.RelayPort)
	return w, err
}

// openUDP creates the udp relay's TUN device and receive socket.
func (r *Relay) openUDP() error {
	c := &r.cfg
	opener, err := wire.NewOpener(c.Keys...)
	if err != nil {
		return fmt.Errorf("pmtud: relay keys: %w", err)
	}
	if r.tun, err = openTUN(c.TUNName, c.TUNAddr); err != nil {
		return err
	}
	r.policy.tunIndex = uint32(r.tun.index)
	if r.recv, err = newReceiver(r, c.Source, c.RelayPort, r.tun, opener); err != nil {
		r.tun.close()
		r.tun = nil
		return err
	}
	if len(c.Keys) == 0 {
		r.log.Warn("the udp relay is unauthenticated: datagrams are accepted from the peers' addresses, unverified; give --relay-key-file")
	}
	return nil
}

// Peers returns the peers that get copies: the configured ones without
// duplicates and without the node's own addresses.
func (r *Relay) Peers() []netip.Addr { return r.peers }

// Run reads, validates and replicates until ctx is done or reading fails
// for good. On cancellation it finishes the batches in hand, closes its
// sockets and returns nil.
func (r *Relay) Run(ctx context.Context) error {
	r.running.Store(true)
	stop := context.AfterFunc(ctx, func() { r.reader.Close() })
	defer stop()
	defer r.teardown() // after every worker and the receiver have stopped
	defer r.running.Store(false)
	if r.closing.Load() {
		return nil
	}

	errc := make(chan error, len(r.workers)+1)
	var wg sync.WaitGroup
	for _, w := range r.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- w.run()
		}()
	}
	if r.recv != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- r.recv.run()
		}()
	}
	err := r.read(ctx)
	close(r.work) // the workers drain what is queued, then stop
	if r.recv != nil {
		r.recv.close() // ends its run
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
		b := <-r.free
		err := r.reader.Read(b)
		if len(b.Packets) > 0 || b.Lost > 0 {
			r.work <- b
		} else {
			r.free <- b
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
	for b := range w.r.work {
		w.handle(b)
		w.r.free <- b
	}
	return nil
}

// handle replicates the valid packets of one batch. It allocates nothing.
func (w *worker) handle(b *nl.Batch) {
	r := w.r
	start := time.Now()
	now := r.dedup.now(start)
	r.m.recv.Add(len(b.Packets))
	if b.Lost > 0 {
		r.m.lost.AddInt64(int64(b.Lost))
	}
	payloads, heads := w.payloads[:0], w.heads[:0]
	for i := range b.Packets {
		p := &b.Packets[i]
		if p.InIfindex != 0 && p.InIfindex == r.policy.tunIndex {
			r.m.dropped[DropFromTUN].Inc()
			continue
		}
		f, err := wire.ParseFragNeeded(p.Payload)
		if err != nil {
			if we, ok := err.(wire.Error); ok && we > 0 && we < wire.ErrorCount {
				r.m.dropped[dropReasonOf(we)].Inc()
			} else {
				r.m.errors.Inc()
			}
			continue
		}
		if reason := r.policy.check(&f); reason != 0 {
			r.m.dropped[reason].Inc()
			continue
		}
		if r.dedup.seen(r.dedup.key(f.Src, f.Dst, f.ICMP), now) {
			r.m.dropped[DropDuplicate].Inc()
			continue
		}
		if w.sealer == nil {
			payloads = append(payloads, f.ICMP)
			continue
		}
		k := len(payloads)
		if k == len(w.hdrs) {
			w.hdrs = append(w.hdrs, [wire.EnvelopeLen]byte{}) // a bigger batch than ever: grows once
			w.hdrs = w.hdrs[:cap(w.hdrs)]
		}
		w.sealer.Seal(&w.hdrs[k], f.Packet)
		heads = append(heads, w.hdrs[k][:])
		payloads = append(payloads, f.Packet)
	}
	w.payloads, w.heads = payloads[:0], heads[:0]
	if len(payloads) > 0 {
		if w.sealer == nil {
			heads = nil
		}
		w.send(heads, payloads)
	}
	r.m.duration.UpdateDuration(start)
}

// send fans payloads out and moves the per-peer tallies into the metrics.
func (w *worker) send(heads, payloads [][]byte) {
	r, fan := w.r, w.fan
	fan.send(heads, payloads)
	var total uint64
	for j := range r.peers {
		if n := fan.sent[j]; n > 0 {
			r.m.peerSent[j].AddInt64(int64(n))
			total += n
		}
		if n := fan.sendErr[j]; n > 0 {
			r.m.peerErrors[j].AddInt64(int64(n))
			r.m.errors.AddInt64(int64(n))
		}
	}
	r.m.sent.AddInt64(int64(total))
	clear(fan.sent)
	clear(fan.sendErr)
	if fan.lastErrno != 0 {
		if throttled(&w.lastLog) {
			r.log.Warn("send to peer failed (repeats are counted in go_pmtud_sent_error_peer_total)", "peer", r.peers[fan.lastPeer], "err", fan.lastErrno)
		}
		fan.lastErrno = 0
	}
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
	if r.running.Load() {
		return r.reader.Close()
	}
	return r.teardown()
}

// teardown closes the reader and every socket, once.
func (r *Relay) teardown() error {
	r.closeOnce.Do(func() {
		r.closeErr = errors.Join(r.reader.Close(), r.closeWorkers())
	})
	return r.closeErr
}

func (r *Relay) closeWorkers() error {
	var errs []error
	for _, w := range r.workers {
		errs = append(errs, w.fan.close())
	}
	if r.recv != nil {
		errs = append(errs, r.recv.close())
	}
	if r.tun != nil {
		errs = append(errs, r.tun.close())
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

	// The udp relay's receive side.
	RelayReceived uint64                    // datagrams from peers
	Injected      uint64                    // packets written into the TUN device
	RelayDropped  map[RecvDropReason]uint64 // datagrams not injected, by reason
}

// Stats returns the current counters. It allocates; it is for tests and
// tools, not the hot path.
func (r *Relay) Stats() Stats {
	s := Stats{
		Received: r.m.recv.Get(),
		Sent:     r.m.sent.Get(),
		Dropped:  make(map[DropReason]uint64),
		Overruns: r.m.overruns.Get(),
		Lost:     r.m.lost.Get(),
	}
	for _, c := range r.m.peerErrors {
		s.SendErrors += c.Get()
	}
	for _, d := range DropReasons() {
		if n := r.m.dropped[d].Get(); n > 0 {
			s.Dropped[d] = n
		}
	}
	if r.m.relayRecv != nil {
		s.RelayReceived = r.m.relayRecv.Get()
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
