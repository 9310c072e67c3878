package tun

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/wire"
)

var (
	testRouter = netip.MustParseAddr("198.19.255.1")
	testLocal  = netip.MustParseAddr("198.18.100.1") // on the namespace's lo
	testRemote = netip.MustParseAddr("198.18.200.5")
	testAddr   = netip.MustParseAddr("169.254.42.1")
)

// fragNeeded is the router's frag-needed for a TCP packet from testLocal,
// told apart by seq.
func fragNeeded(seq uint32) []byte {
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 443)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	inner := wire.AppendIPv4(nil, testLocal, testRemote, unix.IPPROTO_TCP, 64, tcp)
	return wire.AppendIPv4(nil, testRouter, testLocal, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, inner))
}

// newNS returns a lab namespace with lo up and testLocal on it, or skips.
func newNS(t *testing.T) *netlab.NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ns, err := netlab.NewT(t).AddNS("veth")
	if err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "ip", "link", "set", "lo", "up")
	ns.MustRun(t, "ip", "addr", "add", testLocal.String()+"/32", "dev", "lo")
	return ns
}

// counter reads a counter of ns's kernel by nstat name.
func counter(t *testing.T, ns *netlab.NS, name string) uint64 {
	t.Helper()
	f := strings.Fields(ns.MustRun(t, "nstat", "-az", name))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == name {
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("nstat has no %s: %q", name, f)
	return 0
}

// openVeth opens veth pair pmtud0 in ns and closes it when the test ends.
func openVeth(t *testing.T, ns *netlab.NS) *Veth {
	t.Helper()
	var v *Veth
	if err := ns.Do(func() error {
		var err error
		v, err = OpenVeth("pmtud0", testAddr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// newWriter opens a writer for v in ns, v's namespace: the socket names
// the -tx end by its index there.
func newWriter(t *testing.T, ns *netlab.NS, v *Veth) Writer {
	t.Helper()
	var w Writer
	if err := ns.Do(func() error {
		var err error
		w, err = v.Writer()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// TestVethInjects: packets queued on a VethWriter and flushed arrive on the
// veth end the pair is named by, and the kernel delivers them locally as
// it would the router's (ICMP destination unreachable counted, one per
// packet); the end sends nothing; Queue and Flush allocate nothing; Close
// deletes both ends.
func TestVethInjects(t *testing.T) {
	ns := newNS(t)
	const n = 40
	pkts := make([][]byte, n)
	for i := range pkts {
		pkts[i] = fragNeeded(uint32(i))
	}
	v := openVeth(t, ns)
	if err := ns.Do(v.Up); err != nil {
		t.Fatal(err)
	}
	w := newWriter(t, ns, v)
	before := counter(t, ns, "IcmpInDestUnreachs")
	for i, p := range pkts {
		if w.Queue(p) {
			t.Fatalf("full after %d packets", i+1)
		}
	}
	queued, failed, err := w.Flush()
	if queued != n || failed != 0 || err != nil {
		t.Fatalf("Flush = %d, %d, %v; want %d, 0, nil", queued, failed, err, n)
	}
	if got := counter(t, ns, "IcmpInDestUnreachs") - before; got != n {
		t.Fatalf("the kernel received %d ICMP destination unreachables, want %d", got, n)
	}
	if rx := strings.TrimSpace(ns.MustRun(t, "cat", "/sys/class/net/pmtud0/statistics/rx_packets")); rx != strconv.Itoa(n) {
		t.Errorf("pmtud0 received %s packets, want %d", rx, n)
	}
	if tx := strings.TrimSpace(ns.MustRun(t, "cat", "/sys/class/net/pmtud0/statistics/tx_packets")); tx != "0" {
		t.Errorf("pmtud0 sent %s packets, want none", tx)
	}
	if q, _, _ := w.Flush(); q != 0 {
		t.Errorf("a second Flush sent %d packets, want none", q)
	}
	if allocs := testing.AllocsPerRun(20, func() {
		for _, p := range pkts[:16] {
			w.Queue(p)
		}
		w.Flush()
	}); allocs != 0 {
		t.Errorf("Queue and Flush: %v allocations, want 0", allocs)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pmtud0", TxName("pmtud0")} {
		if out, err := ns.Run("ip", "link", "show", name); err == nil {
			t.Errorf("%s is still there after Close:\n%s", name, out)
		}
	}
}

// linkKindOf returns interface index's kind, in the calling thread's
// namespace.
func linkKindOf(index int) (string, error) {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return linkKind(c, index)
}

// TestVethAddress: the end packets arrive on has the locally administered
// unicast address the pair was created with (so udev leaves it alone), and
// Up reports a change of it, after which frames would miss.
func TestVethAddress(t *testing.T) {
	ns := newNS(t)
	v := openVeth(t, ns)
	if v.mac[0]&1 != 0 || v.mac[0]&2 == 0 {
		t.Errorf("address %v is not unicast and locally administered", net.HardwareAddr(v.mac[:]))
	}
	link := ns.MustRun(t, "ip", "link", "show", "pmtud0")
	if !strings.Contains(link, net.HardwareAddr(v.mac[:]).String()) {
		t.Errorf("pmtud0 does not have %v:\n%s", net.HardwareAddr(v.mac[:]), link)
	}
	if err := ns.Do(v.Up); err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "ip", "link", "set", "pmtud0", "address", "02:00:00:00:00:42")
	if err := ns.Do(v.Up); err == nil || !strings.Contains(err.Error(), "changed its address") {
		t.Errorf("Up after the address changed: %v, want an error saying so", err)
	}
}

// TestVethFull: Queue reports a full writer at its capacity, and a Flush
// then sends the whole batch.
func TestVethFull(t *testing.T) {
	ns := newNS(t)
	v := openVeth(t, ns)
	w := newWriter(t, ns, v)
	p := fragNeeded(1)
	for i := 1; i <= vethQueue; i++ {
		if full := w.Queue(p); full != (i == vethQueue) {
			t.Fatalf("Queue #%d reported full = %v", i, full)
		}
	}
	if q, failed, err := w.Flush(); q != vethQueue || failed != 0 || err != nil {
		t.Fatalf("Flush = %d, %d, %v; want %d, 0, nil", q, failed, err, vethQueue)
	}
}

// kill leaves v's pair behind as a killed daemon would: its lock and
// rtnetlink socket closed (by the kernel, at the process's death), the
// pair not deleted.
func kill(v *Veth) {
	unix.Close(v.lock)
	v.conn.Close()
	v.conn = nil
}

// TestOpenVethReplacesLeftover: a pair left by a daemon that was killed is
// replaced, by OpenVeth and by Open (a TUN device of the name); a pair a
// live daemon holds is not, and neither is a device of the name that is no
// veth: OpenVeth says why.
func TestOpenVethReplacesLeftover(t *testing.T) {
	ns := newNS(t)
	err := ns.Do(func() error {
		old, err := OpenVeth("pmtud0", testAddr)
		if err != nil {
			return err
		}
		if _, err := OpenVeth("pmtud0", testAddr); err == nil || !strings.Contains(err.Error(), "owns pmtud0") {
			t.Errorf("OpenVeth over a live daemon's pair: %v, want it to say another go-pmtud owns pmtud0", err)
		}
		if _, err := Open("pmtud0", testAddr); err == nil || !strings.Contains(err.Error(), "owns pmtud0") {
			t.Errorf("Open over a live daemon's pair: %v, want it to say another go-pmtud owns pmtud0", err)
		}
		if err := old.Up(); err != nil {
			t.Errorf("the live pair was harmed: %v", err)
		}
		oldIndex := old.Index()
		kill(old)
		v, err := OpenVeth("pmtud0", testAddr)
		if err != nil {
			t.Errorf("OpenVeth over a leftover pair: %v", err)
			return nil
		}
		defer v.Close()
		if v.Index() == oldIndex {
			t.Errorf("the leftover pair was kept (index %d)", oldIndex)
		}
		if _, err := net.InterfaceByIndex(oldIndex); err == nil {
			t.Errorf("the leftover end (index %d) still exists", oldIndex)
		}
		kill(v)
		d, err := Open("pmtud0", testAddr)
		if err != nil {
			t.Errorf("Open (TUN) over a leftover pair: %v", err)
			return nil
		}
		defer d.Close()
		if kind, err := linkKindOf(d.Index()); err != nil || kind != "tun" {
			t.Errorf("pmtud0 is %q (%v), want a TUN device", kind, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "ip", "link", "add", "pmtud1", "type", "bridge")
	err = ns.Do(func() error {
		v, err := OpenVeth("pmtud1", testAddr)
		if err == nil {
			v.Close()
			t.Error("OpenVeth replaced a bridge")
		} else if !strings.Contains(err.Error(), "is no veth") {
			t.Errorf("OpenVeth over a bridge: %v, want it to say the device is no veth", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Run("ip", "link", "show", "pmtud1"); err != nil {
		t.Errorf("the bridge is gone: %v", err)
	}
}
