package peers

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func service(ns, name string, etp corev1.ServiceExternalTrafficPolicy, ingress []string, external []string, ports ...corev1.ServicePort) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: etp, ExternalIPs: external, Ports: ports},
	}
	for _, ip := range ingress {
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
	}
	return s
}

func port(proto corev1.Protocol, p int32) corev1.ServicePort {
	return corev1.ServicePort{Protocol: proto, Port: p}
}

// endpoint is an endpoint on node ("" for none) with the given serving and
// terminating conditions (nil: not set).
func endpoint(node string, serving, terminating *bool) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Conditions: discoveryv1.EndpointConditions{Serving: serving, Terminating: terminating}}
	if node != "" {
		e.NodeName = &node
	}
	return e
}

func slice(ns, svc string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		Endpoints:  eps,
	}
}

func TestOwnersOf(t *testing.T) {
	yes, no := new(bool), new(bool)
	*yes = true
	local, cluster := corev1.ServiceExternalTrafficPolicyLocal, corev1.ServiceExternalTrafficPolicyCluster
	lb := []string{"198.18.100.1"}
	web := port(corev1.ProtocolTCP, 443)
	owner := func(a string, proto uint8, p uint16, nodes ...string) Owner {
		return Owner{Addr: netip.MustParseAddr(a), Proto: proto, Port: p, Nodes: nodes}
	}
	for _, tc := range []struct {
		name   string
		svcs   []any
		slices []any
		want   []Owner
	}{
		{"none", nil, nil, nil},
		{"local, one endpoint", []any{service("ns", "web", local, lb, nil, web)}, []any{slice("ns", "web", endpoint("node-a", nil, nil))},
			[]Owner{owner("198.18.100.1", 6, 443, "node-a")}},
		{"cluster policy: no owner", []any{service("ns", "web", cluster, lb, nil, web)}, []any{slice("ns", "web", endpoint("node-a", nil, nil))}, nil},
		{"no endpoints: no owner", []any{service("ns", "web", local, lb, nil, web)}, nil, nil},
		{"no ready endpoint: no owner", []any{service("ns", "web", local, lb, nil, web)}, []any{slice("ns", "web", endpoint("node-a", no, no))}, nil},
		{"terminating endpoints own", []any{service("ns", "web", local, lb, nil, web)},
			[]any{slice("ns", "web", endpoint("node-b", no, yes), endpoint("node-a", yes, nil))},
			[]Owner{owner("198.18.100.1", 6, 443, "node-a", "node-b")}},
		{"nodes across slices, once each", []any{service("ns", "web", local, lb, nil, web)},
			[]any{slice("ns", "web", endpoint("node-c", nil, nil), endpoint("node-a", nil, nil)), slice("ns", "web", endpoint("node-a", nil, nil))},
			[]Owner{owner("198.18.100.1", 6, 443, "node-a", "node-c")}},
		{"endpoint without node: unknown", []any{service("ns", "web", local, lb, nil, web)}, []any{slice("ns", "web", endpoint("", nil, nil), endpoint("node-a", nil, nil))},
			[]Owner{owner("198.18.100.1", 6, 443, "", "node-a")}},
		{"another namespace's slice does not count", []any{service("ns", "web", local, lb, nil, web)}, []any{slice("other", "web", endpoint("node-a", nil, nil))}, nil},
		{"every address and port", []any{service("ns", "dns", local, []string{"198.18.100.2", "2001:db8::53"}, []string{"198.18.100.3"},
			port(corev1.ProtocolUDP, 53), port(corev1.ProtocolTCP, 53), port(corev1.ProtocolSCTP, 9))},
			[]any{slice("ns", "dns", endpoint("node-b", nil, nil))},
			[]Owner{
				owner("198.18.100.2", 6, 53, "node-b"), owner("198.18.100.2", 17, 53, "node-b"), owner("198.18.100.2", 132, 9, "node-b"),
				owner("198.18.100.3", 6, 53, "node-b"), owner("198.18.100.3", 17, 53, "node-b"), owner("198.18.100.3", 132, 9, "node-b"),
				owner("2001:db8::53", 6, 53, "node-b"), owner("2001:db8::53", 17, 53, "node-b"), owner("2001:db8::53", 132, 9, "node-b"),
			}},
		{"an ETP=Cluster Service on the same address and port voids it",
			[]any{service("ns", "web", local, lb, nil, web), service("other", "squat", cluster, nil, lb, web)},
			[]any{slice("ns", "web", endpoint("node-a", nil, nil))}, nil},
		{"an ETP=Cluster Service on another port does not",
			[]any{service("ns", "web", local, lb, nil, web), service("other", "squat", cluster, nil, lb, port(corev1.ProtocolTCP, 80))},
			[]any{slice("ns", "web", endpoint("node-a", nil, nil))}, []Owner{owner("198.18.100.1", 6, 443, "node-a")}},
		{"two ETP=Local Services on one address and port: both kept",
			[]any{service("ns", "web", local, lb, nil, web), service("ns", "web2", local, nil, lb, web)},
			[]any{slice("ns", "web", endpoint("node-a", nil, nil)), slice("ns", "web2", endpoint("node-b", nil, nil))},
			[]Owner{owner("198.18.100.1", 6, 443, "node-a"), owner("198.18.100.1", 6, 443, "node-b")}},
		{"a hostname ingress is no address", []any{service("ns", "web", local, []string{""}, nil, web)}, []any{slice("ns", "web", endpoint("node-a", nil, nil))}, nil},
		{"not objects of the kind", []any{"x"}, []any{"y"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ownersOf(tc.svcs, tc.slices)
			if !slices.EqualFunc(got, tc.want, Owner.equal) {
				t.Errorf("owners\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}

// TestSlimKeepsWhatOwnersRead: the cached copies yield the same owners as
// the objects.
func TestSlimKeepsWhatOwnersRead(t *testing.T) {
	svc := service("ns", "web", corev1.ServiceExternalTrafficPolicyLocal, []string{"198.18.100.1"}, []string{"198.18.100.2"}, port(corev1.ProtocolTCP, 443))
	svc.Annotations = map[string]string{"big": "annotation"}
	es := slice("ns", "web", endpoint("node-a", nil, nil))
	es.Endpoints[0].Addresses = []string{"10.0.0.1"}
	s, _ := slimService(svc)
	e, _ := slimSlice(es)
	if got, want := ownersOf([]any{s}, []any{e}), ownersOf([]any{svc}, []any{es}); len(want) != 2 || !slices.EqualFunc(got, want, Owner.equal) {
		t.Errorf("slim owners %v, full %v", got, want)
	}
	if s.(*corev1.Service).Annotations != nil || e.(*discoveryv1.EndpointSlice).Endpoints[0].Addresses != nil {
		t.Error("slim copies keep what the owners do not need")
	}
}

// TestServicesFollowsEndpoints runs the Services source against a real API
// server: the first update, after both lists have synced, already holds the
// owner created before the start (nothing is applied before the sync); an
// endpoint that moves and a Service whose policy turns to Cluster are
// followed; no update carries an error.
func TestServicesFollowsEndpoints(t *testing.T) {
	t.Parallel()
	api := sharedAPI(t)
	ns, name := "default", api.Unique("svc")
	ctx := t.Context()
	addr := "198.18.100.77"
	svc := service(ns, name, corev1.ServiceExternalTrafficPolicyLocal, nil, nil, port(corev1.ProtocolTCP, 443))
	svc.Spec.Selector = map[string]string{"app": name}
	created, err := api.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: addr}}
	if _, err := api.Client.CoreV1().Services(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	es := slice(ns, name, endpoint("node-a", nil, nil))
	es.AddressType = discoveryv1.AddressTypeIPv4
	es.Endpoints[0].Addresses = []string{"198.18.250.1"}
	if es, err = api.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	s, err := NewServices(api.Admin, testLogger(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	updates := make(chan OwnersUpdate, 100)
	runCtx, cancel := context.WithCancel(ctx)
	ret := make(chan error, 1)
	go func() { ret <- s.Run(runCtx, func(u OwnersUpdate) { updates <- u }) }()
	defer func() {
		cancel()
		if err := <-ret; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	// ours returns this test's owners of u (other tests' Services are not
	// ETP=Local, but the server is shared).
	ours := func(u OwnersUpdate) []Owner {
		if u.Err != nil {
			t.Fatalf("update with error: %v", u.Err)
		}
		return slices.DeleteFunc(slices.Clone(u.Owners), func(o Owner) bool { return o.Addr != netip.MustParseAddr(addr) })
	}
	next := func(what string) []Owner {
		t.Helper()
		select {
		case u := <-updates:
			return ours(u)
		case <-time.After(waitLong):
			t.Fatalf("%s: no update", what)
			return nil
		}
	}
	want := func(nodes ...string) []Owner {
		return []Owner{{Addr: netip.MustParseAddr(addr), Proto: 6, Port: 443, Nodes: nodes}}
	}
	if got := next("first"); !slices.EqualFunc(got, want("node-a"), Owner.equal) {
		t.Fatalf("first update %v, want %v: the owner existed before the start", got, want("node-a"))
	}

	node := "node-b"
	es.Endpoints[0].NodeName = &node
	if _, err := api.Client.DiscoveryV1().EndpointSlices(ns).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := next("endpoint moved"); !slices.EqualFunc(got, want("node-b"), Owner.equal) {
		t.Fatalf("after the move %v, want %v", got, want("node-b"))
	}
	api.PatchService(t, ns, name, `{"spec":{"externalTrafficPolicy":"Cluster"}}`)
	if got := next("policy Cluster"); len(got) != 0 {
		t.Fatalf("with policy Cluster %v, want no owner", got)
	}
}
