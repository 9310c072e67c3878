// Command load measures how many "fragmentation needed" ICMPs go-pmtud
// replicates per second, in network namespaces it creates and deletes again:
//
//	router ──(198.18.0.0/24)── node: go-pmtud ──(198.18.1.0/24)── sink: P peer addresses
//	injector (raw socket)        NFLOG group 33    raw ICMP socket    nft ingress counter, drop
//
// The router namespace injects prebuilt frag-needed ICMPs (from 198.19.255.1,
// outside every network the daemon ignores) at a set rate with sendmmsg over
// an IP_HDRINCL raw socket; every one differs in the quoted TCP source port
// and sequence number. The node namespace runs the real go-pmtud binary
// (built with CGO_ENABLED=0 into a temporary directory) behind the iptables
// NFLOG rule of the DaemonSet, with --relay icmp unless -relay udp or
// -relay l2 says otherwise. With -relay l2 the daemon broadcasts one frame
// per ICMP on the node's eth0 (--l2-dest broadcast), so the sink counts one
// copy per ICMP, not P, and the ceiling is an AF_PACKET socket sending
// broadcast frames flat out; there is no latency phase. The sink namespace holds the P peer addresses on one veth; an
// nft counter on its ingress hook counts the copies and drops them before
// the IP stack, so the sink costs its sender next to nothing.
//
// One run measures, on the same namespaces:
//   - the ceiling: with the daemon stopped, a plain loop in the node namespace
//     sends the daemon's payload for one ICMP to the P peers flat out over one
//     socket of the daemon's kind (raw ICMP, or UDP for -relay udp), 1024
//     messages per sendmmsg;
//   - throughput: input ICMP/s injected, ICMPs the daemon received (its
//     /metrics), copies/s arriving at the sink, loss = 1 - arrived/(injected*P),
//     the ratio to the ceiling, daemon CPU seconds (utime+stime from
//     /proc/<pid>/stat) per million copies and its peak RSS (VmHWM);
//   - latency at a low rate: injection time to arrival at a socket in the
//     sink, matched by the quoted sequence number, as p50/p99/max.
//
// On veth the node's receive path (routing, the NFLOG rule, local delivery
// of the ICMP) runs in the injector's softirq, on the injector's CPU, so at
// P=1 the injector runs out of CPU before the daemon does. -drop-logged
// drops the injected ICMPs in the node right after the NFLOG rule has
// logged them; the daemon's work is the same, the packet source is cheaper
// (measured about an eighth less injector CPU per ICMP: docs/performance.md).
//
// Each run also prints "per core": the copies per CPU-second the daemon
// would send at the CPU cost it showed, beside the ceiling's. It is a
// projection, not a measurement; it tells how far an injector-limited run
// is from the daemon's own limit.
//
// A rate is held when less than 0.1% of the copies are lost and no more than
// 100 ms of input is still queued when the injection ends (the daemon's
// NFLOG socket buffer holds seconds of input: without the second condition a
// short run would hide a daemon that falls behind). With -sweep the harness doubles, then bisects, the input rate
// for the highest one go-pmtud holds, in short runs, instead of the
// throughput phase.
//
// With -swap-every DURATION the daemon takes --peers-file instead of
// --peers: DIR/peers in a directory laid out as the kubelet lays out a
// mounted ConfigMap (DIR/peers -> ..data/peers, ..data -> a timestamped
// directory). While each throughput or sweep run injects, a goroutine
// updates it the kubelet's way every DURATION (a new timestamped
// directory, a symlink ..data_tmp to it renamed over ..data), alternating
// between the P peers and the same with the last one replaced by a spare
// address the sink also holds (198.18.1.(100+P)). The sets differ by one
// peer, so the daemon applies every swap (go_pmtud_peer_updates_total
// {result="applied"}, reported beside the swaps written), and both count
// alike at the sink, whose counter takes every packet from the node: a run
// with swaps still expects P copies per ICMP. -compare-swap DURATION runs
// the throughput phase (or the sweep) twice on the same daemon and
// namespaces, first without swaps, then with a swap every DURATION, and
// prints both and the ratio of their throughput (within 5 % or not).
//
// With -overload ROUNDS the harness measures degradation under overload on
// one daemon: a sweep finds the held rate H, then each round runs -duration
// at H and -duration at 2×H in turn, so both meet the same machine state,
// and prints the copies/s delivered at 2×H against H's of the same round,
// and for every run the NFLOG accounting (logged by the rule, read, counted
// lost, unaccounted). Rounds differ when other processes take CPU: each
// line says how much they took.
//
// With -nflog-ceiling the harness first measures the NFLOG delivery
// ceiling, before the daemon starts: the daemon's own nl.Reader, with the
// daemon's NFLOG defaults, alone in the node, reading and counting the
// logged ICMPs while the injection rate rises by 1.5x from 25,000 ICMP/s
// until it loses more than 0.1 %, lags, or the injector falls short. Each
// run then also prints its ICMP/s against that ceiling.
//
// Every injected ICMP quotes its own TCP sequence number, so no two are
// alike and the daemon's dedup window (1 s by default) drops none of them:
// the runs measure the fan-out, not dedup, at any rate.
//
// With -receive the harness measures the udp relay's receive side instead:
//
//	sink: peer 198.18.1.100 ──(198.18.1.0/24)──► node: go-pmtud --relay udp ──► TUN pmtud0 ──► 198.18.100.1 on lo
//	UDP socket, sendmmsg        relay port 2734      recvmmsg, verify, inject     nft counters
//
// The sink namespace plays the daemon's only peer (--peers 198.18.1.100).
// It sends relay datagrams at -rate per second to the node's relay address
// (its --iface address, 198.18.1.2:2734) with sendmmsg over a UDP socket
// bound to the peer address. Each is an envelope sealed with a random key
// that the harness writes to its temporary directory (the daemon's
// --relay-key-file), followed by a frag-needed for 198.18.100.1, an address
// on the node's lo, that quotes a distinct TCP source port and sequence
// number (the daemon drops repeats within its dedup window). The datagrams
// are sealed ahead of each run, with increasing sequence numbers, and sent
// in order, so the daemon's replay window accepts each once. nft counters
// in the node count the packets arriving through the TUN device
// (prerouting, the output of a run) and those delivered locally (input).
// The NFLOG rule logs the injected packets back to the daemon, which drops
// them as from_tun, as on a real node; the sink counts anything the daemon
// sends the peer. A run reports datagrams/s sent, injected/s by the nft
// counter and by the daemon's go_pmtud_relay_injected_total, loss, the
// daemon's drops by reason, its CPU seconds per million injected packets
// and its peak RSS; -sweep searches the highest rate held as above. There
// is no ceiling or latency phase. The sender shares the machine with the
// daemon: the node's UDP receive runs in its softirqs, on its CPU. With
// -receive-pack N the peer packs N packets into each datagram (version 3
// envelopes, as --relay-envelope 3 sends them); -rate stays in datagrams,
// and packs beyond a 1500-byte path get a 9000-byte segment.
//
// Run it as root from the module directory:
//
//	sudo go run ./bench/load -peers 16 -rate 50000 -duration 5s
//	sudo go run ./bench/load -peers 1 -rate 300000 -drop-logged
//	sudo go run ./bench/load -peers 16 -sweep
//	sudo go run ./bench/load -peers 16 -rate 12000 -duration 5s -compare-swap 100ms
//	sudo go run ./bench/load -peers 16 -sweep -swap-every 100ms
//	sudo go run ./bench/load -receive -rate 50000 -duration 5s
//	sudo go run ./bench/load -receive -sweep
//	sudo go run ./bench/load -receive -rate 2667 -receive-pack 15 -exclude-tun
//	sudo go run ./bench/load -peers 16 -relay l2 -sweep -latency-rate 0 -nflog-ceiling
//	sudo go run ./bench/load -peers 16 -quote 28 -latency-rate 0 -overload 5 \
//	    -daemon-args "--workers 1 --rate-limit 0 --source-rate-limit 0"
//
// Traffic never leaves the namespaces: all addresses lie in 198.18.0.0/15,
// and the namespaces, the daemon and the temporary directory are removed on
// every exit path, Ctrl-C included.
package main

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// options are the command line.
type options struct {
	peers       int
	rate        float64
	duration    time.Duration
	sweep       bool
	sweepStep   time.Duration
	latRate     float64
	latDuration time.Duration
	quote       int
	relay       relay
	receive     bool
	daemonArgs  []string
	daemonBin   string
	dropLogged  bool
	excludeTUN  bool
	// receivePack is the packets per datagram the receive mode's peer
	// sends: 1, version 2 envelopes; more, version 3 packs.
	receivePack int
	// nflogCeiling measures the NFLOG delivery ceiling before the daemon
	// starts.
	nflogCeiling bool
	// swapEvery swaps the daemon's peers file during every run;
	// compareSwap measures twice, without swaps and with a swap every
	// compareSwap. 0 is off.
	swapEvery   time.Duration
	compareSwap time.Duration
	// overload is the rounds of the overload measurement (0: off).
	overload int
}

