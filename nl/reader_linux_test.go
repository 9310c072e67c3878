//go:build linux

package nl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"golang.org/x/sys/unix"
)

// Kernel tests: each builds its own network namespace (bench/netlab), logs
// ICMP "fragmentation needed" packets that arrive on its lo to an NFLOG
// group with the rule go-pmtud documents, sends such packets to itself
// through a raw socket, and reads them with a Reader. Addresses come from
// 198.18.0.0/15; no packet leaves the namespace.

var (
	nsSrc = [4]byte{198, 18, 0, 2} // the "router"
	nsDst = [4]byte{198, 18, 0, 1} // an address on the namespace's lo
)

// stuck bounds every wait of a kernel test on the kernel. It is not a
// timing assertion: a healthy run never gets near it.
const stuck = 10 * time.Second

type kernelEnv struct {
	ns    *netlab.NS
	group uint16
	raw   int // IPPROTO_RAW socket in the namespace, connected to nsDst
}

// newKernelEnv builds a namespace with nsDst on lo and an iptables rule
// that logs ICMP fragmentation-needed packets arriving on lo to group.
func newKernelEnv(t *testing.T, group uint16) *kernelEnv {
	t.Helper()
	lab := netlab.NewT(t)
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("skipping kernel test: iptables not found")
	}
	ns, err := lab.AddNS("nl")
	if err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "ip", "addr", "add", "198.18.0.1/32", "dev", "lo")
	ns.MustRun(t, "iptables", "-t", "raw", "-A", "PREROUTING", "-i", "lo", "-d", "198.18.0.0/15",
		"-p", "icmp", "--icmp-type", "fragmentation-needed", "-j", "NFLOG", "--nflog-group", strconv.Itoa(int(group)))
	e := &kernelEnv{ns: ns, group: group}
	err = ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		e.raw = fd
		return unix.Connect(fd, &unix.SockaddrInet4{Addr: nsDst})
	})
	if err != nil {
		t.Fatalf("raw socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(e.raw) })
	return e
}

// listen calls Listen in the namespace; the Reader is closed when the test
// ends.
func (e *kernelEnv) listen(t *testing.T, cfg Config) *Reader {
	t.Helper()
	cfg.Group = e.group
	var r *Reader
	if err := e.ns.Do(func() (err error) { r, err = Listen(cfg); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// send sends one IPv4 packet, header included (IP_HDRINCL): with a non-zero
// ID and a correct checksum the kernel leaves every byte as it is.
func (e *kernelEnv) send(t testing.TB, pkt []byte) {
	if _, err := unix.Write(e.raw, pkt); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// probe returns the i-th test packet: a 576-byte fragmentation-needed
// message with IP ID i+1, so that each is distinct.
func probe(i int) []byte { return fragNeeded(nsSrc, nsDst, 1400, uint16(i+1), 576) }

// received is what a test keeps of one Read.
type received struct {
	pkts     []Packet // payloads copied out of the Batch
	lost     uint64
	datagram []byte // the raw datagram, copied
	err      error
}

// readUntil reads into a fresh Batch until done says stop, and returns every
// Read's result. Reads that have not finished after `stuck` fail the test.
func readUntil(t *testing.T, r *Reader, done func([]received) bool) []received {
	t.Helper()
	var timedOut atomic.Bool
	watchdog := time.AfterFunc(stuck, func() { timedOut.Store(true); r.Close() })
	defer watchdog.Stop()
	b := NewBatch()
	var out []received
	for !done(out) {
		err := r.Read(b)
		if timedOut.Load() {
			t.Fatalf("no more packets after %v; got %d reads", stuck, len(out))
		}
		rv := received{lost: b.Lost, err: err}
		if err == nil {
			rv.datagram = slices.Clone(b.buf[:min(r.rn, len(b.buf))])
		}
		for _, p := range b.Packets {
			p.Payload = slices.Clone(p.Payload)
			rv.pkts = append(rv.pkts, p)
		}
		out = append(out, rv)
	}
	return out
}

// packets counts the packets in rs.
func packets(rs []received) int {
	n := 0
	for _, r := range rs {
		n += len(r.pkts)
	}
	return n
}

func TestKernelReceivesLoggedPackets(t *testing.T) {
	e := newKernelEnv(t, 5)
	r := e.listen(t, Config{})
	const n = 10
	for i := range n {
		e.send(t, probe(i))
	}
	rs := readUntil(t, r, func(rs []received) bool { return packets(rs) >= n })

	var got []Packet
	for _, rv := range rs {
		if rv.err != nil {
			t.Fatalf("Read: %v", rv.err)
		}
		if rv.lost != 0 {
			t.Errorf("Batch.Lost = %d, want 0", rv.lost)
		}
		checkDecode(t, rv.datagram)
		got = append(got, rv.pkts...)
	}
	if len(got) != n {
		t.Fatalf("got %d packets, want %d", len(got), n)
	}
	seen := make(map[string]bool)
	for i, p := range got {
		seen[string(p.Payload)] = true
		if !p.HasSeq || p.Seq != got[0].Seq+uint32(i) {
			t.Errorf("packet %d: seq %d (present %v), want %d", i, p.Seq, p.HasSeq, got[0].Seq+uint32(i))
		}
		if p.InIfindex != 1 {
			t.Errorf("packet %d: in-interface %d, want 1 (lo)", i, p.InIfindex)
		}
		if p.HwProto != unix.ETH_P_IP {
			t.Errorf("packet %d: hw protocol %#x, want %#x", i, p.HwProto, unix.ETH_P_IP)
		}
		if age := time.Since(time.Unix(0, p.Timestamp)); age < -time.Hour || age > time.Hour {
			t.Errorf("packet %d: timestamp %v is not now", i, time.Unix(0, p.Timestamp))
		}
	}
	for i := range n {
		if !seen[string(probe(i))] {
			t.Errorf("packet %d did not arrive byte for byte", i)
		}
	}
	if got[0].Seq != 0 {
		t.Errorf("first seq %d, want 0 (a new instance counts from 0)", got[0].Seq)
	}
}

func TestKernelBatchesPacketsPerDatagram(t *testing.T) {
	e := newKernelEnv(t, 6)
	// The queue threshold, not a timer, flushes the batch: deterministic.
	const n = 50
	r := e.listen(t, Config{QThreshold: n, Timeout: time.Minute})
	for i := range n {
		e.send(t, probe(i))
	}
	rs := readUntil(t, r, func(rs []received) bool { return packets(rs) >= n })
	most := 0
	for _, rv := range rs {
		if rv.err != nil {
			t.Fatalf("Read: %v", rv.err)
		}
		checkDecode(t, rv.datagram)
		most = max(most, len(rv.pkts))
	}
	t.Logf("%d packets in %d datagrams, at most %d per datagram", packets(rs), len(rs), most)
	if most < 2 {
		t.Errorf("every datagram held one packet; want batches with QThreshold %d", n)
	}
}

func TestKernelSmallBatch(t *testing.T) {
	e := newKernelEnv(t, 7)
	r := e.listen(t, Config{QThreshold: 3, Timeout: time.Minute})
	for i := range 3 {
		e.send(t, fragNeeded(nsSrc, nsDst, 1400, uint16(i+1), 56+i))
	}
	rs := readUntil(t, r, func(rs []received) bool { return packets(rs) >= 3 })
	if len(rs) != 1 || rs[0].err != nil {
		t.Fatalf("3 packets with QThreshold 3: %d reads, first error %v; want one datagram", len(rs), rs[0].err)
	}
	d := rs[0].datagram
	checkDecode(t, d)
	// The kernel ends a datagram of several messages with NLMSG_DONE.
	var last uint16
	for b := d; len(b) >= nlmsgHdrLen; b = b[min(align4(int(binary.NativeEndian.Uint32(b))), len(b)):] {
		last = binary.NativeEndian.Uint16(b[4:])
	}
	if last != nlmsgDone {
		t.Errorf("last message type %d, want NLMSG_DONE", last)
	}
	writeSeed(t, "kernel-batch3", d)
}

func TestKernelAttributeLayout(t *testing.T) {
	// kernelPacket, which the benchmarks and fuzz seeds use, must look like
	// what the kernel sends.
	e := newKernelEnv(t, 8)
	r := e.listen(t, Config{QThreshold: 1})
	e.send(t, probe(0))
	rs := readUntil(t, r, func(rs []received) bool { return packets(rs) >= 1 })
	types := func(d []byte) []uint16 {
		var ts []uint16
		walkAttrs(d, 0, func(typ uint16, _ []byte) { ts = append(ts, typ) })
		return ts
	}
	got := types(rs[0].datagram)
	want := types(appendMsg(nil, msgTypePacket, 0, 0, kernelPacket(8, probe(0), 0, 1, 0, 0)))
	if !slices.Equal(got, want) {
		t.Errorf("kernel attribute types %v, kernelPacket's %v", got, want)
	}
	checkDecode(t, rs[0].datagram)
	writeSeed(t, "kernel-single", rs[0].datagram)
}

func TestKernelGroupTaken(t *testing.T) {
	e := newKernelEnv(t, 9)
	e.listen(t, Config{})
	var r *Reader
	err := e.ns.Do(func() (err error) { r, err = Listen(Config{Group: 9}); return err })
	if err == nil {
		r.Close()
		t.Fatal("second Listen on group 9 succeeded")
	}
	t.Logf("second Listen: %v", err)
	if !strings.Contains(err.Error(), "group 9") || !strings.Contains(err.Error(), "bound by another netlink socket") {
		t.Errorf("error %q does not say that group 9 is taken", err)
	}
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("error %q does not match EPERM", err)
	}
}

func TestKernelCloseUnblocksRead(t *testing.T) {
	e := newKernelEnv(t, 10)
	r := e.listen(t, Config{})
	errc := make(chan error, 1)
	go func() { errc <- r.Read(NewBatch()) }()
	// Give Read time to block; the outcome is the same if it has not yet.
	time.Sleep(50 * time.Millisecond)
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) || !errors.Is(err, os.ErrClosed) {
			t.Errorf("Read after Close: %v; want net.ErrClosed and os.ErrClosed", err)
		}
	case <-time.After(stuck):
		t.Fatal("Read still blocked after Close")
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := r.Read(NewBatch()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read on a closed Reader: %v", err)
	}
	// Closing released the group: it can be bound again.
	e.listen(t, Config{})
}

func TestKernelReportsDrops(t *testing.T) {
	e := newKernelEnv(t, 11)
	// The smallest receive buffer holds a couple of datagrams: sending 200
	// packets while nobody reads overflows it.
	r := e.listen(t, Config{QThreshold: 1, ReadBuffer: 1})
	const burst, atLeast = 200, 205
	for i := range burst {
		e.send(t, probe(i))
	}
	// Then send one packet before each Read, so that no Read waits forever
	// (a packet sent while the socket is still congested is dropped too, but
	// then the queue is not empty), until the last packet sent has arrived:
	// every drop is then followed by a packet that reveals its gap.
	sent := burst
	rs := readUntil(t, r, func(rs []received) bool {
		last := -1
		for _, rv := range rs {
			for _, p := range rv.pkts {
				last = int(p.Seq)
			}
		}
		if last == sent-1 && sent >= atLeast {
			return true
		}
		e.send(t, probe(sent))
		sent++
		return false
	})
	var got, lost, overruns int
	first := -1
	for _, rv := range rs {
		switch {
		case errors.Is(rv.err, unix.ENOBUFS):
			overruns++
		case rv.err != nil:
			t.Fatalf("Read: %v", rv.err)
		}
		if first < 0 && len(rv.pkts) > 0 {
			first = int(rv.pkts[0].Seq)
		}
		got += len(rv.pkts)
		lost += int(rv.lost)
	}
	t.Logf("sent %d, received %d (from seq %d), Lost %d, ENOBUFS %d times", sent, got, first, lost, overruns)
	if overruns == 0 {
		t.Error("no Read reported ENOBUFS")
	}
	if lost == 0 {
		t.Error("Batch.Lost stayed 0")
	}
	if got+lost != sent-first {
		t.Errorf("received %d + lost %d != sent %d - first seq %d", got, lost, sent, first)
	}
}

func TestKernelLargeBatchesFitTheBuffer(t *testing.T) {
	e := newKernelEnv(t, 12)
	const n = 1000
	r := e.listen(t, Config{QThreshold: n, Timeout: 200 * time.Millisecond})
	for i := range n {
		e.send(t, probe(i))
	}
	rs := readUntil(t, r, func(rs []received) bool { return packets(rs) >= n })
	most := 0
	for _, rv := range rs {
		if rv.err != nil {
			t.Fatalf("Read: %v", rv.err)
		}
		most = max(most, len(rv.datagram))
	}
	t.Logf("%d packets in %d datagrams, the largest %d bytes (BufSize %d, buffer %d)", n, len(rs), most, defaultBufSize, maxDatagram)
}

func TestReadAllocs(t *testing.T) {
	e := newKernelEnv(t, 13)
	r := e.listen(t, Config{QThreshold: 1})
	b := NewBatch()
	pkt := probe(0)
	watchdog := time.AfterFunc(stuck, func() { r.Close() })
	defer watchdog.Stop()
	var failed error
	allocs := testing.AllocsPerRun(200, func() {
		e.send(t, pkt)
		if err := r.Read(b); err != nil || len(b.Packets) != 1 {
			failed = fmt.Errorf("Read: %d packets, %v", len(b.Packets), err)
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("Read: %v allocations per packet, want 0", allocs)
	}
}

func TestKernelTruncatedDatagram(t *testing.T) {
	e := newKernelEnv(t, 14)
	r := e.listen(t, Config{QThreshold: 1})
	small := &Batch{buf: make([]byte, 300)} // shorter than one 576-byte packet
	e.send(t, probe(0))
	if err := r.Read(small); !errors.Is(err, ErrMalformed) || !errors.Is(err, errTruncated) {
		t.Fatalf("Read into a 300-byte buffer: %v; want the truncation error", err)
	}
	// The datagram is consumed; the Reader goes on.
	e.send(t, probe(1))
	rs := readUntil(t, r, func(rs []received) bool { return packets(rs) >= 1 })
	if rs[0].err != nil || string(rs[0].pkts[0].Payload) != string(probe(1)) {
		t.Errorf("Read after a truncated datagram: %v", rs[0].err)
	}
}
