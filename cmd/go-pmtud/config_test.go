package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	pmtud "github.com/go-pmtud/go-pmtud"
)

// fakeHost is a machine with eth0 = 198.18.0.10 (default route) and lo.
type fakeHost struct{}

func (fakeHost) defaultRouteInterface() (string, error) { return "eth0", nil }
func (fakeHost) interfaceAddrs(name string) ([]netip.Addr, error) {
	switch name {
	case "eth0":
		return []netip.Addr{netip.MustParseAddr("fe80::1"), netip.MustParseAddr("198.18.0.10")}, nil
	case "lo":
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	case "v6only":
		return []netip.Addr{netip.MustParseAddr("fe80::1"), netip.MustParseAddr("2001:db8::1")}, nil
	case "dual":
		return []netip.Addr{netip.MustParseAddr("2001:db8::10"), netip.MustParseAddr("198.18.0.10")}, nil
	case "linklocal":
		return []netip.Addr{netip.MustParseAddr("fe80::1"), netip.MustParseAddr("169.254.0.1")}, nil
	}
	return nil, errors.New("no such interface")
}
func (fakeHost) allAddrs() ([]netip.Addr, error) {
	return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("198.18.0.10")}, nil
}
func (fakeHost) hostname() (string, error) { return "host-a", nil }
func (fakeHost) allowedCPU(cpu int) bool   { return cpu < 4 }

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     func(string) string
		wantErr string // substring; empty: valid
		check   func(t *testing.T, s settings)
	}{
		{
			name: "defaults",
			args: []string{"--peers", "198.18.0.11, 198.18.0.12"},
			env:  env(),
			check: func(t *testing.T, s settings) {
				c := s.relay
				if c.Source != netip.MustParseAddr("198.18.0.10") || c.TTL != 10 || c.NFLOG.Group != 33 ||
					c.NodeName != "host-a" || s.metricsAddr != "198.18.0.10:30040" || len(c.Peers) != 2 ||
					c.NFLOG.QThreshold != 200 || c.NFLOG.Timeout != 10*time.Millisecond ||
					c.RateLimit != 5000 || c.SourceRateLimit != 1000 || c.Envelope != 2 || c.AcceptEnvelopeV1 {
					t.Errorf("unexpected settings %+v metrics %q", c, s.metricsAddr)
				}
			},
		},
		{
			name: "environment fills flags, command line wins",
			args: []string{"--ttl", "7"},
			env:  env("PMTUD_PEERS", "198.18.0.11", "PMTUD_TTL", "3", "PMTUD_NFLOG_GROUP", "5", "NODE_NAME", "node-7", "PMTUD_METRICS_ADDRESS", "127.0.0.1:9"),
			check: func(t *testing.T, s settings) {
				c := s.relay
				if c.TTL != 7 || c.NFLOG.Group != 5 || c.NodeName != "node-7" || s.metricsAddr != "127.0.0.1:9" || len(c.Peers) != 1 {
					t.Errorf("unexpected settings %+v metrics %q", c, s.metricsAddr)
				}
			},
		},
		{
			name: "own address removed from peers",
			args: []string{"--peers", "198.18.0.10,198.18.0.11", "--iface", "eth0", "--nodename", "x", "--metrics-port", "0"},
			env:  env(),
			check: func(t *testing.T, s settings) {
				if got := s.relay.RemotePeers(); len(got) != 1 || got[0] != netip.MustParseAddr("198.18.0.11") {
					t.Errorf("RemotePeers = %v", got)
				}
				if s.metricsAddr != "" {
					t.Errorf("metrics-port 0 should disable metrics, got %q", s.metricsAddr)
				}
			},
		},
		{
			name: "workers pinned",
			args: []string{"--peers", "198.18.0.11", "--workers", "3", "--cpus", "1,2-3"},
			env:  env(),
			check: func(t *testing.T, s settings) {
				if s.relay.Workers != 3 || len(s.relay.CPUs) != 3 || s.relay.CPUs[0] != 1 || s.relay.CPUs[2] != 3 {
					t.Errorf("workers %d cpus %v", s.relay.Workers, s.relay.CPUs)
				}
			},
		},
		{name: "cpu not allowed", args: []string{"--peers", "198.18.0.11", "--cpus", "7"}, env: env(), wantErr: "CPU 7 is not in this process's CPU set"},
		{name: "bad cpu list", args: []string{"--peers", "198.18.0.11", "--cpus", "3-1"}, env: env(), wantErr: `--cpus: "3-1"`},
		{name: "workers 0", args: []string{"--peers", "198.18.0.11", "--workers", "0"}, env: env(), wantErr: "--workers 0"},
		{name: "bad relay port", args: []string{"--peers", "198.18.0.11", "--relay-port", "0"}, env: env(), wantErr: "--relay-port 0"},
		{name: "bad tun address", args: []string{"--peers", "198.18.0.11", "--tun-address", "2001:db8::1"}, env: env(), wantErr: "--tun-address"},
		{name: "missing key file", args: []string{"--peers", "198.18.0.11", "--relay-key-file", "/nonexistent/keys"}, env: env(), wantErr: "--relay-key-file"},
		{
			name: "key file ignored by the icmp relay",
			args: []string{"--peers", "198.18.0.11", "--relay", "icmp", "--relay-key-file", "/nonexistent/keys", "--dedup-window", "0"},
			env:  env(),
			check: func(t *testing.T, s settings) {
				if len(s.relay.Keys) != 0 || s.relay.DedupWindow >= 0 {
					t.Errorf("keys %v, dedup window %v; want none and off", s.relay.Keys, s.relay.DedupWindow)
				}
			},
		},
		{name: "negative dedup window", args: []string{"--peers", "198.18.0.11", "--dedup-window", "-1s"}, env: env(), wantErr: "--dedup-window"},
		{name: "negative rate limit", args: []string{"--peers", "198.18.0.11", "--rate-limit", "-1"}, env: env(), wantErr: "--rate-limit -1"},
		{name: "log format", args: []string{"--peers", "198.18.0.11", "--log-format", "xml"}, env: env(), wantErr: `--log-format: "xml" is not text or json`},
		{
			name: "json logs", args: []string{"--peers", "198.18.0.11", "--log-format", "json"}, env: env(),
			check: func(t *testing.T, s settings) {
				if !s.logJSON {
					t.Error("--log-format json did not select JSON")
				}
			},
		},
		{
			name: "peer groups", args: []string{"--peers", "198.18.0.11", "--insecure-no-auth"},
			env: env("PMTUD_PEER_GROUPS", "198.18.100.7/24=198.18.0.11,198.18.0.12;\n 198.18.101.0/24:443=198.18.0.13"),
			check: func(t *testing.T, s settings) {
				ts := s.relay.Targets
				if len(ts) != 2 || ts[0].Prefix != netip.MustParsePrefix("198.18.100.0/24") || ts[0].Port != 0 || len(ts[0].Nodes) != 2 ||
					ts[1].Prefix != netip.MustParsePrefix("198.18.101.0/24") || ts[1].Port != 443 || ts[1].Nodes[0] != netip.MustParseAddr("198.18.0.13") ||
					ts[0].Scope != pmtud.ScopeGroup {
					t.Errorf("targets %+v", ts)
				}
			},
		},
		{name: "peer group without nodes", args: []string{"--peers", "198.18.0.11", "--peer-groups", "198.18.100.0/24"}, env: env(), wantErr: `--peer-groups: "198.18.100.0/24" is not CIDR[:PORT]=NODE,NODE,...`},
		{name: "peer group port 0", args: []string{"--peers", "198.18.0.11", "--peer-groups", "198.18.100.0/24:0=198.18.0.11"}, env: env(), wantErr: `port "0" is not 1..65535`},
		{name: "peer group prefix", args: []string{"--peers", "198.18.0.11", "--peer-groups", "198.18.100/24=198.18.0.11"}, env: env(), wantErr: `"198.18.100/24" is not a CIDR`},
		{name: "peer group node", args: []string{"--peers", "198.18.0.11", "--peer-groups", "198.18.100.0/24=node-a"}, env: env(), wantErr: `node "node-a" is not an IP address`},
		{name: "envelope 4", args: []string{"--peers", "198.18.0.11", "--relay-envelope", "4"}, env: env(), wantErr: "--relay-envelope 4 is not 1, 2 or 3"},
		{name: "pack bytes", args: []string{"--peers", "198.18.0.11", "--relay-pack-bytes", "10"}, env: env(), wantErr: "--relay-pack-bytes 10 is outside"},
		{name: "envelope 0", args: []string{"--peers", "198.18.0.11", "--relay-envelope", "0"}, env: env(), wantErr: "--relay-envelope 0 is not 1, 2 or 3"},
		{
			name: "envelope 1 for an upgrade", args: []string{"--peers", "198.18.0.11", "--relay-envelope", "1"},
			env: env("PMTUD_RELAY_ACCEPT_V1", "true"),
			check: func(t *testing.T, s settings) {
				if s.relay.Envelope != 1 || !s.relay.AcceptEnvelopeV1 {
					t.Errorf("envelope %d, accept v1 %v; want 1, true", s.relay.Envelope, s.relay.AcceptEnvelopeV1)
				}
			},
		},
		{name: "negative source rate limit", args: []string{"--peers", "198.18.0.11", "--source-rate-limit", "-1"}, env: env(), wantErr: "--source-rate-limit -1"},
		{
			name: "rate limit from the environment",
			args: []string{"--peers", "198.18.0.11"},
			env:  env("PMTUD_RATE_LIMIT", "20000"),
			check: func(t *testing.T, s settings) {
				if s.relay.RateLimit != 20000 {
					t.Errorf("rate limit %d, want 20000", s.relay.RateLimit)
				}
			},
		},
		{name: "workers 17", args: []string{"--peers", "198.18.0.11", "--workers", "17"}, env: env(), wantErr: "workers 17 is outside 1..16"},
		{name: "no peers", args: nil, env: env(), wantErr: "no peers"},
		{name: "only own address", args: []string{"--peers", "198.18.0.10"}, env: env(), wantErr: "no peers left"},
		{name: "bad peer", args: []string{"--peers", "198.18.0.300"}, env: env(), wantErr: `--peers: "198.18.0.300" is not an IP address`},
		{name: "IPv6 peer of an IPv4-only node", args: []string{"--peers", "2001:db8::2"}, env: env(), wantErr: "no peer can get a copy"},
		{name: "two IPv4 addresses for a peer", args: []string{"--peers", "198.18.0.11+198.18.0.12"}, env: env(), wantErr: `--peers: "198.18.0.11+198.18.0.12": one address of each family at most`},
		{
			name: "IPv6-only node", args: []string{"--peers", "2001:db8::2,2001:db8::3", "--iface", "v6only", "--metrics-port", "30040"}, env: env(),
			check: func(t *testing.T, s settings) {
				c := s.relay
				if c.Source.IsValid() || c.Source6 != netip.MustParseAddr("2001:db8::1") || len(c.Peers) != 2 || c.Peers[1] != (pmtud.Peer{V6: netip.MustParseAddr("2001:db8::3")}) {
					t.Errorf("sources %v %v, peers %v", c.Source, c.Source6, c.Peers)
				}
				if s.metricsAddr != "[2001:db8::1]:30040" {
					t.Errorf("metrics address %q, want [2001:db8::1]:30040", s.metricsAddr)
				}
			},
		},
		{
			name: "dual-stack node", args: []string{"--peers", "198.18.0.11+2001:db8::11, 2001:db8::12", "--iface", "dual", "--relay-family", "ipv6"}, env: env(),
			check: func(t *testing.T, s settings) {
				c := s.relay
				want := []pmtud.Peer{{V4: netip.MustParseAddr("198.18.0.11"), V6: netip.MustParseAddr("2001:db8::11")}, {V6: netip.MustParseAddr("2001:db8::12")}}
				if c.Source != netip.MustParseAddr("198.18.0.10") || c.Source6 != netip.MustParseAddr("2001:db8::10") || !slices.Equal(c.Peers, want) || c.RelayFamily != pmtud.FamilyIPv6 {
					t.Errorf("sources %v %v, peers %v, relay family %v", c.Source, c.Source6, c.Peers, c.RelayFamily)
				}
			},
		},
		{name: "relay family the node lacks", args: []string{"--peers", "198.18.0.11", "--relay-family", "ipv6"}, env: env(), wantErr: "relay family ipv6: the node has no ipv6 address"},
		{name: "bad relay family", args: []string{"--peers", "198.18.0.11", "--relay-family", "ipx"}, env: env(), wantErr: `--relay-family: unknown relay family "ipx"`},
		{name: "link-local addresses only", args: []string{"--peers", "198.18.0.11", "--iface", "linklocal"}, env: env(), wantErr: "has no IPv4 and no global IPv6 address"},
		{name: "bad CIDR", args: []string{"--peers", "198.18.0.11", "--ignore-networks", "198.18.0.0/33"}, env: env(), wantErr: "--ignore-networks"},
		{name: "ttl 0", args: []string{"--peers", "198.18.0.11", "--ttl", "0"}, env: env(), wantErr: "ttl 0 is outside 1..255"},
		{name: "ttl 256", args: []string{"--peers", "198.18.0.11", "--ttl", "256"}, env: env(), wantErr: "ttl 256"},
		{name: "group", args: []string{"--peers", "198.18.0.11", "--nflog-group", "65536"}, env: env(), wantErr: "--nflog-group 65536"},
		{name: "unknown interface", args: []string{"--peers", "198.18.0.11", "--iface", "nope0"}, env: env(), wantErr: `--iface "nope0": no such interface`},
		{name: "IPv4 peers of an IPv6-only node", args: []string{"--peers", "198.18.0.11", "--iface", "v6only"}, env: env(), wantErr: "no peer can get a copy"},
		{
			name: "l2 relay", args: []string{"--peers", "198.18.0.11", "--relay", "l2"}, env: env(),
			check: func(t *testing.T, s settings) {
				if s.relay.Mode != pmtud.ModeL2 || s.relay.L2Iface != "eth0" {
					t.Errorf("mode %v on %q, want l2 on eth0", s.relay.Mode, s.relay.L2Iface)
				}
			},
		},
		{name: "relay mode", args: []string{"--peers", "198.18.0.11", "--relay", "carrier-pigeon"}, env: env(), wantErr: "--relay"},
		{name: "log level", args: []string{"--peers", "198.18.0.11", "--log-level", "loud"}, env: env(), wantErr: "--log-level"},
		{name: "metrics address", args: []string{"--peers", "198.18.0.11", "--metrics-address", "nope"}, env: env(), wantErr: "--metrics-address"},
		{name: "bad environment", args: nil, env: env("PMTUD_TTL", "ten"), wantErr: `invalid value "ten" for PMTUD_TTL`},
		{name: "two peer sources", args: []string{"--peers", "198.18.0.11", "--peers-file", "/etc/peers"}, env: env(), wantErr: "exactly one of --peers, --peers-file and --peers-from"},
		{name: "peers and kubernetes from the environment", args: []string{"--peers", "198.18.0.11"}, env: env("PMTUD_PEERS_FROM", "kubernetes"), wantErr: "exactly one"},
		{name: "unknown peer source", args: []string{"--peers-from", "consul"}, env: env(), wantErr: `--peers-from "consul": the only source is kubernetes`},
		{name: "selector without kubernetes", args: []string{"--peers", "198.18.0.11", "--node-selector", "a=b"}, env: env(), wantErr: "--node-selector applies only with --peers-from kubernetes"},
		{name: "kubeconfig without kubernetes", args: []string{"--peers-file", "/etc/peers", "--kubeconfig", "/k"}, env: env(), wantErr: "--kubeconfig applies only"},
		{name: "address type", args: []string{"--peers-from", "kubernetes", "--node-address-type", "Hostname"}, env: env(), wantErr: `--node-address-type "Hostname": want InternalIP or ExternalIP`},
		{
			name: "peers file", args: []string{"--peers-file", "/etc/go-pmtud/peers"}, env: env(),
			check: func(t *testing.T, s settings) {
				if s.peersFile != "/etc/go-pmtud/peers" || !s.relay.DynamicPeers || s.kube != nil || len(s.relay.Peers) != 0 {
					t.Errorf("settings %+v, want the file as the dynamic source", s)
				}
			},
		},
		{
			name: "kubernetes from the environment", args: nil,
			env: env("PMTUD_PEERS_FROM", "kubernetes", "PMTUD_NODE_SELECTOR", "pmtud=on", "PMTUD_NODE_ADDRESS_TYPE", "ExternalIP", "PMTUD_KUBECONFIG", "/k"),
			check: func(t *testing.T, s settings) {
				if k := s.kube; k == nil || k.NodeSelector != "pmtud=on" || k.AddressType != "ExternalIP" || k.Kubeconfig != "/k" || !s.relay.DynamicPeers {
					t.Errorf("kubernetes settings %+v, relay dynamic %v", k, s.relay.DynamicPeers)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The cases are about other flags: the udp relay (the
			// default) runs without keys here. TestUDPRelayNeedsKeys
			// covers that.
			getenv := func(k string) string {
				if v := tt.env(k); v != "" || k != "PMTUD_INSECURE_NO_AUTH" {
					return v
				}
				return "true"
			}
			var stderr bytes.Buffer
			o, err := parseFlags(tt.args, getenv, &stderr)
			var s settings
			if err == nil {
				s, err = resolve(o, getenv, fakeHost{})
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, s)
		})
	}
}

// TestUDPRelayNeedsKeys: the udp relay (the default) refuses to start
// without a key file unless --insecure-no-auth says so; the icmp relay
// needs none.
func TestUDPRelayNeedsKeys(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte("1:"+strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--peers", "198.18.0.11"}, "--insecure-no-auth"},
		{[]string{"--peers", "198.18.0.11", "--insecure-no-auth"}, ""},
		{[]string{"--peers", "198.18.0.11", "--relay-key-file", keyFile}, ""},
		{[]string{"--peers", "198.18.0.11", "--relay", "icmp"}, ""},
	} {
		o, err := parseFlags(tc.args, env(), io.Discard)
		if err == nil {
			_, err = resolve(o, env(), fakeHost{})
		}
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%q: %v, want an error containing %q", tc.args, err, tc.wantErr)
		}
	}
}

