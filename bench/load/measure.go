package main

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// lossLimit is the loss a held rate stays under: 0.1%.
const lossLimit = 0.001

// lagLimit is the most input a held rate leaves queued when the injection
// ends, in time. Without it a short run would pass while the daemon falls
// behind: its NFLOG socket buffer holds seconds of input, drained after the
// injector stops.
const lagLimit = 100 * time.Millisecond

// path is what a throughput run drives and where it counts the outcome:
// ICMPs injected at the node and copies counted at the sink (forwardPath),
// or relay datagrams sent to the node and packets counted coming out of
// its TUN device (receivePath).
type path struct {
	// unit is the input's unit in progress lines, such as "ICMP/s".
	unit string
	// prepare readies a run's input before the run is timed; may be nil.
	prepare func(rate float64, d time.Duration) error
	// send sends the input at rate for d.
	send func(rate float64, d time.Duration) (injection, error)
	// probe sends one input packet after a run.
	probe func() error
	// count reads the output so far.
	count counter
	// fanout is how many outputs one input packet should give.
	fanout int
	// kernel reads the receive mode's kernel counters; nil elsewhere.
	kernel func() (kernelCounters, error)
	// nflog reads the node's NFLOG rule and socket counters; nil where
	// the input does not go through the rule (the receive mode).
	nflog func() (nflogCounters, error)
	// swap, if not nil, swaps the daemon's peers file while the input is
	// sent (-swap-every, -compare-swap).
	swap *swapper
}

// forwardPath is the replication path: inj injects ICMPs at the node, the
// sink counts the copies to the P peers.
func forwardPath(t *topology, inj *injector, rl relay) path {
	return path{
		unit:   "ICMP/s",
		send:   func(rate float64, d time.Duration) (injection, error) { return inj.run(rate, d, nil) },
		probe:  inj.probe,
		count:  t.sinkCount,
		fanout: rl.fanout(len(t.peers)),
		nflog:  func() (nflogCounters, error) { return readNFLOGCounters(t.node, nflogGroup) },
	}
}

// load is the outcome of one throughput run.
type load struct {
	target  float64        // input rate asked for
	peers   int            // outputs expected per input: P, or 1 for the receive side
	inj     injection      // what the injector (or the peer's sender) sent
	atEnd   uint64         // outputs counted when the injection ended
	arrived uint64         // outputs counted in all, after draining
	daemon  counters       // the daemon's counters, this run only
	dEnd    counters       // the daemon's counters when the injection ended, this run only
	kernel  kernelCounters // the receive mode's kernel counters, this run only
	nflog   nflogCounters  // the node's NFLOG rule and socket counters, this run only
	cpu     cpuSample      // CPU time used during the run
	window  time.Duration  // the run: injection, draining and the probe
	backlog uint64         // packets the kernel dropped from full per-CPU backlogs, machine-wide
	// swapEvery is the interval of the peers-file swaps during the
	// injection, 0 without; swaps is how many were written.
	swapEvery time.Duration
	swaps     uint64
}

// outRate returns the outputs per second counted while the injection ran:
// copies arriving at the sink, or packets injected through the TUN device.
func (l load) outRate() float64 { return float64(l.atEnd) / l.inj.elapsed.Seconds() }

// lag returns how much input, in time at the injected rate, was still
// queued (or lost) when the injection ended.
func (l load) lag() time.Duration {
	behind := float64(l.inj.sent)*float64(l.peers) - float64(l.atEnd)
	if behind <= 0 || l.inj.sent == 0 {
		return 0
	}
	return time.Duration(behind / (l.inj.rate() * float64(l.peers)) * float64(time.Second))
}

// loss returns the fraction of expected outputs (injected × P) that never
// arrived.
func (l load) loss() float64 {
	want := float64(l.inj.sent) * float64(l.peers)
	if want == 0 {
		return 0
	}
	return 1 - float64(l.arrived)/want
}

// cpuPerMillion returns the daemon's CPU seconds per million outputs.
func (l load) cpuPerMillion() float64 {
	if l.arrived == 0 {
		return math.NaN()
	}
	return l.cpu.daemon.Seconds() / float64(l.arrived) * 1e6
}

// injectorLimited reports whether the injector fell short of the target
// by more than 3%.
func (l load) injectorLimited() bool { return l.inj.rate() < 0.97*l.target }

