package pmtud

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/nl"
	"github.com/go-pmtud/go-pmtud/wire"
)

var testKey = wire.Key{ID: 3, Secret: []byte("allocation-test-secret-32-bytes!")}

// newTestRelay starts no loops: it opens a relay on node i of a 4-node
// cluster with the other nodes as peers, for tests that drive its parts.
func newTestRelay(t *testing.T, mode Mode, i int, keys ...wire.Key) (*Relay, *netlab.Cluster) {
	return newTestRelaySplit(t, mode, SplitBatch, 1, i, keys...)
}

func newTestRelaySplit(t *testing.T, mode Mode, split Split, workers, i int, keys ...wire.Key) (*Relay, *netlab.Cluster) {
	t.Helper()
	lab := netlab.NewT(t)
	c, err := netlab.BuildCluster(lab, 4, 1400)
	if err != nil {
		t.Fatal(err)
	}
	var peers []netip.Addr
	for j := range c.Nodes {
		peers = append(peers, netlab.NodeAddr(j))
	}
	cfg := Config{
		NodeName:       "t",
		Mode:           mode,
		Source:         netlab.NodeAddr(i),
		Peers:          PeersOf(peers...),
		IgnoreNetworks: []netip.Prefix{netip.MustParsePrefix("198.19.254.0/24")},
		TTL:            10,
		NFLOG:          nl.Config{Group: 33},
		Split:          split,
		Workers:        workers,
		L2Iface:        "eth0",
	}
	cfg.Keys, cfg.InsecureNoAuth = keys, len(keys) == 0
	var r *Relay
	if err := c.Nodes[i].Do(func() (err error) {
		r, err = New(cfg, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, c
}

// TestRelayAllocs proves that the per-batch path — parse, policy, sealing
// (udp), fan-out with real sendmmsg calls, metrics — allocates nothing in
// steady state.
func TestRelayAllocs(t *testing.T) {
	for _, tc := range []struct {
		mode  Mode
		split Split
	}{{ModeICMP, SplitBatch}, {ModeUDP, SplitBatch}, {ModeUDP, SplitPeer}, {ModeL2, SplitBatch}} {
		t.Run(tc.mode.String()+"/"+tc.split.String(), func(t *testing.T) {
			r, _ := newTestRelaySplit(t, tc.mode, tc.split, 2, 1, testKeys(tc.mode)...)
			quoted := wire.AppendQuote(nil, netlab.Anycast, netlab.ClientAddr, unix.IPPROTO_TCP, 63, 1500, make([]byte, 8))
			fromPeer := wire.AppendIPv4(nil, netlab.NodeAddr(2), netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, quoted))
			ignored := wire.AppendIPv4(nil, netip.MustParseAddr("198.19.254.1"), netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, quoted))
			good := distinctFragNeeded(64)
			j := newJob()
			for i := range 64 {
				p := good[i]
				switch i % 8 {
				case 3:
					p = fromPeer
				case 5:
					p = ignored
				case 7:
					p = good[i][:30]
				}
				j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: p})
			}
			process(r, j) // warm up: histogram buckets, neighbour entries
			n := uint32(0)
			allocs := testing.AllocsPerRun(100, func() {
				n++
				renumber(good, n)
				process(r, j)
			})
			if allocs != 0 {
				t.Fatalf("a batch of %d packets allocates %.1f times, want 0", len(j.batch.Packets), allocs)
			}
			// The repeated batch without renumbering: all duplicates.
			process(r, j)
			st := r.Stats()
			// 102 distinct batches (warm-up, AllocsPerRun's own warm-up, 100
			// runs) of 40 valid packets to 3 peers (l2: one frame each);
			// then 40 duplicates.
			want := uint64(102 * 40 * 3)
			if tc.mode == ModeL2 {
				want = 102 * 40
			}
			if st.Sent != want || st.SendErrors != 0 || st.Dropped[DropFromPeer] == 0 || st.Dropped[DropIgnoredNetwork] == 0 ||
				st.Dropped[DropReason(wire.ErrTruncated)] == 0 || st.Dropped[DropDuplicate] != 40 {
				t.Logf("want %d sent and 40 duplicates", want)
				t.Fatalf("the measured path did not do the work: %+v", st)
			}
		})
	}
}