// TestVersion: --version exits 0 without any other flag, and the version
// names the program and the Go release it was built with.
func TestVersion(t *testing.T) {
	if code := run([]string{"--version"}, env(), io.Discard); code != exitOK {
		t.Fatalf("--version exited %d", code)
	}
	if v := version(); !strings.HasPrefix(v, "go-pmtud ") || !strings.Contains(v, runtime.Version()) {
		t.Fatalf("version() = %q", v)
	}
}

func TestBadConfigurationExitsWithUsageStatus(t *testing.T) {
	dir := t.TempDir()
	badPeers, v6Peers := dir+"/bad", dir+"/v6"
	os.WriteFile(badPeers, []byte("198.18.0.11\nnode-b\n"), 0o644)
	os.WriteFile(v6Peers, []byte("2001:db8::2\n"), 0o644)
	for _, args := range [][]string{
		{"--peers", "not-an-ip"},
		{"--ttl", "x"},
		{"--peers", "198.18.0.11", "--iface", "no-such-interface-0"},
		{"stray-argument"},
		{"--peers-file", "/nonexistent/peers"},
		{"--peers-file", badPeers},
		{"--peers-file", v6Peers},
		{"--peers-from", "kubernetes", "--kubeconfig", "/nonexistent/kubeconfig"},
		{"--peers-from", "kubernetes", "--node-selector", "a b c", "--kubeconfig", "/nonexistent/kubeconfig"},
	} {
		var stderr bytes.Buffer
		if code := run(args, env(), &stderr); code != exitUsage {
			t.Errorf("run(%q) = %d, want %d; stderr: %s", args, code, exitUsage, stderr.String())
		}
		if out := strings.TrimSpace(stderr.String()); strings.Count(out, "\n") != 0 || !strings.HasPrefix(out, "go-pmtud: ") {
			t.Errorf("run(%q): stderr %q, want one line starting with \"go-pmtud: \"", args, out)
		}
	}
}

