package main

import (
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// TestDaemonServesMetricsAndStopsOnSIGTERM runs the real binary in a
// namespace, as the DaemonSet would: it comes up with the flags from the
// environment, serves every documented series on --iface's address, and
// exits 0 on SIGTERM.
func TestDaemonServesMetricsAndStopsOnSIGTERM(t *testing.T) {
	lab := netlab.NewT(t)
	c, err := netlab.BuildCluster(lab, 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	node := c.Nodes[1]
	bin, keyFile := buildDaemon(t), writeKeyFile(t)
	d := startDaemon(t, bin, node, netlab.NodeAddr(1),
		"PMTUD_PEERS="+netlab.NodeAddr(0).String()+","+netlab.NodeAddr(1).String(),
		"PMTUD_IGNORE_NETWORKS=198.18.1.0/24",
		"PMTUD_RELAY_KEY_FILE="+keyFile,
		"NODE_NAME=node-b",
	)
	_, body := d.get("/metrics")
	if code, ready := d.get("/readyz"); code != 200 {
		t.Errorf("/readyz = %d %q with a static peer list, want 200", code, ready)
	}
	for _, series := range []string{
		`go_pmtud_recv_packets_total{node="node-b"} 0`,
		`go_pmtud_sent_packets_total{node="node-b"} 0`,
		`go_pmtud_sent_packets_peer{node="node-b",peer="198.18.1.10"} 0`,
		`go_pmtud_sent_error_peer_total{node="node-b",peer="198.18.1.10"} 0`,
		`go_pmtud_error_total{node="node-b"} 0`,
		`go_pmtud_dropped_packets_total{node="node-b",reason="bad_checksum"} 0`,
		`go_pmtud_dropped_packets_total{node="node-b",reason="duplicate"} 0`,
		`go_pmtud_callback_duration_seconds_count{node="node-b"} 0`,
		`go_pmtud_nflog_overruns_total{node="node-b"} 0`,
		`go_pmtud_nflog_lost_packets_total{node="node-b"} 0`,
		`go_pmtud_nflog_socket_drops_total{node="node-b"} 0`,
		`go_pmtud_relay_injected_total{node="node-b"} 0`,
		`go_pmtud_relay_dropped_total{node="node-b",reason="bad_tag"} 0`,
		`go_pmtud_relay_unreachable_total{node="node-b",peer="198.18.1.10"} 0`,
		`go_pmtud_relay_socket_drops_total{node="node-b"} 0`,
		`go_pmtud_relay_dropped_total{node="node-b",reason="future_sequence"} 0`,
		`go_pmtud_relay_dropped_total{node="node-b",reason="stale_sequence"} 0`,
		`go_pmtud_dropped_packets_total{node="node-b",reason="rate_limited"} 0`,
		`go_pmtud_dropped_packets_total{node="node-b",reason="no_family_peers"} 0`,
		`go_pmtud_peers{node="node-b"} 1`,
		`go_pmtud_dropped_packets_total{node="node-b",reason="no_peers"} 0`,
		`go_pmtud_peer_updates_total{node="node-b",result="applied"} 0`,
		`go_pmtud_peer_updates_total{node="node-b",result="unchanged"} 0`,
		`go_pmtud_peer_updates_total{node="node-b",result="error"} 0`,
	} {
		if !strings.Contains(body, series+"\n") {
			t.Errorf("/metrics lacks %q", series)
		}
	}

	cmd, exited, stderr := d.cmd, d.exited, &d.stderr
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		var exit *exec.ExitError
		if errors.As(err, &exit) || err != nil {
			t.Fatalf("go-pmtud exited with %v after SIGTERM, want status 0\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("go-pmtud did not exit within 10 s of SIGTERM\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "go-pmtud stopped") {
		t.Errorf("no clean-stop log line:\n%s", stderr.String())
	}
}

// TestHealthzFailsWhenTUNIsGone: the real daemon's /healthz answers ok
// while it runs idle, and 503 naming the device once its TUN device is
// deleted under it; /readyz follows.
func TestHealthzFailsWhenTUNIsGone(t *testing.T) {
	c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	node := c.Nodes[1]
	d := startDaemon(t, buildDaemon(t), node, netlab.NodeAddr(1),
		"PMTUD_PEERS="+netlab.NodeAddr(0).String(), "PMTUD_RELAY_KEY_FILE="+writeKeyFile(t), "NODE_NAME=node-b")
	if code, body := d.get("/healthz"); code != 200 {
		t.Fatalf("/healthz = %d %q while idle, want 200", code, body)
	}
	node.MustRun(t, "ip", "link", "del", "pmtud0")
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := d.get(path); code != 503 || !strings.Contains(body, "pmtud0 is gone") {
			t.Errorf("%s = %d %q after the TUN device was deleted, want 503 naming it", path, code, body)
		}
	}
}
