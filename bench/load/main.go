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
// NFLOG rule of the DaemonSet, with --relay icmp unless -relay udp says
// otherwise. The sink namespace holds the P peer addresses on one veth; an
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
// A rate is held when less than 0.1% of the copies are lost and no more than
// 100 ms of input is still queued when the injection ends (the daemon's
// NFLOG socket buffer holds seconds of input: without the second condition a
// short run would hide a daemon that falls behind). With -sweep the harness doubles, then bisects, the input rate
// for the highest one go-pmtud holds, in short runs, instead of the
// throughput phase.
//
// Run it as root from the module directory:
//
//	sudo go run ./bench/load -peers 16 -rate 50000 -duration 5s
//	sudo go run ./bench/load -peers 1 -rate 300000
//	sudo go run ./bench/load -peers 16 -sweep
//
// Traffic never leaves the namespaces: all addresses lie in 198.18.0.0/15,
// and the namespaces, the daemon and the temporary directory are removed on
// every exit path, Ctrl-C included.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
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
	daemonArgs  []string
	daemonBin   string
}

// Bounds that keep a run short and inside the address plan.
const (
	maxPeers    = 150 // peer i is 198.18.1.(100+i)
	maxDuration = time.Minute
	maxRate     = 5e6
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
	fs.Float64Var(&o.rate, "rate", 50000, "input ICMPs per second to inject")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "length of the throughput and ceiling phases")
	fs.BoolVar(&o.sweep, "sweep", false, "search the highest input rate held (loss < 0.1%, lag < 100ms) instead of the throughput phase")
	fs.DurationVar(&o.sweepStep, "sweep-step", 2*time.Second, "length of one sweep run")
	fs.Float64Var(&o.latRate, "latency-rate", 100, "input ICMPs per second of the latency phase (0 skips it)")
	fs.DurationVar(&o.latDuration, "latency-duration", 2*time.Second, "length of the latency phase")
	fs.IntVar(&o.quote, "quote", 548, "bytes of the original packet each ICMP quotes (548: a Linux router's 576-byte ICMP; 28: RFC 792's minimum)")
	fs.StringVar(&rl, "relay", "icmp", "go-pmtud's --relay: icmp or udp; sets the ceiling's socket and how the sink reads copies")
	fs.StringVar(&daemonArgs, "daemon-args", "", "extra go-pmtud flags, space-separated (e.g. \"--workers 2\")")
	fs.StringVar(&o.daemonBin, "daemon-bin", "", "go-pmtud binary to run (default: build ./cmd/go-pmtud)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.daemonArgs = strings.Fields(daemonArgs)
	var err error
	if o.relay, err = parseRelay(rl); err != nil {
		return o, err
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
	case o.quote < minQuote || o.quote > 1400:
		return o, fmt.Errorf("-quote %d is outside %d..1400", o.quote, minQuote)
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
	t, err := buildTopology(o.peers, dir, cl)
	if err != nil {
		return err
	}
	tmpl, err := newTemplate(o.quote)
	if err != nil {
		return err
	}
	inj, err := newInjector(t.router, nodeUplink, tmpl)
	if err != nil {
		return err
	}
	defer inj.close()

	r := report{opts: o}
	if r.busy, err = cpuBusy(time.Second); err != nil {
		return err
	}
	if r.busy > 0.1 {
		progress("warning: the machine is %.0f%% busy before the run: the figures will be low", 100*r.busy)
	}
	progress("ceiling: sendmmsg to %d peers flat out for %v", o.peers, o.duration)
	if r.ceiling, err = measureCeiling(t, o.relay, o.relay.payload(tmpl.pkt), o.duration); err != nil {
		return err
	}

	progress("starting go-pmtud in %s", t.node.Name())
	d, err := startDaemon(bin, t, append(o.relay.daemonFlags(), o.daemonArgs...), dir)
	if err != nil {
		return err
	}
	cl.add(func() { d.stop() })

	if o.sweep {
		if r.sweep, err = sweepRates(t, inj, d, o, r.ceiling.rate); err != nil {
			return err
		}
	} else {
		progress("throughput: %.0f ICMP/s for %v", o.rate, o.duration)
		if r.load, err = measureLoad(t, inj, d, o.rate, o.duration); err != nil {
			return err
		}
	}
	if o.latRate > 0 {
		// A failure here still leaves the throughput figures worth printing.
		progress("latency: %.0f ICMP/s for %v", o.latRate, o.latDuration)
		r.latency, r.latencyErr = measureLatency(t, inj, o.relay, o.latRate, o.latDuration)
	}
	if r.maxRSS, err = d.maxRSS(); err != nil {
		return err
	}
	if err := d.stop(); err != nil {
		return err
	}
	r.print(os.Stdout)
	return r.latencyErr
}