// swapInterval returns the interval of the peers-file swaps, 0 if the
// daemon takes --peers.
func (o options) swapInterval() time.Duration { return max(o.swapEvery, o.compareSwap) }

// Bounds that keep a run short and inside the address plan.
const (
	maxPeers    = 150 // peer i is 198.18.1.(100+i)
	maxDuration = time.Minute
	maxRate     = 5e6
	// minSwapInterval bounds -swap-every: each swap writes a directory
	// and renames a symlink, and the daemon re-reads the file.
	minSwapInterval = time.Millisecond
)

func main() {
	o, err := parseOptions(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(2)
	}
	var cl cleanups
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "load: %v: cleaning up\n", s)
		cl.run()
		os.Exit(130)
	}()
	err = run(o, &cl)
	cl.run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

func parseOptions(args []string) (options, error) {
	var o options
	var daemonArgs, rl string
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.IntVar(&o.peers, "peers", 16, fmt.Sprintf("number of peers P, 1..%d", maxPeers))
	fs.Float64Var(&o.rate, "rate", 50000, "input ICMPs per second to inject (with -receive: relay datagrams per second)")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "length of the throughput and ceiling phases")
	fs.BoolVar(&o.sweep, "sweep", false, "search the highest input rate held (loss < 0.1%, lag < 100ms) instead of the throughput phase")
	fs.DurationVar(&o.sweepStep, "sweep-step", 2*time.Second, "length of one sweep run")
	fs.Float64Var(&o.latRate, "latency-rate", 100, "input ICMPs per second of the latency phase (0 skips it)")
	fs.DurationVar(&o.latDuration, "latency-duration", 2*time.Second, "length of the latency phase")
	fs.IntVar(&o.quote, "quote", 548, "bytes of the original packet each ICMP quotes (548: a Linux router's 576-byte ICMP; 28: RFC 792's minimum)")
	fs.StringVar(&rl, "relay", "icmp", "go-pmtud's --relay: icmp or udp; sets the ceiling's socket and how the sink reads copies")
	fs.BoolVar(&o.receive, "receive", false, "measure the udp relay's receive side instead: a peer sends sealed relay datagrams to the node's go-pmtud at -rate datagrams/s (-peers, -relay and the latency phase do not apply)")
	fs.StringVar(&daemonArgs, "daemon-args", "", "extra go-pmtud flags, space-separated (e.g. \"--workers 2\")")
	fs.StringVar(&o.daemonBin, "daemon-bin", "", "go-pmtud binary to run (default: build ./cmd/go-pmtud)")
	fs.BoolVar(&o.nflogCeiling, "nflog-ceiling", false, "before the daemon starts, sweep the input rate up by 1.5x from 25,000 ICMP/s with a plain NFLOG reader (nl.Reader, the daemon's defaults) in its place: the NFLOG delivery ceiling, and each run's ICMP/s against it")
	fs.BoolVar(&o.excludeTUN, "exclude-tun", false, "with -receive: accept packets arriving on the daemon's TUN device before the NFLOG rule (as --manage-rules nftables does), so the packets it injects are not logged a second time")
	fs.IntVar(&o.receivePack, "receive-pack", 1, "with -receive: packets per datagram, 1..15: 1 sends version 2 envelopes, more version 3 packs as a peer with --relay-envelope 3 does (above 2 the node's segment gets MTU 9000)")
	fs.BoolVar(&o.dropLogged, "drop-logged", false, "drop the injected ICMPs in the node right after the NFLOG rule, so the node's kernel does not route and deliver them: a cheaper packet source for the daemon (the injector's CPU pays for the node's receive path)")
	fs.DurationVar(&o.swapEvery, "swap-every", 0, "start go-pmtud with --peers-file in a ConfigMap-style directory and, during each run, swap the file the kubelet's way every DURATION between the P peers and the same with the last replaced by a spare address the sink holds (0: off, --peers)")
	fs.IntVar(&o.overload, "overload", 0, "after a sweep for the held rate H on the same daemon, ROUNDS rounds of -duration at H then at 2×H: delivered copies/s at 2×H against H in the same round, and the NFLOG accounting of every run (0: off)")
	fs.DurationVar(&o.compareSwap, "compare-swap", 0, "measure the run (or sweep) twice on the same daemon, without swaps and with a swap every DURATION as -swap-every does, and print both and their ratio (0: off)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.daemonArgs = strings.Fields(daemonArgs)
	var err error
	if o.relay, err = parseRelay(rl); err != nil {
		return o, err
	}
	if o.receive {
		if err := receiveOptions(fs, &o); err != nil {
			return o, err
		}
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.peers < 1 || o.peers > maxPeers:
		return o, fmt.Errorf("-peers %d is outside 1..%d", o.peers, maxPeers)
	case o.rate <= 0 || o.rate > maxRate:
		return o, fmt.Errorf("-rate %v is outside (0, %v]", o.rate, maxRate)
	case o.latRate < 0 || o.latRate > 10000:
		return o, fmt.Errorf("-latency-rate %v is outside [0, 10000]", o.latRate)
	case o.relay == relayL2 && o.latRate > 0:
		return o, errors.New("-relay l2: the latency phase reads copies from the sink's sockets, and a broadcast frame's packet is addressed to the node: give -latency-rate 0")
	case o.quote < minQuote || o.quote > 1400:
		return o, fmt.Errorf("-quote %d is outside %d..1400", o.quote, minQuote)
	case o.swapEvery != 0 && o.compareSwap != 0:
		return o, errors.New("give -swap-every or -compare-swap, not both")
	case o.overload < 0 || o.overload > 20:
		return o, fmt.Errorf("-overload %d is outside 0..20", o.overload)
	case o.receivePack < 1 || o.receivePack > 15:
		return o, fmt.Errorf("-receive-pack %d is outside 1..15", o.receivePack)
	case o.receivePack > 1 && !o.receive:
		return o, errors.New("-receive-pack applies to -receive only")
	case o.nflogCeiling && o.receive:
		return o, errors.New("-nflog-ceiling measures the forward path: not with -receive")
	case o.overload > 0 && (o.sweep || o.compareSwap != 0 || o.receive):
		return o, errors.New("-overload runs its own sweep: give it without -sweep, -compare-swap and -receive")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"-swap-every", o.swapEvery}, {"-compare-swap", o.compareSwap}} {
		if d.v != 0 && (d.v < minSwapInterval || d.v > maxDuration) {
			return o, fmt.Errorf("%s %v is outside [%v, %v]", d.name, d.v, minSwapInterval, maxDuration)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"-duration", o.duration}, {"-sweep-step", o.sweepStep}, {"-latency-duration", o.latDuration}} {
		if d.v < 100*time.Millisecond || d.v > maxDuration {
			return o, fmt.Errorf("%s %v is outside [100ms, %v]", d.name, d.v, maxDuration)
		}
	}
	return o, nil
}

