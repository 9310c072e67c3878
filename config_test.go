package pmtud

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// TestValidate covers Validate's bounds that the command line does not
// check first, the replay budget of the udp relay among them.
func TestValidate(t *testing.T) {
	base := func() Config {
		return Config{
			Mode:   ModeUDP,
			Source: netip.MustParseAddr("198.18.1.10"),
			Peers:  PeersOf(netip.MustParseAddr("198.18.1.11")),
			TTL:    10,
			Keys:   []wire.Key{testKey},
		}
	}
	for _, tt := range []struct {
		name    string
		edit    func(c *Config)
		wantErr string // empty: valid
	}{
		{"defaults", func(c *Config) {}, ""},
		{"16 workers, default batches", func(c *Config) { c.Workers = 16 }, ""},
		{"16 workers, batches of 512", func(c *Config) { c.Workers = 16; c.NFLOG = nl.Config{QThreshold: 512} }, "replay window"},
		{"4 workers, the largest batches", func(c *Config) { c.Workers = 4; c.NFLOG = nl.Config{QThreshold: 65535} }, ""},
		{"5 workers, the largest batches", func(c *Config) { c.Workers = 5; c.NFLOG = nl.Config{QThreshold: 65535} }, "replay window"},
		{"dual-stack: 3 workers, the largest batches, two seals each", func(c *Config) {
			c.Source6, c.Workers, c.NFLOG = netip.MustParseAddr("2001:db8::10"), 3, nl.Config{QThreshold: 65535}
		}, "sealed for 2 transports"},
		{"dual-stack pinned to one family: 4 workers", func(c *Config) {
			c.Source6, c.RelayFamily, c.Workers, c.NFLOG = netip.MustParseAddr("2001:db8::10"), FamilyIPv4, 4, nl.Config{QThreshold: 65535}
		}, ""},
		{"link-local IPv6 source", func(c *Config) { c.Source6 = netip.MustParseAddr("fe80::1") }, "not a global IPv6 address"},
		{"multicast peer", func(c *Config) { c.Peers = PeersOf(netip.MustParseAddr("ff02::1")) }, "not a unicast address"},
		{"unspecified peer", func(c *Config) { c.Peers = PeersOf(netip.MustParseAddr("0.0.0.0")) }, "not a unicast address"},
		{"icmp relay has no replay window", func(c *Config) { c.Mode = ModeICMP; c.Workers = 16; c.NFLOG = nl.Config{QThreshold: 65535} }, ""},
		{"17 workers", func(c *Config) { c.Workers = 17 }, "workers 17"},
		{"negative rate limit", func(c *Config) { c.RateLimit = -1 }, "rate limit"},
		{"rate limit too high", func(c *Config) { c.RateLimit = MaxRateLimit + 1 }, "rate limit"},
		{"ttl 256", func(c *Config) { c.TTL = 256 }, "ttl 256"},
		{"only itself as peer", func(c *Config) { c.Peers = PeersOf(c.Source) }, "no peers left"},
		{"udp relay without keys", func(c *Config) { c.Keys = nil }, "--insecure-no-auth"},
		{"udp relay without keys, insecure on purpose", func(c *Config) { c.Keys, c.InsecureNoAuth = nil, true }, ""},
		{"icmp relay without keys", func(c *Config) { c.Keys, c.Mode = nil, ModeICMP }, ""},
		{"source rate limit too high", func(c *Config) { c.SourceRateLimit = MaxRateLimit + 1 }, "source rate limit"},
		{"trusted source not a prefix", func(c *Config) { c.TrustedSources = []netip.Prefix{{}} }, "trusted source"},
		{"l2 relay", func(c *Config) { c.Mode, c.L2Iface = ModeL2, "eth0" }, ""},
		{"l2 relay without an interface", func(c *Config) { c.Mode = ModeL2 }, "--iface"},
		{"l2 relay, unknown destination", func(c *Config) { c.Mode, c.L2Iface, c.L2Dest = ModeL2, "eth0", "anycast" }, "l2 destination"},
		{"l2 broadcast split by peer", func(c *Config) { c.Mode, c.L2Iface, c.Split, c.Workers = ModeL2, "eth0", SplitPeer, 2 }, "--split batch"},
		{"l2 to peers split by peer", func(c *Config) {
			c.Mode, c.L2Iface, c.L2Dest, c.Split, c.Workers = ModeL2, "eth0", L2Peers, SplitPeer, 2
		}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.edit(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}