// process runs a job through the relay as its workers would, on this
// goroutine.
func process(r *Relay, j *job) {
	if r.cfg.Split == SplitPeer {
		r.pre.prepare(j)
		for _, w := range r.workers {
			w.send(j)
		}
		return
	}
	r.workers[0].handle(j)
}

// TestReceiveAllocs proves that the udp relay's receive path — source
// check, envelope verification, parse, replay window, TUN write — allocates
// nothing per datagram.
func TestReceiveAllocs(t *testing.T) {
	r, _ := newTestRelay(t, ModeUDP, 0, testKey)
	rv := r.recvs[0]
	sender := netlab.NodeAddr(1)
	sealer, err := wire.NewSealer(&testKey, wire.NewSequence(time.Now()), sender)
	if err != nil {
		t.Fatal(err)
	}
	pkts := distinctFragNeeded(1)
	pkt := pkts[0]
	// Datagram 0 as recvmmsg would leave it, sealed afresh each time so the
	// replay window accepts it, and renumbered so the dedup table does.
	d := datagramFor(rv, sender, wire.EnvelopeLen+len(pkt))
	hdr := (*[wire.EnvelopeLen]byte)(d.buf[:wire.EnvelopeLen])
	rv.stamp(time.Now())
	n := uint32(0)
	receive := func() {
		n++
		renumber(pkts, n)
		copy(d.buf[wire.EnvelopeLen:], pkt)
		sealer.Seal(hdr, pkt, time.Now())
		if reason := rv.handle(0); reason != 0 {
			t.Fatalf("datagram dropped: %v", reason)
		}
	}
	receive()
	if allocs := testing.AllocsPerRun(100, receive); allocs != 0 {
		t.Fatalf("the receive path allocates %.1f times per datagram, want 0", allocs)
	}
}

// testDatagram is a receive batch of one datagram that a test fills in
// place, as recvmmsg would.
type testDatagram struct {
	src netip.Addr
	buf []byte
}

func (d *testDatagram) Datagram(int) (netip.Addr, []byte, bool) { return d.src, d.buf, false }

// datagramFor makes rv's batch one datagram of n bytes from src and
// returns it for the test to fill.
func datagramFor(rv *receiver, src netip.Addr, n int) *testDatagram {
	d := &testDatagram{src: src, buf: make([]byte, n)}
	rv.in = d
	return d
}

func testKeys(mode Mode) []wire.Key {
	if mode == ModeUDP {
		return []wire.Key{testKey}
	}
	return nil
}

// TestUnauthenticatedSkipsReplayWindow: without keys nothing proves who
// sent a datagram, so sequence numbers do not move the replay window: a
// spoofed number from the future must not silence a genuine peer.
func TestUnauthenticatedSkipsReplayWindow(t *testing.T) {
	r, _ := newTestRelaySplit(t, ModeUDP, SplitBatch, 1, 0) // no keys: InsecureNoAuth
	rv := r.recvs[0]
	sender := netlab.NodeAddr(1)
	deliver := func(start time.Time, sport uint16) RecvDropReason {
		quoted := wire.AppendQuote(nil, netlab.Anycast, netlab.ClientAddr, unix.IPPROTO_TCP, 63, 1500, []byte{byte(sport >> 8), byte(sport), 0x1f, 0x90, 0, 0, 0, 1})
		pkt := wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, quoted))
		s, err := wire.NewSealer(nil, wire.NewSequence(start), sender)
		if err != nil {
			t.Fatal(err)
		}
		d := datagramFor(rv, sender, wire.EnvelopeLen+len(pkt))
		copy(d.buf[wire.EnvelopeLen:], pkt)
		s.Seal((*[wire.EnvelopeLen]byte)(d.buf[:wire.EnvelopeLen]), pkt, time.Now())
		rv.stamp(time.Now())
		return rv.handle(0)
	}
	if got := deliver(time.Now().Add(4*time.Minute), 1); got != 0 {
		t.Fatalf("spoofed datagram: %v, want injected (unauthenticated mode cannot tell)", got)
	}
	if got := deliver(time.Now().Add(-time.Hour), 2); got != 0 {
		t.Fatalf("genuine datagram from a peer that started an hour ago: %v, want injected", got)
	}
}

