// Command storm is the many-node storm lab: N nodes, each a network
// namespace running the real go-pmtud, on one segment behind a router
// namespace that spreads frag-needed ICMPs for many flows over all of them
// at a set total rate. It finds the highest rate at which every node
// receives every ICMP (loss below -max-loss), counted at each receiving
// kernel by an nftables counter, and reports per-node daemon CPU per ICMP,
// memory, and the time until the flow's node (node 0) has the copy.
//
//	sudo go run ./bench/storm -nodes 8,32,64 -relays icmp,udp-packed,l2
//
// It needs root, iproute2 and nft. Everything lives in namespaces it
// creates (addresses in 198.18.0.0/15) and deletes on every exit path.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/wire"
)

type options struct {
	nodes    []int
	relays   []string
	start    float64       // first total rate, ICMP/s
	step     float64       // rate factor between steps
	duration time.Duration // of each step
	maxLoss  float64
	quote    int // bytes of the dropped packet the ICMP quotes: 548 makes a 576-byte ICMP
}

func main() {
	o := options{}
	var nodes, relays string
	flag.StringVar(&nodes, "nodes", "8,32,64", "cluster sizes")
	flag.StringVar(&relays, "relays", "icmp,udp-packed,l2", "relays: icmp, udp, udp-packed (envelope 3), l2 (broadcast)")
	flag.Float64Var(&o.start, "rate", 500, "first total rate of router ICMPs per second")
	flag.Float64Var(&o.step, "step", 1.5, "factor between the rates of the sweep")
	flag.DurationVar(&o.duration, "duration", 4*time.Second, "length of each rate step")
	flag.Float64Var(&o.maxLoss, "max-loss", 0.001, "largest loss a held rate may show")
	flag.IntVar(&o.quote, "quote", 548, "bytes of the dropped packet each ICMP quotes (548: a 576-byte ICMP, as Linux routers send)")
	flag.Parse()
	for _, f := range strings.Split(nodes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 || n > 200 {
			fmt.Fprintf(os.Stderr, "storm: -nodes: %q is not a cluster size of 2..200\n", f)
			os.Exit(2)
		}
		o.nodes = append(o.nodes, n)
	}
	for _, r := range strings.Split(relays, ",") {
		if _, ok := relayEnv[r]; !ok {
			fmt.Fprintf(os.Stderr, "storm: -relays: unknown relay %q\n", r)
			os.Exit(2)
		}
		o.relays = append(o.relays, r)
	}
	if o.quote < 28 || o.quote > 1400 || o.step <= 1 || o.start <= 0 || o.maxLoss <= 0 {
		fmt.Fprintln(os.Stderr, "storm: -quote must be 28..1400, -step above 1, -rate and -max-loss above 0")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "storm:", err)
		os.Exit(1)
	}
}

// relayEnv is each relay's daemon settings.
var relayEnv = map[string][]string{
	"icmp":       {"PMTUD_RELAY=icmp"},
	"udp":        {"PMTUD_RELAY=udp"},
	"udp-packed": {"PMTUD_RELAY=udp", "PMTUD_RELAY_ENVELOPE=3", "PMTUD_RELAY_PACK_BYTES=8932"},
	"l2":         {"PMTUD_RELAY=l2"},
}

// result is the outcome of one cluster size and relay.
type result struct {
	nodes      int
	relay      string
	held       step // the highest rate held
	heldAny    bool
	firstLoss  step // the first rate that was not
	lossAny    bool
	maxRSS     uint64 // bytes, the largest daemon's peak
	p50, p99   time.Duration
	latSamples int
	// injectorLimited: the sweep ended because the router could not send
	// faster, not because of a loss.
	injectorLimited bool
}

// step is one rate of a sweep.
type step struct {
	rate, sent float64 // offered rate, ICMPs sent
	achieved   float64 // ICMPs sent per second of the step
	delivered  float64 // fraction of N × sent counted at the nodes
	cpuPerICMP time.Duration
	lat        []time.Duration
}

