package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/wire"
)

// The receive mode's additions to the address plan.
var (
	// senderAddr is the peer that sends relay datagrams: peer 0, held by
	// the sink namespace on the node's cluster segment, as a peer node's
	// go-pmtud would be. It is the daemon's only peer.
	senderAddr = peerAddr(0)
	// injectedDst is the outer destination of the relayed frag-needed
	// packets: an address on the node's lo, so the kernel delivers the
	// injected packets locally.
	injectedDst = netip.MustParseAddr("198.18.100.1")
)

const (
	// tunName is the daemon's TUN device, passed as --tun-name and matched
	// by the node's nft counters.
	tunName = "pmtud0"
	// relayKeyID is the id of the relay key the harness writes.
	relayKeyID = 1
	// maxPoolBytes bounds the sender's ring of datagrams sealed ahead. A
	// run that needs more reseals slots in the send loop, on the sender's
	// CPU, and the report says how many.
	maxPoolBytes = 512 << 20
)

// receiveRuleset counts, in the node, the IPv4 packets that arrive through
// the TUN device: before anything else in prerouting (tun_in), and when
// the kernel delivers them locally (delivered), past routing and the
// reverse-path filter.
var receiveRuleset = `table ip loadrecv {
	counter tun_in { }
	counter delivered { }
	chain pre {
		type filter hook prerouting priority raw - 1; policy accept;
		iifname "` + tunName + `" counter name "tun_in"
	}
	chain in {
		type filter hook input priority filter; policy accept;
		iifname "` + tunName + `" counter name "delivered"
	}
}
`

// setupReceive adds to t what the receive mode needs: injectedDst on the
// node's lo, the node's TUN counters, and a permanent neighbour entry for
// the node in the sink, so the sender never waits for ARP. dir holds the
// ruleset file.
func setupReceive(t *topology, dir string) error {
	if _, err := t.node.Run("ip", "addr", "add", injectedDst.String()+"/32", "dev", "lo"); err != nil {
		return err
	}
	path := filepath.Join(dir, "receive.nft")
	if err := os.WriteFile(path, []byte(receiveRuleset), 0o644); err != nil {
		return fmt.Errorf("write receive ruleset: %w", err)
	}
	if _, err := t.node.Run("nft", "-f", path); err != nil {
		return err
	}
	mac, err := macOf(t.node, "eth0")
	if err != nil {
		return err
	}
	return setNeighbour(t.sink, "eth0", nodeAddr, mac)
}

// writeRelayKey writes a fresh random relay key into dir, in the format of
// --relay-key-file, and returns it with the file's path.
func writeRelayKey(dir string) (wire.Key, string, error) {
	k := wire.Key{ID: relayKeyID, Secret: make([]byte, 32)}
	if _, err := rand.Read(k.Secret); err != nil {
		return k, "", fmt.Errorf("generate relay key: %w", err)
	}
	path := filepath.Join(dir, "relay.key")
	line := fmt.Sprintf("%d:%s\n", k.ID, hex.EncodeToString(k.Secret))
	if err := os.WriteFile(path, []byte(line), 0o600); err != nil {
		return k, "", fmt.Errorf("write relay key file: %w", err)
	}
	return k, path, nil
}

// receiveDaemonFlags returns the go-pmtud flags of the receive mode: the
// udp relay with the key in keyFile, and the TUN device the counters match.
func receiveDaemonFlags(keyFile string) []string {
	return append(relayUDP.daemonFlags(), "--relay-key-file", keyFile, "--tun-name", tunName)
}

// receivePath is the receive path: snd sends relay datagrams to the node,
// the node's nft counter counts the packets the daemon injects.
func receivePath(t *topology, snd *peerSender) path {
	return path{
		unit:    "datagrams/s",
		prepare: snd.prepare,
		send:    snd.run,
		probe:   snd.probe,
		count:   func() (uint64, error) { return tunCount(t.node) },
		fanout:  snd.pack,
		kernel:  func() (kernelCounters, error) { return readKernelCounters(t) },
	}
}

