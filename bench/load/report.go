package main

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/wire"
)

// report is everything a run measured.
type report struct {
	opts    options
	busy    float64 // the machine's CPU use just before the run, 0..1
	ceiling ceiling
	// nflog is the NFLOG delivery ceiling, with -nflog-ceiling.
	nflog   *nflogCeiling
	load    load
	sweep   sweep
	latency latency
	// latencyErr is why the latency phase failed, if it did.
	latencyErr error
	maxRSS     uint64
	// sender is the receive mode's peer sender, for its datagram size and
	// how many datagrams it sealed in the send loop.
	sender *peerSender
	// swapped is -compare-swap's run with swaps; load and sweep then hold
	// the run without.
	swapped *outcome
}

// outcome is a throughput run or a sweep.
type outcome struct {
	load  load
	sweep sweep
}

// swapTolerance is how far the throughput with swaps may fall below the
// one without for -compare-swap to call it even: 5%.
const swapTolerance = 0.05

// print writes the report, one figure per line, in a fixed format that can
// be pasted into the README.
func (r *report) print(w io.Writer) {
	o := r.opts
	line := func(label, format string, args ...any) {
		fmt.Fprintf(w, "%-19s "+format+"\n", append([]any{label + ":"}, args...)...)
	}
	line("machine", "%s", machine())
	line("machine busy", "%.0f %% of all CPUs before the run (other processes skew every figure)", 100*r.busy)
	if o.receive {
		r.printReceive(line)
		return
	}
	line("scene", "P=%d peers, %d-byte packets (ICMP quoting %d bytes), --relay %s, daemon flags: %s%s",
		o.peers, offQuoted+o.quote, o.quote, o.relay, daemonFlags(o.daemonArgs), dropNote(o.dropLogged))
	line("flows", "every ICMP quotes its own TCP sequence number (source port cycling over 64512): no two alike, the dedup window (default 1 s) never drops one")
	if every := o.swapInterval(); every > 0 {
		line("peers", "--peers-file in a ConfigMap-style directory (..data symlink renamed over by the kubelet's steps); swapped every %v during the injection between the P peers and the same with %v replaced by the spare %v (the sink counts both alike)",
			every, peerAddr(o.peers-1), peerAddr(o.peers))
	}
	c := r.ceiling
	line("ceiling", "%.0f packets/s (plain sendmmsg, 1 %s socket, 1024/call, %.2f s)", c.rate, o.relay.socketKind(), c.elapsed.Seconds())
	line("ceiling CPU", "%.2f s per million packets (the sending thread, kernel included); other processes %.2f s",
		c.cpuPerMillion(), c.others.Seconds())
	if r.nflog != nil {
		r.printNFLOGCeiling(line)
	}
	if r.swapped != nil {
		r.printCompare(line)
	} else if o.sweep || o.overload > 0 {
		r.printSweep(line, r.sweep) // -overload printed its rounds as it went
	} else {
		r.printLoad(line, r.load)
	}
	line("daemon max RSS", "%.1f MiB", float64(r.maxRSS)/(1<<20))
	if r.latencyErr != nil {
		line("latency", "failed: %v", r.latencyErr)
	}
	if l := r.latency; l.got > 0 {
		line("latency", "p50 %.2f ms, p99 %.2f ms, max %.2f ms, injection to arrival (%.0f ICMP/s for %v, %d of %d copies)",
			ms(l.p50.Seconds()), ms(l.p99.Seconds()), ms(l.max.Seconds()), l.rate, o.latDuration, l.got, l.expected)
	}
}

// printLoad writes the figures of one throughput run.
func (r *report) printLoad(line func(string, string, ...any), l load) {
	m := l.daemon
	line("input", "%.0f ICMP/s injected (target %.0f, %d in %.2f s, %d refused)",
		l.inj.rate(), l.target, l.inj.sent, l.inj.elapsed.Seconds(), l.inj.failed)
	line("daemon received", "%.0f ICMP, %.0f not (nflog lost %.0f, overruns %.0f); dropped %.0f, sent %.0f, errors %.0f",
		m.recv, float64(l.inj.sent)-m.recv, m.lost, m.overruns, m.dropped, m.sent, m.errors)
	line("nflog accounting", "%s", nflogNote(l))
	line("replicated", "%.0f packets/s arrived during the injection (%d of %d expected; %d after draining)",
		l.outRate(), l.atEnd, l.inj.sent*uint64(l.peers), l.arrived)
	line("loss", "%.3f %% (lag at the end %.0f ms)", 100*l.loss(), ms(l.lag().Seconds()))
	line("ratio to ceiling", "%.1f %%", 100*l.outRate()/r.ceiling.rate)
	r.printNFLOGRatio(line, l)
	line("daemon CPU", "%.2f s per million replicated packets (%.2f s over %.2f s of injection and draining)",
		l.cpuPerMillion(), l.cpu.daemon.Seconds(), l.window.Seconds())
	r.printPerCore(line, l)
	line("other CPU", "injector %.2f s, other processes %.2f s (should be near 0)",
		l.cpu.self.Seconds(), l.cpu.others().Seconds())
	if l.backlog > 0 {
		line("backlog drops", "%d (netdev_max_backlog overflows, machine-wide)", l.backlog)
	}
	if l.swapEvery > 0 {
		line("peer swaps", "%s", swapsNote(l))
	}
}