func run(o options) error {
	dir, err := os.MkdirTemp("", "storm")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "go-pmtud")
	build := exec.Command("go", "build", "-o", bin, "github.com/go-pmtud/go-pmtud/cmd/go-pmtud")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w: %s", err, out)
	}
	keys := filepath.Join(dir, "keys")
	if err := os.WriteFile(keys, []byte("1:"+strings.Repeat("5a", 32)+"\n"), 0o600); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	restore, err := roomForNeighbours(slices.Max(o.nodes))
	if err != nil {
		return err
	}
	defer restore()
	var results []result
	for _, n := range o.nodes {
		for _, r := range o.relays {
			res, err := runOne(ctx, o, bin, keys, n, r)
			if err != nil {
				return fmt.Errorf("N=%d %s: %w", n, r, err)
			}
			results = append(results, res)
			report(os.Stdout, o, []result{res}, false)
		}
	}
	fmt.Println()
	report(os.Stdout, o, results, true)
	return nil
}

// roomForNeighbours makes the kernel's neighbour tables large enough for n
// nodes that all talk to each other. The tables are shared by every
// network namespace of the machine, and their limit (gc_thresh3, 1,024 by
// default) is a sysctl of the initial namespace only: 64 nodes need about
// 64 × 66 entries, and past the limit the kernel drops packets to new
// neighbours ("neighbor table overflow"). It raises the limits for the run
// where needed and returns the function that restores them.
func roomForNeighbours(n int) (restore func(), err error) {
	need := 2 * n * (n + 4)
	var undo []func()
	restore = func() {
		for _, u := range slices.Backward(undo) {
			u()
		}
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		for _, k := range []string{"gc_thresh3", "gc_thresh2"} {
			path := "/proc/sys/net/" + fam + "/neigh/default/" + k
			b, err := os.ReadFile(path)
			if err != nil {
				restore()
				return nil, err
			}
			old := strings.TrimSpace(string(b))
			v, _ := strconv.Atoi(old)
			want := need
			if k == "gc_thresh2" {
				want = need / 2
			}
			if v >= want {
				continue
			}
			if err := os.WriteFile(path, []byte(strconv.Itoa(want)), 0o644); err != nil {
				restore()
				return nil, err
			}
			fmt.Fprintf(os.Stderr, "storm: %s raised from %s to %d for the run\n", path, old, want)
			undo = append(undo, func() { os.WriteFile(path, []byte(old), 0o644) })
		}
	}
	return restore, nil
}

// report prints results as a Markdown table.
func report(w *os.File, o options, rs []result, header bool) {
	if header {
		fmt.Fprintf(w, "machine: %d CPUs, %s; %s; %d-byte ICMPs, steps of %v, loss < %.1f %%\n\n",
			runtime.NumCPU(), kernel(), runtime.Version(), 20+8+o.quote, o.duration, o.maxLoss*100)
		fmt.Fprintln(w, "| N | relay | held ICMP/s (every node got every ICMP) | delivered | daemon CPU per ICMP per node | largest daemon RSS | to the flow's node p50 / p99 | first rate not held |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	}
	for _, r := range rs {
		held, cpu, deliv, lat, next := "none", "", "", "", ""
		if r.heldAny {
			held = fmt.Sprintf("%.0f", r.held.achieved)
			cpu = fmt.Sprintf("%.2f µs", float64(r.held.cpuPerICMP.Nanoseconds())/1000)
			deliv = fmt.Sprintf("%.3f %%", r.held.delivered*100)
			if r.latSamples > 0 {
				lat = fmt.Sprintf("%v / %v (%d)", r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), r.latSamples)
			}
		}
		switch {
		case r.lossAny:
			next = fmt.Sprintf("%.0f: %.3f %% delivered", r.firstLoss.achieved, r.firstLoss.delivered*100)
		case r.injectorLimited:
			next = "none: the router's limit"
		}
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %.1f MiB | %s | %s |\n", r.nodes, r.relay, held, deliv, cpu, float64(r.maxRSS)/(1<<20), lat, next)
	}
}

func kernel() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "linux"
	}
	return "Linux " + unix.ByteSliceToString(u.Release[:])
}