// tunCount returns the node's tun_in counter: packets that arrived through
// the TUN device.
func tunCount(ns *netlab.NS) (uint64, error) {
	n, err := tunCounters(ns)
	return n["tun_in"], err
}

// tunCounters reads the node's TUN counters.
func tunCounters(ns *netlab.NS) (map[string]uint64, error) {
	out, err := ns.Run("nft", "-j", "list", "counters", "table", "ip", "loadrecv")
	if err != nil {
		return nil, err
	}
	n, err := nftCounters(out)
	if err != nil {
		return nil, err
	}
	for _, name := range []string{"tun_in", "delivered"} {
		if _, ok := n[name]; !ok {
			return nil, fmt.Errorf("nft counter %s not found in %q", name, out)
		}
	}
	return n, nil
}

// kernelCounters are the kernel's view of the receive side beside the
// output counter.
type kernelCounters struct {
	delivered    uint64 // packets from the TUN device delivered locally
	rcvbufErrors uint64 // datagrams the node dropped: a socket's receive buffer was full
	sentBack     uint64 // packets from the node counted by the sink: copies the daemon sent the peer
}

// sub returns k - o, counter by counter.
func (k kernelCounters) sub(o kernelCounters) kernelCounters {
	return kernelCounters{
		delivered:    k.delivered - o.delivered,
		rcvbufErrors: k.rcvbufErrors - o.rcvbufErrors,
		sentBack:     k.sentBack - o.sentBack,
	}
}

// readKernelCounters reads the node's delivered counter and UDP receive
// buffer drops, and the sink's counter.
func readKernelCounters(t *topology) (kernelCounters, error) {
	var k kernelCounters
	n, err := tunCounters(t.node)
	if err != nil {
		return k, err
	}
	k.delivered = n["delivered"]
	if k.rcvbufErrors, err = t.node.UDPRcvbufErrors(); err != nil {
		return k, err
	}
	k.sentBack, err = arrivals(t.sink)
	return k, err
}

// peerSender plays a peer's go-pmtud: it sends the node's relay port
// datagrams, each an envelope sealed with the relay key for senderAddr
// followed by a distinct frag-needed (the quoted TCP source port and
// sequence number differ, so the daemon's dedup window never takes one for
// a repeat), with sendmmsg over a UDP socket bound to senderAddr. With
// pack 1 a datagram is a version 2 envelope of one packet; with pack n > 1
// a version 3 envelope of n packets, as a packing peer sends.
//
// The datagrams live in a ring of slots, sealed ahead by prepare with
// increasing envelope sequence numbers and sent in order, so the daemon's
// replay window accepts each exactly once. A slot whose datagram has been
// sent is sealed again, with the next number, before it is reused.
type peerSender struct {
	fd      int
	tmpl    template
	sealer  *wire.Sealer
	pack    int    // packets per datagram
	scratch []byte // a packed datagram's packet while it is stamped
	dst     unix.RawSockaddrInet4
	pool    []byte // nslots slots of slotLen bytes
	slotLen int
	nslots  int
	next    int    // the slot sent next
	ready   int    // slots sealed ahead, from next on
	seq     uint32 // the quoted TCP sequence number of the next datagram sealed
	iovs    []unix.Iovec
	msgs    []unix.Mmsghdr
	inline  uint64 // datagrams sealed in the send loop: the ring ran out
	ahead   uint64 // datagrams sealed by prepare
}

// newPeerSender opens the sender's UDP socket in ns, bound to senderAddr,
// and allocates a ring for slots datagrams (at least two batches, at most
// maxPoolBytes; only the slots sealed become resident).
func newPeerSender(ns *netlab.NS, t template, key wire.Key, slots, pack int) (*peerSender, error) {
	seal, body := wire.NewSealer, len(t.pkt)
	if pack > 1 {
		seal, body = wire.NewSealerPacked, pack*(2+len(t.pkt))
	}
	sealer, err := seal(&key, wire.NewSequence(time.Now()), senderAddr)
	if err != nil {
		return nil, fmt.Errorf("sender: %w", err)
	}
	s := &peerSender{fd: -1, tmpl: t, sealer: sealer, pack: pack, scratch: make([]byte, len(t.pkt)), slotLen: wire.EnvelopeLen + body}
	s.nslots = max(2*maxMmsg, min(slots, maxPoolBytes/s.slotLen))
	s.pool = make([]byte, s.nslots*s.slotLen)
	s.dst = sockaddrInet4(nodeAddr, relayPort)
	if err := ns.Do(s.open); err != nil {
		s.close()
		return nil, err
	}
	s.iovs = make([]unix.Iovec, maxMmsg)
	s.msgs = make([]unix.Mmsghdr, maxMmsg)
	for i := range s.iovs {
		s.iovs[i].SetLen(s.slotLen)
	}
	pointMsgs(s.msgs, s.iovs, &s.dst)
	return s, nil
}