// swapsNote says how many peers-file swaps run l made and how many the
// daemon applied.
func swapsNote(l load) string {
	m := l.daemon
	return fmt.Sprintf("%d written (every %v, over %.2f s of injection), %.0f applied by the daemon (go_pmtud_peer_updates_total{result=\"applied\"}; unchanged %.0f, error %.0f)",
		l.swaps, l.swapEvery, l.inj.elapsed.Seconds(), m.peersApplied, m.peersUnchanged, m.peersError)
}

// printCompare writes -compare-swap's two runs (or sweeps), without and
// with swaps, and how they compare.
func (r *report) printCompare(line func(string, string, ...any)) {
	o, w := r.opts, r.swapped
	line("run", "1 of 2: no swaps (the peers file stays as it is)")
	if o.sweep {
		r.printSweep(line, r.sweep)
	} else {
		r.printLoad(line, r.load)
	}
	line("run", "2 of 2: a swap of the peers file every %v", o.compareSwap)
	if o.sweep {
		r.printSweep(line, w.sweep)
	} else {
		r.printLoad(line, w.load)
	}
	if o.sweep {
		without, _, ok1 := r.sweep.result(line, "injector")
		with, _, ok2 := w.sweep.result(line, "injector")
		if !ok1 || !ok2 {
			return
		}
		ratio := with.inj.rate() / without.inj.rate()
		line("swaps vs none", "%.0f vs %.0f ICMP/s held (%.0f vs %.0f packets/s replicated): %.1f %%, %s; swaps at the held rate %s",
			with.inj.rate(), without.inj.rate(), with.outRate(), without.outRate(), 100*ratio, evenVerdict(ratio, r.sweep.limited || w.sweep.limited), swapsNote(with))
		return
	}
	without, with := r.load, w.load
	ratio := with.outRate() / without.outRate()
	line("swaps vs none", "%.0f vs %.0f packets/s replicated during the injection: %.1f %%, %s; loss %.3f %% vs %.3f %% (%s vs %s); daemon CPU %.2f vs %.2f s per million",
		with.outRate(), without.outRate(), 100*ratio, evenVerdict(ratio, false), 100*with.loss(), 100*without.loss(),
		verdict(with, "injector"), verdict(without, "injector"), with.cpuPerMillion(), without.cpuPerMillion())
}

// evenVerdict says whether ratio, throughput with swaps over without, is
// within swapTolerance; limited says the injector bounded a sweep.
func evenVerdict(ratio float64, limited bool) string {
	v := fmt.Sprintf("within %.0f %%", 100*swapTolerance)
	if ratio < 1-swapTolerance {
		v = fmt.Sprintf("NOT within %.0f %%", 100*swapTolerance)
	}
	if limited {
		v += " (injector limited: a lower bound on both)"
	}
	return v
}

// verdict says how a sweep step ended; source names what sent the input.
func verdict(l load, source string) string {
	switch {
	case held(l):
		return "held"
	case l.injectorLimited() && l.kept():
		return source + " limited"
	case l.loss() >= lossLimit:
		return "lost"
	}
	return "fell behind"
}

// result returns the sweep's best step and the prefix its line needs when
// source (the injector, the sender) was the limit, or writes that no rate
// was held and returns false.
func (s sweep) result(line func(string, string, ...any), source string) (load, string, bool) {
	if s.best < 0 {
		line("sweep", "no rate held (loss < %.1f %%, lag < %v)", 100*lossLimit, lagLimit)
		return load{}, "", false
	}
	prefix := ""
	if s.limited {
		prefix = "at least (" + source + " limited) "
	}
	return s.steps[s.best], prefix, true
}

