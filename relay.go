package pmtud

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
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
type Relay struct {
	cfg    Config
	log    *slog.Logger
	peers  []netip.Addr
	policy policy
	m      *relayMetrics

	reader *nl.Reader
	fan    *fanout

	batch    *nl.Batch
	payloads [][]byte // views into batch, reused

	lastLog   time.Time
	closeOnce sync.Once
	closeErr  error
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
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	peers := cfg.RemotePeers()
	r := &Relay{
		cfg:      cfg,
		log:      log,
		peers:    peers,
		policy:   newPolicy(&cfg, peers),
		m:        newRelayMetrics(cfg.NodeName, peers),
		batch:    nl.NewBatch(),
		payloads: make([][]byte, 0, 256),
	}
	var err error
	if r.fan, err = newICMPFanout(cfg.Source, cfg.TTL, peers); err != nil {
		return nil, err
	}
	if r.reader, err = nl.Listen(cfg.NFLOG); err != nil {
		r.fan.close()
		return nil, err
	}
	return r, nil
}

// Peers returns the peers that get copies: the configured ones without
// duplicates and without the node's own addresses.
func (r *Relay) Peers() []netip.Addr { return r.peers }

// Run reads, validates and replicates until ctx is done or reading fails
// for good. On cancellation it finishes the batch in hand, closes its
// sockets and returns nil.
func (r *Relay) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { r.reader.Close() })
	defer stop()
	defer r.Close()
	for {
		err := r.reader.Read(r.batch)
		if len(r.batch.Packets) > 0 || r.batch.Lost > 0 {
			r.handle(r.batch)
		}
		switch {
		case err == nil:
		case errors.Is(err, net.ErrClosed):
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("pmtud: NFLOG reader closed: %w", err)
		case errors.Is(err, unix.ENOBUFS):
			// The kernel dropped datagrams because we were slow; sequence
			// gaps count the packets. Keep reading.
			r.m.overruns.Inc()
		case errors.Is(err, nl.ErrMalformed):
			r.m.malformed.Inc()
			r.logf("malformed NFLOG datagram", "err", err)
		default:
			r.m.errors.Inc()
			r.logf("NFLOG read failed", "err", err)
			time.Sleep(10 * time.Millisecond) // do not spin on a persistent error
		}
	}
}

// handle replicates the valid packets of one batch. It allocates nothing.
func (r *Relay) handle(b *nl.Batch) {
	start := time.Now()
	r.m.recv.Add(len(b.Packets))
	if b.Lost > 0 {
		r.m.lost.AddInt64(int64(b.Lost))
	}
	payloads := r.payloads[:0]
	for i := range b.Packets {
		f, err := wire.ParseFragNeeded(b.Packets[i].Payload)
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
		payloads = append(payloads, f.ICMP)
	}
	r.payloads = payloads[:0]
	if len(payloads) > 0 {
		r.send(payloads)
	}
	r.m.duration.UpdateDuration(start)
}

// send fans payloads out and moves the per-peer tallies into the metrics.
func (r *Relay) send(payloads [][]byte) {
	if err := r.fan.send(payloads); err != nil {
		r.m.errors.Inc()
		r.logf("send failed", "err", err)
	}
	var total uint64
	for j := range r.peers {
		if n := r.fan.sent[j]; n > 0 {
			r.m.peerSent[j].AddInt64(int64(n))
			total += n
		}
		if n := r.fan.sendErr[j]; n > 0 {
			r.m.peerErrors[j].AddInt64(int64(n))
			r.m.errors.AddInt64(int64(n))
		}
	}
	r.m.sent.AddInt64(int64(total))
	clear(r.fan.sent)
	clear(r.fan.sendErr)
	if r.fan.lastErrno != 0 {
		r.logf("send to peer failed", "peer", r.peers[r.fan.lastPeer], "err", r.fan.lastErrno)
		r.fan.lastErrno = 0
	}
}

// logf logs a hot-path warning at most once per logEvery.
func (r *Relay) logf(msg string, args ...any) {
	now := time.Now()
	if now.Sub(r.lastLog) < logEvery {
		return
	}
	r.lastLog = now
	r.log.Warn(msg+" (repeats are counted, logged every "+logEvery.String()+")", args...)
}

// Close stops reading and closes the sockets. Run calls it on return; it is
// safe to call more than once and from another goroutine.
func (r *Relay) Close() error {
	r.closeOnce.Do(func() {
		r.closeErr = errors.Join(r.reader.Close(), r.fan.close())
	})
	return r.closeErr
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
	return s
}
