package peers

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/go-pmtud/go-pmtud/internal/kubetest"
)

// How long a test waits for a condition before it fails: generous, so a
// slow machine is never a failure. Recovery after a restart waits longer:
// the reflector's backoff between attempts grows to 30-60 s.
const (
	waitLong     = 30 * time.Second
	waitRecovery = 150 * time.Second
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.api != nil {
		shared.api.Close()
	}
	os.Exit(code)
}

// ---- Tests that need no server ----

func TestNewKubernetesNamesTheFlag(t *testing.T) {
	dir := t.TempDir()
	good := kubetest.WriteKubeconfig(t, dir, "good", "https://127.0.0.1:1", "token")
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("clusters: [[[\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // not in a cluster, whatever runs the test
	t.Setenv("KUBERNETES_SERVICE_PORT", "")

	for _, tc := range []struct {
		name string
		c    KubernetesConfig
		flag string // "" when c is valid
	}{
		{"valid", KubernetesConfig{Kubeconfig: good}, ""},
		{"valid selector and type", KubernetesConfig{Kubeconfig: good, NodeSelector: "role=edge,zone in (a,b),!spot", AddressType: "ExternalIP"}, ""},
		{"bad selector", KubernetesConfig{Kubeconfig: good, NodeSelector: "role=(edge"}, "--node-selector"},
		{"bad selector value", KubernetesConfig{Kubeconfig: good, NodeSelector: "role=ed ge"}, "--node-selector"},
		{"missing kubeconfig", KubernetesConfig{Kubeconfig: filepath.Join(dir, "nope")}, "--kubeconfig"},
		{"unparsable kubeconfig", KubernetesConfig{Kubeconfig: garbage}, "--kubeconfig"},
		{"not in a cluster", KubernetesConfig{}, "--kubeconfig"},
		{"address type names a host", KubernetesConfig{Kubeconfig: good, AddressType: "Hostname"}, "--node-address-type"},
		{"address type unknown", KubernetesConfig{Kubeconfig: good, AddressType: "internalip"}, "--node-address-type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := NewKubernetes(tc.c, testLogger(t, nil))
			switch {
			case tc.flag == "" && err != nil:
				t.Fatalf("NewKubernetes: %v", err)
			case tc.flag == "" && k == nil:
				t.Fatal("NewKubernetes returned nil and no error")
			case tc.flag != "" && err == nil:
				t.Fatalf("NewKubernetes accepted %+v", tc.c)
			case tc.flag != "" && !strings.HasPrefix(err.Error(), tc.flag):
				t.Fatalf("error %q does not start with the flag %s", err, tc.flag)
			}
		})
	}
}