// receiveOptions rejects the flags that do not apply to -receive, set
// explicitly, and sets the receive mode's fixed scene: one peer, the udp
// relay, no latency phase.
func receiveOptions(fs *flag.FlagSet, o *options) error {
	var err error
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "peers", "relay", "latency-rate", "latency-duration", "drop-logged", "swap-every", "compare-swap":
			if err == nil {
				err = fmt.Errorf("-%s does not apply to -receive", f.Name)
			}
		}
	})
	o.peers, o.relay, o.latRate = 1, relayUDP, 0
	return err
}

// cleanups is a stack of teardown functions run once, in reverse order,
// by whichever comes first: the end of run or a signal.
type cleanups struct {
	mu   sync.Mutex
	fns  []func()
	done bool
}

// add registers fn; it runs at once if the stack has already run.
func (c *cleanups) add(fn func()) {
	c.mu.Lock()
	done := c.done
	if !done {
		c.fns = append(c.fns, fn)
	}
	c.mu.Unlock()
	if done {
		fn()
	}
}

// run runs the registered functions, last first, once.
func (c *cleanups) run() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = true
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
	c.fns = nil
}

// progress reports what the harness is doing, on stderr; the report goes to
// stdout.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "load: "+format+"\n", args...)
}

// run builds the scene, measures, tears the daemon down and prints the
// report.
func run(o options, cl *cleanups) error {
	dir, err := os.MkdirTemp("", "pmtud-load-")
	if err != nil {
		return fmt.Errorf("create temporary directory: %w", err)
	}
	cl.add(func() { os.RemoveAll(dir) })

	bin := o.daemonBin
	if bin == "" {
		progress("building go-pmtud")
		if bin, err = buildDaemon(dir); err != nil {
			return err
		}
	}
	progress("building namespaces: router, node, sink with %d peer addresses", o.peers)
	t, err := buildTopology(o.peers, o.swapInterval() > 0, o.dropLogged, dir, cl)
	if err != nil {
		return err
	}
	r := report{opts: o}
	if r.busy, err = cpuBusy(time.Second); err != nil {
		return err
	}
	if r.busy > 0.1 {
		progress("warning: the machine is %.0f%% busy before the run: the figures will be low", 100*r.busy)
	}
	if o.receive {
		if o.excludeTUN {
			// An ACCEPT in raw PREROUTING ends the table's traversal: the
			// NFLOG rule below never sees what the daemon injects.
			if _, err := t.node.Run("iptables", "-t", "raw", "-I", "PREROUTING", "1", "-i", tunName, "-j", "ACCEPT"); err != nil {
				return err
			}
		}
		err = runReceive(&r, t, bin, dir, cl)
	} else {
		err = runForward(&r, t, bin, dir, cl)
	}
	if err != nil {
		return err
	}
	r.print(os.Stdout)
	return r.latencyErr
}

