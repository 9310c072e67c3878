package peers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// coalesce is the shortest interval between two recomputations of the set:
// a burst of Node events (a node pool scaling, a relist after a reconnect)
// becomes one apply, not one per event.
const coalesce = 100 * time.Millisecond

// KubernetesConfig selects the Node objects whose addresses are peers.
type KubernetesConfig struct {
	// Kubeconfig is the path of a kubeconfig file (its current context is
	// used); "" uses the in-cluster config: the pod's service account token
	// and KUBERNETES_SERVICE_HOST/PORT.
	Kubeconfig string
	// NodeSelector is a label selector in labels.Parse syntax
	// ("role=edge,zone in (a,b)"); "" selects every node. It is sent to the
	// API server, so unselected nodes cost neither bandwidth nor memory.
	NodeSelector string
	// AddressType is the node address type to take from status.addresses:
	// "InternalIP" (the default when "") or "ExternalIP". The other types
	// (Hostname, InternalDNS, ExternalDNS) hold names, not addresses, and
	// are refused.
	AddressType string
}

// Kubernetes is a peer source that watches the API server's Node objects
// and produces the IPv4 addresses of the selected nodes. Create it with
// NewKubernetes, then call Run.
type Kubernetes struct {
	nodes    *rest.RESTClient // core/v1, on nodeScheme
	params   runtime.ParameterCodec
	selector string
	addrType corev1.NodeAddressType
	log      *slog.Logger

	// listWatched, when set (by tests), sees the outcome of every list and
	// watch call the reflector makes, from the reflector's goroutine.
	listWatched func(error)
}

// NewKubernetes validates c and builds the API client. A bad selector, an
// unreadable kubeconfig (or no kubeconfig outside a cluster) and an unknown
// address type are errors that name their flag: --node-selector,
// --kubeconfig, --node-address-type. It reads the kubeconfig (or the service
// account files) and makes no API call.
// The source logs through log with the attribute source=kubernetes.
func NewKubernetes(c KubernetesConfig, log *slog.Logger) (*Kubernetes, error) {
	sel, err := labels.Parse(c.NodeSelector)
	if err != nil {
		return nil, fmt.Errorf("--node-selector %q: %w", c.NodeSelector, err)
	}
	addrType := corev1.NodeAddressType(c.AddressType)
	switch addrType {
	case "":
		addrType = corev1.NodeInternalIP
	case corev1.NodeInternalIP, corev1.NodeExternalIP:
	default:
		return nil, fmt.Errorf("--node-address-type %q: want %s or %s", c.AddressType, corev1.NodeInternalIP, corev1.NodeExternalIP)
	}
	log = log.With("source", "kubernetes")
	cfg, err := restConfig(c.Kubeconfig, log)
	if err != nil {
		return nil, err
	}
	k := &Kubernetes{selector: sel.String(), addrType: addrType, log: log}
	if k.nodes, k.params, err = apiClient(cfg, corev1.SchemeGroupVersion, "/api", corev1.AddToScheme); err != nil {
		return nil, fmt.Errorf("--kubeconfig %q: %w", c.Kubeconfig, err)
	}
	return k, nil
}

// restConfig reads the kubeconfig at path, or the in-cluster config when
// path is "", and sets what every client of the daemon shares: its user
// agent, protobuf, and warnings logged to log at debug level.
func restConfig(path string, log *slog.Logger) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if path == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig not set and no in-cluster config: %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %q: %w", path, err)
		}
	}
	cfg.UserAgent = "go-pmtud"
	// Protobuf is several times smaller and cheaper to decode than JSON for
	// Node objects, whose status (images, conditions) dwarfs the addresses.
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	cfg.WarningHandlerWithContext = warningLogger{log}
	return cfg, nil
}

// apiClient returns a REST client for the API group version gv (at apiPath,
// "/api" for core, "/apis" for the others) whose scheme knows only what add
// registers: the types a source reads, with meta/v1's list and watch
// types. client-go's clientset would register every API group: measured,
// a binary that links it peaks at 18 MiB RSS on start against 8.4 MiB, and
// is 20 MB larger.
func apiClient(cfg *rest.Config, gv schema.GroupVersion, apiPath string, add func(*runtime.Scheme) error) (*rest.RESTClient, runtime.ParameterCodec, error) {
	scheme := runtime.NewScheme()
	if err := add(scheme); err != nil {
		return nil, nil, err
	}
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &gv
	c.APIPath = apiPath
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	rc, err := rest.RESTClientFor(c)
	return rc, runtime.NewParameterCodec(scheme), err
}

// list lists the selected nodes, as the typed client's List does.
func (k *Kubernetes) list(ctx context.Context, o metav1.ListOptions) (*corev1.NodeList, error) {
	l := &corev1.NodeList{}
	err := k.nodes.Get().Resource("nodes").VersionedParams(&o, k.params).
		Timeout(timeoutOf(o)).Do(ctx).Into(l)
	return l, err
}