// TestNodePeers: one peer per node, its first address of the type of each
// family, sorted (IPv6-only first), deduplicated; deleting nodes leave.
func TestNodePeers(t *testing.T) {
	deleted := metav1.Now()
	node := func(name string, del bool, as ...corev1.NodeAddress) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Addresses: as}}
		if del {
			n.DeletionTimestamp = &deleted
		}
		return n
	}
	for _, tc := range []struct {
		name    string
		nodes   []any
		typ     corev1.NodeAddressType
		want    []string
		without int
	}{
		{"none", nil, corev1.NodeInternalIP, nil, 0},
		{"one", []any{node("a", false, internal("198.18.0.1"))}, corev1.NodeInternalIP, []string{"198.18.0.1"}, 0},
		{"sorted across nodes",
			[]any{node("a", false, internal("198.18.0.10")), node("b", false, internal("198.18.0.9")), node("c", false, internal("198.19.0.1"))},
			corev1.NodeInternalIP, []string{"198.18.0.9", "198.18.0.10", "198.19.0.1"}, 0},
		{"the first of several per node", []any{node("a", false, internal("198.18.0.2"), internal("198.18.0.1"))}, corev1.NodeInternalIP, []string{"198.18.0.2"}, 0},
		{"deduplicated",
			[]any{node("a", false, internal("198.18.0.1"), internal("198.18.0.1")), node("b", false, internal("198.18.0.1"))},
			corev1.NodeInternalIP, []string{"198.18.0.1"}, 0},
		{"dual-stack, either order", []any{node("a", false, internal("2001:db8::1"), internal("198.18.0.1"), internal("2001:db8::9")), node("b", false, internal("198.18.0.2"), internal("2001:db8::2"))},
			corev1.NodeInternalIP, []string{"198.18.0.1+2001:db8::1", "198.18.0.2+2001:db8::2"}, 0},
		{"type selects", []any{node("a", false, internal("198.18.0.1"), external("198.18.1.1"))}, corev1.NodeExternalIP, []string{"198.18.1.1"}, 0},
		{"other type only", []any{node("a", false, external("198.18.1.1"))}, corev1.NodeInternalIP, nil, 1},
		{"IPv6-only sorts first", []any{node("a", false, internal("198.18.0.1")), node("b", false, internal("2001:db8::2"))},
			corev1.NodeInternalIP, []string{"2001:db8::2", "198.18.0.1"}, 0},
		{"zoned ignored", []any{node("a", false, internal("fe80::1%eth0"))}, corev1.NodeInternalIP, nil, 1},
		{"IPv4-mapped IPv6 is IPv4", []any{node("a", false, internal("::ffff:198.18.0.1"))}, corev1.NodeInternalIP, []string{"198.18.0.1"}, 0},
		{"not an address", []any{node("a", false, internal("node-a.example"), internal(""))}, corev1.NodeInternalIP, nil, 1},
		{"no addresses", []any{node("a", false)}, corev1.NodeInternalIP, nil, 1},
		{"deleting node leaves", []any{node("a", true, internal("198.18.0.1")), node("b", false, internal("198.18.0.2"))},
			corev1.NodeInternalIP, []string{"198.18.0.2"}, 0},
		{"deleting node not counted", []any{node("a", true)}, corev1.NodeInternalIP, nil, 0},
		{"not a node", []any{"x", node("a", false, internal("198.18.0.1"))}, corev1.NodeInternalIP, []string{"198.18.0.1"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, without := nodePeers(tc.nodes, tc.typ)
			if want := addrs(tc.want...); !slices.Equal(got, want) {
				t.Errorf("addrs = %v, want %v", got, want)
			}
			if got == nil {
				t.Error("addrs is nil, want an empty set")
			}
			if without != tc.without {
				t.Errorf("without = %d, want %d", without, tc.without)
			}
		})
	}
}

// TestReportsUnreachableOnceBeforeSync runs the source against a port where
// nothing listens: it reports the failure once, however often the reflector
// retries, and never applies a set.
func TestReportsUnreachableOnceBeforeSync(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // connections are refused from now on
	kc := kubetest.WriteKubeconfig(t, t.TempDir(), "refused", "https://"+addr, "token")

	var failures atomic.Int32
	rec := runSource(t, KubernetesConfig{Kubeconfig: kc}, func(err error) {
		if err != nil {
			failures.Add(1)
		}
	})
	rec.waitFor(t, waitLong, "an Update with Err and 3 failed attempts", func(us []Update) bool {
		return len(us) > 0 && failures.Load() >= 3
	})
	us := rec.all()
	if len(us) != 1 || us[0].Err == nil || us[0].Peers != nil {
		t.Fatalf("updates = %v, want exactly one with Err", us)
	}
	if !strings.Contains(us[0].Err.Error(), "connection refused") {
		t.Errorf("Err = %v, want it to say the connection was refused", us[0].Err)
	}
	if n := rec.logs.count("level=WARN"); n != 1 {
		t.Errorf("%d Warn lines, want 1:\n%s", n, rec.logs.String())
	}
}

// ---- Tests against a real kube-apiserver ----

