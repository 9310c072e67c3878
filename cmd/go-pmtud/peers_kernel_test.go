package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// buildDaemon builds the binary as the Dockerfile does, once per test.
func buildDaemon(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "go-pmtud")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// writeKeyFile writes a relay key file every daemon of a test shares.
func writeKeyFile(t *testing.T) string {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte("1:"+strings.Repeat("5a", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return keyFile
}

// daemon is the real binary running in a node namespace.
type daemon struct {
	t      *testing.T
	node   *netlab.NS
	addr   netip.Addr // where it serves /metrics and /readyz (port 30040)
	stderr bytes.Buffer
	cmd    *exec.Cmd
	exited chan error
	client *http.Client
}

// startDaemon runs bin in node with the environment env (PMTUD_… flags)
// and kills it when the test ends.
func startDaemon(t *testing.T, bin string, node *netlab.NS, addr netip.Addr, env ...string) *daemon {
	t.Helper()
	return startDaemonArgv(t, []string{bin}, node, addr, env...)
}

// startDaemonArgv is startDaemon for a command line that runs the binary
// (through a wrapper such as setpriv).
func startDaemonArgv(t *testing.T, argv []string, node *netlab.NS, addr netip.Addr, env ...string) *daemon {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", node.Name()}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	return startDaemonCmd(t, cmd, node, addr)
}

// startDaemonCmd starts cmd, which runs the daemon in node's network
// namespace by its own means (a container engine), and kills it when the
// test ends.
func startDaemonCmd(t *testing.T, cmd *exec.Cmd, node *netlab.NS, addr netip.Addr) *daemon {
	t.Helper()
	d := &daemon{t: t, node: node, addr: addr, exited: make(chan error, 1), cmd: cmd}
	d.cmd.Stderr = &d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		select {
		case <-d.exited:
		case <-time.After(5 * time.Second):
		}
	})
	// The listener lives in the namespace: dial from there.
	d.client = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (conn net.Conn, err error) {
			err = node.Do(func() error {
				conn, err = (&net.Dialer{Timeout: time.Second}).DialContext(ctx, network, a)
				return err
			})
			return conn, err
		},
	}, Timeout: 2 * time.Second}
	return d
}

// get fetches path from the daemon, retrying for 10 s while it starts.
func (d *daemon) get(path string) (int, string) {
	d.t.Helper()
	url := "http://" + net.JoinHostPort(d.addr.String(), "30040") + path
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := d.client.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(b)
		}
		select {
		case err := <-d.exited:
			d.t.Fatalf("go-pmtud exited early: %v\n%s", err, d.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("nothing at %s: %v\n%s", url, err, d.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitMetric waits up to 10 s for the /metrics line series (with its value).
func (d *daemon) waitMetric(series string) {
	d.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, body := d.get("/metrics")
		if strings.Contains(body, series+"\n") {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("/metrics never showed %q:\n%s\nlog:\n%s", series, body, d.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kubeletSwap replaces the content of dir/peers the way the kubelet updates
// a mounted ConfigMap (see kubeletSwapFile).
func kubeletSwap(t *testing.T, dir, content string) {
	t.Helper()
	kubeletSwapFile(t, dir, "peers", content)
}

// TestPeersFileSwapTeachesNewNode is the end-to-end check of --peers-file
// with the udp relay on both nodes: B reads its peers from a ConfigMap-style
// directory that first lists only B itself, so B relays nothing (counted as
// no_peers) and A's download stalls without a cached MTU. After a
// kubelet-style swap adds A, without a restart, B relays the router's
// messages to A, A caches mtu 1400 and the download completes.
func TestPeersFileSwapTeachesNewNode(t *testing.T) {
	lab := netlab.NewT(t)
	c, err := netlab.BuildCluster(lab, 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.Nodes[0], c.Nodes[1]
	bin, keyFile := buildDaemon(t), writeKeyFile(t)
	dir := t.TempDir()
	kubeletSwap(t, dir, "# the nodes of the cluster\n"+netlab.NodeAddr(1).String()+"\n")

	common := []string{"PMTUD_IGNORE_NETWORKS=198.18.1.0/24", "PMTUD_RELAY_KEY_FILE=" + keyFile}
	startDaemon(t, bin, a, netlab.NodeAddr(0), append(common, "NODE_NAME=node-a",
		"PMTUD_PEERS="+netlab.NodeAddr(0).String()+","+netlab.NodeAddr(1).String())...)
	db := startDaemon(t, bin, b, netlab.NodeAddr(1), append(common, "NODE_NAME=node-b",
		"PMTUD_PEERS_FILE="+filepath.Join(dir, "peers"))...)
	db.waitMetric(`go_pmtud_peers{node="node-b"} 0`)
	if code, body := db.get("/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz = %d %q, want 200", code, body)
	}

	if mtu, err := a.CachedMTU(netlab.ClientAddr.String()); err != nil || mtu != 0 {
		t.Fatalf("before the transfers A caches mtu %d (%v), want none", mtu, err)
	}
	const size = 1 << 20
	got, err := c.Transfer(a, size, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if mtu, _ := a.CachedMTU(netlab.ClientAddr.String()); got == size || mtu != 0 {
		t.Fatalf("with A not in B's peers file: transferred %d of %d bytes, A caches mtu %d; want a stall and none", got, size, mtu)
	}
	if _, body := db.get("/metrics"); strings.Contains(body, `go_pmtud_dropped_packets_total{node="node-b",reason="no_peers"} 0`+"\n") {
		t.Fatalf("B dropped no router message as no_peers:\n%s", body)
	}

	kubeletSwap(t, dir, netlab.NodeAddr(0).String()+"\n"+netlab.NodeAddr(1).String()+"\n")
	db.waitMetric(`go_pmtud_peers{node="node-b"} 1`)
	db.waitMetric(`go_pmtud_peer_updates_total{node="node-b",result="applied"} 1`)
	if !strings.Contains(db.stderr.String(), "peer set changed") {
		t.Errorf("B logged no peer change:\n%s", db.stderr.String())
	}
	got, err = c.Transfer(a, size, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	mtu, err := a.CachedMTU(netlab.ClientAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	if got != size || mtu != 1400 {
		_, body := db.get("/metrics")
		t.Fatalf("after the swap: transferred %d of %d bytes, A caches mtu %d; want all and 1400\nB's metrics:\n%s", got, size, mtu, body)
	}
	if _, body := db.get("/metrics"); strings.Contains(body, `go_pmtud_sent_packets_peer{node="node-b",peer="198.18.1.10"} 0`+"\n") {
		t.Fatalf("B counts no copy to A:\n%s", body)
	}
}

// download fetches 1 MiB from server through the cluster's narrow link,
// giving up after 3 s without progress, and returns the bytes that arrived
// and the MTU server caches for the client then (0: none).
func download(t *testing.T, c *netlab.Cluster, server *netlab.NS) (got, mtu int) {
	t.Helper()
	got, err := c.Transfer(server, downloadSize, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if mtu, err = server.CachedMTU(netlab.ClientAddr.String()); err != nil {
		t.Fatal(err)
	}
	return got, mtu
}

// downloadSize is what download fetches.
const downloadSize = 1 << 20
