package main

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/go-pmtud/go-pmtud"
)

// oneLine fails t unless err's message fits the one line run prints
// before exiting with status 2.
func oneLine(t *testing.T, what string, err error) {
	t.Helper()
	if msg := err.Error(); msg == "" || strings.ContainsAny(msg, "\n\r") {
		t.Fatalf("%s: error %q is not one non-empty line", what, msg)
	}
}

// FuzzResolve feeds command lines to the flag parser and the validation:
// whatever an operator types, the daemon either gets settings that hold
// every documented bound or a one-line error, and never panics.
func FuzzResolve(f *testing.F) {
	for _, seed := range []string{
		"--peers 198.18.0.11,198.18.0.12",
		"--peers 198.18.0.11 --relay icmp --ttl 255 --workers 16 --cpus 0-3 --split peer",
		"--peers 198.18.0.11 --ignore-networks 10.0.0.0/8,198.18.0.0/15 --metrics-port 0",
		"--peers 198.18.0.11 --metrics-address [::1]:9000 --nflog-group 65535 --nflog-qthreshold 1",
		"--peers 198.18.0.11 --nflog-timeout 1m --nflog-bufsize 4096 --dedup-window 0 --tun-address 169.254.0.1",
		"--peers ::ffff:198.18.0.11 --iface lo --nodename n1 --log-level debug --relay-port 65535",
		"--peers 2001:db8::1",
		"--peers 198.18.0.10",
		"--cpus 3-2 --peers 198.18.0.11",
		"--workers 0 --peers 198.18.0.11",
		"--peers 198.18.0.11\n198.18.0.12",
		"--peers 198.18.0.11 --iface v6only",
		"--peers 198.18.0.11 --rate-limit 20000",
		"--peers 198.18.0.11 --rate-limit -1",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		// Only the key file reaches outside the arguments: a fuzzed path
		// could name /dev/zero. FuzzParseKeys covers its content.
		if strings.Contains(line, "key") {
			t.Skip()
		}
		// Split on single spaces only, so other whitespace reaches the values.
		o, err := parseFlags(strings.Split(line, " "), env(), io.Discard)
		if err != nil {
			oneLine(t, "parseFlags", err)
			return
		}
		s, err := resolve(o, env(), fakeHost{})
		if err != nil {
			oneLine(t, "resolve", err)
			return
		}
		c := s.relay
		if err := c.Validate(); err != nil {
			t.Fatalf("resolve accepted settings that Validate rejects: %v", err)
		}
		switch {
		case c.TTL < 1 || c.TTL > 255:
			t.Fatalf("TTL %d accepted", c.TTL)
		case c.Workers < 1 || c.Workers > pmtud.MaxWorkers:
			t.Fatalf("workers %d accepted", c.Workers)
		case c.RateLimit < 0 || c.RateLimit > pmtud.MaxRateLimit:
			t.Fatalf("rate limit %d accepted", c.RateLimit)
		case c.SourceRateLimit < 0 || c.SourceRateLimit > pmtud.MaxRateLimit:
			t.Fatalf("source rate limit %d accepted", c.SourceRateLimit)
		case len(c.RemotePeers()) == 0:
			t.Fatal("no remote peer accepted")
		case c.NFLOG.QThreshold < 1 || c.NFLOG.Timeout <= 0 || c.NFLOG.BufSize < 4096:
			t.Fatalf("NFLOG config %+v accepted", c.NFLOG)
		case c.Mode == pmtud.ModeUDP && (c.RelayPort == 0 || !c.TUNAddr.Is4()):
			t.Fatalf("udp relay port %d, TUN address %v accepted", c.RelayPort, c.TUNAddr)
		}
		for _, p := range c.Peers {
			if p.V4.IsValid() && !p.V4.Is4() || p.V6.IsValid() && (!p.V6.Is6() || p.V6.Is4In6() || p.V6.Zone() != "") || !p.V4.IsValid() && !p.V6.IsValid() {
				t.Fatalf("peer %v accepted", p)
			}
		}
		for _, cpu := range c.CPUs {
			if !(fakeHost{}).allowedCPU(cpu) {
				t.Fatalf("CPU %d accepted outside the host's set", cpu)
			}
		}
		if s.metricsAddr != "" {
			if _, _, err := net.SplitHostPort(s.metricsAddr); err != nil {
				t.Fatalf("metrics address %q accepted: %v", s.metricsAddr, err)
			}
		}
	})
}

// FuzzParseKeys feeds key files to the key parser: it returns keys that
// hold its bounds and survive a round trip, or a one-line error that does
// not repeat the file's content.
func FuzzParseKeys(f *testing.F) {
	secret := strings.Repeat("ab", 32)
	for _, seed := range []string{
		"1:" + secret + "\n",
		"# current, then previous\n2:" + secret + "\n\n1:" + strings.Repeat("cd", 16) + "\n",
		"  3:" + secret + "  \r\n",
		"0:" + secret,
		"65536:" + secret,
		"1:" + secret[:30],
		"1:zz" + secret,
		secret,
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		keys, err := parseKeys(b)
		if err != nil {
			oneLine(t, "parseKeys", err)
			if len(b) >= 32 && strings.Contains(err.Error(), string(b)) {
				t.Fatalf("error %q repeats the file", err)
			}
			return
		}
		if len(keys) == 0 {
			t.Fatal("no keys and no error")
		}
		var again bytes.Buffer
		for _, k := range keys {
			if k.ID == 0 || len(k.Secret) < 16 {
				t.Fatalf("key %d with a %d-byte secret accepted", k.ID, len(k.Secret))
			}
			fmt.Fprintf(&again, "%d:%s\n", k.ID, hex.EncodeToString(k.Secret))
		}
		back, err := parseKeys(again.Bytes())
		if err != nil || len(back) != len(keys) {
			t.Fatalf("round trip: %d keys, %v; want %d", len(back), err, len(keys))
		}
		for i := range keys {
			if back[i].ID != keys[i].ID || !bytes.Equal(back[i].Secret, keys[i].Secret) {
				t.Fatalf("round trip changed key %d", i)
			}
		}
	})
}