// TestFollowsNodes: the first set holds every node that existed before the
// source started (nothing was applied before the sync); then nodes join,
// change addresses and leave, and a node being deleted (finalizer held)
// leaves at once. A node's first InternalIP of each family makes its peer
// (IPv6-only and dual-stack nodes too); nodes without an InternalIP
// contribute nothing.
func TestFollowsNodes(t *testing.T) {
	t.Parallel()
	api := sharedAPI(t)
	c := api.Unique("follows")
	ctx := t.Context()
	sel := map[string]string{"pmtud.test/case": c}
	api.CreateNode(t, c+"-a", sel, nil, internal("198.18.1.1"), internal("2001:db8::1"))
	api.CreateNode(t, c+"-b", sel, nil, internal("198.18.1.2"), internal("198.18.1.3"), external("198.18.101.2"))
	api.CreateNode(t, c+"-c", sel, nil, external("198.18.101.3"))    // no InternalIP
	api.CreateNode(t, c+"-d", sel, nil, internal("2001:db8::4"))     // IPv6 only
	api.CreateNode(t, c+"-other", nil, nil, internal("198.18.1.99")) // not selected

	rec := runSource(t, KubernetesConfig{Kubeconfig: api.Admin, NodeSelector: "pmtud.test/case=" + c}, nil)
	want := addrs("2001:db8::4", "198.18.1.1+2001:db8::1", "198.18.1.2")
	rec.waitSet(t, want)
	if first := rec.all()[0]; first.Err != nil || !slices.Equal(first.Peers, want) {
		t.Fatalf("first update %v, want the full initial set %v", first, want)
	}

	api.CreateNode(t, c+"-f", sel, nil, internal("198.18.1.6"))
	rec.waitSet(t, addrs("2001:db8::4", "198.18.1.1+2001:db8::1", "198.18.1.2", "198.18.1.6"))

	api.SetAddrs(t, c+"-a", internal("198.18.1.11"))
	rec.waitSet(t, addrs("2001:db8::4", "198.18.1.2", "198.18.1.6", "198.18.1.11"))

	api.SetAddrs(t, c+"-d", internal("198.18.1.4"), internal("2001:db8::4"))
	rec.waitSet(t, addrs("198.18.1.2", "198.18.1.4+2001:db8::4", "198.18.1.6", "198.18.1.11"))

	if err := api.Client.CoreV1().Nodes().Delete(ctx, c+"-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitSet(t, addrs("198.18.1.4+2001:db8::4", "198.18.1.6", "198.18.1.11"))

	// A finalizer keeps the object after the delete, with a DeletionTimestamp.
	api.CreateNode(t, c+"-g", sel, []string{"pmtud.test/hold"}, internal("198.18.1.7"))
	rec.waitSet(t, addrs("198.18.1.4+2001:db8::4", "198.18.1.6", "198.18.1.7", "198.18.1.11"))
	if err := api.Client.CoreV1().Nodes().Delete(ctx, c+"-g", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitSet(t, addrs("198.18.1.4+2001:db8::4", "198.18.1.6", "198.18.1.11"))
	n, err := api.Client.CoreV1().Nodes().Get(ctx, c+"-g", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("follows-g after the delete: %v; want it kept by its finalizer", err)
	}
	if n.DeletionTimestamp == nil {
		t.Fatal("follows-g has no DeletionTimestamp after the delete")
	}
	api.Patch(t, c+"-g", "", `{"metadata":{"finalizers":null}}`)

	for _, u := range rec.all() {
		if u.Err != nil {
			t.Errorf("unexpected Update with Err: %v", u.Err)
		}
	}
}

// TestNodeSelector: a node that does not match --node-selector stays out
// until it is labelled, and leaves when the label goes.
func TestNodeSelector(t *testing.T) {
	t.Parallel()
	api := sharedAPI(t)
	c := api.Unique("selector")
	api.CreateNode(t, c+"-a", map[string]string{"pmtud.test/case": c, "pmtud.test/role": "edge"}, nil, internal("198.18.2.1"))
	api.CreateNode(t, c+"-b", map[string]string{"pmtud.test/case": c}, nil, internal("198.18.2.2"))

	rec := runSource(t, KubernetesConfig{Kubeconfig: api.Admin, NodeSelector: "pmtud.test/case=" + c + ",pmtud.test/role in (edge)"}, nil)
	rec.waitSet(t, addrs("198.18.2.1"))

	api.Patch(t, c+"-b", "", `{"metadata":{"labels":{"pmtud.test/role":"edge"}}}`)
	rec.waitSet(t, addrs("198.18.2.1", "198.18.2.2"))

	api.Patch(t, c+"-a", "", `{"metadata":{"labels":{"pmtud.test/role":null}}}`)
	rec.waitSet(t, addrs("198.18.2.2"))
}

// TestExternalIP: AddressType ExternalIP takes the other type.
func TestExternalIP(t *testing.T) {
	t.Parallel()
	api := sharedAPI(t)
	c := api.Unique("external")
	sel := map[string]string{"pmtud.test/case": c}
	api.CreateNode(t, c+"-a", sel, nil, internal("198.18.3.1"), external("198.18.103.1"), external("2001:db8::103:1"))
	api.CreateNode(t, c+"-b", sel, nil, internal("198.18.3.2"))

	rec := runSource(t, KubernetesConfig{Kubeconfig: api.Admin, NodeSelector: "pmtud.test/case=" + c, AddressType: "ExternalIP"}, nil)
	rec.waitSet(t, addrs("198.18.103.1+2001:db8::103:1"))

	api.SetAddrs(t, c+"-b", internal("198.18.3.2"), external("198.18.103.2"))
	rec.waitSet(t, addrs("198.18.103.1+2001:db8::103:1", "198.18.103.2"))
}

// TestRBACNodesReadOnly runs the source with a ServiceAccount token. Before
// the binding exists the API refuses it (one Update with Err); with a
// ClusterRole granting only get, list and watch on nodes, it syncs.
func TestRBACNodesReadOnly(t *testing.T) {
	t.Parallel()
	api := sharedAPI(t)
	c := api.Unique("rbac")
	ctx := t.Context()
	cs := api.Client
	ns, sa, role := c, "go-pmtud", c+"-node-reader"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	exp := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	api.CreateNode(t, c+"-a", map[string]string{"pmtud.test/case": c}, nil, internal("198.18.4.1"))

	kc := kubetest.WriteKubeconfig(t, t.TempDir(), "sa", api.URL, tr.Status.Token)
	rec := runSource(t, KubernetesConfig{Kubeconfig: kc, NodeSelector: "pmtud.test/case=" + c}, nil)
	rec.waitFor(t, waitLong, "an Update with Err (forbidden)", func(us []Update) bool { return len(us) > 0 })
	if us := rec.all(); len(us) != 1 || us[0].Err == nil || !strings.Contains(us[0].Err.Error(), "forbidden") {
		t.Fatalf("updates before the binding = %v, want one Err saying forbidden", us)
	}

	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: sa}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitSet(t, addrs("198.18.4.1"))
	api.CreateNode(t, c+"-b", map[string]string{"pmtud.test/case": c}, nil, internal("198.18.4.2"))
	rec.waitSet(t, addrs("198.18.4.1", "198.18.4.2"))
}

// TestKeepsSetWhileAPIServerDown stops kube-apiserver under a synced source
// (its own server: the shared one stays up): one Update with Err, one Warn
// line, no new set while it is down however often the reflector retries;
// started again on the same port, the source applies the set again and
// follows changes.
func TestKeepsSetWhileAPIServerDown(t *testing.T) {
	t.Parallel()
	api := startAPI(t)
	t.Cleanup(api.Close)
	c := api.Unique("outage")
	sel := map[string]string{"pmtud.test/case": c}
	api.CreateNode(t, c+"-a", sel, nil, internal("198.18.5.1"))
	api.CreateNode(t, c+"-b", sel, nil, internal("198.18.5.2"))

	var failures atomic.Int32
	rec := runSource(t, KubernetesConfig{Kubeconfig: api.Admin, NodeSelector: "pmtud.test/case=" + c}, func(err error) {
		if err != nil {
			failures.Add(1)
		}
	})
	want := addrs("198.18.5.1", "198.18.5.2")
	rec.waitSet(t, want)
	before := len(rec.all())

	api.StopAPIServer(t)
	rec.waitFor(t, waitLong, "an Update with Err and 3 failed attempts", func(us []Update) bool {
		return len(us) > before && failures.Load() >= 3
	})
	if us := rec.all()[before:]; len(us) != 1 || us[0].Err == nil {
		t.Fatalf("updates while down = %v, want exactly one with Err", us)
	}

	api.StartAPIServer(t)
	rec.waitFor(t, waitRecovery, "a set after the restart", func(us []Update) bool {
		return len(us) > before+1 && us[len(us)-1].Err == nil
	})
	us := rec.all()[before:]
	if len(us) != 2 || us[0].Err == nil || us[1].Err != nil || !slices.Equal(us[1].Peers, want) {
		t.Fatalf("updates from the stop on = %v, want [Err, %v]", us, want)
	}
	if n := rec.logs.count("level=WARN"); n != 1 {
		t.Errorf("%d Warn lines, want 1:\n%s", n, rec.logs.String())
	}
	if n := rec.logs.count("watching nodes again"); n != 1 {
		t.Errorf("%d 'watching nodes again' lines, want 1:\n%s", n, rec.logs.String())
	}

	api.SetAddrs(t, c+"-b", internal("198.18.5.3"))
	rec.waitSet(t, addrs("198.18.5.1", "198.18.5.3"))
}

// ---- The source under test ----

// recorder runs a source and keeps what it applies, and checks that apply
// is never called concurrently or after Run returned.
type recorder struct {
	t    *testing.T
	logs *logSink

	mu      sync.Mutex
	updates []Update
	changed chan struct{} // closed and replaced on each update
	inApply atomic.Int32
	done    atomic.Bool
}

func runSource(t *testing.T, c KubernetesConfig, listWatched func(error)) *recorder {
	t.Helper()
	rec := &recorder{t: t, logs: &logSink{out: t.Output()}, changed: make(chan struct{})}
	k, err := NewKubernetes(c, testLogger(t, rec.logs))
	if err != nil {
		t.Fatal(err)
	}
	k.listWatched = listWatched
	ctx, cancel := context.WithCancel(context.Background())
	ret := make(chan error, 1)
	go func() { ret <- k.Run(ctx, rec.apply) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ret; err != nil {
			t.Errorf("Run returned %v, want nil after cancel", err)
		}
		rec.done.Store(true)
		rec.logs.close()
	})
	return rec
}