// runForward measures replication: the ceiling, then the throughput run or
// the sweep, then the latency phase, into r.
func runForward(r *report, t *topology, bin, dir string, cl *cleanups) error {
	o := r.opts
	tmpl, err := newTemplate(o.quote, nodeUplink)
	if err != nil {
		return err
	}
	inj, err := newInjector(t.router, nodeUplink, tmpl)
	if err != nil {
		return err
	}
	defer inj.close()

	progress("ceiling: sendmmsg to %d peers flat out for %v", o.peers, o.duration)
	if r.ceiling, err = measureCeiling(t, o.relay, o.relay.payload(tmpl.pkt), o.duration); err != nil {
		return err
	}

	if o.nflogCeiling {
		c, err := measureNFLOGCeiling(t, inj, o, nflogCeilingStart)
		if err != nil {
			return err
		}
		r.nflog = &c
	}

	var cm *configMap
	peersFile := ""
	if o.swapInterval() > 0 {
		if cm, err = newConfigMap(filepath.Join(dir, "peers"), peerList(t.peers)); err != nil {
			return err
		}
		peersFile = cm.path()
	}
	progress("starting go-pmtud in %s", t.node.Name())
	d, err := startDaemon(bin, t, peersFile, append(o.relay.daemonFlags(), o.daemonArgs...), dir)
	if err != nil {
		return err
	}
	cl.add(func() { d.stop() })

	p := forwardPath(t, inj, o.relay)
	swapped := p
	if cm != nil {
		swapped.swap = newSwapper(cm, t, o.swapInterval())
	}
	switch {
	case o.overload > 0:
		if r.sweep, err = runOverload(p, d, o, r.ceiling); err != nil {
			return err
		}
	case o.compareSwap > 0:
		progress("compare: without swaps")
		if r.load, r.sweep, err = measureForward(p, d, o, r.ceiling); err != nil {
			return err
		}
		progress("compare: with a swap of the peers file every %v", o.compareSwap)
		r.swapped = new(outcome)
		if r.swapped.load, r.swapped.sweep, err = measureForward(swapped, d, o, r.ceiling); err != nil {
			return err
		}
	default:
		if r.load, r.sweep, err = measureForward(swapped, d, o, r.ceiling); err != nil {
			return err
		}
	}
	if o.latRate > 0 {
		// A failure here still leaves the throughput figures worth printing.
		progress("latency: %.0f ICMP/s for %v", o.latRate, o.latDuration)
		r.latency, r.latencyErr = measureLatency(t, inj, o.relay, o.latRate, o.latDuration)
	}
	return stopDaemon(r, d)
}

