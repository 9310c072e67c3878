package main

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/go-pmtud/go-pmtud"
	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/internal/kubetest"
	"github.com/go-pmtud/go-pmtud/internal/peers"
	"github.com/go-pmtud/go-pmtud/nl"
)

// TestRelayFollowsNodeObjects connects a relay to a real kube-apiserver the
// way the daemon does (openSource, source.run) and changes Node objects:
// the relay's peers, /readyz and metrics follow. Created, labelled into the
// selector, readdressed and deleted nodes join and leave; a node outside
// the selector and the node's own address never become peers.
func TestRelayFollowsNodeObjects(t *testing.T) {
	api := kubetest.StartT(t)
	c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	b := c.Nodes[1]
	s := settings{
		relay: pmtud.Config{
			NodeName: "node-b", Mode: pmtud.ModeICMP, Source: netlab.NodeAddr(1), TTL: 10,
			LocalAddrs: []netip.Addr{netlab.NodeAddr(1)}, NFLOG: nl.Config{Group: 33}, DynamicPeers: true,
		},
		kube: &peers.KubernetesConfig{Kubeconfig: api.Admin, NodeSelector: "pmtud-e2e=on"},
	}
	log := slog.New(slog.NewTextHandler(testLog{t}, nil))
	src, err := openSource(&s, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.ready(); err == nil {
		t.Fatal("ready before the node list synced")
	}
	relay := startSourcedRelay(t, b, &s, src, log, false)

	waitPeers := func(what string, want ...netip.Addr) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; {
			got := slices.Clone(relay.Peers())
			slices.SortFunc(got, netip.Addr.Compare)
			if slices.Equal(got, want) && src.ready() == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: peers %v (ready: %v), want %v", what, got, src.ready(), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	metrics := func() string {
		var m strings.Builder
		relay.WritePrometheus(&m)
		return m.String()
	}
	on := map[string]string{"pmtud-e2e": "on"}
	internal := func(a netip.Addr) corev1.NodeAddress {
		return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a.String()}
	}
	n2, n3, n4 := netip.MustParseAddr("198.18.1.12"), netip.MustParseAddr("198.18.1.13"), netip.MustParseAddr("198.18.1.14")

	waitPeers("no nodes yet") // synced, empty
	api.CreateNode(t, "node-a", on, nil, internal(netlab.NodeAddr(0)))
	api.CreateNode(t, "node-b", on, nil, internal(netlab.NodeAddr(1))) // itself
	api.CreateNode(t, "node-c", nil, nil, internal(n2))                // not selected
	waitPeers("node-a created", netlab.NodeAddr(0))
	if m := metrics(); !strings.Contains(m, `go_pmtud_peers{node="node-b"} 1`+"\n") ||
		!strings.Contains(m, `go_pmtud_sent_packets_peer{node="node-b",peer="198.18.1.10"} 0`+"\n") {
		t.Fatalf("metrics do not show node-a as the one peer:\n%s", m)
	}
	api.Patch(t, "node-c", "", `{"metadata":{"labels":{"pmtud-e2e":"on"}}}`)
	waitPeers("node-c labelled", netlab.NodeAddr(0), n2)
	api.SetAddrs(t, "node-c", internal(n3))
	waitPeers("node-c readdressed", netlab.NodeAddr(0), n3)
	if m := metrics(); strings.Contains(m, `peer="198.18.1.12"`) || !strings.Contains(m, `peer="198.18.1.13"`) {
		t.Fatalf("after the readdress the per-peer series do not follow:\n%s", m)
	}
	api.CreateNode(t, "node-d", on, []string{"example.com/hold"}, internal(n4))
	waitPeers("node-d created", netlab.NodeAddr(0), n3, n4)
	// Deleted, but held by a finalizer: marked for deletion, it leaves.
	if err := api.Client.CoreV1().Nodes().Delete(t.Context(), "node-d", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := api.Client.CoreV1().Nodes().Delete(t.Context(), "node-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPeers("node-a deleted, node-d terminating", n3)
	m := metrics()
	for _, want := range []string{
		`go_pmtud_peers{node="node-b"} 1`,
		`go_pmtud_peer_updates_total{node="node-b",result="error"} 0`,
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(m, `peer="198.18.1.10"`) || strings.Contains(m, `peer="198.18.1.14"`) {
		t.Errorf("series of departed peers remain:\n%s", m)
	}
	if strings.Contains(m, `go_pmtud_peer_updates_total{node="node-b",result="applied"} 0`+"\n") {
		t.Errorf("no applied update counted:\n%s", m)
	}
	api.Patch(t, "node-d", "", `{"metadata":{"finalizers":null}}`)
}

// startSourcedRelay creates the relay of s in node and follows src with it
// (source.run), as the daemon wires them, until the test ends; with run,
// the relay runs too (Relay.Run), else it only takes peer sets.
func startSourcedRelay(t *testing.T, node *netlab.NS, s *settings, src *source, log *slog.Logger, run bool) *pmtud.Relay {
	t.Helper()
	var relay *pmtud.Relay
	if err := node.Do(func() (err error) {
		relay, err = pmtud.New(s.relay, log)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	loops := 1
	go func() { done <- src.run(ctx, relay) }()
	if run {
		loops++
		go func() { done <- relay.Run(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for range loops {
			if err := <-done; err != nil {
				t.Errorf("%s: %v", node.Name(), err)
			}
		}
		relay.Close()
	})
	return relay
}

// testLog sends log lines to t.Log.
type testLog struct{ t *testing.T }

func (w testLog) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}