func (r *recorder) apply(u Update) {
	if r.done.Load() {
		r.t.Errorf("apply(%v) after Run returned", u)
	}
	if n := r.inApply.Add(1); n != 1 {
		r.t.Errorf("%d concurrent calls of apply", n)
	}
	defer r.inApply.Add(-1)
	if u.Err == nil && u.Peers == nil {
		r.t.Errorf("apply(%v): neither Addrs nor Err", u)
	}
	r.mu.Lock()
	r.updates = append(r.updates, u)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

func (r *recorder) all() []Update {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.updates)
}

// waitFor waits until cond holds for the updates so far, re-checking on
// each update and every 100 ms (cond may look at other state), and fails
// the test after d.
func (r *recorder) waitFor(t *testing.T, d time.Duration, what string, cond func([]Update) bool) {
	t.Helper()
	deadline := time.After(d)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		r.mu.Lock()
		us, changed := slices.Clone(r.updates), r.changed
		r.mu.Unlock()
		if cond(us) {
			return
		}
		select {
		case <-changed:
		case <-tick.C:
		case <-deadline:
			t.Fatalf("no %s after %v; updates: %v", what, d, us)
		}
	}
}

// waitSet waits until the last update is the set want.
func (r *recorder) waitSet(t *testing.T, want []Peer) {
	t.Helper()
	r.waitFor(t, waitLong, fmt.Sprintf("set %v", want), func(us []Update) bool {
		return len(us) > 0 && us[len(us)-1].Err == nil && slices.Equal(us[len(us)-1].Peers, want)
	})
}

