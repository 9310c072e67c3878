package peers

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// Owner is a Service address and port whose flows only some nodes can own:
// a LoadBalancer ingress IP or external IP of a Service with
// externalTrafficPolicy Local, which only the nodes with its endpoints
// receive traffic for (the load balancer or BGP speaker announces it from
// those nodes only).
type Owner struct {
	Addr  netip.Addr
	Proto uint8  // 6 TCP, 17 UDP, 132 SCTP
	Port  uint16 // the Service port: the flows' source port
	// Nodes are the names of the nodes with a serving or terminating
	// endpoint, sorted. "" stands for an endpoint whose node is not known:
	// the owners are then unknown.
	Nodes []string
}

// OwnersUpdate is one outcome of the Services source: every Owner, or the
// reason it could not produce them. After an update with Err, the previous
// owners stay in force.
type OwnersUpdate struct {
	Owners []Owner
	Err    error
}

// Services is the source of Owners: it watches the API server's Services
// and EndpointSlices. Create it with NewServices, then call Run. A Service
// with externalTrafficPolicy Cluster (any node may take its traffic) or
// without endpoints yields no Owner: its ICMPs go to every peer.
type Services struct {
	core, disc             *rest.RESTClient
	coreParams, discParams runtime.ParameterCodec
	log                    *slog.Logger
}

// NewServices builds the API clients from kubeconfig ("" for the
// in-cluster config), as NewKubernetes does. It makes no API call.
func NewServices(kubeconfig string, log *slog.Logger) (*Services, error) {
	log = log.With("source", "kubernetes-services")
	cfg, err := restConfig(kubeconfig, log)
	if err != nil {
		return nil, err
	}
	s := &Services{log: log}
	if s.core, s.coreParams, err = apiClient(cfg, corev1.SchemeGroupVersion, "/api", corev1.AddToScheme); err != nil {
		return nil, fmt.Errorf("--kubeconfig %q: %w", kubeconfig, err)
	}
	if s.disc, s.discParams, err = apiClient(cfg, discoveryv1.SchemeGroupVersion, "/apis", discoveryv1.AddToScheme); err != nil {
		return nil, fmt.Errorf("--kubeconfig %q: %w", kubeconfig, err)
	}
	return s, nil
}

// listWatch returns the ListWatch of resource (all namespaces) through c,
// decoding lists into a fresh newList(), and recording every call's
// outcome in r.
func listWatch(c *rest.RESTClient, params runtime.ParameterCodec, resource string, newList func() runtime.Object, r *run) *cache.ListWatch {
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			l := newList()
			err := c.Get().Resource(resource).VersionedParams(&o, params).Timeout(timeoutOf(o)).Do(ctx).Into(l)
			r.observe(ctx, err)
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.Watch = true
			w, err := c.Get().Resource(resource).VersionedParams(&o, params).Timeout(timeoutOf(o)).Watch(ctx)
			r.observe(ctx, err)
			return w, err
		},
	}
}

// Run watches Services and EndpointSlices until ctx is done, as
// Kubernetes.Run watches Nodes: apply is called from Run's goroutine only,
// first after both initial lists have been delivered in full, then when
// the owners change, at most once every 100 ms; a failing list or watch
// call gives one OwnersUpdate with Err per outage, and the owners are sent
// again after it. It returns nil when ctx is done, or a setup error.
//
// Cost: two long-lived watches (protobuf), of every Service and every
// EndpointSlice; the caches keep only what the owners are computed from.
func (s *Services) Run(ctx context.Context, apply func(OwnersUpdate)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wake := make(chan struct{}, 1)
	svcRun := &run{log: s.log, what: "services", wake: wake}
	epsRun := &run{log: s.log, what: "endpointslices", wake: wake}
	svcInf := cache.NewSharedIndexInformer(
		listWatch(s.core, s.coreParams, "services", func() runtime.Object { return &corev1.ServiceList{} }, svcRun),
		&corev1.Service{}, 0, cache.Indexers{})
	epsInf := cache.NewSharedIndexInformer(
		listWatch(s.disc, s.discParams, "endpointslices", func() runtime.Object { return &discoveryv1.EndpointSliceList{} }, epsRun),
		&discoveryv1.EndpointSlice{}, 0, cache.Indexers{})
	var syncedCh [2]<-chan struct{}
	for i, x := range []struct {
		inf       cache.SharedIndexInformer
		r         *run
		transform cache.TransformFunc
	}{{svcInf, svcRun, slimService}, {epsInf, epsRun, slimSlice}} {
		if err := x.inf.SetTransform(x.transform); err != nil {
			return err
		}
		if err := x.inf.SetWatchErrorHandlerWithContext(x.r.watchError); err != nil {
			return err
		}
		poke := x.r.poke
		reg, err := x.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { poke() },
			UpdateFunc: func(any, any) { poke() },
			DeleteFunc: func(any) { poke() },
		})
		if err != nil {
			return err
		}
		syncedCh[i] = reg.HasSyncedChecker().Done()
		go x.inf.RunWithContext(klog.NewContext(ctx, klogLogger(s.log)))
	}

	var (
		synced  [2]bool
		failing bool
		last    []Owner
		anySet  bool
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-syncedCh[0]:
			synced[0], syncedCh[0] = true, nil
		case <-syncedCh[1]:
			synced[1], syncedCh[1] = true, nil
		}
		err := svcRun.failure()
		if err == nil {
			err = epsRun.failure()
		}
		switch {
		case err != nil:
			if !failing {
				failing = true
				s.log.Warn("kubernetes: cannot list/watch services or endpointslices, the owners stay as they are", "err", err)
				apply(OwnersUpdate{Err: fmt.Errorf("kubernetes: list/watch services: %w", err)})
			}
		case synced[0] && synced[1]:
			if failing {
				failing = false
				s.log.Info("kubernetes: listing/watching services again")
				last = nil
			}
			owners := ownersOf(svcInf.GetStore().List(), epsInf.GetStore().List())
			if last == nil || !slices.EqualFunc(owners, last, Owner.equal) {
				if !anySet {
					anySet = true
					s.log.Info("kubernetes services synced", "owned_addresses", len(owners))
				}
				last = owners
				apply(OwnersUpdate{Owners: owners})
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(coalesce):
		}
	}
}