// watch watches the selected nodes, as the typed client's Watch does.
func (k *Kubernetes) watch(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	o.Watch = true
	return k.nodes.Get().Resource("nodes").VersionedParams(&o, k.params).
		Timeout(timeoutOf(o)).Watch(ctx)
}

// timeoutOf is the client-side timeout of a list or watch: the server-side
// one the reflector asked for, or none.
func timeoutOf(o metav1.ListOptions) time.Duration {
	if o.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*o.TimeoutSeconds) * time.Second
}

// Run watches the selected Node objects until ctx is done, and returns nil
// then, at once; client-go's goroutines end on their own shortly after. The
// error it may return otherwise is a setup failure. Run may be called again
// after it returned.
//
// apply is called from Run's goroutine only, one call at a time, and never
// after Run returned. The first set comes after the informer's initial list
// has been delivered in full; later ones when the set changes, at most one
// every 100 ms. When a list or watch call fails (API server unreachable,
// forbidden, overloaded), apply gets one Update with Err, also before the
// first set, and the last set stays in force; after the next successful
// call it gets the current set again. Run logs one Warn line per outage and
// one Info line per recovery; client-go's own retries are logged at debug
// only.
//
// Cost: one long-lived watch of the selected nodes (protobuf), and their
// full list at the start and whenever a watch cannot resume where it broke.
// The cache keeps only the name, deletion timestamp and addresses of each
// selected node, a few hundred bytes per node.
func (k *Kubernetes) Run(ctx context.Context, apply func(Update)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &run{log: k.log, what: "nodes", listWatched: k.listWatched, wake: make(chan struct{}, 1)}

	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = k.selector
			l, err := k.list(ctx, o)
			r.observe(ctx, err)
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = k.selector
			w, err := k.watch(ctx, o)
			r.observe(ctx, err)
			return w, err
		},
	}
	inf := cache.NewSharedIndexInformer(lw, &corev1.Node{}, 0, cache.Indexers{})
	if err := inf.SetTransform(slimNode); err != nil {
		return err
	}
	// Replaces the default handler, which logs every failed attempt.
	if err := inf.SetWatchErrorHandlerWithContext(r.watchError); err != nil {
		return err
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { r.poke() },
		UpdateFunc: func(o, n any) {
			if addrsChanged(o, n) {
				r.poke()
			}
		},
		DeleteFunc: func(any) { r.poke() },
	})
	if err != nil {
		return err
	}

	// Run does not wait for the informer to stop: a reflector backing off
	// before its first list sleeps through a cancel (up to a minute). Once
	// ctx is done nothing it does calls apply.
	go inf.RunWithContext(klog.NewContext(ctx, klogLogger(k.log)))

	synced := reg.HasSyncedChecker().Done()
	var (
		isSynced  bool
		failing   bool   // an Update with Err was applied, no success since
		last      []Peer // the last set applied; nil before the first and after an outage
		lastNames map[string][]netip.Addr
		anySet    bool // a set was applied
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
		case <-synced:
			synced, isSynced = nil, true
		}

		if err := r.failure(); err != nil {
			if !failing {
				failing = true
				k.log.Warn("kubernetes: cannot list/watch nodes, the peer set stays as it is", "err", err)
				apply(Update{Err: fmt.Errorf("kubernetes: list/watch nodes: %w", err)})
			}
		} else {
			if failing {
				failing = false
				k.log.Info("kubernetes: listing/watching nodes again")
				last = nil // apply the current set even if unchanged
			}
			if isSynced {
				objs := inf.GetStore().List()
				ps, without := nodePeers(objs, k.addrType)
				names := nodeNames(objs, k.addrType)
				if last == nil || !slices.Equal(ps, last) || !maps.EqualFunc(names, lastNames, slices.Equal) {
					k.log.Debug("peer set", "peers", len(ps), "nodes_without_address", without, "address_type", k.addrType)
					if !anySet {
						anySet = true
						k.log.Info("kubernetes nodes synced", "peers", len(ps), "nodes_without_address", without)
					}
					last, lastNames = ps, names
					apply(Update{Peers: slices.Clone(ps), Names: names})
				}
			}
		}

		select {
		case <-ctx.Done():
			return nil
		case <-time.After(coalesce):
		}
	}
}

// run is the state one call of Run shares between an informer's goroutines
// and its own loop.
type run struct {
	log         *slog.Logger
	what        string        // the resource, for the debug log
	listWatched func(error)   // tests: see Kubernetes.listWatched
	wake        chan struct{} // capacity 1: a pending recomputation

	mu  sync.Mutex
	err error // outcome of the last list or watch call
}

func (r *run) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// observe records the outcome of a list or watch call, and wakes the loop
// when it turns from success to failure or back.
func (r *run) observe(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return // Run is stopping: the error is ours
	}
	if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
		err = nil // the server answered; the reflector relists
	}
	if r.listWatched != nil {
		r.listWatched(err)
	}
	if err != nil {
		r.log.Debug("list/watch failed", "resource", r.what, "err", err)
	}
	r.mu.Lock()
	changed := (r.err == nil) != (err == nil)
	r.err = err
	r.mu.Unlock()
	if changed {
		r.poke()
	}
}

