package wire_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/wire"
)

// The udp relay's test vector, as docs/protocol.md publishes it for a second
// implementation: a key, a router's packet, the sender's address, its start
// time (hence the sequence number) and the datagram the sender puts on the
// wire. TestProtocolVector checks the vector against the code and that the
// document still holds every hex string.
const (
	vectorKeyID     = 1
	vectorSecretHex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	// A 56-byte ICMP fragmentation needed from the router 198.18.0.1 to the
	// service address 198.18.2.1, next-hop MTU 1400, quoting the header and
	// first 8 bytes of a 9000-byte TCP segment (DF set) from 198.18.2.1:443
	// to the client 198.18.3.1:50000.
	vectorPacketHex = "4500003800004000fe01ee9dc6120001c6120201" +
		"03043277000005784500232800004000400686a9c6120201c6120301" +
		"01bbc35000000001"
	vectorSender = "198.18.1.11"
	// vectorStart is the sender's start, 2026-01-01T00:00:00Z, in Unix
	// seconds: its first sequence number is vectorStart << 32.
	vectorStart = 1767225600
	vectorSeq   = uint64(0x6955b90000000000)
	// vectorSent is the send time of the first datagram,
	// 2026-01-01T00:00:01.5Z, in Unix nanoseconds: 0x1886725247622f00.
	vectorSent = 1767225601500000000
	// The first datagram: the 40-byte header, then the packet.
	vectorHeaderHex   = "504d5444020000016955b90000000000" + "1886725247622f00" + "e4b1aa59bc4233a94491c6f4387d9ba1"
	vectorDatagramHex = vectorHeaderHex + vectorPacketHex
	// The same packet sealed first by an unauthenticated sender
	// (--insecure-no-auth): key id 0, an all-zero tag.
	vectorUnauthHeaderHex = "504d5444020000006955b90000000000" + "1886725247622f00" + "00000000000000000000000000000000"
	// Version 1 (--relay-envelope 1): the 32-byte header without the send
	// time, keyed and unauthenticated.
	vectorV1HeaderHex       = "504d5444010000016955b90000000000" + "f90f0c1823080fdfa2ba7176a4384b92"
	vectorV1UnauthHeaderHex = "504d5444010000006955b90000000000" + "00000000000000000000000000000000"
)

func vectorHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex in the vector: %v", err)
	}
	return b
}

