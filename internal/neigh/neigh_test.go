package neigh

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// TestResolveThenTable: in a namespace pair joined by a veth, the far end's
// address is not in the table, Resolve makes the kernel solicit it, and
// Table then holds the far end's MAC; a static entry is listed too.
func TestResolveThenTable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	lab := netlab.NewT(t)
	a, err := lab.AddNS("neigh-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := lab.AddNS("neigh-b")
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.Link(a, "eth0", b, "eth0"); err != nil {
		t.Fatal(err)
	}
	a.MustRun(t, "ip", "addr", "add", "198.18.90.1/24", "dev", "eth0")
	b.MustRun(t, "ip", "addr", "add", "198.18.90.2/24", "dev", "eth0")
	a.MustRun(t, "ip", "neigh", "add", "198.18.90.9", "lladdr", "02:00:00:00:00:09", "dev", "eth0", "nud", "permanent")
	var ifindex int
	var want MAC
	if err := b.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		copy(want[:], ifi.HardwareAddr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	peer := netip.MustParseAddr("198.18.90.2")
	var table map[netip.Addr]MAC
	var c *Conn
	if err := a.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		ifindex = ifi.Index
		c, err = Dial()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// From here on, the calling goroutine's thread is in the root
	// namespace: the Conn stays in a's.
	table, err = c.Table(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := table[peer]; ok {
		t.Fatalf("the peer is in the table before any traffic: %v", table)
	}
	if table[netip.MustParseAddr("198.18.90.9")] != (MAC{2, 0, 0, 0, 0, 9}) {
		t.Fatalf("the permanent entry is missing: %v", table)
	}
	if err := c.Resolve(ifindex, peer); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if table, err = c.Table(ifindex); err != nil {
			t.Fatal(err)
		}
		if got, ok := table[peer]; ok {
			if got != want {
				t.Fatalf("resolved MAC %x, want %x", got, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the peer was never resolved: %v", table)
		}
	}
}