// watchError handles the errors that end the reflector's list-and-watch.
// The list and watch calls have been observed already; this sees the ones
// that happen on an open watch (a broken stream, an error event).
func (r *run) watchError(ctx context.Context, _ *cache.Reflector, err error) {
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return // a watch closed; the reflector opens the next one
	}
	r.observe(ctx, err)
}

func (r *run) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// nodePeers returns a Peer per node that is not being deleted (no
// DeletionTimestamp): its first address of each family of type t, in the
// order of its status (the kubelet lists the primary first), so a
// dual-stack node is one peer with both. They are sorted and
// deduplicated; without counts the nodes with no such address. Objects
// other than *corev1.Node are skipped.
func nodePeers(objs []any, t corev1.NodeAddressType) (ps []Peer, without int) {
	ps = []Peer{}
	for _, o := range objs {
		n, ok := o.(*corev1.Node)
		if !ok || n.DeletionTimestamp != nil {
			continue
		}
		if p, ok := nodePeer(n, t); ok {
			ps = append(ps, p)
		} else {
			without++
		}
	}
	slices.SortFunc(ps, Peer.compare)
	return slices.Compact(ps), without
}

// nodePeer returns n's first address of each family of type t.
func nodePeer(n *corev1.Node, t corev1.NodeAddressType) (p Peer, ok bool) {
	for _, a := range n.Status.Addresses {
		if a.Type != t {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil || ip.Zone() != "" {
			continue
		}
		ip = ip.Unmap()
		switch {
		case ip.Is4() && !p.V4.IsValid():
			p.V4 = ip
		case ip.Is6() && !p.V6.IsValid():
			p.V6 = ip
		}
	}
	return p, p.V4.IsValid() || p.V6.IsValid()
}

// nodeNames maps the name of each node that nodePeers takes a peer from
// to the peer's addresses.
func nodeNames(objs []any, t corev1.NodeAddressType) map[string][]netip.Addr {
	names := map[string][]netip.Addr{}
	for _, o := range objs {
		n, ok := o.(*corev1.Node)
		if !ok || n.DeletionTimestamp != nil {
			continue
		}
		if p, ok := nodePeer(n, t); ok {
			names[n.Name] = p.Addrs()
		}
	}
	return names
}

// slimNode keeps the parts of a Node that nodeAddrs reads (and the
// metadata the cache keys on), so the cache does not hold images,
// conditions and labels of every node.
func slimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil // a cache.DeletedFinalStateUnknown
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:              n.Name,
			UID:               n.UID,
			ResourceVersion:   n.ResourceVersion,
			DeletionTimestamp: n.DeletionTimestamp,
		},
		Status: corev1.NodeStatus{Addresses: n.Status.Addresses},
	}, nil
}

// addrsChanged reports whether an update of a Node can change the set.
func addrsChanged(o, n any) bool {
	on, ok1 := o.(*corev1.Node)
	nn, ok2 := n.(*corev1.Node)
	return !ok1 || !ok2 ||
		(on.DeletionTimestamp == nil) != (nn.DeletionTimestamp == nil) ||
		!slices.Equal(on.Status.Addresses, nn.Status.Addresses)
}

// klogLogger is the logger Run gives client-go through the informer's
// context. client-go logs through klog, whose process-wide default writes to
// stderr: a reflector that cannot reach the API server logs every retry, at
// error level. Run reports an outage itself (one Warn, one Info), so
// client-go's lines are only worth keeping for debugging, at debug level.
// The informer, its reflector, the REST client's requests and watch streams
// all take their logger from that context, so klog's process-wide logger
// (klog.SetLogger, not safe to change while other goroutines log) is left
// alone.
func klogLogger(log *slog.Logger) klog.Logger {
	return logr.FromSlogHandler(debugHandler{log.Handler()})
}

// debugHandler passes klog's records to h at debug level, the original
// level kept in the attribute klog_level. Verbose records (klog V(1) and
// above) are dropped: they are client-go's tracing.
type debugHandler struct{ h slog.Handler }

func (d debugHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo && d.h.Enabled(ctx, slog.LevelDebug)
}

func (d debugHandler) Handle(ctx context.Context, r slog.Record) error {
	r2 := slog.NewRecord(r.Time, slog.LevelDebug, r.Message, r.PC)
	r2.AddAttrs(slog.String("klog_level", r.Level.String()))
	r.Attrs(func(a slog.Attr) bool { r2.AddAttrs(a); return true })
	return d.h.Handle(ctx, r2)
}

func (d debugHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return debugHandler{d.h.WithAttrs(as)}
}

func (d debugHandler) WithGroup(name string) slog.Handler {
	return debugHandler{d.h.WithGroup(name)}
}

// warningLogger logs the API server's warning headers (deprecations) at
// debug level instead of klog's default of one stderr line per response.
type warningLogger struct{ log *slog.Logger }

func (w warningLogger) HandleWarningHeaderWithContext(ctx context.Context, code int, agent, text string) {
	w.log.DebugContext(ctx, "API server warning", "code", code, "agent", agent, "text", text)
}