func TestReadKeys(t *testing.T) {
	dir := t.TempDir()
	write := func(content string) string {
		p := dir + "/keys"
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secret := strings.Repeat("ab", 32)
	keys, err := readKeys(write("# current, then previous\n2:" + secret + "\n\n1:" + strings.Repeat("cd", 16) + "\n"))
	if err != nil || len(keys) != 2 || keys[0].ID != 2 || len(keys[0].Secret) != 32 || keys[1].ID != 1 || len(keys[1].Secret) != 16 {
		t.Fatalf("readKeys = %+v, %v", keys, err)
	}
	for _, bad := range []string{"", "0:" + secret, "x:" + secret, "1:" + secret[:30], "1:zz" + secret, secret} {
		if _, err := readKeys(write(bad)); err == nil {
			t.Errorf("readKeys(%q) accepted", bad)
		}
	}
}

// TestEveryFlagIsDocumented: each flag -h prints appears in
// docs/operations.md as `--name`, so the reference cannot fall behind.
func TestEveryFlagIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	var usage bytes.Buffer
	if _, err := parseFlags([]string{"-h"}, env(), &usage); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	n := 0
	for _, line := range strings.Split(usage.String(), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(line, "  -") {
			continue
		}
		name := strings.TrimPrefix(f[0], "-")
		n++
		if !bytes.Contains(doc, []byte("`--"+name+"`")) {
			t.Errorf("--%s is not in docs/operations.md", name)
		}
	}
	if n < 30 {
		t.Fatalf("found %d flags in the usage text; the parsing is broken", n)
	}
}

// TestDefaultRoute6 reads /proc/net/ipv6_route's text: the default route's
// interface, not lo's unreachable entries.
func TestDefaultRoute6(t *testing.T) {
	const table = `00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
20010db8000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000100000000000000000001 00000400 00000001 00000000 00000003     eth0
`
	if name, ok := defaultRoute6([]byte(table)); !ok || name != "eth0" {
		t.Errorf("defaultRoute6 = %q, %v; want eth0", name, ok)
	}
	if name, ok := defaultRoute6([]byte(strings.SplitAfter(table, "\n")[0])); ok {
		t.Errorf("defaultRoute6 of lo's entry only = %q, want none", name)
	}
}
