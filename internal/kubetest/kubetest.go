// Package kubetest runs a real kube-apiserver with etcd on loopback for
// tests: the Kubernetes peer source's and the daemon's. The binary is built
// by .ci/kube-apiserver.sh ($(go env GOPATH)/bin/kube-apiserver-v1.37.2,
// or PMTUD_KUBE_APISERVER); etcd comes from Debian's etcd-server. A server
// starts in about 7-20 s and uses about 300 MiB; Close kills both
// processes and removes their files. Nothing here is used by the daemon.
package kubetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Version is the kube-apiserver release the tests run against.
const Version = "v1.37.2"

// Server is a running etcd and kube-apiserver on loopback, with an admin
// kubeconfig and client.
// Server is an etcd and a kube-apiserver listening on 127.0.0.1 only, in
// a temporary directory, with an admin token (system:masters) for setup.
type Server struct {
	dir    string
	URL    string // https://127.0.0.1:port
	Admin  string // kubeconfig path, admin token
	Client *kubernetes.Clientset

	kasBin  string
	kasArgs []string

	seq atomic.Int32 // for Unique

	mu        sync.Mutex
	etcd      *exec.Cmd
	kas       *exec.Cmd
	kasExited chan struct{} // closed when kas has been reaped
}

const adminToken = "pmtud-test-admin-token"

// Find returns the kube-apiserver binary's path, or why the test
// must skip.
func Find() (kas, skip string) {
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
		kas = filepath.Join(gopath, "bin", "kube-apiserver-"+Version)
	}
	if _, err := os.Stat(kas); err != nil {
		return "", fmt.Sprintf("no kube-apiserver %s at %s: %s", Version, kas, how)
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		return "", "no etcd in PATH: run .ci/kube-apiserver.sh (apt-get install etcd-server)"
	}
	return kas, ""
}

func Start(kasBin string) (api *Server, err error) {
	// On tmpfs where there is one: etcd fsyncs every write, and on a busy
	// 2-core machine (CI runs packages in parallel) that made requests time
	// out. The data is thrown away anyway.
	base := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "pmtud-kube-")
	if err != nil {
		return nil, err
	}
	api = &Server{dir: dir, kasBin: kasBin}
	defer func() {
		if err != nil {
			api.Close()
			api = nil
		}
	}()
	// A port another test process took between freePorts and the bind
	// would make etcd exit, and the API server would then talk to that
	// process's etcd (and time out once it is gone): wait until our own
	// etcd answers, and pick new ports if it died.
	var ports []int
	var etcdURL string
	for attempt := 0; ; attempt++ {
		if ports, err = freePorts(3); err != nil {
			return nil, err
		}
		etcdURL = "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		api.etcd, err = startProcess(filepath.Join(dir, "etcd.log"), "etcd",
			"--name", "default", "--data-dir", filepath.Join(dir, fmt.Sprintf("etcd%d", attempt)),
			"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
			"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", "default="+peerURL)
		if err != nil {
			return nil, err
		}
		if err = waitEtcd(api.etcd, etcdURL); err == nil {
			break
		}
		api.etcd.Process.Kill()
		api.etcd.Wait() //nolint:errcheck // killed on purpose
		api.etcd = nil
		if attempt == 2 {
			return nil, fmt.Errorf("etcd did not start: %w\n%s", err, api.logTail("etcd.log"))
		}
	}
	api.URL = "https://127.0.0.1:" + strconv.Itoa(ports[2])

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
	api.Admin = filepath.Join(dir, "admin.kubeconfig")
	if err := writeKubeconfigFile(api.Admin, api.URL, adminToken); err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Admin)
	if err != nil {
		return nil, err
	}
	api.Client, err = kubernetes.NewForConfig(cfg)
	return api, err
}

