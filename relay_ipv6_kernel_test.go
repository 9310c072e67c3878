// IPv6 helpers of the kernel tests.

package pmtud_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// checkRealPacketTooBig reads what the kernel router sent to the capture
// group and checks that every message parses as the Packet Too Big the
// scene produces.
func checkRealPacketTooBig(t *testing.T, capture *nl.Reader) {
	t.Helper()
	b := readCapture(t, capture)
	for i, p := range b.Packets {
		f, err := wire.Parse(p.Payload)
		if err != nil {
			t.Fatalf("the router's Packet Too Big does not parse: %v", err)
		}
		if f.Src != netlab.RouterLoopback6 || f.Dst != netlab.Anycast6 || f.MTU != 1400 ||
			f.Inner.Src != netlab.Anycast6 || f.Inner.Dst != netlab.ClientAddr6 || f.Inner.SrcPort != netlab.TransferPort {
			t.Fatalf("router's Packet Too Big: %v -> %v MTU %d inner %+v", f.Src, f.Dst, f.MTU, f.Inner)
		}
		if i == 0 && os.Getenv("PMTUD_WRITE_SEEDS") == "1" {
			writeSeed(t, "wire/testdata/fuzz/FuzzParsePacketTooBig/kernel-router", fmt.Sprintf("[]byte(%q)\nbool(false)\n", p.Payload))
		}
	}
}

// dualStackCluster builds a two-node cluster with a 1400-byte narrow link,
// over IPv4 and IPv6.
func dualStackCluster(t *testing.T) *netlab.Cluster {
	t.Helper()
	c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddIPv6(); err != nil {
		t.Fatal(err)
	}
	return c
}
