package transport

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// TestSendSome: every peer gets exactly the payloads whose bitmap names it,
// with the header before each, when the Fanout holds a slice of a larger
// peer list (base > 0), when the messages of a batch overflow one sendmmsg
// (mid-payload too), and for bitmaps that name nobody or end early. The
// Tally matches, and a second batch allocates nothing. The peers are UDP
// sockets on addresses of a namespace's lo.
func TestSendSome(t *testing.T) {
	ns, err := netlab.NewT(t).AddNS("some")
	if err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddr("198.18.78.1")
	ns.MustRun(t, "ip", "addr", "add", src.String()+"/24", "dev", "lo")
	const all, base, p, port = 48, 8, 40, 2734 // the Fanout holds all[base:base+p]
	list := make([]netip.Addr, all)
	socks := make([]*net.UDPConn, all)
	for i := range list {
		list[i] = netip.AddrFrom4([4]byte{198, 18, 78, byte(10 + i)})
		if err := ns.Do(func() (err error) {
			socks[i], err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(list[i], port)))
			if err == nil {
				err = socks[i].SetReadBuffer(4 << 20)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer socks[i].Close()
	}
	var fan *Fanout
	if err := ns.Do(func() (err error) {
		fan, err = NewUDP(src, 10, list[base:base+p], port)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer fan.Close()

	// 128 payloads (about 1,800 messages: more than one sendmmsg): payload i goes to the peers of list whose index j has
	// (i+j)%3 == 0, but payload 5 to nobody, payload 6 to all of list, and
	// payload 7's bitmap is one word long (list[0:64] only, all of them).
	const n = 128
	heads, payloads, sets := make([][]byte, n), make([][]byte, n), make([][]uint64, n)
	want := make([]map[string]bool, all)
	for j := range want {
		want[j] = map[string]bool{}
	}
	for i := range n {
		heads[i] = []byte(fmt.Sprintf("H%02d|", i))
		payloads[i] = []byte(fmt.Sprintf("payload %d", i))
		sets[i] = make([]uint64, 2)
		if i == 7 {
			sets[i] = sets[i][:1]
		}
		for j := range all {
			on := (i+j)%3 == 0
			switch i {
			case 5:
				on = false
			case 6, 7:
				on = true
			}
			if on {
				sets[i][j/64] |= 1 << (j % 64)
				if j >= base && j < base+p {
					want[j][string(heads[i])+string(payloads[i])] = true
				}
			}
		}
	}
	fan.SendSome(heads, payloads, sets, base)
	tally := fan.Tally()
	for j := range all {
		got := map[string]bool{}
		socks[j].SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		buf := make([]byte, 100)
		for {
			m, err := socks[j].Read(buf)
			if err != nil {
				break // the deadline: nothing more is coming
			}
			if got[string(buf[:m])] {
				t.Errorf("peer %d got %q twice", j, buf[:m])
			}
			got[string(buf[:m])] = true
		}
		if len(got) != len(want[j]) {
			t.Errorf("peer %d got %d datagrams, want %d", j, len(got), len(want[j]))
		}
		for d := range want[j] {
			if !got[d] {
				t.Errorf("peer %d lacks %q", j, d)
			}
		}
		if j >= base && j < base+p && (tally.Sent[j-base] != uint64(len(want[j])) || tally.Errors[j-base] != 0) {
			t.Errorf("peer %d: tally sent %d errors %d, want %d and 0", j, tally.Sent[j-base], tally.Errors[j-base], len(want[j]))
		}
	}
	// Averaged over 50 batches: a blocking sendmmsg may make the runtime
	// start a thread now and then, which it counts as allocations.
	if allocs := testing.AllocsPerRun(50, func() { fan.SendSome(heads, payloads, sets, base) }); allocs != 0 {
		t.Errorf("SendSome allocates %.1f times per batch", allocs)
	}
}
