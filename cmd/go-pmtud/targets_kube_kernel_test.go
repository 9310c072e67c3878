package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/go-pmtud/go-pmtud"
	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/internal/kubetest"
	"github.com/go-pmtud/go-pmtud/internal/peers"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// TestServiceEndpointsSteerCopies runs three nodes against a real
// kube-apiserver. The router's ICMPs land on node B, whose relay follows
// the Nodes, Services and EndpointSlices the test creates (no controllers
// run), the way the daemon does (openSource, source.run), with the icmp
// relay; A and C run the real binary, whose from_peer drops count the
// copies B sends them. A LoadBalancer Service with externalTrafficPolicy
// Local on the anycast address has its one endpoint on A: only A gets
// copies, caches the path MTU and the stalled download completes; C gets
// none. The endpoint moves to C: the next ICMP goes to C only. A Service
// with externalTrafficPolicy Cluster, and a port no Service has, go to
// both.
func TestServiceEndpointsSteerCopies(t *testing.T) {
	api := kubetest.StartT(t)
	c, err := netlab.BuildCluster(netlab.NewT(t), 3, 1400)
	if err != nil {
		t.Fatal(err)
	}
	bin := buildDaemon(t)
	all := netlab.NodeAddr(0).String() + "," + netlab.NodeAddr(1).String() + "," + netlab.NodeAddr(2).String()
	a := startDaemon(t, bin, c.Nodes[0], netlab.NodeAddr(0), "NODE_NAME=node-a", "PMTUD_RELAY=icmp", "PMTUD_PEERS="+all)
	cd := startDaemon(t, bin, c.Nodes[2], netlab.NodeAddr(2), "NODE_NAME=node-c", "PMTUD_RELAY=icmp", "PMTUD_PEERS="+all)
	a.get("/metrics")
	cd.get("/metrics")
	if err := netlab.InstallNFLOGRule(c.Nodes[1], 33); err != nil {
		t.Fatal(err)
	}

	// The cluster's objects.
	for i, name := range []string{"node-a", "node-b", "node-c"} {
		api.CreateNode(t, name, nil, nil, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: netlab.NodeAddr(i).String()})
	}
	ns := "default"
	lbService(t, api, ns, "web", corev1.ServiceExternalTrafficPolicyLocal, netlab.Anycast, netlab.TransferPort)
	lbService(t, api, ns, "other", corev1.ServiceExternalTrafficPolicyCluster, netip.MustParseAddr("198.18.100.9"), 443)
	endpointSlice(t, api, ns, "web", "node-a", false)
	endpointSlice(t, api, ns, "other", "node-a", false)

	// Node B: the relay and its source, as the daemon wires them.
	var changes atomic.Int32 // "targets changed" log lines
	log := slog.New(slog.NewTextHandler(countingLog{testLog{t}, "targets changed", &changes}, nil))
	s := settings{
		relay: pmtud.Config{
			NodeName: "node-b", Mode: pmtud.ModeICMP, Source: netlab.NodeAddr(1), TTL: 10,
			LocalAddrs: []netip.Addr{netlab.NodeAddr(1)}, NFLOG: nl.Config{Group: 33}, DynamicPeers: true,
			IgnoreNetworks: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")},
		},
		kube:           &peers.KubernetesConfig{Kubeconfig: api.Admin},
		targetServices: true,
	}
	src, err := openSource(&s, log)
	if err != nil {
		t.Fatal(err)
	}
	relay := startSourcedRelay(t, c.Nodes[1], &s, src, log, true)
	metricsB := func() string {
		var m strings.Builder
		relay.WritePrometheus(&m)
		return m.String()
	}
	waitB := func(what string, cond func(m string) bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			m := metricsB()
			if cond(m) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: B's metrics:\n%s\ntargets: %s", what, m, src.targeting())
			}
		}
	}
	waitB("peers and the Service's owner", func(m string) bool {
		return strings.Contains(m, `go_pmtud_peers{node="node-b"} 2`+"\n") &&
			strings.Contains(m, `go_pmtud_target_entries{node="node-b",scope="service"} 1`+"\n") &&
			strings.Contains(m, `go_pmtud_target_unknown_owners{node="node-b"} 0`+"\n")
	})
	if got := src.targeting(); !strings.Contains(got, "services synced, 1 ") {
		t.Errorf("readiness says %q", got)
	}

	fromPeer := func(d *daemon, node string) int {
		t.Helper()
		_, m := d.get("/metrics")
		var n int
		key := fmt.Sprintf(`go_pmtud_dropped_packets_total{node=%q,reason="from_peer"} `, node)
		i := strings.Index(m, key)
		if i < 0 {
			t.Fatalf("%s's metrics lack %s", node, key)
		}
		fmt.Sscanf(m[i+len(key):], "%d", &n)
		return n
	}

	// The download from A stalls until A learns the path MTU from B's copy.
	got, mtu := download(t, c, c.Nodes[0])
	if got != downloadSize || mtu != 1400 {
		t.Fatalf("transferred %d of %d bytes, A caches mtu %d; want all and 1400\nB:\n%s", got, downloadSize, mtu, metricsB())
	}
	aCopies := fromPeer(a, "node-a")
	if aCopies == 0 || fromPeer(cd, "node-c") != 0 {
		t.Fatalf("copies: A %d, C %d; want A some and C none\nB:\n%s", aCopies, fromPeer(cd, "node-c"), metricsB())
	}
	m := metricsB()
	if !strings.Contains(m, `go_pmtud_targeted_total{node="node-b",scope="all"} 0`+"\n") ||
		strings.Contains(m, `go_pmtud_targeted_total{node="node-b",scope="service"} 0`+"\n") {
		t.Errorf("B's scopes:\n%s", m)
	}

	// ICMPs injected at B, each quoting a flow from addr:port.
	router := openIn(t, c.Router, unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	seq := 0
	inject := func(addr netip.Addr, port uint16) {
		t.Helper()
		seq++
		q := wire.AppendQuote(nil, addr, netlab.ClientAddr, unix.IPPROTO_TCP, 63, 1500,
			[]byte{byte(port >> 8), byte(port), 0xc3, 0x50, 0, 0, 0x77, byte(seq)})
		pkt := wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, q))
		if err := unix.Sendto(router, pkt, 0, &unix.SockaddrInet4{Addr: netlab.NodeAddr(1).As4()}); err != nil {
			t.Fatal(err)
		}
	}
	waitCopies := func(what string, wantA, wantC int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			ga, gc := fromPeer(a, "node-a"), fromPeer(cd, "node-c")
			if ga == wantA && gc == wantC {
				return
			}
			if time.Now().After(deadline) || ga > wantA || gc > wantC {
				t.Fatalf("%s: copies A %d, C %d; want %d, %d\nB:\n%s", what, ga, gc, wantA, wantC, metricsB())
			}
		}
	}

	// The endpoint moves from A to C.
	before := changes.Load()
	endpointSlice(t, api, ns, "web", "node-c", true)
	for deadline := time.Now().Add(30 * time.Second); changes.Load() == before; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("B's targets never changed after the endpoint moved")
		}
	}
	inject(netlab.Anycast, netlab.TransferPort)
	waitCopies("endpoint on C", aCopies, 1)
	// An ETP=Cluster Service, and a port no Service has: every peer.
	inject(netip.MustParseAddr("198.18.100.9"), 443)
	waitCopies("ETP Cluster", aCopies+1, 2)
	inject(netlab.Anycast, 9999)
	waitCopies("no Service", aCopies+2, 3)
}