func (o Owner) equal(p Owner) bool {
	return o.Addr == p.Addr && o.Proto == p.Proto && o.Port == p.Port && slices.Equal(o.Nodes, p.Nodes)
}

// protoNumber is the IP protocol number of a Service port's protocol.
func protoNumber(p corev1.Protocol) uint8 {
	switch p {
	case corev1.ProtocolTCP, "":
		return 6
	case corev1.ProtocolUDP:
		return 17
	case corev1.ProtocolSCTP:
		return 132
	}
	return 0
}

// ownersOf computes the Owners of the Services with externalTrafficPolicy
// Local from the cached Services and EndpointSlices, sorted by address,
// protocol and port. A Service without any owning endpoint yields none.
func ownersOf(svcObjs, sliceObjs []any) []Owner {
	// The owning nodes of each Service, namespace/name.
	nodes := map[string][]string{}
	for _, o := range sliceObjs {
		es, ok := o.(*discoveryv1.EndpointSlice)
		if !ok {
			continue
		}
		svc := es.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			continue
		}
		key := es.Namespace + "/" + svc
		for _, ep := range es.Endpoints {
			if !owning(ep.Conditions) {
				continue
			}
			name := ""
			if ep.NodeName != nil {
				name = *ep.NodeName
			}
			nodes[key] = append(nodes[key], name)
		}
	}
	// An address and port that a Service with externalTrafficPolicy
	// Cluster also uses may reach any node: whoever can create a Service
	// with that external IP must not narrow its copies to their own nodes.
	type key struct {
		addr  netip.Addr
		proto uint8
		port  uint16
	}
	anyNode := map[key]bool{}
	var out []Owner
	for _, o := range svcObjs {
		svc, ok := o.(*corev1.Service)
		if !ok {
			continue
		}
		local := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
		ns := nodes[svc.Namespace+"/"+svc.Name]
		if local && len(ns) == 0 {
			continue
		}
		slices.Sort(ns)
		ns = slices.Compact(ns)
		for _, a := range serviceAddrs(svc) {
			for _, p := range svc.Spec.Ports {
				proto := protoNumber(p.Protocol)
				if proto == 0 || p.Port <= 0 || p.Port > 65535 {
					continue
				}
				if !local {
					anyNode[key{a, proto, uint16(p.Port)}] = true
					continue
				}
				out = append(out, Owner{Addr: a, Proto: proto, Port: uint16(p.Port), Nodes: ns})
			}
		}
	}
	out = slices.DeleteFunc(out, func(o Owner) bool { return anyNode[key{o.Addr, o.Proto, o.Port}] })
	slices.SortFunc(out, func(a, b Owner) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port),
			slices.Compare(a.Nodes, b.Nodes))
	})
	return out
}

// serviceAddrs returns a Service's load-balancer ingress IPs and external
// IPs; hostnames and unparsable entries are skipped.
func serviceAddrs(svc *corev1.Service) []netip.Addr {
	var addrs []netip.Addr
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if a, err := netip.ParseAddr(ing.IP); err == nil {
			addrs = append(addrs, a.Unmap())
		}
	}
	for _, ip := range svc.Spec.ExternalIPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			addrs = append(addrs, a.Unmap())
		}
	}
	return addrs
}

// owning reports whether an endpoint's node owns flows: a serving endpoint
// (nil means serving, as for ready) or a terminating one, whose
// connections still need the path MTU while they drain.
func owning(c discoveryv1.EndpointConditions) bool {
	return c.Serving == nil || *c.Serving || (c.Terminating != nil && *c.Terminating)
}

// slimService keeps what ownersOf reads of a Service.
func slimService(obj any) (any, error) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, UID: s.UID, ResourceVersion: s.ResourceVersion},
		Spec: corev1.ServiceSpec{
			Ports: s.Spec.Ports, ExternalIPs: s.Spec.ExternalIPs, ExternalTrafficPolicy: s.Spec.ExternalTrafficPolicy,
		},
		Status: corev1.ServiceStatus{LoadBalancer: s.Status.LoadBalancer},
	}, nil
}

// slimSlice keeps what ownersOf reads of an EndpointSlice: its Service
// label, and each endpoint's node and conditions.
func slimSlice(obj any) (any, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	eps := make([]discoveryv1.Endpoint, len(es.Endpoints))
	for i, ep := range es.Endpoints {
		eps[i] = discoveryv1.Endpoint{NodeName: ep.NodeName, Conditions: ep.Conditions}
	}
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: es.Name, Namespace: es.Namespace, UID: es.UID, ResourceVersion: es.ResourceVersion,
			Labels: map[string]string{discoveryv1.LabelServiceName: es.Labels[discoveryv1.LabelServiceName]},
		},
		Endpoints: eps,
	}, nil
}