// printSweep writes sweep s's steps and its result.
func (r *report) printSweep(line func(string, string, ...any), s sweep) {
	for _, l := range s.steps {
		swaps := ""
		if l.swapEvery > 0 {
			swaps = fmt.Sprintf(", swaps %d, applied %.0f", l.swaps, l.daemon.peersApplied)
		}
		line("sweep step", "target %7.0f ICMP/s: injected %7.0f/s, arrived %8.0f/s, loss %.3f %%, lag %4.0f ms, nflog lost %.0f, unaccounted %.0f, other CPU %.2f s%s, %s",
			l.target, l.inj.rate(), l.outRate(), 100*l.loss(), ms(l.lag().Seconds()), l.daemon.lost, l.unaccounted(), l.cpu.others().Seconds(), swaps, verdict(l, "injector"))
	}
	b, prefix, ok := s.result(line, "injector")
	if !ok {
		return
	}
	line("sweep", "%s%.0f ICMP/s held (loss < %.1f %%, lag < %v) -> %.0f packets/s replicated (%.1f %% of ceiling), %v runs",
		prefix, b.inj.rate(), 100*lossLimit, lagLimit, b.outRate(), 100*b.outRate()/r.ceiling.rate, r.opts.sweepStep)
	r.printNFLOGRatio(line, b)
	line("daemon CPU", "%.2f s per million replicated packets (at the held rate)", b.cpuPerMillion())
	r.printPerCore(line, b)
}

// printPerCore writes what one core would replicate at the CPU cost of
// run l, beside the ceiling's: a projection that says how far an
// injector-limited run is from the daemon's own limit.
func (r *report) printPerCore(line func(string, string, ...any), l load) {
	c := l.cpuPerMillion()
	if c <= 0 || math.IsInf(c, 0) || math.IsNaN(c) {
		return
	}
	perCore := 1e6 / c // packets per CPU-second
	line("per core", "%.0f packets/s (%.0f ICMP/s) at this CPU cost, %.0f %% of the ceiling's %.0f per CPU-second: a projection, not a measurement",
		perCore, perCore/float64(l.peers), 100*r.ceiling.cpuPerMillion()/c, 1e6/r.ceiling.cpuPerMillion())
}

// dropNote names -drop-logged in the scene line.
func dropNote(on bool) string {
	if on {
		return "; the node drops the injected ICMPs after logging them (-drop-logged)"
	}
	return ""
}

// printReceive writes the report of the receive mode.
func (r *report) printReceive(line func(string, string, ...any)) {
	o, snd := r.opts, r.sender
	version := "version 2 envelope"
	if snd.pack > 1 {
		version = fmt.Sprintf("version 3 envelope packing %d", snd.pack)
	}
	line("scene", "receive side: 1 peer (%v) sends %d-byte datagrams (%d-byte %s x %d-byte frag-needed quoting %d bytes, key id %d) to %v:%d, 1 UDP socket, sendmmsg; daemon flags: %s",
		senderAddr, snd.slotLen, wire.EnvelopeLen, version, len(snd.tmpl.pkt), o.quote, relayKeyID, nodeAddr, relayPort, daemonFlags(o.daemonArgs))
	line("sealing", "%d datagrams sealed ahead of the runs, %d in the send loop (on the sender's CPU)", snd.ahead, snd.inline)
	if o.sweep {
		r.printReceiveSweep(line)
	} else {
		r.printReceiveLoad(line, r.load)
	}
	line("daemon max RSS", "%.1f MiB", float64(r.maxRSS)/(1<<20))
}

// printReceiveLoad writes the figures of one receive run.
func (r *report) printReceiveLoad(line func(string, string, ...any), l load) {
	m, k := l.daemon, l.kernel
	sec := l.inj.elapsed.Seconds()
	line("sent", "%.0f datagrams/s (target %.0f, %d in %.2f s, %d refused)",
		l.inj.rate(), l.target, l.inj.sent, sec, l.inj.failed)
	line("daemon received", "%.0f datagrams, %.0f not (node UDP receive-buffer drops %d); injected %.0f, dropped %.0f (%s), errors %.0f",
		m.relayRecv, float64(l.inj.sent)-m.relayRecv, k.rcvbufErrors, m.injected, m.relayDropped, reasons(m.relayDrops), m.errors)
	line("injected", "%.0f packets/s through %s during the sending (nft: %d of the %d sent; %d after draining; %d delivered locally)",
		l.outRate(), tunName, l.atEnd, l.inj.sent*uint64(l.peers), l.arrived, k.delivered)
	line("injected (daemon)", "%.0f packets/s during the sending (go_pmtud_relay_injected_total: %.0f; %.0f after draining)",
		l.dEnd.injected/sec, l.dEnd.injected, m.injected)
	line("loss", "%.3f %% (lag at the end %.0f ms)", 100*l.loss(), ms(l.lag().Seconds()))
	line("daemon CPU", "%.2f s per million injected packets (%.2f s over %.2f s of sending and draining)",
		l.cpuPerMillion(), l.cpu.daemon.Seconds(), l.window.Seconds())
	line("logged back", "%.0f injected packets came back through NFLOG, %.0f dropped as from_tun; %d packets from the node reached the peer",
		m.recv, m.fromTUN, k.sentBack)
	line("other CPU", "sender %.2f s (the node's UDP receive runs in its softirqs), other processes %.2f s (should be near 0)",
		l.cpu.self.Seconds(), l.cpu.others().Seconds())
	if l.backlog > 0 {
		line("backlog drops", "%d (netdev_max_backlog overflows, machine-wide)", l.backlog)
	}
}

