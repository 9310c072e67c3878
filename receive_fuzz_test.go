package pmtud

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/wire"
)

// FuzzReceive drives the udp relay's receive decision, a function of the
// datagram's bytes, its sender and the time, with fake resources (no
// root). data is either the datagram as it arrives or, with seal set, a
// packet that a genuine peer seals first (so the fuzzer gets past the tag
// and explores the checks behind it), from a peer or not. It must never
// panic, and a datagram it injects must be an authenticated copy from a
// current peer whose packet parses, passes the node's policy, and is
// written exactly as parsed.
func FuzzReceive(f *testing.F) {
	for _, p := range distinctFragNeeded(2) {
		f.Add(p, true, true)
		f.Add(p, true, false)
	}
	f.Add(tooBig6(nil, 1), true, true)
	f.Add([]byte("PMTD garbage"), false, true)
	f.Add(make([]byte, wire.EnvelopeLen+20), false, true)

	res := &fakeResources{}
	b, err := newRelay(Config{NodeName: "b", Mode: ModeUDP, Source: fakeB, Peers: PeersOf(fakeA), TTL: 10,
		Keys: []wire.Key{testKey}, IgnoreNetworks: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")}}, nil, res)
	if err != nil {
		f.Fatal(err)
	}
	defer b.Close()
	seq := wire.NewSequence(time.Now())
	sealer, err := wire.NewSealer(&testKey, seq, fakeA)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, seal, fromPeer bool) {
		d := data
		if seal {
			var hdr [wire.EnvelopeLen]byte
			sealer.Seal(&hdr, data, time.Now())
			d = append(hdr[:], data...)
		}
		src := fakeA
		if !fromPeer {
			src = fakeD
		}
		res.dev.written = res.dev.written[:0]
		b.recvs[0].in = &testDatagram{src: src, buf: d}
		b.recvs[0].stamp(time.Now())
		reason := b.recvs[0].handle(0)
		if reason != 0 && (reason >= recvDropReasonCount || reason.String() == "unknown") {
			t.Fatalf("reason %d has no label", reason)
		}
		if reason != 0 {
			if len(res.dev.written) != 0 {
				t.Fatalf("dropped (%v) but injected", reason)
			}
			return
		}
		if !seal || !fromPeer || len(res.dev.written) != 1 {
			t.Fatalf("injected %d packets from %v (sealed: %v)", len(res.dev.written), src, seal)
		}
		f, err := wire.Parse(data)
		if err != nil {
			t.Fatalf("injected a packet that does not parse: %v", err)
		}
		if !bytes.Equal(res.dev.written[0], f.Packet) {
			t.Fatal("injected bytes are not the parsed packet")
		}
		if r := b.policy.check(&f, b.set.Load()); r != 0 {
			t.Fatalf("injected a packet the policy drops: %v", r)
		}
	})
}
