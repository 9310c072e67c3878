package pmtud

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/internal/transport"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

// sinkPeers returns P peer addresses behind a TUN device that nobody reads,
// in a fresh namespace: every packet goes through the kernel's whole IPv4
// output path and is then dropped by the device, so a benchmark measures
// the sender, not a receiver. Run fn inside the namespace to open sockets.
func sinkPeers(tb testing.TB, p int) (*netlab.NS, []netip.Addr) {
	tb.Helper()
	lab := netlab.NewT(tb)
	ns, err := lab.AddNS("sink")
	if err != nil {
		tb.Fatal(err)
	}
	// An attached but never read TUN has carrier: the kernel queues up to
	// txqueuelen packets for the reader (orphaned from the sending socket)
	// and drops the rest, like a blackhole with a real transmit path.
	var fd int
	if err := ns.Do(func() (err error) {
		if fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
			return err
		}
		ifr, err := unix.NewIfreq("sink0")
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		return unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	ns.MustRun(tb, "ip", "link", "set", "sink0", "mtu", "9000", "up") // jumbo: packed datagrams of 9,000 bytes leave whole
	ns.MustRun(tb, "ip", "addr", "add", "198.18.50.1/24", "dev", "sink0")
	if p <= 245 {
		peers := make([]netip.Addr, p)
		for i := range peers {
			peers[i] = netip.AddrFrom4([4]byte{198, 18, 50, byte(10 + i)})
		}
		return ns, peers
	}
	ns.MustRun(tb, "ip", "route", "add", "198.18.64.0/18", "dev", "sink0")
	return ns, manyPeers(p)
}

// newRelayIn creates a relay from cfg in ns (its sockets live there) and
// closes it when the test or benchmark ends.
func newRelayIn(tb testing.TB, ns *netlab.NS, cfg Config) *Relay {
	tb.Helper()
	var r *Relay
	if err := ns.Do(func() (err error) {
		r, err = New(cfg, nil)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.Close() })
	return r
}

// manyPeers returns p addresses from 198.18.64.0/18.
func manyPeers(p int) []netip.Addr {
	peers := make([]netip.Addr, p)
	for i := range peers {
		peers[i] = netip.AddrFrom4([4]byte{198, 18, byte(64 + i>>8), byte(i)})
	}
	return peers
}

// TestFanoutSplitsLargePeerSets: with 1,000 and 1,500 peers (one payload's
// messages fill or overflow one sendmmsg call of at most 1,024), every
// peer gets every payload of a 64-payload batch, with no error, and the
// fan-out allocates nothing per batch.
func TestFanoutSplitsLargePeerSets(t *testing.T) {
	for _, p := range []int{1000, 1500} {
		t.Run(fmt.Sprintf("P=%d", p), func(t *testing.T) {
			ns, peers := sinkPeers(t, p)
			var fan *transport.Fanout
			if err := ns.Do(func() (err error) {
				fan, err = transport.NewICMP(netip.MustParseAddr("198.18.50.1"), 10, peers)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer fan.Close()
			payloads := benchPayloads(64)
			fan.Send(nil, payloads)
			tally := fan.Tally()
			for k, n := range tally.Sent {
				if n != 64 || tally.Errors[k] != 0 {
					t.Fatalf("peer %d of %d: %d sent, %d errors (last %v); want 64 and none", k, p, n, tally.Errors[k], tally.LastErrno)
				}
			}
			if allocs := testing.AllocsPerRun(5, func() { fan.Send(nil, payloads) }); allocs != 0 {
				t.Fatalf("a batch to %d peers allocates %.1f times", p, allocs)
			}
		})
	}
}

// BenchmarkPeerSet measures a 5,000-peer set: building it from the
// previous one (50 peers replaced, so state carries over for the rest),
// swapping it into a running relay with two workers (each rebuilds its
// sendmmsg messages for the next batch), and the memory a set holds
// (heap-B/set; with the udp relay each peer has a 1 KiB replay window).
func BenchmarkPeerSet(b *testing.B) {
	const p = 5000
	base := manyPeers(p + 50)
	setA, setB := PeersOf(base[:p]...), PeersOf(base[50:]...)
	cfg := Config{NodeName: "bench", Source: netip.MustParseAddr("198.18.50.1"), TTL: 10}
	b.Run("build/P=5000", func(b *testing.B) {
		prev := newPeerSet(&cfg, nil, setA)
		b.ReportAllocs()
		for i := range b.N {
			next := setB
			if i%2 == 1 {
				next = setA
			}
			prev = newPeerSet(&cfg, prev, next)
		}
	})
	for _, mode := range []Mode{ModeICMP, ModeUDP} {
		b.Run("memory/"+mode.String()+"/P=5000", func(b *testing.B) {
			c := cfg
			c.Mode = mode
			var keep []*peerSet
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			for range b.N {
				keep = append(keep, newPeerSet(&c, nil, setA))
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(len(keep)), "heap-B/set")
			runtime.KeepAlive(keep)
		})
	}
	b.Run("swap/P=5000", func(b *testing.B) {
		ns, _ := sinkPeers(b, 1)
		c := cfg
		c.Peers, c.Workers, c.NFLOG = setA, 2, nl.Config{Group: 33}
		r := newRelayIn(b, ns, c)
		j := newJob()
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			next := setB
			if i%2 == 1 {
				next = setA
			}
			if ch, err := r.SetPeers(next); err != nil || ch.Added != 50 {
				b.Fatalf("SetPeers: %+v, %v", ch, err)
			}
			// The next batch of each worker rebuilds its messages.
			for _, w := range r.workers {
				w.use(r.acquire(j))
			}
			j.set.Store(nil)
		}
	})
}

// benchPayloads returns n distinct frag-needed ICMP messages of a typical
// size (a Linux router quotes up to 576 bytes in all).
func benchPayloads(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		tcp := make([]byte, 576-20-8-20)
		tcp[0], tcp[1] = byte(i>>8), byte(i)
		quoted := wire.AppendQuote(nil, netlab.Anycast, netlab.ClientAddr, unix.IPPROTO_TCP, 63, 1500, tcp)
		out[i] = wire.AppendFragNeeded(nil, 1400, quoted)
	}
	return out
}

// reportPackets reports per-packet cost and rate for a benchmark that sends
// perOp packets per iteration.
func reportPackets(b *testing.B, perOp int) {
	pkts := float64(b.N) * float64(perOp)
	b.ReportMetric(b.Elapsed().Seconds()*1e9/pkts, "ns/pkt")
	b.ReportMetric(pkts/b.Elapsed().Seconds(), "pkts/s")
}

var benchPeerCounts = []int{1, 16}

// BenchmarkFanoutSendmmsg sends 64 ICMPs to P peers per op with the
// relay's fan-out: sendmmsg, one shared iovec per ICMP, prebuilt sockaddrs.
func BenchmarkFanoutSendmmsg(b *testing.B) {
	for _, p := range benchPeerCounts {
		b.Run(fmt.Sprintf("P=%d", p), func(b *testing.B) { benchSendmmsg(b, p) })
	}
}

// BenchmarkFanoutSendto is the baseline: the same packets, one sendto per
// packet and peer, as the reference daemon sends them.
func BenchmarkFanoutSendto(b *testing.B) {
	for _, p := range benchPeerCounts {
		b.Run(fmt.Sprintf("P=%d", p), func(b *testing.B) { benchSendto(b, p) })
	}
}

func benchSendmmsg(b *testing.B, p int) {
	ns, peers := sinkPeers(b, p)
	var fan *transport.Fanout
	if err := ns.Do(func() (err error) {
		fan, err = transport.NewICMP(netip.MustParseAddr("198.18.50.1"), 10, peers)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer fan.Close()
	payloads := benchPayloads(64)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		fan.Send(nil, payloads)
	}
	reportPackets(b, len(payloads)*p)
	if e := fan.Tally().LastErrno; e != 0 {
		b.Fatalf("send error: %v", e)
	}
}

func benchSendto(b *testing.B, p int) {
	ns, peers := sinkPeers(b, p)
	var fd int
	if err := ns.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return err
		}
		return unix.SetsockoptInt(fd, unix.SOL_RAW, 1 /* ICMP_FILTER, include/uapi/linux/icmp.h */, -1)
	}); err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	sas := make([]unix.SockaddrInet4, p)
	for i, a := range peers {
		sas[i].Addr = a.As4()
	}
	payloads := benchPayloads(64)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		for _, pl := range payloads {
			for i := range sas {
				if err := unix.Sendto(fd, pl, 0, &sas[i]); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	reportPackets(b, len(payloads)*p)
}

// BenchmarkRelayBatch is the whole per-batch path in-process: parse,
// policy, sealing (udp), fan-out and metrics, for a batch of 64 logged
// packets, P = 16. ns/pkt is per packet sent (input packets × peers).
func BenchmarkRelayBatch(b *testing.B) {
	const p = 16
	for _, tc := range []struct {
		name      string
		mode      Mode
		envelope  int // udp: 3 packs the batch's packets
		packBytes int
	}{
		{"icmp", ModeICMP, 0, 0}, {"udp", ModeUDP, 0, 0}, {"udp-ipv6", ModeUDP | ipv6Bench, 0, 0},
		{"udp-packed-1500", ModeUDP, 3, 1432}, {"udp-packed-9000", ModeUDP, 3, 8932},
	} {
		name, mode := tc.name, tc.mode&^ipv6Bench
		b.Run(name, func(b *testing.B) {
			ns, peers := sinkPeers(b, p)
			cfg := Config{
				NodeName:       "bench",
				Mode:           mode,
				Source:         netip.MustParseAddr("198.18.50.1"),
				Peers:          PeersOf(peers...),
				IgnoreNetworks: []netip.Prefix{netip.MustParsePrefix("198.19.254.0/24")},
				TTL:            10,
				NFLOG:          nl.Config{Group: 33},
				Envelope:       tc.envelope,
				PackBytes:      tc.packBytes,
			}
			if mode == ModeUDP {
				cfg.Keys = []wire.Key{testKey}
			}
			r := newRelayIn(b, ns, cfg)
			j := newJob()
			batch := j.batch
			var pkts [][]byte
			v6 := name == "udp-ipv6"
			for _, icmp := range benchPayloads(64) {
				pkt := wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64, icmp)
				if v6 {
					pkt = tooBig6(nil, 0)
				}
				pkts = append(pkts, pkt)
				batch.Packets = append(batch.Packets, nl.Packet{Payload: pkt})
			}
			w := r.workers[0]
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				// New to the dedup table, as a storm's packets are (64
				// checksums of 556 bytes: about 0.1% of an op; over IPv6
				// 64 packets of 1280 bytes built again: about 3%).
				if v6 {
					for k := range pkts {
						tooBig6(pkts[k][:0], uint32(i)<<6|uint32(k))
					}
				} else {
					renumber(pkts, uint32(i))
				}
				w.handle(j)
			}
			reportPackets(b, len(batch.Packets)*p)
			if st := r.Stats(); st.SendErrors != 0 || len(st.Dropped) != 0 {
				b.Fatalf("unexpected errors or drops: %+v", st)
			}
		})
	}
}