func TestProtocolVector(t *testing.T) {
	key := wire.Key{ID: vectorKeyID, Secret: vectorHex(t, vectorSecretHex)}
	packet := vectorHex(t, vectorPacketHex)
	datagram := vectorHex(t, vectorDatagramHex)
	sender := netip.MustParseAddr(vectorSender)

	if got := uint64(vectorStart) << 32; got != vectorSeq {
		t.Fatalf("start %d << 32 = %#x, the vector says %#x", vectorStart, got, vectorSeq)
	}

	t.Run("seal", func(t *testing.T) {
		seq := wire.NewSequence(time.Unix(vectorStart, 0))
		s, err := wire.NewSealer(&key, seq, sender)
		if err != nil {
			t.Fatal(err)
		}
		var hdr [wire.EnvelopeLen]byte
		s.Seal(&hdr, packet, time.Unix(0, vectorSent))
		if got := append(hdr[:], packet...); !bytes.Equal(got, datagram) {
			t.Fatalf("sealed datagram\n got %x\nwant %x", got, datagram)
		}
		// The next datagram carries the next number.
		s.Seal(&hdr, packet, time.Unix(0, vectorSent))
		if got := hdr[8:16]; !bytes.Equal(got, []byte{0x69, 0x55, 0xb9, 0, 0, 0, 0, 1}) {
			t.Fatalf("second sequence number %x, want %x", got, vectorSeq+1)
		}
	})

	t.Run("tag", func(t *testing.T) {
		// The tag as the document defines it, computed without the package:
		// HMAC-SHA256(secret, header[0:24] || ::ffff:sender || packet)[:16];
		// version 1: header[0:16].
		for _, h := range []string{vectorHeaderHex, vectorV1HeaderHex} {
			hdr := vectorHex(t, h)
			fields := len(hdr) - 16
			m := hmac.New(sha256.New, key.Secret)
			m.Write(hdr[:fields])
			m.Write(append(make([]byte, 10), 0xff, 0xff))
			a := sender.As4()
			m.Write(a[:])
			m.Write(packet)
			if got, want := m.Sum(nil)[:16], hdr[fields:]; !bytes.Equal(got, want) {
				t.Fatalf("version %d: reference tag %x, header has %x", hdr[4], got, want)
			}
		}
	})

	t.Run("open", func(t *testing.T) {
		o, err := wire.NewOpener(key)
		if err != nil {
			t.Fatal(err)
		}
		for _, from := range []netip.Addr{sender, netip.AddrFrom16(sender.As16())} {
			env, err := o.Open(datagram, from)
			if err != nil {
				t.Fatalf("Open from %v: %v", from, err)
			}
			if env.Version != 2 || env.KeyID != vectorKeyID || env.Seq != vectorSeq || env.UnixNano != vectorSent || !bytes.Equal(env.Packet, packet) {
				t.Fatalf("Open from %v = version %d, key %d, seq %#x, sent %d, packet %x; want 2, key %d, seq %#x, sent %d, packet %x",
					from, env.Version, env.KeyID, env.Seq, env.UnixNano, env.Packet, vectorKeyID, vectorSeq, vectorSent, packet)
			}
		}
		// The tag binds the sender's address.
		if _, err := o.Open(datagram, netip.MustParseAddr("198.18.1.12")); !errors.Is(err, wire.ErrEnvelopeTag) {
			t.Fatalf("Open from another address: %v, want %v", err, wire.ErrEnvelopeTag)
		}
	})

	t.Run("packet", func(t *testing.T) {
		f, err := wire.Parse(packet)
		if err != nil {
			t.Fatal(err)
		}
		want := wire.Flow{
			Src: netip.MustParseAddr("198.18.2.1"), Dst: netip.MustParseAddr("198.18.3.1"),
			Proto: 6, SrcPort: 443, DstPort: 50000,
		}
		if f.Src != netip.MustParseAddr("198.18.0.1") || f.Dst != netip.MustParseAddr("198.18.2.1") || f.MTU != 1400 || f.Inner != want {
			t.Fatalf("Parse = %v -> %v, MTU %d, inner %+v", f.Src, f.Dst, f.MTU, f.Inner)
		}
	})

	t.Run("unauthenticated", func(t *testing.T) {
		s, err := wire.NewSealer(nil, wire.NewSequence(time.Unix(vectorStart, 0)), netip.Addr{})
		if err != nil {
			t.Fatal(err)
		}
		var hdr [wire.EnvelopeLen]byte
		s.Seal(&hdr, packet, time.Unix(0, vectorSent))
		if want := vectorHex(t, vectorUnauthHeaderHex); !bytes.Equal(hdr[:], want) {
			t.Fatalf("unauthenticated header\n got %x\nwant %x", hdr, want)
		}
		d := append(hdr[:], packet...)
		o, _ := wire.NewOpener()
		if env, err := o.Open(d, sender); err != nil || env.KeyID != 0 || env.Seq != vectorSeq {
			t.Fatalf("Open without keys = key %d, seq %#x, %v", env.KeyID, env.Seq, err)
		}
		keyed, _ := wire.NewOpener(key)
		if _, err := keyed.Open(d, sender); !errors.Is(err, wire.ErrEnvelopeUnauthenticated) {
			t.Fatalf("Open with keys: %v, want %v", err, wire.ErrEnvelopeUnauthenticated)
		}
	})

	t.Run("version 1", func(t *testing.T) {
		for _, tt := range []struct {
			key *wire.Key
			hex string
		}{{&key, vectorV1HeaderHex}, {nil, vectorV1UnauthHeaderHex}} {
			s, err := wire.NewSealerV1(tt.key, wire.NewSequence(time.Unix(vectorStart, 0)), sender)
			if err != nil {
				t.Fatal(err)
			}
			var hdr [wire.EnvelopeLen]byte
			n := s.Seal(&hdr, packet, time.Unix(0, vectorSent))
			if want := vectorHex(t, tt.hex); !bytes.Equal(hdr[:n], want) {
				t.Fatalf("version 1 header (keyed %v)\n got %x\nwant %x", tt.key != nil, hdr[:n], want)
			}
			o, _ := wire.NewOpener()
			if tt.key != nil {
				o, _ = wire.NewOpener(key)
			}
			env, err := o.Open(append(hdr[:n:n], packet...), sender)
			if err != nil || env.Version != 1 || env.Seq != vectorSeq || env.UnixNano != 0 || !bytes.Equal(env.Packet, packet) {
				t.Fatalf("Open version 1 (keyed %v) = %+v, %v", tt.key != nil, env, err)
			}
		}
	})

	t.Run("documented", func(t *testing.T) {
		b, err := os.ReadFile("../docs/protocol.md")
		if err != nil {
			t.Fatal(err)
		}
		doc := strings.Join(strings.Fields(string(b)), "")
		for name, h := range map[string]string{
			"secret": vectorSecretHex, "packet": vectorPacketHex,
			"header": vectorHeaderHex, "unauthenticated header": vectorUnauthHeaderHex,
			"version 1 header": vectorV1HeaderHex, "version 1 unauthenticated header": vectorV1UnauthHeaderHex,
		} {
			if !strings.Contains(doc, h) {
				t.Errorf("docs/protocol.md does not hold the vector's %s: %s", name, h)
			}
		}
		for _, s := range []string{vectorSender, "1767225600", "0x6955b90000000000", "1767225601500000000"} {
			if !strings.Contains(string(b), s) {
				t.Errorf("docs/protocol.md does not mention %s", s)
			}
		}
	})
}
