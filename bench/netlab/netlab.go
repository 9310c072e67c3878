// Package netlab builds throw-away hosts out of Linux network namespaces and
// veth pairs, for go-pmtud's kernel tests, the lab command and the load
// harness.
//
// Every namespace a Lab creates carries a unique name (prefix, process ID and
// a counter), so parallel test binaries never collide, and Close deletes them
// all; veth pairs die with their namespaces. Tests use NewT, which skips with
// a message when the process is not root or `ip` is missing, and registers
// Close with t.Cleanup so the lab is torn down on every exit path.
//
// Addresses used with a Lab should come from 198.18.0.0/15 (IPv6
// 2001:db8::/32): traffic then never leaves the namespaces the Lab made.
package netlab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// ErrUnsupported reports that the machine cannot host a lab: not root, or a
// required command is missing. Tests skip on it.
var ErrUnsupported = errors.New("netlab: unsupported here")

var labSeq atomic.Uint32

// Lab is a set of network namespaces that are deleted together.
type Lab struct {
	prefix string

	mu  sync.Mutex
	nss []*NS
}

// Supported reports whether a lab can be built here, and why not.
func Supported() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces", ErrUnsupported)
	}
	for _, cmd := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(cmd); err != nil {
			return fmt.Errorf("%w: %s not found (apt-get install iproute2 nftables)", ErrUnsupported, cmd)
		}
	}
	return nil
}

// New returns an empty lab whose namespaces are named prefix-<pid>-<n>-<name>.
func New(prefix string) (*Lab, error) {
	if err := Supported(); err != nil {
		return nil, err
	}
	return &Lab{prefix: fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), labSeq.Add(1))}, nil
}

// NewT returns a lab for a test, or skips the test with the reason a lab
// cannot be built here. The lab is closed when the test ends.
func NewT(t testing.TB) *Lab {
	t.Helper()
	l, err := New("pt")
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("skipping kernel test: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("netlab: close: %v", err)
		}
	})
	return l
}

// Close deletes every namespace the lab created, with their interfaces.
// It is safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	nss := l.nss
	l.nss = nil
	l.mu.Unlock()
	var errs []error
	for i := len(nss) - 1; i >= 0; i-- {
		if out, err := exec.Command("ip", "netns", "del", nss[i].name).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("netlab: ip netns del %s: %v: %s", nss[i].name, err, out))
		}
	}
	return errors.Join(errs...)
}

// sysctls applied to every namespace: the lab pitfalls of shared/design.md.
// New namespaces copy rp_filter from the root namespace, PMTU discovery must
// stay on and MTU probing off, and IPv6 DAD would delay addresses.
var sysctls = []string{
	"net.ipv4.conf.all.rp_filter=0",
	"net.ipv4.conf.default.rp_filter=0",
	"net.ipv4.tcp_mtu_probing=0",
	"net.ipv4.ip_no_pmtu_disc=0",
	"net.ipv4.icmp_errors_use_inbound_ifaddr=0",
	"net.ipv4.icmp_ratelimit=0",
	"net.ipv6.conf.all.accept_dad=0",
	"net.ipv6.conf.default.accept_dad=0",
	"net.ipv6.icmp.ratelimit=0",
}

// AddNS creates a namespace with lo up and the lab sysctls set.
func (l *Lab) AddNS(name string) (*NS, error) {
	n := &NS{name: l.prefix + "-" + name}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("netlab: ip netns add %s: %v: %s", n.name, err, out)
	}
	l.mu.Lock()
	l.nss = append(l.nss, n)
	l.mu.Unlock()
	if _, err := n.Run("ip", "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	args := append([]string{"sysctl", "-q", "-w"}, sysctls...)
	if _, err := n.Run(args...); err != nil {
		return nil, err
	}
	return n, nil
}

// Link connects a and b with a veth pair named aIf (in a) and bIf (in b),
// both up, with GSO segment count 1 so TCP super-packets never cross a link
// unsegmented (a router would otherwise quote a 26 kB "packet").
func (l *Lab) Link(a *NS, aIf string, b *NS, bIf string) error {
	tmp := fmt.Sprintf("nlb%d", labSeq.Add(1))
	if _, err := a.Run("ip", "link", "add", aIf, "type", "veth", "peer", "name", tmp); err != nil {
		return err
	}
	if _, err := a.Run("ip", "link", "set", tmp, "netns", b.name); err != nil {
		return err
	}
	if _, err := b.Run("ip", "link", "set", tmp, "name", bIf); err != nil {
		return err
	}
	for _, e := range []struct {
		n   *NS
		dev string
	}{{a, aIf}, {b, bIf}} {
		if _, err := e.n.Run("ip", "link", "set", e.dev, "gso_max_segs", "1", "up"); err != nil {
			return err
		}
		if _, err := e.n.Run("sysctl", "-q", "-w", "net.ipv4.conf."+e.dev+".rp_filter=0"); err != nil {
			return err
		}
	}
	return nil
}

// NS is one network namespace of a lab.
type NS struct {
	name string
}

// Name returns the namespace's name as `ip netns` knows it.
func (n *NS) Name() string { return n.name }

// Run runs a command inside the namespace and returns its combined output.
// A failure's error carries the command and its output.
func (n *NS) Run(args ...string) (string, error) {
	full := append([]string{"netns", "exec", n.name}, args...)
	out, err := exec.Command("ip", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("netlab: %s: %s: %v: %s", n.name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Do runs fn on a fresh OS thread that has joined the namespace, and waits
// for it. Sockets fn creates belong to the namespace for their whole life,
// whichever goroutine uses them later. The thread is never returned to the
// Go scheduler: it exits with the goroutine.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the thread dies with this goroutine
		f, err := os.Open("/run/netns/" + n.name)
		if err != nil {
			errc <- fmt.Errorf("netlab: open namespace %s: %w", n.name, err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("netlab: setns %s: %w", n.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// CachedMTU returns the path MTU that the kernel in this namespace has
// learned for dst, as `ip route get` shows it ("cache expires 598sec mtu
// 1400"), or 0 when it caches none.
func (n *NS) CachedMTU(dst string) (int, error) {
	out, err := n.Run("ip", "route", "get", dst)
	if err != nil {
		return 0, err
	}
	if !strings.Contains(out, "expires") {
		return 0, nil
	}
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "mtu" {
			mtu, err := strconv.Atoi(f[i+1])
			if err != nil {
				return 0, fmt.Errorf("netlab: parse %q: %w", out, err)
			}
			return mtu, nil
		}
	}
	return 0, nil
}

// UDPRcvbufErrors returns the Udp RcvbufErrors counter of the namespace's
// /proc/net/snmp: datagrams dropped because a socket's receive buffer was
// full.
func (n *NS) UDPRcvbufErrors() (uint64, error) {
	out, err := n.Run("cat", "/proc/net/snmp")
	if err != nil {
		return 0, err
	}
	var names []string
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, name := range names {
			if name == "RcvbufErrors" && i < len(f) {
				v, err := strconv.ParseUint(f[i], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("netlab: parse Udp RcvbufErrors %q: %w", line, err)
				}
				return v, nil
			}
		}
	}
	return 0, fmt.Errorf("netlab: no Udp RcvbufErrors in /proc/net/snmp of %s", n.name)
}