// ipv6Bench marks BenchmarkRelayBatch's IPv6 case; it is no Mode.
const ipv6Bench Mode = 1 << 7

// tooBig6 appends to b what a Linux router sends over IPv6 (1280 bytes, a
// Packet Too Big from netlab.RouterLoopback6 to netlab.Anycast6, MTU 1400,
// quoting a TCP packet to netlab.ClientAddr6) with seq in the quoted
// sequence number; into a b of that capacity, it allocates nothing.
func tooBig6(b []byte, seq uint32) []byte {
	var q [1280 - 48]byte
	q[0] = 6 << 4
	binary.BigEndian.PutUint16(q[4:], 1400)
	q[6], q[7] = unix.IPPROTO_TCP, 64
	s, d := netlab.Anycast6.As16(), netlab.ClientAddr6.As16()
	copy(q[8:], s[:])
	copy(q[24:], d[:])
	binary.BigEndian.PutUint16(q[40:], 443)
	binary.BigEndian.PutUint16(q[42:], 51000)
	binary.BigEndian.PutUint32(q[44:], seq)
	return wire.AppendPacketTooBig(b, netlab.RouterLoopback6, netlab.Anycast6, 64, 1400, q[:])
}

// BenchmarkReceiveInject is the udp relay's receive path for one datagram:
// source check, envelope verification (HMAC-SHA256), parse, replay window
// and the injection of its packets, through the veth pair (one sendmmsg
// per datagram: the receiver's batches of several datagrams are not
// modelled) and through the TUN device (a write per packet). The recvmmsg
// call is not included.
func BenchmarkReceiveInject(b *testing.B) {
	for _, inject := range []Inject{InjectVeth, InjectTUN} {
		// Packets per datagram: one (version 2), or packs of version 3 as
		// the sender fills them for a 1500-byte path (2 of 576 bytes) and
		// a 9000-byte one (15).
		for _, per := range []int{1, 2, 15} {
			name := "v2"
			if per > 1 {
				name = fmt.Sprintf("packed-%d", per)
			}
			b.Run(inject.String()+"/"+name, func(b *testing.B) { benchReceive(b, inject, per) })
		}
	}
}

