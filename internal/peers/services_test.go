package peers

import (
	"net/netip"
	"slices"
	"testing"

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