// open creates the blocking UDP socket, in the calling thread's namespace.
func (s *peerSender) open() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return fmt.Errorf("sender: UDP socket: %w", err)
	}
	s.fd = fd
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20); err != nil {
		return fmt.Errorf("sender: set SO_SNDBUFFORCE: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: senderAddr.As4()}); err != nil {
		return fmt.Errorf("sender: bind UDP socket to %v: %w", senderAddr, err)
	}
	return nil
}

// close closes the socket.
func (s *peerSender) close() {
	if s.fd >= 0 {
		unix.Close(s.fd)
		s.fd = -1
	}
}

// poolSlots returns how many datagrams a receive run of o needs sealed
// ahead: all of a -rate run's; for a sweep, as many as the ring holds.
func poolSlots(o options) int {
	if o.sweep {
		return math.MaxInt
	}
	return runSlots(o.rate, o.duration)
}

// runSlots returns the datagrams a run at rate for d sends, with room for
// the pacer's first batch and the probe.
func runSlots(rate float64, d time.Duration) int {
	return int(math.Ceil(rate*d.Seconds())) + maxMmsg + 1
}

// prepare seals ahead the datagrams of a run at rate for d, as many as the
// ring holds.
func (s *peerSender) prepare(rate float64, d time.Duration) error {
	want := min(s.nslots, runSlots(rate, d))
	for ; s.ready < want; s.ready++ {
		s.seal((s.next + s.ready) % s.nslots)
		s.ahead++
	}
	return nil
}

// seal writes the next datagram into slot i: the template stamped with the
// next quoted sequence number, behind an envelope header with the next
// envelope sequence number.
func (s *peerSender) seal(i int) {
	b := s.pool[i*s.slotLen : (i+1)*s.slotLen]
	body := b[wire.EnvelopeLen:]
	if s.pack == 1 {
		copy(body, s.tmpl.pkt)
		s.tmpl.stamp(body, s.seq)
		s.seq++
	} else {
		packed := body[:0]
		for range s.pack {
			copy(s.scratch, s.tmpl.pkt)
			s.tmpl.stamp(s.scratch, s.seq)
			s.seq++
			packed = wire.AppendPacked(packed, s.scratch)
		}
	}
	s.sealer.Seal((*[wire.EnvelopeLen]byte)(b), body, time.Now())
}

// run sends rate datagrams per second for d, paced by pace.
func (s *peerSender) run(rate float64, d time.Duration) (injection, error) {
	return pace(rate, d, func(n int, _ time.Time) (int, int, error) { return s.send(n) })
}

// probe sends one datagram outside any paced run.
func (s *peerSender) probe() error {
	_, _, err := s.send(1)
	return err
}

// send sends the next n datagrams (n <= maxMmsg) in one sendmmsg, sealing
// in place those prepare did not.
func (s *peerSender) send(n int) (sent, failed int, err error) {
	for i := range n {
		slot := (s.next + i) % s.nslots
		if i >= s.ready {
			s.seal(slot)
			s.inline++
		}
		s.iovs[i].Base = &s.pool[slot*s.slotLen]
	}
	s.next = (s.next + n) % s.nslots
	s.ready = max(0, s.ready-n)
	sent, failed, err = sendAll(s.fd, s.msgs[:n])
	if err != nil {
		err = fmt.Errorf("sender: %w", err)
	}
	return sent, failed, err
}
