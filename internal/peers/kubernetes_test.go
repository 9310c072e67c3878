package peers

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// How long a test waits for a condition before it fails: generous, so a
// slow machine is never a failure. Recovery after a restart waits longer:
// the reflector's backoff between attempts grows to 30-60 s.
const (
	waitLong     = 30 * time.Second
	waitRecovery = 150 * time.Second
)

const kubeVersion = "v1.37.2"

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.api != nil {
		shared.api.close()
	}
	os.Exit(code)
}

// ---- Tests that need no server ----

func TestNewKubernetesNamesTheFlag(t *testing.T) {
	dir := t.TempDir()
	good := writeKubeconfig(t, dir, "good", "https://127.0.0.1:1", "token")
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

func TestNodeAddrs(t *testing.T) {
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
		{"several per node", []any{node("a", false, internal("198.18.0.2"), internal("198.18.0.1"))}, corev1.NodeInternalIP, []string{"198.18.0.1", "198.18.0.2"}, 0},
		{"deduplicated",
			[]any{node("a", false, internal("198.18.0.1"), internal("198.18.0.1")), node("b", false, internal("198.18.0.1"))},
			corev1.NodeInternalIP, []string{"198.18.0.1"}, 0},
		{"type selects", []any{node("a", false, internal("198.18.0.1"), external("198.18.1.1"))}, corev1.NodeExternalIP, []string{"198.18.1.1"}, 0},
		{"other type only", []any{node("a", false, external("198.18.1.1"))}, corev1.NodeInternalIP, nil, 1},
		{"IPv6 ignored", []any{node("a", false, internal("2001:db8::1"), internal("198.18.0.1")), node("b", false, internal("2001:db8::2"))},
			corev1.NodeInternalIP, []string{"198.18.0.1"}, 1},
		{"IPv4-mapped IPv6 is IPv4", []any{node("a", false, internal("::ffff:198.18.0.1"))}, corev1.NodeInternalIP, []string{"198.18.0.1"}, 0},
		{"not an address", []any{node("a", false, internal("node-a.example"), internal(""))}, corev1.NodeInternalIP, nil, 1},
		{"no addresses", []any{node("a", false)}, corev1.NodeInternalIP, nil, 1},
		{"deleting node leaves", []any{node("a", true, internal("198.18.0.1")), node("b", false, internal("198.18.0.2"))},
			corev1.NodeInternalIP, []string{"198.18.0.2"}, 0},
		{"deleting node not counted", []any{node("a", true)}, corev1.NodeInternalIP, nil, 0},
		{"not a node", []any{"x", node("a", false, internal("198.18.0.1"))}, corev1.NodeInternalIP, []string{"198.18.0.1"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, without := nodeAddrs(tc.nodes, tc.typ)
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
	kc := writeKubeconfig(t, t.TempDir(), "refused", "https://"+addr, "token")

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
	if len(us) != 1 || us[0].Err == nil || us[0].Addrs != nil {
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
// leaves at once. IPv6 addresses and nodes without an InternalIP contribute
// nothing.
func TestFollowsNodes(t *testing.T) {
	t.Parallel()
	api := sharedAPI(t)
	c := api.unique("follows")
	ctx := t.Context()
	sel := map[string]string{"pmtud.test/case": c}
	api.createNode(t, c+"-a", sel, nil, internal("198.18.1.1"), internal("2001:db8::1"))
	api.createNode(t, c+"-b", sel, nil, internal("198.18.1.2"), internal("198.18.1.3"), external("198.18.101.2"))
	api.createNode(t, c+"-c", sel, nil, external("198.18.101.3"))    // no InternalIP
	api.createNode(t, c+"-d", sel, nil, internal("2001:db8::4"))     // IPv6 only
	api.createNode(t, c+"-other", nil, nil, internal("198.18.1.99")) // not selected

	rec := runSource(t, KubernetesConfig{Kubeconfig: api.admin, NodeSelector: "pmtud.test/case=" + c}, nil)
	want := addrs("198.18.1.1", "198.18.1.2", "198.18.1.3")
	rec.waitSet(t, want)
	if first := rec.all()[0]; first.Err != nil || !slices.Equal(first.Addrs, want) {
		t.Fatalf("first update %v, want the full initial set %v", first, want)
	}

	api.createNode(t, c+"-f", sel, nil, internal("198.18.1.6"))
	rec.waitSet(t, addrs("198.18.1.1", "198.18.1.2", "198.18.1.3", "198.18.1.6"))

	api.setAddrs(t, c+"-a", internal("198.18.1.11"))
	rec.waitSet(t, addrs("198.18.1.2", "198.18.1.3", "198.18.1.6", "198.18.1.11"))

	api.setAddrs(t, c+"-d", internal("198.18.1.4"), internal("2001:db8::4"))
	rec.waitSet(t, addrs("198.18.1.2", "198.18.1.3", "198.18.1.4", "198.18.1.6", "198.18.1.11"))

	if err := api.client.CoreV1().Nodes().Delete(ctx, c+"-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitSet(t, addrs("198.18.1.4", "198.18.1.6", "198.18.1.11"))

	// A finalizer keeps the object after the delete, with a DeletionTimestamp.
	api.createNode(t, c+"-g", sel, []string{"pmtud.test/hold"}, internal("198.18.1.7"))
	rec.waitSet(t, addrs("198.18.1.4", "198.18.1.6", "198.18.1.7", "198.18.1.11"))
	if err := api.client.CoreV1().Nodes().Delete(ctx, c+"-g", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitSet(t, addrs("198.18.1.4", "198.18.1.6", "198.18.1.11"))
	n, err := api.client.CoreV1().Nodes().Get(ctx, c+"-g", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("follows-g after the delete: %v; want it kept by its finalizer", err)
	}
	if n.DeletionTimestamp == nil {
		t.Fatal("follows-g has no DeletionTimestamp after the delete")
	}
	api.patch(t, c+"-g", "", `{"metadata":{"finalizers":null}}`)

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
	c := api.unique("selector")
	api.createNode(t, c+"-a", map[string]string{"pmtud.test/case": c, "pmtud.test/role": "edge"}, nil, internal("198.18.2.1"))
	api.createNode(t, c+"-b", map[string]string{"pmtud.test/case": c}, nil, internal("198.18.2.2"))

	rec := runSource(t, KubernetesConfig{Kubeconfig: api.admin, NodeSelector: "pmtud.test/case=" + c + ",pmtud.test/role in (edge)"}, nil)
	rec.waitSet(t, addrs("198.18.2.1"))

	api.patch(t, c+"-b", "", `{"metadata":{"labels":{"pmtud.test/role":"edge"}}}`)
	rec.waitSet(t, addrs("198.18.2.1", "198.18.2.2"))

	api.patch(t, c+"-a", "", `{"metadata":{"labels":{"pmtud.test/role":null}}}`)
	rec.waitSet(t, addrs("198.18.2.2"))
}

// TestExternalIP: AddressType ExternalIP takes the other type.
func TestExternalIP(t *testing.T) {
	t.Parallel()
	api := sharedAPI(t)
	c := api.unique("external")
	sel := map[string]string{"pmtud.test/case": c}
	api.createNode(t, c+"-a", sel, nil, internal("198.18.3.1"), external("198.18.103.1"), external("2001:db8::103:1"))
	api.createNode(t, c+"-b", sel, nil, internal("198.18.3.2"))

	rec := runSource(t, KubernetesConfig{Kubeconfig: api.admin, NodeSelector: "pmtud.test/case=" + c, AddressType: "ExternalIP"}, nil)
	rec.waitSet(t, addrs("198.18.103.1"))

	api.setAddrs(t, c+"-b", internal("198.18.3.2"), external("198.18.103.2"))
	rec.waitSet(t, addrs("198.18.103.1", "198.18.103.2"))
}

// TestRBACNodesReadOnly runs the source with a ServiceAccount token. Before
// the binding exists the API refuses it (one Update with Err); with a
// ClusterRole granting only get, list and watch on nodes, it syncs.
func TestRBACNodesReadOnly(t *testing.T) {
	t.Parallel()
	api := sharedAPI(t)
	c := api.unique("rbac")
	ctx := t.Context()
	cs := api.client
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
	api.createNode(t, c+"-a", map[string]string{"pmtud.test/case": c}, nil, internal("198.18.4.1"))

	kc := writeKubeconfig(t, t.TempDir(), "sa", api.url, tr.Status.Token)
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
	api.createNode(t, c+"-b", map[string]string{"pmtud.test/case": c}, nil, internal("198.18.4.2"))
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
	t.Cleanup(api.close)
	c := api.unique("outage")
	sel := map[string]string{"pmtud.test/case": c}
	api.createNode(t, c+"-a", sel, nil, internal("198.18.5.1"))
	api.createNode(t, c+"-b", sel, nil, internal("198.18.5.2"))

	var failures atomic.Int32
	rec := runSource(t, KubernetesConfig{Kubeconfig: api.admin, NodeSelector: "pmtud.test/case=" + c}, func(err error) {
		if err != nil {
			failures.Add(1)
		}
	})
	want := addrs("198.18.5.1", "198.18.5.2")
	rec.waitSet(t, want)
	before := len(rec.all())

	api.stopAPIServer(t)
	rec.waitFor(t, waitLong, "an Update with Err and 3 failed attempts", func(us []Update) bool {
		return len(us) > before && failures.Load() >= 3
	})
	if us := rec.all()[before:]; len(us) != 1 || us[0].Err == nil {
		t.Fatalf("updates while down = %v, want exactly one with Err", us)
	}

	api.startAPIServer(t)
	rec.waitFor(t, waitRecovery, "a set after the restart", func(us []Update) bool {
		return len(us) > before+1 && us[len(us)-1].Err == nil
	})
	us := rec.all()[before:]
	if len(us) != 2 || us[0].Err == nil || us[1].Err != nil || !slices.Equal(us[1].Addrs, want) {
		t.Fatalf("updates from the stop on = %v, want [Err, %v]", us, want)
	}
	if n := rec.logs.count("level=WARN"); n != 1 {
		t.Errorf("%d Warn lines, want 1:\n%s", n, rec.logs.String())
	}
	if n := rec.logs.count("watching nodes again"); n != 1 {
		t.Errorf("%d 'watching nodes again' lines, want 1:\n%s", n, rec.logs.String())
	}

	api.setAddrs(t, c+"-b", internal("198.18.5.3"))
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
	if u.Err == nil && u.Addrs == nil {
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
func (r *recorder) waitSet(t *testing.T, want []netip.Addr) {
	t.Helper()
	r.waitFor(t, waitLong, fmt.Sprintf("set %v", want), func(us []Update) bool {
		return len(us) > 0 && us[len(us)-1].Err == nil && slices.Equal(us[len(us)-1].Addrs, want)
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

func addrs(ss ...string) []netip.Addr {
	as := []netip.Addr{}
	for _, s := range ss {
		as = append(as, netip.MustParseAddr(s))
	}
	return as
}

func internal(a string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a}
}

func external(a string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: a}
}

// ---- A real kube-apiserver on loopback ----

// kubeAPI is an etcd and a kube-apiserver listening on 127.0.0.1 only, in
// a temporary directory, with an admin token (system:masters) for setup.
type kubeAPI struct {
	dir    string
	url    string // https://127.0.0.1:port
	admin  string // kubeconfig path, admin token
	client *kubernetes.Clientset

	kasBin  string
	kasArgs []string

	seq atomic.Int32 // for unique

	mu        sync.Mutex
	etcd      *exec.Cmd
	kas       *exec.Cmd
	kasExited chan struct{} // closed when kas has been reaped
}

const adminToken = "pmtud-test-admin-token"

// shared is the server the tests share: it takes about 20 s to start.
// TestMain stops it.
var shared struct {
	once sync.Once
	api  *kubeAPI
	skip string
	err  error
}

func sharedAPI(t *testing.T) *kubeAPI {
	t.Helper()
	shared.once.Do(func() {
		kas, skip := findBinaries()
		if skip != "" {
			shared.skip = skip
			return
		}
		shared.api, shared.err = newKubeAPI(kas)
	})
	if shared.skip != "" {
		skipOrFail(t, shared.skip)
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.api
}

// startAPI starts a server of the test's own; the caller closes it.
func startAPI(t *testing.T) *kubeAPI {
	t.Helper()
	kas, skip := findBinaries()
	if skip != "" {
		skipOrFail(t, skip)
	}
	api, err := newKubeAPI(kas)
	if err != nil {
		t.Fatal(err)
	}
	return api
}

// skipOrFail skips the test for the reason skip, or fails it where
// PMTUD_REQUIRE_KUBE_APISERVER is set (CI sets it): there the Kubernetes
// source must not go untested.
func skipOrFail(t *testing.T, skip string) {
	t.Helper()
	if os.Getenv("PMTUD_REQUIRE_KUBE_APISERVER") != "" {
		t.Fatal("PMTUD_REQUIRE_KUBE_APISERVER is set: " + skip)
	}
	t.Skip(skip)
}

// findBinaries returns the kube-apiserver binary's path, or why the test
// must skip.
func findBinaries() (kas, skip string) {
	const how = "run .ci/kube-apiserver.sh to build it (a few minutes, cached), or set PMTUD_KUBE_APISERVER"
	kas = os.Getenv("PMTUD_KUBE_APISERVER")
	if kas == "" {
		gopath := ""
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
		if gopath == "" {
			return "", "no kube-apiserver: `go env GOPATH` failed; " + how
		}
		kas = filepath.Join(gopath, "bin", "kube-apiserver-"+kubeVersion)
	}
	if _, err := os.Stat(kas); err != nil {
		return "", fmt.Sprintf("no kube-apiserver %s at %s: %s", kubeVersion, kas, how)
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		return "", "no etcd in PATH: run .ci/kube-apiserver.sh (apt-get install etcd-server)"
	}
	return kas, ""
}

func newKubeAPI(kasBin string) (api *kubeAPI, err error) {
	dir, err := os.MkdirTemp("", "pmtud-kube-")
	if err != nil {
		return nil, err
	}
	api = &kubeAPI{dir: dir, kasBin: kasBin}
	defer func() {
		if err != nil {
			api.close()
			api = nil
		}
	}()
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	api.url = "https://127.0.0.1:" + strconv.Itoa(ports[2])

	api.etcd, err = startProcess(filepath.Join(dir, "etcd.log"), "etcd",
		"--name", "default", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL)
	if err != nil {
		return nil, err
	}

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"sa.key":     pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}),
		"sa.pub":     pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}),
		"tokens.csv": []byte(adminToken + ",admin,admin,system:masters\n"),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, err
		}
	}
	api.kasArgs = []string{
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(ports[2]),
		"--cert-dir", filepath.Join(dir, "certs"),
		"--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range", "198.18.240.0/24",
	}
	if err := api.startKAS(); err != nil {
		return nil, err
	}
	api.admin = filepath.Join(dir, "admin.kubeconfig")
	if err := writeKubeconfigFile(api.admin, api.url, adminToken); err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", api.admin)
	if err != nil {
		return nil, err
	}
	api.client, err = kubernetes.NewForConfig(cfg)
	return api, err
}

// startKAS starts kube-apiserver and waits until it is ready.
func (a *kubeAPI) startKAS() error {
	kas, err := startProcess(filepath.Join(a.dir, "kube-apiserver.log"), a.kasBin, a.kasArgs...)
	if err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { kas.Wait(); close(exited) }() //nolint:errcheck // killed on purpose
	a.mu.Lock()
	a.kas, a.kasExited = kas, exited
	a.mu.Unlock()

	hc := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(120 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("kube-apiserver exited: %v\n%s", kas.ProcessState, a.logTail("kube-apiserver.log"))
		case <-time.After(250 * time.Millisecond):
		}
		req, _ := http.NewRequest("GET", a.url+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := hc.Do(req)
		if err != nil {
			last = err.Error()
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = fmt.Sprintf("%s: %s", resp.Status, body)
	}
	return fmt.Errorf("kube-apiserver not ready after 120 s: %s\n%s", last, a.logTail("kube-apiserver.log"))
}

// unique returns a name for a test's objects that no other test (nor
// another run with -count) uses: tests that share a server select their
// nodes by a label with this value.
func (a *kubeAPI) unique(base string) string {
	return fmt.Sprintf("%s-%d", base, a.seq.Add(1))
}

// stopAPIServer kills kube-apiserver (etcd stays up).
func (a *kubeAPI) stopAPIServer(t *testing.T) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopKAS()
}

func (a *kubeAPI) stopKAS() {
	if a.kas != nil {
		a.kas.Process.Kill()
		<-a.kasExited // startKAS's goroutine reaps it
		a.kas = nil
	}
}

// startAPIServer starts kube-apiserver again, on the same port.
func (a *kubeAPI) startAPIServer(t *testing.T) {
	t.Helper()
	if err := a.startKAS(); err != nil {
		t.Fatal(err)
	}
}

// close kills both processes and removes the directory.
func (a *kubeAPI) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopKAS()
	if a.etcd != nil {
		a.etcd.Process.Kill()
		a.etcd.Wait() //nolint:errcheck // killed on purpose
		a.etcd = nil
	}
	os.RemoveAll(a.dir)
}

func (a *kubeAPI) logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(a.dir, name))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// createNode creates a Node and sets its status addresses (status is a
// subresource: a create ignores it).
func (a *kubeAPI) createNode(t *testing.T, name string, labels map[string]string, finalizers []string, as ...corev1.NodeAddress) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Finalizers: finalizers}}
	if _, err := a.client.CoreV1().Nodes().Create(t.Context(), n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	a.setAddrs(t, name, as...)
}

// setAddrs replaces a node's status.addresses.
func (a *kubeAPI) setAddrs(t *testing.T, name string, as ...corev1.NodeAddress) {
	t.Helper()
	b, err := json.Marshal(map[string]any{"status": map[string]any{"addresses": as}})
	if err != nil {
		t.Fatal(err)
	}
	a.patch(t, name, "status", string(b))
}

// patch applies a JSON merge patch to a node or (sub = "status") its status.
func (a *kubeAPI) patch(t *testing.T, name, sub, patch string) {
	t.Helper()
	var subs []string
	if sub != "" {
		subs = []string{sub}
	}
	if _, err := a.client.CoreV1().Nodes().Patch(t.Context(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, subs...); err != nil {
		t.Fatalf("patch node %s %s %s: %v", name, sub, patch, err)
	}
}

func startProcess(logPath, bin string, args ...string) (*exec.Cmd, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own descriptor
	c := exec.Command(bin, args...)
	c.Stdout, c.Stderr = f, f
	c.SysProcAttr = dieWithParent()
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	return c, nil
}

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func writeKubeconfig(t *testing.T, dir, name, server, token string) string {
	t.Helper()
	path := filepath.Join(dir, name+".kubeconfig")
	if err := writeKubeconfigFile(path, server, token); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeKubeconfigFile writes a kubeconfig for server with a bearer token,
// not verifying the server's self-signed certificate.
func writeKubeconfigFile(path, server, token string) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: test
  user:
    token: %s
contexts:
- name: test
  context:
    cluster: test
    user: test
current-context: test
`, server, token)
	return os.WriteFile(path, []byte(kc), 0o600)
}