// logSink passes the source's log lines to the test's output and keeps
// them to be counted. Lines after close are dropped.
type logSink struct {
	out io.Writer

	mu     sync.Mutex
	buf    bytes.Buffer
	closed bool
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return len(p), nil
	}
	s.buf.Write(p)
	return s.out.Write(p)
}

func (s *logSink) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *logSink) count(substr string) int {
	return strings.Count(s.String(), substr)
}

func testLogger(t *testing.T, sink *logSink) *slog.Logger {
	if sink == nil {
		sink = &logSink{out: t.Output()}
		t.Cleanup(sink.close)
	}
	return slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// addrs parses peers (ParsePeer's form: "IPv4+IPv6" for both).
func addrs(ss ...string) []Peer {
	ps := []Peer{}
	for _, s := range ss {
		p, err := ParsePeer(s)
		if err != nil {
			panic(err)
		}
		ps = append(ps, p)
	}
	return ps
}

func internal(a string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a}
}

func external(a string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: a}
}

// ---- A real kube-apiserver on loopback ----

// shared is the server the tests share: it takes about 20 s to start.
// TestMain stops it.
var shared struct {
	once sync.Once
	api  *kubetest.Server
	skip string
	err  error
}

func sharedAPI(t *testing.T) *kubetest.Server {
	t.Helper()
	shared.once.Do(func() {
		kas, skip := kubetest.Find()
		if skip != "" {
			shared.skip = skip
			return
		}
		shared.api, shared.err = kubetest.Start(kas)
	})
	if shared.skip != "" {
		kubetest.SkipOrFail(t, shared.skip)
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.api
}

// startAPI starts a server of the test's own; the caller closes it.
func startAPI(t *testing.T) *kubetest.Server {
	t.Helper()
	kas, skip := kubetest.Find()
	if skip != "" {
		kubetest.SkipOrFail(t, skip)
	}
	api, err := kubetest.Start(kas)
	if err != nil {
		t.Fatal(err)
	}
	return api
}
