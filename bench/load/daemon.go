package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// metricsPort is the daemon's /metrics port, on nodeAddr.
const metricsPort = 30040

// buildDaemon builds ./cmd/go-pmtud, statically, into dir and returns the
// binary's path. It runs in the module of the working directory.
func buildDaemon(dir string) (string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		// sudo resets PATH; fall back to the toolchain running us.
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if os.Getenv("GOROOT") == "" {
			gobin = "/usr/local/go/bin/go"
		}
	}
	bin := filepath.Join(dir, "go-pmtud")
	cmd := exec.Command(gobin, "build", "-o", bin, "github.com/go-pmtud/go-pmtud/cmd/go-pmtud")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/go-pmtud: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}

// daemon is a go-pmtud process in the node namespace.
type daemon struct {
	cmd     *exec.Cmd
	bin     string // absolute path of the executable
	logPath string
	done    chan struct{} // closed when the process has exited
	waitErr error         // valid after done
	client  *http.Client
	url     string

	stopOnce sync.Once
	stopErr  error
}

// startDaemon starts bin in the node namespace with the topology's peers
// (--peers, or --peers-file peersFile if that is not empty) and extra flags,
// and waits until its /metrics answers. Its stderr goes to a file in dir,
// shown when it fails.
func startDaemon(bin string, t *topology, peersFile string, extra []string, dir string) (*daemon, error) {
	peerArgs := []string{"--peers-file", peersFile}
	if peersFile == "" {
		peers := make([]string, len(t.peers))
		for i, a := range t.peers {
			peers[i] = a.String()
		}
		peerArgs = []string{"--peers", strings.Join(peers, ",")}
	}
	bin, err := filepath.Abs(bin)
	if err == nil {
		bin, err = filepath.EvalSymlinks(bin)
	}
	if err != nil {
		return nil, fmt.Errorf("resolve go-pmtud path: %w", err)
	}
	metricsAddr := netip.AddrPortFrom(nodeAddr, metricsPort).String()
	args := append(append([]string{bin}, peerArgs...),
		"--iface", "eth0",
		"--nodename", "load",
		"--nflog-group", strconv.Itoa(nflogGroup),
		"--metrics-address", metricsAddr,
		// The harness measures the fan-out: the budgets, on by default,
		// would cap it. -daemon-args can set them again (the last flag
		// given wins).
		"--rate-limit", "0", "--source-rate-limit", "0",
		// The harness installs its own NFLOG rule (and -exclude-tun).
		"--manage-rules", "none",
	)
	args = append(args, extra...)
	d := &daemon{
		bin:     bin,
		logPath: filepath.Join(dir, "go-pmtud.log"),
		done:    make(chan struct{}),
		client:  nsClient(t.node),
		url:     "http://" + metricsAddr + "/metrics",
	}
	logf, err := os.Create(d.logPath)
	if err != nil {
		return nil, fmt.Errorf("create daemon log: %w", err)
	}
	defer logf.Close()
	// ip netns exec execs the command in place: the process is the daemon.
	d.cmd = exec.Command("ip", append([]string{"netns", "exec", t.node.Name()}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start go-pmtud: %w", err)
	}
	go func() { d.waitErr = d.cmd.Wait(); close(d.done) }()
	if err := d.waitReady(10 * time.Second); err != nil {
		d.stop()
		return nil, err
	}
	return d, nil
}

// nsClient returns an HTTP client whose connections are made in ns.
func nsClient(ns *netlab.NS) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true},
	}
}

// waitReady polls /metrics until it answers, the daemon exits or limit
// passes, and checks the process is the daemon itself.
func (d *daemon) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-d.done:
			return fmt.Errorf("go-pmtud exited at start-up: %v\n%s", d.waitErr, d.log())
		default:
		}
		_, err := d.metrics()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("go-pmtud /metrics did not answer within %v: %w\n%s", limit, err, d.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", d.cmd.Process.Pid))
	if err != nil {
		return fmt.Errorf("read daemon executable: %w", err)
	}
	if exe != d.bin {
		return fmt.Errorf("process %d runs %s, not %s: ip netns exec forked", d.cmd.Process.Pid, exe, d.bin)
	}
	return nil
}

// log returns the daemon's output so far.
func (d *daemon) log() string {
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return fmt.Sprintf("(read daemon log: %v)", err)
	}
	return strings.TrimSpace(string(b))
}

// stop sends SIGTERM and waits for the exit, killing the daemon after 5 s.
// It is safe to call more than once and from several goroutines.
func (d *daemon) stop() error {
	d.stopOnce.Do(func() { d.stopErr = d.terminate() })
	return d.stopErr
}

// terminate is stop's single run.
func (d *daemon) terminate() error {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		return fmt.Errorf("go-pmtud ignored SIGTERM for 5s: killed\n%s", d.log())
	}
	if d.waitErr != nil {
		return fmt.Errorf("go-pmtud exited: %w\n%s", d.waitErr, d.log())
	}
	return nil
}