// distinctFragNeeded returns n frag-needed packets from the router, each
// quoting another source port.
func distinctFragNeeded(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		tcp := []byte{byte(i >> 8), byte(i), 0x1f, 0x90, 0, 0, 0, 0}
		quoted := wire.AppendQuote(nil, netlab.Anycast, netlab.ClientAddr, unix.IPPROTO_TCP, 63, 1500, tcp)
		out[i] = wire.AppendIPv4(nil, netlab.RouterLoopback, netlab.Anycast, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, quoted))
	}
	return out
}

// renumber writes n into the quoted TCP sequence number of each packet of
// distinctFragNeeded and fixes the ICMP checksum, so that a repeated batch
// is new to the dedup table, as a storm's packets are.
func renumber(pkts [][]byte, n uint32) {
	const seqOff = 20 + 8 + 20 + 4 // outer IPv4, ICMP, quoted IPv4, TCP ports
	for _, p := range pkts {
		binary.BigEndian.PutUint32(p[seqOff:], n)
		p[22], p[23] = 0, 0
		binary.BigEndian.PutUint16(p[22:], wire.Checksum(p[20:]))
	}
}

// TestIPv6PacketTooBig: the udp relay seals an IPv6 Packet Too Big for
// every peer like an IPv4 one (over IPv4: the node has no IPv6 address),
// and deduplicates it; the icmp relay, which can re-originate it over IPv6
// only, drops it by reason, allocating nothing either way.
func TestIPv6PacketTooBig(t *testing.T) {
	ptb := tooBig6(nil, 0)
	for _, mode := range []Mode{ModeUDP, ModeICMP} {
		t.Run(mode.String(), func(t *testing.T) {
			r, _ := newTestRelay(t, mode, 1, testKeys(mode)...)
			j := newJob()
			j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: ptb})
			process(r, j)
			st := r.Stats()
			if mode == ModeICMP {
				if !j.empty() || st.Dropped[DropNoFamilyPeers] != 1 || st.Sent != 0 {
					t.Fatalf("icmp relay prepared %d payloads, stats %+v; want none and one no_family_peers drop", len(j.lanes[fam6].payloads), st)
				}
			} else if l := &j.lanes[fam6]; len(l.payloads) != 1 || !bytes.Equal(l.payloads[0], ptb) || len(l.heads[fam4]) != 1 || len(l.heads[fam6]) != 0 || st.Sent != 3 {
				t.Fatalf("udp relay prepared %d payloads, stats %+v; want the packet, sealed for IPv4, sent to 3 peers", len(l.payloads), st)
			}
			process(r, j) // the second sight
			if st := r.Stats(); mode == ModeUDP && (st.Sent != 3 || st.Dropped[DropDuplicate] != 1) {
				t.Fatalf("udp relay: %+v; want no more copies and one duplicate", st)
			}
			if allocs := testing.AllocsPerRun(50, func() { process(r, j) }); allocs != 0 {
				t.Fatalf("%.1f allocations per batch, want 0", allocs)
			}
		})
	}
}

