package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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
	if err := netlab.InstallNFLOGRule(node, 33); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "go-pmtud")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte("1:"+strings.Repeat("5a", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command("ip", "netns", "exec", node.Name(), bin)
	cmd.Env = append(os.Environ(),
		"PMTUD_PEERS="+netlab.NodeAddr(0).String()+","+netlab.NodeAddr(1).String(),
		"PMTUD_IGNORE_NETWORKS=198.18.1.0/24",
		"PMTUD_RELAY_KEY_FILE="+keyFile,
		"NODE_NAME=node-b",
	)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
		}
	}()

	// The metrics listener lives in the namespace: dial from there.
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = node.Do(func() error {
				conn, err = (&net.Dialer{Timeout: time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}, Timeout: 2 * time.Second}
	url := "http://" + net.JoinHostPort(netlab.NodeAddr(1).String(), "30040") + "/metrics"
	var body string
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("go-pmtud exited early: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no metrics at %s: %v\n%s", url, err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
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
		`go_pmtud_relay_injected_total{node="node-b"} 0`,
		`go_pmtud_relay_dropped_total{node="node-b",reason="bad_tag"} 0`,
		`go_pmtud_relay_unreachable_total{node="node-b",peer="198.18.1.10"} 0`,
		`go_pmtud_relay_socket_drops_total{node="node-b"} 0`,
		`go_pmtud_relay_dropped_total{node="node-b",reason="future_sequence"} 0`,
		`go_pmtud_dropped_packets_total{node="node-b",reason="rate_limited"} 0`,
		`go_pmtud_dropped_packets_total{node="node-b",reason="ipv6_icmp_relay"} 0`,
		`go_pmtud_peers{node="node-b"} 1`,
	} {
		if !strings.Contains(body, series+"\n") {
			t.Errorf("/metrics lacks %q", series)
		}
	}

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