// runOne builds an N-node cluster, starts a daemon on every node and sweeps
// the rate up until a step loses more than maxLoss.
func runOne(ctx context.Context, o options, bin, keys string, n int, relay string) (result, error) {
	res := result{nodes: n, relay: relay}
	lab, err := netlab.New("st")
	if err != nil {
		return res, err
	}
	defer lab.Close()
	work, err := os.MkdirTemp("", "storm-run")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(work)
	fmt.Fprintf(os.Stderr, "N=%d %s: building the lab\n", n, relay)
	c, err := netlab.BuildCluster(lab, n, 1400)
	if err != nil {
		return res, err
	}
	var peers []string
	for i := range n {
		peers = append(peers, netlab.NodeAddr(i).String())
	}
	var daemons []*exec.Cmd
	defer func() {
		for _, d := range daemons {
			d.Process.Signal(syscall.SIGTERM)
		}
		for _, d := range daemons {
			d.Wait()
		}
	}()
	for i, node := range c.Nodes {
		// Every frag-needed that reaches the node's kernel, from the router,
		// a peer or the TUN device: each must arrive once.
		rules := "table inet storm {\n chain pre {\n  type filter hook prerouting priority -400\n  icmp type destination-unreachable icmp code frag-needed counter\n }\n}\n"
		rf := filepath.Join(work, fmt.Sprintf("storm%d.nft", i))
		if err := os.WriteFile(rf, []byte(rules), 0o644); err != nil {
			return res, err
		}
		if _, err := node.Run("nft", "-f", rf); err != nil {
			return res, err
		}
		cmd := exec.Command("ip", "netns", "exec", node.Name(), bin)
		cmd.Env = append(os.Environ(), "NODE_NAME="+node.Name(), "PMTUD_PEERS="+strings.Join(peers, ","),
			"PMTUD_IGNORE_NETWORKS=198.18.1.0/24", "PMTUD_RELAY_KEY_FILE="+keys,
			"PMTUD_RATE_LIMIT=0", "PMTUD_SOURCE_RATE_LIMIT=0", "PMTUD_LOG_LEVEL=warn")
		cmd.Env = append(cmd.Env, relayEnv[relay]...)
		logf, err := os.Create(filepath.Join(work, node.Name()+".log"))
		if err != nil {
			return res, err
		}
		defer logf.Close()
		cmd.Stderr = logf
		if err := cmd.Start(); err != nil {
			return res, err
		}
		daemons = append(daemons, cmd)
	}
	for i, node := range c.Nodes {
		if err := waitReady(node, netlab.NodeAddr(i), daemons[i]); err != nil {
			log, _ := os.ReadFile(filepath.Join(work, node.Name()+".log"))
			return res, fmt.Errorf("%s: %w\n%s", node.Name(), err, log)
		}
	}
	tmpl, err := newTemplate(o.quote)
	if err != nil {
		return res, err
	}
	fd, err := rawSocket(c.Router, unix.AF_INET, unix.IPPROTO_RAW)
	if err != nil {
		return res, err
	}
	defer unix.Close(fd)
	probe, err := rawSocket(c.Nodes[0], unix.AF_INET, unix.IPPROTO_ICMP)
	if err != nil {
		return res, err
	}
	defer unix.Close(probe)
	unix.SetsockoptInt(probe, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
	// listen checks for the end of a step this often.
	unix.SetsockoptTimeval(probe, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	seq := uint32(1)
	for rate := o.start; ctx.Err() == nil; rate *= o.step {
		s, err := runStep(o, c, daemons, fd, probe, tmpl, &seq, rate)
		if err != nil {
			return res, err
		}
		fmt.Fprintf(os.Stderr, "N=%d %s: %.0f ICMP/s offered, %.0f sent at %.0f/s, %.3f %% delivered, %.2f µs CPU per ICMP per node\n",
			n, relay, rate, s.sent, s.achieved, s.delivered*100, float64(s.cpuPerICMP.Nanoseconds())/1000)
		if s.achieved < 0.97*rate {
			res.injectorLimited = true
			break // the router cannot offer more: the last held rate stands
		}
		if 1-s.delivered > o.maxLoss {
			describe(c, work)
			res.firstLoss, res.lossAny = s, true
			break
		}
		res.held, res.heldAny = s, true
	}
	for _, d := range daemons {
		if rss, err := peakRSS(d.Process.Pid); err == nil {
			res.maxRSS = max(res.maxRSS, rss)
		}
	}
	if res.heldAny && len(res.held.lat) > 0 {
		l := res.held.lat
		slices.Sort(l)
		res.p50, res.p99, res.latSamples = l[len(l)/2], l[len(l)*99/100], len(l)
	}
	return res, ctx.Err()
}

// describe prints, for a step that lost copies, the relay counters of
// the daemons that sent nothing, and the end of their logs.
func describe(c *netlab.Cluster, work string) {
	if nb, err := c.Router.Run("ip", "neigh", "show", "dev", "eth1"); err == nil {
		fmt.Fprintf(os.Stderr, "  the router's neighbours:\n%s", nb)
	}
	for i, node := range c.Nodes {
		m, err := get(node, netlab.NodeAddr(i), "/metrics")
		if err != nil {
			fmt.Fprintf(os.Stderr, "  %s: %v\n", node.Name(), err)
			continue
		}
		var keep []string
		for _, l := range strings.Split(m, "\n") {
			if strings.HasPrefix(l, "go_pmtud_recv_packets_total") || strings.HasPrefix(l, "go_pmtud_sent_packets_total") ||
				strings.HasPrefix(l, "go_pmtud_dropped_packets_total") && !strings.HasSuffix(l, " 0") ||
				strings.HasPrefix(l, "go_pmtud_nflog_") && !strings.HasSuffix(l, " 0") {
				keep = append(keep, l)
			}
		}
		if slices.ContainsFunc(keep, func(l string) bool {
			return strings.HasPrefix(l, "go_pmtud_sent_packets_total") && strings.HasSuffix(l, " 0")
		}) {
			log, _ := os.ReadFile(filepath.Join(work, node.Name()+".log"))
			fmt.Fprintf(os.Stderr, "  %s sent nothing: %s\n  log: %s\n", node.Name(), strings.Join(keep, "; "), log)
		}
	}
}

// nsClient returns an HTTP client whose connections are made in ns.
func nsClient(ns *netlab.NS) *http.Client {
	return &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, a string) (c net.Conn, err error) {
			err = ns.Do(func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, a)
				return err
			})
			return c, err
		}}}
}

