package pmtud_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud"
	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/internal/peers"
)

// TestPeersFileSwapUnderLoad swaps a running relay's peers file the
// kubelet's way while a stream of distinct ICMPs flows through it: node 2
// leaves, node 3 joins, node 0 stays. Every ICMP injected after SetPeers
// returned reaches node 3 and none reaches node 2; node 0 gets every ICMP
// of the whole stream exactly once. The file is watched with inotify only
// (the poll would take 10 s): the test logs how long the swap took to apply.
func TestPeersFileSwapUnderLoad(t *testing.T) {
	lab := netlab.NewT(t)
	c, err := netlab.BuildCluster(lab, 4, 1400)
	if err != nil {
		t.Fatal(err)
	}
	b := c.Nodes[1]
	if err := netlab.InstallNFLOGRule(b, group); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	swap := func(content string) {
		v := fmt.Sprintf("..%d", time.Now().UnixNano())
		if err := os.Mkdir(filepath.Join(dir, v), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, v, "peers"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(v, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	swap(fmt.Sprintf("%v %v %v", netlab.NodeAddr(0), netlab.NodeAddr(1), netlab.NodeAddr(2)))
	if err := os.Symlink("..data/peers", filepath.Join(dir, "peers")); err != nil {
		t.Fatal(err)
	}
	file, err := peers.NewFile(filepath.Join(dir, "peers"), nil)
	if err != nil {
		t.Fatal(err)
	}
	relay := startRelay(t, b, pmtud.Config{
		Mode:         pmtud.ModeICMP,
		Source:       netlab.NodeAddr(1),
		LocalAddrs:   []netip.Addr{netlab.NodeAddr(1), netlab.Anycast},
		Peers:        relayPeers(file.Peers()),
		DynamicPeers: true,
	})

	var injected atomic.Int64
	type applied struct {
		cut int64 // ICMPs injected when SetPeers returned
		at  time.Time
		ch  pmtud.PeerChange
		err error
	}
	appliedc := make(chan applied, 4)
	ctx, cancel := context.WithCancel(context.Background())
	fileDone := make(chan error, 1)
	go func() {
		fileDone <- file.Run(ctx, func(u peers.Update) {
			if u.Err != nil {
				appliedc <- applied{err: u.Err}
				return
			}
			ch, err := relay.SetPeers(relayPeers(u.Peers))
			appliedc <- applied{cut: injected.Load(), at: time.Now(), ch: ch, err: err}
		})
	}()
	defer func() {
		cancel()
		if err := <-fileDone; err != nil {
			t.Errorf("peers file: %v", err)
		}
	}()

	// Sinks on nodes 0, 2 and 3 record the index (the quoted source port)
	// of every copy from B.
	const n = 3000
	got := make([][]int, 4)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, k := range []int{0, 2, 3} {
		s := newICMPSink(t, c.Nodes[k])
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.quotedPorts(netlab.NodeAddr(1), stop, func(port uint16) { got[k] = append(got[k], int(port)-10000) })
		}()
	}

	inj := newInjector(t, c.Router)
	var swapAt time.Time
	for i := range n {
		if i == n/2 {
			swapAt = time.Now()
			swap(fmt.Sprintf("# node 2 drained, node 3 joined\n%v\n%v\n%v\n", netlab.NodeAddr(0), netlab.NodeAddr(1), netlab.NodeAddr(3)))
		}
		inj.send(t, netlab.NodeAddr(1), fragNeeded(netlab.RouterLoopback, 1400, uint16(10000+i)))
		injected.Add(1)
		if i%50 == 49 {
			time.Sleep(20 * time.Millisecond) // about 2,500 ICMPs/s
		}
	}
	waitFor(t, "the relay to read every ICMP", func() bool { return relay.Stats().Received == n })
	var a applied
	select {
	case a = <-appliedc:
	case <-time.After(10 * time.Second):
		t.Fatal("the swap was not applied")
	}
	if a.err != nil || a.ch != (pmtud.PeerChange{Added: 1, Removed: 1, Peers: 2}) {
		t.Fatalf("swap applied as %+v, %v; want 1 added, 1 removed, 2 peers", a.ch, a.err)
	}
	delay := a.at.Sub(swapAt)
	t.Logf("the swap took %v from the rename to SetPeers returning; %d of %d ICMPs injected by then", delay, a.cut, n)
	// Not a timing check: the only other way to see the change is the
	// 10 s poll, and a delay beyond half of it means inotify saw nothing.
	if delay > peers.DefaultPollInterval/2 {
		t.Fatalf("the swap took %v: inotify did not report the kubelet's rename", delay)
	}
	waitFor(t, "every copy to be sent", func() bool { return relay.Stats().Sent == 2*n }) // each ICMP to two peers
	time.Sleep(200 * time.Millisecond)                                                    // the last copies in flight to the sinks
	close(stop)
	wg.Wait()

	seen := func(k int) (map[int]int, int) {
		m := map[int]int{}
		first := n
		for _, i := range got[k] {
			m[i]++
			first = min(first, i)
		}
		return m, first
	}
	stay, _ := seen(0)
	for i := range n {
		if stay[i] != 1 {
			t.Fatalf("node 0, a peer in both sets, got ICMP %d %d times, want once (%d copies in all)", i, stay[i], len(got[0]))
		}
	}
	left, _ := seen(2)
	for i := range left {
		if i >= int(a.cut) {
			t.Fatalf("node 2 got ICMP %d, injected after SetPeers returned (at %d)", i, a.cut)
		}
	}
	joined, first := seen(3)
	for i := int(a.cut); i < n; i++ {
		if joined[i] != 1 {
			t.Fatalf("node 3 got ICMP %d, injected after SetPeers returned, %d times, want once", i, joined[i])
		}
	}
	t.Logf("node 2 got %d copies, node 3 %d (first: ICMP %d)", len(left), len(joined), first)
	if st := relay.Stats(); st.SendErrors != 0 || st.Dropped[pmtud.DropDuplicate] != 0 {
		t.Fatalf("relay stats %+v: want no send errors and no duplicates", st)
	}
}

// relayPeers converts a source's peers to the relay's, as the daemon does.
func relayPeers(ps []peers.Peer) []pmtud.Peer {
	out := make([]pmtud.Peer, len(ps))
	for i, p := range ps {
		out[i] = pmtud.Peer(p)
	}
	return out
}