func benchReceive(b *testing.B, inject Inject, per int) {
	ns, _ := sinkPeers(b, 1)
	sender := netip.MustParseAddr("198.18.50.10")
	var r *Relay
	if err := ns.Do(func() (err error) {
		r, err = New(Config{
			NodeName: "bench",
			Mode:     ModeUDP,
			Source:   netip.MustParseAddr("198.18.50.1"),
			Peers:    PeersOf(sender),
			TTL:      10,
			Keys:     []wire.Key{testKey},
			NFLOG:    nl.Config{Group: 33},
			Inject:   inject,
		}, nil)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	rv := r.recvs[0]
	newSealer := wire.NewSealer
	if per > 1 {
		newSealer = wire.NewSealerPacked
	}
	sealer, err := newSealer(&testKey, wire.NewSequence(time.Now()), sender)
	if err != nil {
		b.Fatal(err)
	}
	var pkts [][]byte
	for _, icmp := range benchPayloads(per) {
		pkts = append(pkts, wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64, icmp))
	}
	body := func() []byte {
		if per == 1 {
			return pkts[0]
		}
		var pack []byte
		for _, p := range pkts {
			pack = wire.AppendPacked(pack, p)
		}
		return pack
	}
	d := datagramFor(rv, sender, wire.EnvelopeLen+len(body()))
	hdr := (*[wire.EnvelopeLen]byte)(d.buf[:wire.EnvelopeLen])
	rv.stamp(time.Now())
	injected := r.m.injected.Get()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		// The sender's work, not measured: new packets, sealed.
		renumber(pkts, uint32(i))
		bd := body()
		copy(d.buf[wire.EnvelopeLen:], bd)
		now := time.Now()
		sealer.Seal(hdr, bd, now)
		rv.stamp(now) // as the receiver does per batch
		b.StartTimer()
		if reason := rv.handle(0); reason != 0 && reason != recvCounted {
			b.Fatalf("datagram dropped: %v", reason)
		}
	}
	b.StopTimer()
	if per > 1 {
		if got := r.m.injected.Get() - injected; got != uint64(b.N*per) {
			b.Fatalf("injected %d packets, want %d", got, b.N*per)
		}
	}
	reportPackets(b, per)
}