// get fetches path from the daemon's metrics server in ns.
func get(ns *netlab.NS, addr netip.Addr, path string) (string, error) {
	resp, err := nsClient(ns).Get("http://" + net.JoinHostPort(addr.String(), "30040") + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, err = io.Copy(&b, resp.Body)
	return b.String(), err
}

// waitReady polls the daemon's /readyz in its namespace.
func waitReady(ns *netlab.NS, addr netip.Addr, d *exec.Cmd) error {
	client := nsClient(ns)
	url := "http://" + net.JoinHostPort(addr.String(), "30040") + "/readyz"
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if d.ProcessState != nil {
			return errors.New("the daemon exited")
		}
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
	return errors.New("not ready after 20 s")
}

// runStep offers rate ICMPs/s for o.duration, spread round-robin over the
// nodes, and counts what every node's kernel received.
func runStep(o options, c *netlab.Cluster, daemons []*exec.Cmd, fd, probe int, t template, seq *uint32, rate float64) (step, error) {
	s := step{rate: rate}
	n := len(c.Nodes)
	before, err := counts(c)
	if err != nil {
		return s, err
	}
	cpu0, err := cpuOf(daemons)
	if err != nil {
		return s, err
	}
	first := *seq
	total := int(rate * o.duration.Seconds())
	sentAt := make([]time.Time, total)
	lat := make(chan []time.Duration, 1)
	stopProbe := make(chan struct{})
	go func() { lat <- listen(probe, first, sentAt, n, stopProbe) }()
	buf := make([]byte, len(t.pkt))
	start := time.Now()
	for k := range total {
		// Pace: the k-th ICMP leaves at start + k/rate.
		if d := time.Until(start.Add(time.Duration(float64(k) / rate * float64(time.Second)))); d > 0 {
			time.Sleep(d)
		}
		copy(buf, t.pkt)
		t.stamp(buf, *seq)
		sentAt[k] = time.Now()
		via := netlab.NodeAddr(int(*seq) % n)
		if err := unix.Sendto(fd, buf, 0, &unix.SockaddrInet4{Addr: via.As4()}); err == nil {
			s.sent++
		}
		*seq++
	}
	s.achieved = s.sent / time.Since(start).Seconds()
	time.Sleep(time.Second) // the last copies on their way
	close(stopProbe)
	s.lat = <-lat
	after, err := counts(c)
	if err != nil {
		return s, err
	}
	cpu1, err := cpuOf(daemons)
	if err != nil {
		return s, err
	}
	var got float64
	var short []string
	for i := range after {
		d := after[i] - before[i]
		got += float64(min(d, uint64(s.sent)))
		if float64(d) < (1-o.maxLoss)*s.sent && len(short) < 8 {
			short = append(short, fmt.Sprintf("%s %d", c.Nodes[i].Name(), d))
		}
	}
	if len(short) > 0 {
		fmt.Fprintf(os.Stderr, "  nodes short of %.0f: %s\n", s.sent, strings.Join(short, ", "))
	}
	if s.sent > 0 {
		s.delivered = got / (float64(n) * s.sent)
		s.cpuPerICMP = time.Duration(float64(cpu1-cpu0) / float64(n) / s.sent)
	}
	return s, nil
}

// listen reads the ICMPs that reach node 0 until stop, and returns for each
// ICMP of this step sent to another node (seq - first indexes sentAt) the
// time from its sending to its copy's arrival.
func listen(fd int, first uint32, sentAt []time.Time, n int, stop chan struct{}) []time.Duration {
	var out []time.Duration
	buf := make([]byte, 2048)
	for {
		select {
		case <-stop:
			return out
		default:
		}
		m, _, err := unix.Recvfrom(fd, buf, 0)
		now := time.Now()
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return out
		}
		f, err := wire.ParseFragNeeded(buf[:m])
		if err != nil {
			continue
		}
		// The quoted TCP sequence number is the ICMP's seq.
		q := f.ICMP[8:]
		ihl := int(q[0]&0xf) * 4
		if len(q) < ihl+8 {
			continue
		}
		sq := binary.BigEndian.Uint32(q[ihl+4:])
		k := int(sq - first)
		if k < 0 || k >= len(sentAt) || int(sq)%n == 0 || sentAt[k].IsZero() {
			continue // another step's, or sent to node 0 itself
		}
		out = append(out, now.Sub(sentAt[k]))
	}
}