// roundK rounds x to thousands.
func roundK(x float64) float64 { return math.Round(x/1000) * 1000 }

// measureForward runs the throughput phase on p, or the sweep with -sweep.
func measureForward(p path, d *daemon, o options, c ceiling) (l load, s sweep, err error) {
	if o.sweep {
		start := max(1000, roundK(c.rate/float64(o.peers)/4))
		s, err = sweepRates(p, d, o, start)
		return l, s, err
	}
	progress("throughput: %.0f ICMP/s for %v%s", o.rate, o.duration, swapNote(p.swap))
	l, err = measureLoad(p, d, o.rate, o.duration)
	return l, s, err
}

// receiveSweepStart is the first rate of a -receive sweep, in datagrams
// per second.
const receiveSweepStart = 25000

// runReceive measures the udp relay's receive side: the throughput run or
// the sweep, into r.
func runReceive(r *report, t *topology, bin, dir string, cl *cleanups) error {
	o := r.opts
	key, keyFile, err := writeRelayKey(dir)
	if err != nil {
		return err
	}
	if err := setupReceive(t, dir); err != nil {
		return err
	}
	tmpl, err := newTemplate(o.quote, injectedDst)
	if err != nil {
		return err
	}
	snd, err := newPeerSender(t.sink, tmpl, key, poolSlots(o), o.receivePack)
	if err != nil {
		return err
	}
	defer snd.close()
	r.sender = snd
	if snd.slotLen+28 > 1500 { // IPv4 and UDP headers
		// Packs beyond a 1500-byte path: a 9000-byte one, as between nodes
		// with jumbo frames, so that no datagram is fragmented.
		if err := t.jumbo(); err != nil {
			return err
		}
	}

	progress("starting go-pmtud in %s: udp relay, peer %v", t.node.Name(), senderAddr)
	d, err := startDaemon(bin, t, "", append(receiveDaemonFlags(keyFile), o.daemonArgs...), dir)
	if err != nil {
		return err
	}
	cl.add(func() { d.stop() })

	p := receivePath(t, snd)
	if o.sweep {
		if r.sweep, err = sweepRates(p, d, o, math.Round(receiveSweepStart/float64(o.receivePack))); err != nil {
			return err
		}
	} else {
		progress("receive: %.0f datagrams/s for %v", o.rate, o.duration)
		if r.load, err = measureLoad(p, d, o.rate, o.duration); err != nil {
			return err
		}
	}
	return stopDaemon(r, d)
}

// stopDaemon records the daemon's peak RSS in r and stops it.
func stopDaemon(r *report, d *daemon) error {
	var err error
	if r.maxRSS, err = d.maxRSS(); err != nil {
		return err
	}
	return d.stop()
}