// counters are the daemon's metrics that the report uses, each summed over
// its labels, and the udp relay's receive drops by reason.
type counters struct {
	recv, sent, errors, dropped, lost, overruns float64
	// fromTUN are logged packets dropped because they arrived on the TUN
	// device: the udp relay's own injected packets, logged back by the
	// NFLOG rule.
	fromTUN float64
	// The udp relay's receive side: datagrams received, packets injected,
	// datagrams dropped, and the drops by reason.
	relayRecv, injected, relayDropped float64
	relayDrops                        map[string]float64
	// Peer-set updates (go_pmtud_peer_updates_total) by result: applied,
	// unchanged, error.
	peersApplied, peersUnchanged, peersError float64
}

// Metric names the harness reads.
const (
	metricDropped      = "go_pmtud_dropped_packets_total"
	metricRelayDropped = "go_pmtud_relay_dropped_total"
	metricPeerUpdates  = "go_pmtud_peer_updates_total"
)

// metrics fetches and sums the daemon's counters.
func (d *daemon) metrics() (counters, error) {
	resp, err := d.client.Get(d.url)
	if err != nil {
		return counters{}, fmt.Errorf("fetch go-pmtud metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return counters{}, fmt.Errorf("fetch go-pmtud metrics: %s", resp.Status)
	}
	sums, labelled, err := sumMetrics(resp.Body)
	if err != nil {
		return counters{}, fmt.Errorf("read go-pmtud metrics: %w", err)
	}
	return counters{
		recv:         sums["go_pmtud_recv_packets_total"],
		sent:         sums["go_pmtud_sent_packets_total"],
		errors:       sums["go_pmtud_error_total"],
		dropped:      sums[metricDropped],
		lost:         sums["go_pmtud_nflog_lost_packets_total"],
		overruns:     sums["go_pmtud_nflog_overruns_total"],
		fromTUN:      labelled[metricDropped]["from_tun"],
		relayRecv:    sums["go_pmtud_relay_received_total"],
		injected:     sums["go_pmtud_relay_injected_total"],
		relayDropped: sums[metricRelayDropped],
		relayDrops:   labelled[metricRelayDropped],

		peersApplied:   labelled[metricPeerUpdates]["applied"],
		peersUnchanged: labelled[metricPeerUpdates]["unchanged"],
		peersError:     labelled[metricPeerUpdates]["error"],
	}, nil
}

// sub returns c - o, counter by counter.
func (c counters) sub(o counters) counters {
	drops := make(map[string]float64, len(c.relayDrops))
	for r, v := range c.relayDrops {
		drops[r] = v - o.relayDrops[r]
	}
	return counters{
		recv: c.recv - o.recv, sent: c.sent - o.sent, errors: c.errors - o.errors,
		dropped: c.dropped - o.dropped, lost: c.lost - o.lost, overruns: c.overruns - o.overruns,
		fromTUN: c.fromTUN - o.fromTUN, relayRecv: c.relayRecv - o.relayRecv,
		injected: c.injected - o.injected, relayDropped: c.relayDropped - o.relayDropped,
		relayDrops:   drops,
		peersApplied: c.peersApplied - o.peersApplied, peersUnchanged: c.peersUnchanged - o.peersUnchanged,
		peersError: c.peersError - o.peersError,
	}
}

// sumMetrics reads the Prometheus text format and sums every sample by
// metric name, across label sets; labelled holds the samples that have a
// reason or a result label, summed by metric name and that label's value.
func sumMetrics(r io.Reader) (sums map[string]float64, labelled map[string]map[string]float64, err error) {
	sums = map[string]float64{}
	labelled = map[string]map[string]float64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, labels, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return nil, nil, fmt.Errorf("parse sample %q: %w", line, err)
		}
		sums[name] += v
		for _, key := range []string{"reason", "result"} {
			if value, ok := labelValue(labels, key); ok {
				if labelled[name] == nil {
					labelled[name] = map[string]float64{}
				}
				labelled[name][value] += v
				break
			}
		}
	}
	return sums, labelled, sc.Err()
}

// labelValue returns the value of label key in labels, the text after a
// sample's "{".
func labelValue(labels, key string) (string, bool) {
	for rest := labels; ; {
		i := strings.Index(rest, key+`="`)
		if i < 0 {
			return "", false
		}
		if i == 0 || rest[i-1] == ',' || rest[i-1] == '{' || rest[i-1] == ' ' {
			v, _, ok := strings.Cut(rest[i+len(key)+2:], `"`)
			return v, ok
		}
		rest = rest[i+len(key)+2:]
	}
}

// pid returns the daemon's process ID.
func (d *daemon) pid() int { return d.cmd.Process.Pid }

// maxRSS returns the daemon's peak resident set size in bytes (VmHWM).
func (d *daemon) maxRSS() (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("read daemon status: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmHWM %q: %w", line, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmHWM in /proc/<pid>/status")
}