var counterRE = regexp.MustCompile(`counter packets (\d+)`)

// counts reads each node's nftables counter.
func counts(c *netlab.Cluster) ([]uint64, error) {
	out := make([]uint64, len(c.Nodes))
	var wg sync.WaitGroup
	errs := make([]error, len(c.Nodes))
	for i, node := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := node.Run("nft", "list", "table", "inet", "storm")
			if err != nil {
				errs[i] = err
				return
			}
			m := counterRE.FindStringSubmatch(s)
			if m == nil {
				errs[i] = fmt.Errorf("%s: no counter in %q", node.Name(), s)
				return
			}
			out[i], _ = strconv.ParseUint(m[1], 10, 64)
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// cpuOf returns the CPU time the daemons used so far.
func cpuOf(ds []*exec.Cmd) (time.Duration, error) {
	var sum time.Duration
	for _, d := range ds {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.Process.Pid))
		if err != nil {
			return 0, err
		}
		// Fields after the command's closing parenthesis: utime is the
		// 14th field of the line, stime the 15th, in clock ticks (100/s).
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		sum += time.Duration(ut+st) * 10 * time.Millisecond
	}
	return sum, nil
}

// peakRSS returns a process's peak resident set (VmHWM).
func peakRSS(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmHWM")
}

// rawSocket opens a raw socket in ns.
func rawSocket(ns *netlab.NS, domain, proto int) (int, error) {
	var fd int
	err := ns.Do(func() (err error) {
		fd, err = unix.Socket(domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		return err
	})
	return fd, err
}

// template is the router's frag-needed, from its loopback to the anycast
// address, quoting quote bytes of a 9000-byte TCP segment the anycast
// address sent; stamp writes a sequence number into its quoted TCP header.
type template struct {
	pkt  []byte
	tcp  int // offset of the quoted TCP header
	csum int // offset of the ICMP checksum
}

func newTemplate(quote int) (template, error) {
	tcp := make([]byte, quote-20)
	binary.BigEndian.PutUint16(tcp[0:], netlab.TransferPort)
	binary.BigEndian.PutUint16(tcp[2:], 40000)
	orig := wire.AppendIPv4(nil, netlab.Anycast, netlab.ClientAddr, unix.IPPROTO_TCP, 64, tcp)
	binary.BigEndian.PutUint16(orig[2:], 9000) // the length of the dropped packet
	t := template{pkt: wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, orig[:quote])), tcp: 20 + 8 + 20, csum: 22}
	b := append([]byte(nil), t.pkt...)
	t.stamp(b, 12345)
	if _, err := wire.ParseFragNeeded(b); err != nil {
		return t, fmt.Errorf("the router's packet does not parse: %w", err)
	}
	return t, nil
}

// stamp writes seq into b's quoted TCP sequence number and recomputes the
// ICMP checksum.
func (t template) stamp(b []byte, seq uint32) {
	binary.BigEndian.PutUint32(b[t.tcp+4:], seq)
	b[t.csum], b[t.csum+1] = 0, 0
	binary.BigEndian.PutUint16(b[t.csum:], wire.Checksum(b[20:]))
}