// measureLoad sends p's input at rate for dur, swapping the daemon's peers
// file meanwhile if p says so, waits until the daemon has drained, and
// returns what went in and came out.
func measureLoad(p path, d *daemon, rate float64, dur time.Duration) (load, error) {
	l := load{target: rate, peers: p.fanout}
	if p.prepare != nil {
		if err := p.prepare(rate, dur); err != nil {
			return l, err
		}
	}
	before, err := takeSnapshot(p, d)
	if err != nil {
		return l, err
	}
	var sw *swapping
	if p.swap != nil {
		l.swapEvery = p.swap.every
		sw = p.swap.start()
	}
	l.inj, err = p.send(rate, dur)
	if sw != nil {
		var swErr error
		l.swaps, swErr = sw.stop()
		err = errors.Join(err, swErr)
	}
	if err != nil {
		return l, err
	}
	atEnd, err := p.count()
	if err != nil {
		return l, err
	}
	dEnd, err := d.metrics()
	if err != nil {
		return l, err
	}
	if _, err := settle(p.count, 10*time.Second); err != nil {
		return l, err
	}
	// The sink's counter can stand still while the daemon still has
	// datagrams queued (its threads starved of CPU for a few polls): a
	// snapshot then would find ICMPs neither read nor counted lost.
	read, err := drained(p, d, 10*time.Second)
	if err != nil {
		return l, err
	}
	// The probe counts as injected: it brings the run's NFLOG gaps to light.
	if err := p.probe(); err != nil {
		return l, err
	}
	l.inj.sent++
	if p.nflog != nil {
		if err := probeSeen(d, read, 2*time.Second); err != nil {
			return l, err
		}
	}
	if _, err := settle(p.count, time.Second); err != nil {
		return l, err
	}
	after, err := takeSnapshot(p, d)
	if err != nil {
		return l, err
	}
	l.atEnd = atEnd - before.arrived
	l.arrived = after.arrived - before.arrived
	l.daemon = after.daemon.sub(before.daemon)
	l.dEnd = dEnd.sub(before.daemon)
	l.kernel = after.kernel.sub(before.kernel)
	l.nflog = after.nflog.sub(before.nflog)
	l.cpu = after.cpu.sub(before.cpu)
	l.window = after.at.Sub(before.at)
	l.backlog = after.backlog - before.backlog
	return l, nil
}

// snapshot is the state of every counter a run reads.
type snapshot struct {
	at      time.Time
	arrived uint64
	daemon  counters
	kernel  kernelCounters
	nflog   nflogCounters
	cpu     cpuSample
	backlog uint64
}

// takeSnapshot reads p's output counter (and kernel counters, if any), the
// daemon's metrics, the CPU clocks and the kernel's backlog drops.
func takeSnapshot(p path, d *daemon) (snapshot, error) {
	s := snapshot{at: time.Now()}
	var err error
	if s.arrived, err = p.count(); err != nil {
		return s, err
	}
	if p.kernel != nil {
		if s.kernel, err = p.kernel(); err != nil {
			return s, err
		}
	}
	if s.daemon, err = d.metrics(); err != nil {
		return s, err
	}
	if p.nflog != nil {
		if s.nflog, err = p.nflog(); err != nil {
			return s, err
		}
	}
	if s.cpu, err = sampleCPU(d.pid()); err != nil {
		return s, err
	}
	s.backlog, err = backlogDrops()
	return s, err
}

// backlogDrops returns the packets the kernel dropped because a CPU's input
// backlog was full (netdev_max_backlog), summed over CPUs: the second
// column of /proc/net/softnet_stat. The file is not per namespace.
func backlogDrops() (uint64, error) {
	f, err := os.Open("/proc/net/softnet_stat")
	if err != nil {
		return 0, fmt.Errorf("read softnet_stat: %w", err)
	}
	defer f.Close()
	var sum uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		n, err := strconv.ParseUint(fields[1], 16, 32)
		if err != nil {
			return 0, fmt.Errorf("parse softnet_stat %q: %w", sc.Text(), err)
		}
		sum += n
	}
	return sum, sc.Err()
}

// latency is the outcome of the latency phase.
type latency struct {
	rate     float64
	sent     uint64 // ICMPs injected
	expected uint64 // sent × P
	got      int    // copies matched to a send
	p50, p99 time.Duration
	max      time.Duration
}