// lbService creates a LoadBalancer Service with policy etp and one TCP port,
// and gives it addr as its load-balancer ingress (status is a subresource;
// no controller sets it here).
func lbService(t *testing.T, api *kubetest.Server, ns, name string, etp corev1.ServiceExternalTrafficPolicy, addr netip.Addr, port int) {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: etp,
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: int32(port)}},
		},
	}
	svcs := api.Client.CoreV1().Services(ns)
	created, err := svcs.Create(t.Context(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s: %v", name, err)
	}
	created.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: addr.String()}}
	if _, err := svcs.UpdateStatus(t.Context(), created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("set service %s's ingress: %v", name, err)
	}
}

// endpointSlice creates (or, with update, replaces) the EndpointSlice of
// Service svc with one ready endpoint on node.
func endpointSlice(t *testing.T, api *kubetest.Server, ns, svc, node string, update bool) {
	t.Helper()
	ready := true
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses: []string{"198.18.250.1"}, NodeName: &node,
			Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &ready},
		}},
	}
	slices := api.Client.DiscoveryV1().EndpointSlices(ns)
	var err error
	if update {
		var cur *discoveryv1.EndpointSlice
		if cur, err = slices.Get(t.Context(), es.Name, metav1.GetOptions{}); err == nil {
			es.ResourceVersion = cur.ResourceVersion
			_, err = slices.Update(t.Context(), es, metav1.UpdateOptions{})
		}
	} else {
		_, err = slices.Create(t.Context(), es, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatalf("endpointslice of %s on %s: %v", svc, node, err)
	}
}

// countingLog is a testLog that counts the lines holding text.
type countingLog struct {
	testLog
	text string
	n    *atomic.Int32
}

func (w countingLog) Write(b []byte) (int, error) {
	if strings.Contains(string(b), w.text) {
		w.n.Add(1)
	}
	return w.testLog.Write(b)
}
