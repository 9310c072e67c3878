package netlab_test

import (
	"net"
	"strings"
	"testing"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

func TestLinkAndDo(t *testing.T) {
	lab := netlab.NewT(t)
	a, err := lab.AddNS("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := lab.AddNS("b")
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.Link(a, "eth0", b, "eth0"); err != nil {
		t.Fatal(err)
	}
	a.MustRun(t, "ip", "addr", "add", "198.18.0.1/30", "dev", "eth0")
	b.MustRun(t, "ip", "addr", "add", "198.18.0.2/30", "dev", "eth0")

	// A UDP socket made in b by Do belongs to b: a can reach it over the veth.
	var conn net.PacketConn
	if err := b.Do(func() (err error) {
		conn, err = net.ListenPacket("udp4", "198.18.0.2:9999")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := a.Do(func() error {
		c, err := net.Dial("udp4", "198.18.0.2:9999")
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("hello"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, from, err := conn.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:n]); got != "hello" || !strings.HasPrefix(from.String(), "198.18.0.1:") {
		t.Fatalf("got %q from %v, want hello from 198.18.0.1", got, from)
	}
	if mtu, err := a.CachedMTU("198.18.0.2"); err != nil || mtu != 0 {
		t.Fatalf("CachedMTU on a fresh namespace = %d, %v; want 0, nil", mtu, err)
	}
}

func TestCloseDeletesNamespaces(t *testing.T) {
	if err := netlab.Supported(); err != nil {
		t.Skipf("skipping kernel test: %v", err)
	}
	lab, err := netlab.New("pt")
	if err != nil {
		t.Fatal(err)
	}
	n, err := lab.AddNS("x")
	if err != nil {
		lab.Close()
		t.Fatal(err)
	}
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Run("true"); err == nil {
		t.Fatalf("namespace %s still exists after Close", n.Name())
	}
}