// waitEtcd waits up to 30 s until the etcd process cmd answers /health at
// url, and fails at once if it exits.
func waitEtcd(cmd *exec.Cmd, url string) error {
	// An exited child stays a zombie until Close reaps it: read its state
	// rather than signal it.
	stat := fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid)
	hc := &http.Client{Timeout: 2 * time.Second}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if b, err := os.ReadFile(stat); err != nil || strings.Contains(string(b), ") Z ") {
			return errors.New("etcd exited (its port taken?)")
		}
		resp, err := hc.Get(url + "/health")
		if err != nil {
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"health":"true"`) {
			// Answered: by ours only if it is still alive a moment later
			// (a failed bind makes etcd exit within milliseconds).
			time.Sleep(200 * time.Millisecond)
			if b, err := os.ReadFile(stat); err != nil || strings.Contains(string(b), ") Z ") {
				return errors.New("etcd exited (its port taken?)")
			}
			return nil
		}
	}
	return errors.New("etcd not healthy after 30 s")
}

// startKAS starts kube-apiserver and waits until it is ready.
func (a *Server) startKAS() error {
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
		req, _ := http.NewRequest("GET", a.URL+"/readyz", nil)
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

// Unique returns a name for a test's objects that no other test (nor
// another run with -count) uses: tests that share a server select their
// nodes by a label with this value.
func (a *Server) Unique(base string) string {
	return fmt.Sprintf("%s-%d", base, a.seq.Add(1))
}

// StopAPIServer kills kube-apiserver (etcd stays up).
func (a *Server) StopAPIServer(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopKAS()
}

func (a *Server) stopKAS() {
	if a.kas != nil {
		a.kas.Process.Kill()
		<-a.kasExited // startKAS's goroutine reaps it
		a.kas = nil
	}
}

// StartAPIServer starts kube-apiserver again, on the same port.
func (a *Server) StartAPIServer(t testing.TB) {
	t.Helper()
	if err := a.startKAS(); err != nil {
		t.Fatal(err)
	}
}

// close kills both processes and removes the directory.
func (a *Server) Close() {
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

// diagnose returns the tails of the API server's and etcd's logs, for a
// request that failed: writes that time out under load have not been
// explained yet.
func (a *Server) diagnose() string {
	return "kube-apiserver.log:\n" + a.logTail("kube-apiserver.log") + "\netcd.log:\n" + a.logTail("etcd.log")
}

func (a *Server) logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(a.dir, name))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// CreateNode creates a Node and sets its status addresses (status is a
// subresource: a create ignores it).
func (a *Server) CreateNode(t testing.TB, name string, labels map[string]string, finalizers []string, as ...corev1.NodeAddress) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Finalizers: finalizers}}
	if err := retry(func() error {
		_, err := a.Client.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // an earlier attempt that timed out on our side went through
		}
		return err
	}); err != nil {
		t.Fatalf("create node %s: %v\n%s", name, err, a.diagnose())
	}
	a.SetAddrs(t, name, as...)
}

// SetAddrs replaces a node's status.addresses.
func (a *Server) SetAddrs(t testing.TB, name string, as ...corev1.NodeAddress) {
	t.Helper()
	b, err := json.Marshal(map[string]any{"status": map[string]any{"addresses": as}})
	if err != nil {
		t.Fatal(err)
	}
	a.Patch(t, name, "status", string(b))
}

// patch applies a JSON merge patch to a node or (sub = "status") its status.
func (a *Server) Patch(t testing.TB, name, sub, patch string) {
	t.Helper()
	var subs []string
	if sub != "" {
		subs = []string{sub}
	}
	if err := retry(func() error {
		_, err := a.Client.CoreV1().Nodes().Patch(context.Background(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, subs...)
		return err
	}); err != nil {
		t.Fatalf("patch node %s %s %s: %v\n%s", name, sub, patch, err, a.diagnose())
	}
}

// PatchService applies a JSON merge patch to a Service.
func (a *Server) PatchService(t testing.TB, ns, name, patch string) {
	t.Helper()
	if err := retry(func() error {
		_, err := a.Client.CoreV1().Services(ns).Patch(context.Background(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		return err
	}); err != nil {
		t.Fatalf("patch service %s/%s %s: %v\n%s", ns, name, patch, err, a.diagnose())
	}
}

// retry calls fn up to three times while it fails with a server-side
// timeout (an overloaded test machine), not on other errors.
func retry(fn func() error) error {
	var err error
	for range 3 {
		if err = fn(); err == nil || !(apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err)) {
			return err
		}
	}
	return err
}

func startProcess(logPath, bin string, args ...string) (*exec.Cmd, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own descriptor
	c := exec.Command(bin, args...)
	c.Stdout, c.Stderr = f, f
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // killed if the test binary dies uncleanly
	if err := onSpawnerThread(c.Start); err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	return c, nil
}

// The kernel sends Pdeathsig when the thread that forked the child exits,
// not the process (prctl(2), PR_SET_PDEATHSIG). Go threads come and go: a
// goroutine that locks its thread into a network namespace and ends takes
// the thread with it (netlab.NS.Do does), and a child forked from that
// thread was killed with it: etcd or the API server vanished mid-test, and
// requests timed out or were refused. Children are therefore forked from
// one thread that lives as long as the process.
var (
	spawnOnce sync.Once
	spawns    chan func()
)

// onSpawnerThread runs start on the spawner thread and returns its error.
func onSpawnerThread(start func() error) error {
	spawnOnce.Do(func() {
		spawns = make(chan func())
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives on
			for f := range spawns {
				f()
			}
		}()
	})
	errc := make(chan error, 1)
	spawns <- func() { errc <- start() }
	return <-errc
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

func WriteKubeconfig(t testing.TB, dir, name, server, token string) string {
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

// SkipOrFail skips the test for the reason skip (the binaries are
// missing), or fails it where PMTUD_REQUIRE_KUBE_APISERVER is set (CI
// sets it): there the Kubernetes source must not go untested.
func SkipOrFail(t testing.TB, skip string) {
	t.Helper()
	if os.Getenv("PMTUD_REQUIRE_KUBE_APISERVER") != "" {
		t.Fatal("PMTUD_REQUIRE_KUBE_APISERVER is set: " + skip)
	}
	t.Skip(skip)
}

// StartT starts a server for the test and closes it when the test ends;
// without the binaries it skips (or fails, see SkipOrFail).
func StartT(t testing.TB) *Server {
	t.Helper()
	kas, skip := Find()
	if skip != "" {
		SkipOrFail(t, skip)
	}
	s, err := Start(kas)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}