// measureLatency injects rate ICMP/s for d while a socket in the sink
// timestamps the copies of relay rl, and returns the distribution of injection to
// arrival. Both times come from this process's monotonic clock.
func measureLatency(t *topology, inj *injector, rl relay, rate float64, d time.Duration) (lat latency, err error) {
	lat.rate = rate
	if err := setSinkDrop(t.sink, false); err != nil {
		return lat, err
	}
	defer func() { err = errors.Join(err, setSinkDrop(t.sink, true)) }()
	rcv, err := startReceiver(t.sink, rl)
	if err != nil {
		return lat, err
	}
	seq0 := inj.seq
	var sentAt []time.Time // index: seq - seq0
	res, err := inj.run(rate, d, func(_ uint32, n int, at time.Time) {
		for range n {
			sentAt = append(sentAt, at)
		}
	})
	if err != nil {
		rcv.close()
		return lat, err
	}
	time.Sleep(200 * time.Millisecond) // longer than any NFLOG batch timeout in use
	if _, err := settle(t.sinkCount, 2*time.Second); err != nil {
		rcv.close()
		return lat, err
	}
	got, err := rcv.close()
	if err != nil {
		return lat, err
	}
	lat.sent = res.sent
	lat.expected = res.sent * uint64(len(t.peers))
	var ds []time.Duration
	for _, a := range got {
		if i := a.seq - seq0; a.seq >= seq0 && int(i) < len(sentAt) {
			ds = append(ds, a.at.Sub(sentAt[i]))
		}
	}
	lat.got = len(ds)
	if len(ds) == 0 {
		return lat, fmt.Errorf("latency: none of %d copies arrived at the sink", lat.expected)
	}
	slices.Sort(ds)
	lat.p50, lat.p99, lat.max = quantile(ds, 0.50), quantile(ds, 0.99), ds[len(ds)-1]
	return lat, nil
}

// quantile returns the q-quantile of sorted ds (nearest rank).
func quantile(ds []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(ds)))) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

// sweep is the outcome of a rate search.
type sweep struct {
	steps   []load
	best    int  // index into steps of the highest rate held, -1 if none
	limited bool // the injector could not go faster than best
}

// held reports whether a run kept up with the rate asked: loss under
// lossLimit, lag under lagLimit.
func held(l load) bool { return l.kept() && !l.injectorLimited() }

// kept reports whether the daemon kept up with what was injected.
func (l load) kept() bool { return l.loss() < lossLimit && l.lag() < lagLimit }

// Bounds of a sweep: its whole length and the precision it stops at.
const (
	sweepBudget    = 80 * time.Second // runs start within it; each takes its step and up to 11 s of draining
	sweepPrecision = 0.02             // stop when the bracket is narrower than 2% of its top
)

// sweepRates searches the highest input rate the daemon holds on p with
// less than lossLimit loss: it doubles from start until a run fails, then
// bisects, each run o.sweepStep long, within sweepBudget.
func sweepRates(p path, d *daemon, o options, start float64) (sweep, error) {
	s := sweep{best: -1}
	deadline := time.Now().Add(sweepBudget)
	try := func(rate float64) (bool, error) {
		progress("sweep: %.0f %s for %v%s", rate, p.unit, o.sweepStep, swapNote(p.swap))
		l, err := measureLoad(p, d, rate, o.sweepStep)
		if err != nil {
			return false, err
		}
		s.steps = append(s.steps, l)
		ok := held(l)
		if ok {
			s.best = len(s.steps) - 1
		}
		if l.injectorLimited() && l.kept() {
			s.best, s.limited = len(s.steps)-1, true
		}
		return ok, nil
	}
	lo, hi := 0.0, math.Inf(1)
	rate := start
	for rate <= maxRate && time.Now().Before(deadline) {
		ok, err := try(rate)
		if err != nil || s.limited {
			return s, err
		}
		if !ok {
			hi = rate
			break
		}
		lo, rate = rate, rate*2
	}
	for !math.IsInf(hi, 1) && hi-lo > sweepPrecision*hi && time.Now().Before(deadline) {
		mid := math.Round((lo + hi) / 2)
		ok, err := try(mid)
		if err != nil || s.limited {
			return s, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return s, nil
}