// printReceiveSweep writes the receive sweep's steps and its result.
func (r *report) printReceiveSweep(line func(string, string, ...any)) {
	s := r.sweep
	for _, l := range s.steps {
		line("sweep step", "target %7.0f datagrams/s: sent %7.0f/s, injected %7.0f/s, loss %.3f %%, lag %4.0f ms, rcvbuf drops %d, dropped %.0f, sender CPU %.2f s, other CPU %.2f s, %s",
			l.target, l.inj.rate(), l.outRate(), 100*l.loss(), ms(l.lag().Seconds()), l.kernel.rcvbufErrors,
			l.daemon.relayDropped, l.cpu.self.Seconds(), l.cpu.others().Seconds(), verdict(l, "sender"))
	}
	b, prefix, ok := s.result(line, "sender")
	if !ok {
		return
	}
	line("sweep", "%s%.0f datagrams/s held (loss < %.1f %%, lag < %v) -> %.0f packets/s injected, %v runs",
		prefix, b.inj.rate(), 100*lossLimit, lagLimit, b.outRate(), r.opts.sweepStep)
	line("daemon CPU", "%.2f s per million injected packets (at the held rate)", b.cpuPerMillion())
}

// reasons lists the non-zero counts of drops, by reason, or "none".
func reasons(drops map[string]float64) string {
	var out []string
	for _, r := range slices.Sorted(maps.Keys(drops)) {
		if drops[r] != 0 {
			out = append(out, fmt.Sprintf("%s %.0f", r, drops[r]))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// ms converts seconds to milliseconds.
func ms(s float64) float64 { return s * 1000 }

// daemonFlags describes the flags beyond the harness's own.
func daemonFlags(extra []string) string {
	if len(extra) == 0 {
		return "defaults"
	}
	return strings.Join(extra, " ")
}

// machine describes where the figures come from: CPU, core count, kernel
// and Go version.
func machine() string {
	var u unix.Utsname
	kernel := "unknown kernel"
	if unix.Uname(&u) == nil {
		kernel = "linux " + unix.ByteSliceToString(u.Release[:])
	}
	return fmt.Sprintf("%s, %d CPUs, %s, %s", cpuModel(), runtime.NumCPU(), kernel, runtime.Version())
}

// cpuModel returns the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	for sc := bufio.NewScanner(f); sc.Scan(); {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// printNFLOGCeiling writes the NFLOG delivery ceiling's steps and result.
func (r *report) printNFLOGCeiling(line func(string, string, ...any)) {
	c := r.nflog
	for _, s := range c.steps {
		line("nflog step", "target %7.0f ICMP/s: injected %7.0f/s, read %8.0f, loss %.3f %%, lag %4.0f ms, kernel drops seen %d, reader CPU %.2f us per ICMP, %s",
			s.target, s.inj.rate(), float64(s.read), 100*s.loss(), ms(s.lag().Seconds()), s.lost, float64(s.cpuPerICMP())/1e3, nflogVerdict(s))
	}
	if c.best < 0 {
		line("nflog ceiling", "no rate held (loss < %.1f %%, lag < %v)", 100*lossLimit, lagLimit)
		return
	}
	b := c.steps[c.best]
	prefix := ""
	if c.limited {
		prefix = "at least (injector limited) "
	}
	line("nflog ceiling", "%s%.0f ICMP/s read by a plain nl.Reader with the daemon's NFLOG defaults (loss < %.1f %%, lag < %v), reader thread %.2f us CPU per ICMP",
		prefix, b.inj.rate(), 100*lossLimit, lagLimit, float64(b.cpuPerICMP())/1e3)
}

// nflogVerdict says how a step of the NFLOG ceiling's sweep ended.
func nflogVerdict(s nflogStep) string {
	switch {
	case !s.kept():
		return "not held"
	case s.injectorLimited():
		return "held, injector limited"
	}
	return "held"
}

// printNFLOGRatio writes the ICMP rate of run l against the NFLOG delivery
// ceiling, with -nflog-ceiling.
func (r *report) printNFLOGRatio(line func(string, string, ...any), l load) {
	if r.nflog == nil || r.nflog.rate() == 0 {
		return
	}
	bound := ""
	if r.nflog.limited {
		bound = " (the ceiling ended at the injector's limit: it is a lower bound)"
	}
	line("ratio to nflog", "%.1f %% of the NFLOG delivery ceiling's ICMP/s%s", 100*l.inj.rate()/r.nflog.rate(), bound)
}
