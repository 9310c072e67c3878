package pmtud_test

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud"
	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// TestFloodDoesNotStarveAnotherSource: with the daemon's default budgets
// (1,000 ICMP/s per source, 5,000 in all), one source floods node B with
// 20,000 distinct valid ICMPs a second for 2 s while a second source sends
// 10 a second. The flood gets at most its budget relayed (a burst of 1,000,
// then 1,000 a second), the rest counted as source_rate_limited, and every
// one of the second source's ICMPs is relayed.
func TestFloodDoesNotStarveAnotherSource(t *testing.T) {
	c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	b := c.Nodes[1]
	if err := netlab.InstallNFLOGRule(b, group); err != nil {
		t.Fatal(err)
	}
	relay := startRelay(t, b, pmtud.Config{
		Mode:            pmtud.ModeICMP,
		Source:          netlab.NodeAddr(1),
		LocalAddrs:      []netip.Addr{netlab.NodeAddr(1), netlab.Anycast},
		Peers:           pmtud.PeersOf(netlab.NodeAddr(0)),
		RateLimit:       5000,
		SourceRateLimit: 1000,
	})
	sink := newICMPSink(t, c.Nodes[0])
	var (
		mu     sync.Mutex
		copies = map[uint16]int{} // quoted source port -> copies
		stop   = make(chan struct{})
		done   = make(chan struct{})
	)
	go func() {
		defer close(done)
		sink.quotedPorts(netlab.NodeAddr(1), stop, func(port uint16) {
			mu.Lock()
			copies[port]++
			mu.Unlock()
		})
	}()

	second := netip.MustParseAddr("198.19.255.2") // another router's address
	inj := newInjector(t, c.Router)
	const floodRate, secondRate, seconds = 20000, 10, 2
	start := time.Now()
	sentSecond := 0
	for i := range floodRate * seconds {
		// Distinct ICMPs: the quoted source port and sequence number vary,
		// so dedup drops none.
		inj.send(t, netlab.NodeAddr(1), fragNeeded(netlab.RouterLoopback, 1400, uint16(i%50000)))
		if i%(floodRate/secondRate) == 0 {
			inj.send(t, netlab.NodeAddr(1), fragNeeded(second, 1400, uint16(60000+sentSecond)))
			sentSecond++
		}
		if i%200 == 199 {
			// Pace to floodRate: 200 ICMPs every 10 ms.
			time.Sleep(time.Until(start.Add(time.Duration(i+1) * time.Second / floodRate)))
		}
	}
	elapsed := time.Since(start)
	total := uint64(floodRate*seconds + sentSecond)
	waitFor(t, "the relay to read every ICMP", func() bool {
		st := relay.Stats()
		return st.Received+st.Lost >= total
	})
	time.Sleep(300 * time.Millisecond) // the last copies in flight
	close(stop)
	<-done

	st := relay.Stats()
	if st.Lost != 0 {
		t.Logf("NFLOG lost %d ICMPs (counted)", st.Lost)
	}
	floodRelayed := st.Sent - uint64(sentSecond)
	budget := uint64(1000 + 1000*(elapsed.Seconds()+1)) // burst, rate over the injection and the drain
	t.Logf("flood: %d ICMPs in %v, %d relayed (budget %d), %d source_rate_limited, %d rate_limited; second source: %d sent",
		floodRate*seconds, elapsed.Round(time.Millisecond), floodRelayed, budget, st.Dropped[pmtud.DropSourceRateLimited], st.Dropped[pmtud.DropRateLimited], sentSecond)
	if floodRelayed > budget || st.Dropped[pmtud.DropSourceRateLimited] == 0 {
		t.Fatalf("the flooding source got %d relayed, more than its budget %d (stats %+v)", floodRelayed, budget, st)
	}
	mu.Lock()
	defer mu.Unlock()
	for k := range sentSecond {
		if n := copies[uint16(60000+k)]; n != 1 {
			t.Errorf("the second source's ICMP %d reached the peer %d times, want once", k, n)
		}
	}
}