// TestGateFanout is the fan-out's regression gate: sendmmsg to 16 peers must
// allocate nothing and beat one sendto per packet and peer, measured in the
// same run on the same sink. Ratios only: absolute times are not stable on
// shared machines.
func TestGateFanout(t *testing.T) {
	if testing.Short() {
		t.Skip("benchmark gate skipped in -short mode")
	}
	const p = 16
	// Floor set from 1.35-1.59x measured on 2026-11-25 (2-core AMD EPYC
	// VM, quiet; single rounds ranged 1.08-1.59x), with room for noise.
	const floor = 1.05
	// The kernel's cost per packet dominates both and this VM's noise is
	// of the same order as the difference: take the best of three
	// interleaved rounds of each.
	var mmsg, sendto testing.BenchmarkResult
	for range 3 {
		m := testing.Benchmark(func(b *testing.B) { benchSendmmsg(b, p) })
		s := testing.Benchmark(func(b *testing.B) { benchSendto(b, p) })
		if mmsg.N == 0 || m.N > 0 && m.NsPerOp() < mmsg.NsPerOp() {
			mmsg = m
		}
		if sendto.N == 0 || s.N > 0 && s.NsPerOp() < sendto.NsPerOp() {
			sendto = s
		}
	}
	if mmsg.N == 0 || sendto.N == 0 {
		t.Skip("skipping the fan-out gate: the sink could not be built (needs root)")
	}
	ratio := float64(sendto.NsPerOp()) / float64(max(mmsg.NsPerOp(), 1))
	perPkt := func(r testing.BenchmarkResult) float64 { return float64(r.NsPerOp()) / (64 * p) }
	t.Logf("fan-out P=%d: sendmmsg %.0f ns/pkt, %d allocs/op; sendto %.0f ns/pkt; %.2fx (floor %.2fx)",
		p, perPkt(mmsg), mmsg.AllocsPerOp(), perPkt(sendto), ratio, floor)
	if mmsg.AllocsPerOp() != 0 {
		t.Errorf("the fan-out allocates %d times per op, want 0", mmsg.AllocsPerOp())
	}
	if ratio < floor {
		t.Errorf("sendmmsg fan-out is %.2fx one sendto per packet, below the floor of %.2fx", ratio, floor)
	}
}