// TestRateLimit: with --rate-limit, a batch larger than the burst relays
// the burst to every peer and counts the rest; duplicates do not use up the
// budget, and what the limit dropped is not taken for a duplicate later.
func TestRateLimit(t *testing.T) {
	lab := netlab.NewT(t)
	c, err := netlab.BuildCluster(lab, 4, 1400)
	if err != nil {
		t.Fatal(err)
	}
	var r *Relay
	if err := c.Nodes[1].Do(func() (err error) {
		r, err = New(Config{
			NodeName:  "t",
			Source:    netlab.NodeAddr(1),
			Peers:     PeersOf(netlab.NodeAddr(0), netlab.NodeAddr(2), netlab.NodeAddr(3)),
			TTL:       10,
			NFLOG:     nl.Config{Group: 33},
			RateLimit: 25,
		}, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	j := newJob()
	for _, p := range distinctFragNeeded(40) {
		j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: p})
	}
	process(r, j)
	// All 40 again, at once: the 25 relayed are duplicates and use no
	// budget; the 15 dropped for the limit were not remembered, and are
	// dropped for the limit again.
	process(r, j)
	st := r.Stats()
	if st.Sent != 25*3 || st.Dropped[DropRateLimited] != 30 || st.Dropped[DropDuplicate] != 25 {
		t.Fatalf("stats %+v; want 75 copies sent, 30 rate_limited, 25 duplicates", st)
	}
	if allocs := testing.AllocsPerRun(20, func() { process(r, j) }); allocs != 0 {
		t.Fatalf("%.1f allocations per batch, want 0", allocs)
	}
}

// TestIPv6OffIsCounted: on a node with IPv6 off, the TUN device stays
// IPv4-only, and a relayed Packet Too Big is counted as ipv6_off instead of
// being written where the kernel would drop it unseen; IPv4 still flows.
// With IPv6 on, the same datagram is injected.
func TestIPv6OffIsCounted(t *testing.T) {
	ptb := tooBig6(nil, 0)
	frag := distinctFragNeeded(1)[0]
	for _, ipv6Off := range []bool{false, true} {
		lab := netlab.NewT(t)
		c, err := netlab.BuildCluster(lab, 2, 1400)
		if err != nil {
			t.Fatal(err)
		}
		if ipv6Off {
			c.Nodes[0].MustRun(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
		}
		var r *Relay
		if err := c.Nodes[0].Do(func() (err error) {
			r, err = New(Config{
				NodeName: "t", Mode: ModeUDP, Source: netlab.NodeAddr(0), TTL: 10,
				Peers: PeersOf(netlab.NodeAddr(1)), Keys: []wire.Key{testKey},
				NFLOG: nl.Config{Group: 33},
			}, nil)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if r.tun.IPv6() == ipv6Off {
			t.Fatalf("IPv6 off: %v; the TUN device takes IPv6: %v", ipv6Off, r.tun.IPv6())
		}
		rv := r.recvs[0]
		sealer, err := wire.NewSealer(&testKey, wire.NewSequence(time.Now()), netlab.NodeAddr(1))
		if err != nil {
			t.Fatal(err)
		}
		deliver := func(pkt []byte) RecvDropReason {
			d := datagramFor(rv, netlab.NodeAddr(1), wire.EnvelopeLen+len(pkt))
			copy(d.buf[wire.EnvelopeLen:], pkt)
			sealer.Seal((*[wire.EnvelopeLen]byte)(d.buf[:wire.EnvelopeLen]), pkt, time.Now())
			rv.stamp(time.Now())
			return rv.handle(0)
		}
		want := RecvDropReason(0)
		if ipv6Off {
			want = RecvIPv6Off
		}
		if got := deliver(ptb); got != want {
			t.Errorf("IPv6 off: %v: Packet Too Big %v, want %v", ipv6Off, got, want)
		}
		if got := deliver(frag); got != 0 {
			t.Errorf("IPv6 off: %v: frag-needed %v, want injected", ipv6Off, got)
		}
	}
}

// publish makes s the relay's peer set as SetPeers does, without building
// it: a prebuilt set swaps in without allocating, so allocation tests can
// swap concurrently.
func (r *Relay) publish(s *peerSet) {
	r.setMu.Lock()
	defer r.setMu.Unlock()
	prev := r.set.Swap(s)
	r.quiesce(prev)
}

// TestRelayAllocsWhileSwapping: the per-batch path allocates nothing while
// another goroutine swaps the peer set back and forth, and every batch
// goes to the peers of one set: node 3 is a peer only in the first set, so
// it gets fewer copies than node 0, which is in both, and the per-peer
// counts add up to the total.
func TestRelayAllocsWhileSwapping(t *testing.T) {
	for _, tc := range []struct {
		mode  Mode
		split Split
	}{{ModeICMP, SplitBatch}, {ModeUDP, SplitBatch}, {ModeUDP, SplitPeer}} {
		t.Run(tc.mode.String()+"/"+tc.split.String(), func(t *testing.T) {
			r, _ := newTestRelaySplit(t, tc.mode, tc.split, 2, 1, testKeys(tc.mode)...)
			full := r.set.Load()
			part := newPeerSet(&r.cfg, full, PeersOf(netlab.NodeAddr(0), netlab.NodeAddr(2)))
			good := distinctFragNeeded(64)
			j := newJob()
			for _, p := range good {
				j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: p})
			}
			n := uint32(0)
			run := func() {
				n++
				renumber(good, n)
				process(r, j)
				j.set.Store(nil) // as done does
			}
			// Warm up with both sets: the fan-out's buffers grow to the
			// larger of the two, once.
			run()
			r.publish(part)
			run()
			stop := make(chan struct{})
			swapped := make(chan int)
			go func() {
				k := 0
				for {
					select {
					case <-stop:
						swapped <- k
						return
					default:
					}
					if k%2 == 0 {
						r.publish(full)
					} else {
						r.publish(part)
					}
					k++
					time.Sleep(50 * time.Microsecond)
				}
			}()
			allocs := testing.AllocsPerRun(200, run)
			close(stop)
			k := <-swapped
			if allocs != 0 {
				t.Fatalf("a batch allocates %.1f times while the peer set is swapped (%d swaps), want 0", allocs, k)
			}
			if k < 2 {
				t.Fatalf("only %d swaps happened during the measurement", k)
			}
			st := r.Stats()
			sent := func(a netip.Addr) uint64 { return full.state[full.index[a]].sent.Load() }
			var sum uint64
			for _, a := range full.addrs {
				sum += sent(a)
			}
			if sum != st.Sent || st.SendErrors != 0 {
				t.Fatalf("per-peer copies add up to %d, total %d, send errors %d", sum, st.Sent, st.SendErrors)
			}
			if in, out := sent(netlab.NodeAddr(0)), sent(netlab.NodeAddr(3)); out == 0 || out >= in || in%64 != 0 || out%64 != 0 {
				t.Fatalf("node 0 (both sets) got %d copies, node 3 (first set only) %d: want both whole batches, fewer for node 3", in, out)
			}
		})
	}
}

// TestRelayAllocsDualStack: with dual-stack peers and a batch of IPv4
// frag-needed and IPv6 Packet Too Big messages, each family's packets go
// over its own transport (sealed per transport for udp, packed with
// envelope 3), and the path allocates nothing.
func TestRelayAllocsDualStack(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mode     Mode
		envelope int
	}{{"icmp", ModeICMP, 0}, {"udp", ModeUDP, 0}, {"udp packed", ModeUDP, 3}, {"l2 peers", ModeL2, 0}} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := netlab.BuildCluster(netlab.NewT(t), 4, 1400)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.AddIPv6(); err != nil {
				t.Fatal(err)
			}
			var peers []Peer
			for j := range c.Nodes {
				peers = append(peers, Peer{V4: netlab.NodeAddr(j), V6: netlab.NodeAddr6(j)})
			}
			cfg := Config{NodeName: "t", Mode: tc.mode, Source: netlab.NodeAddr(1), Source6: netlab.NodeAddr6(1), Peers: peers,
				TTL: 10, NFLOG: nl.Config{Group: 33}, L2Iface: "eth0", Envelope: tc.envelope, Keys: testKeys(tc.mode)}
			if tc.mode == ModeL2 {
				cfg.L2Dest = L2Peers
			}
			var r *Relay
			if err := c.Nodes[1].Do(func() (err error) {
				r, err = New(cfg, nil)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			good := distinctFragNeeded(32)
			v6 := make([][]byte, 32)
			j := newJob()
			for i := range 32 {
				v6[i] = tooBig6(nil, uint32(i))
				j.batch.Packets = append(j.batch.Packets, nl.Packet{Payload: good[i]}, nl.Packet{Payload: v6[i]})
			}
			process(r, j)
			n := uint32(0)
			allocs := testing.AllocsPerRun(100, func() {
				n++
				renumber(good, n)
				for i := range v6 {
					v6[i] = tooBig6(v6[i][:0], n<<8|uint32(i))
				}
				process(r, j)
			})
			if allocs != 0 {
				t.Fatalf("a batch of %d packets allocates %.1f times, want 0", len(j.batch.Packets), allocs)
			}
			st := r.Stats()
			// 102 batches of 64 packets, each to 3 peers; packed: fewer
			// datagrams, counted per datagram.
			if want := uint64(102 * 64 * 3); tc.envelope != 3 && st.Sent != want || st.Sent == 0 || st.SendErrors != 0 || st.Dropped[DropDuplicate] != 0 {
				t.Fatalf("sent %d (want %d unpacked), stats %+v", st.Sent, want, st)
			}
			var m strings.Builder
			r.WritePrometheus(&m)
			if tc.mode != ModeL2 {
				for _, a := range []netip.Addr{netlab.NodeAddr(0), netlab.NodeAddr6(0)} {
					re := regexp.MustCompile(`(?m)^go_pmtud_sent_packets_peer\{node="t",peer="` + regexp.QuoteMeta(a.String()) + `"\} (\d+)$`)
					if s := re.FindStringSubmatch(m.String()); s == nil || s[1] == "0" {
						t.Errorf("no copies to %v: %v", a, s)
					}
				}
			}
		})
	}
}
