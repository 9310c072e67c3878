package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// sinkRuleset counts, on the sink's ingress hook (before the IP stack), the
// IPv4 packets from the node: the copies, ICMP or UDP, since the node sends
// the sink nothing else. setSinkDrop adds the rule that does it.
var sinkRuleset = `table netdev load {
	counter arrived { }
	chain in {
		type filter hook ingress device "eth0" priority -500; policy accept;
	}
}
`

// setupSink loads sinkRuleset into ns, with the counting rule dropping what
// it counts.
func setupSink(ns *netlab.NS, dir string) error {
	path := filepath.Join(dir, "sink.nft")
	if err := os.WriteFile(path, []byte(sinkRuleset), 0o644); err != nil {
		return fmt.Errorf("write sink ruleset: %w", err)
	}
	if _, err := ns.Run("nft", "-f", path); err != nil {
		return err
	}
	return setSinkDrop(ns, true)
}

// setSinkDrop replaces the counting rule: with drop, counted packets end at
// ingress (the throughput phases); without, they go on to the sink's IP
// stack and its sockets (the latency phase).
func setSinkDrop(ns *netlab.NS, drop bool) error {
	if _, err := ns.Run("nft", "flush", "chain", "netdev", "load", "in"); err != nil {
		return err
	}
	// The copies come from the node's address, or (l2) keep the router's.
	rule := []string{"nft", "add", "rule", "netdev", "load", "in",
		"ip", "saddr", "{", nodeAddr.String(), ",", icmpSource.String(), "}", "counter", "name", "arrived"}
	if drop {
		rule = append(rule, "drop")
	}
	_, err := ns.Run(rule...)
	return err
}

// arrivals returns the sink's counter: copies that reached it so far.
func arrivals(ns *netlab.NS) (uint64, error) {
	out, err := ns.Run("nft", "-j", "list", "counter", "netdev", "load", "arrived")
	if err != nil {
		return 0, err
	}
	n, err := nftCounters(out)
	if err != nil {
		return 0, err
	}
	v, ok := n["arrived"]
	if !ok {
		return 0, fmt.Errorf("nft counter not found in %q", out)
	}
	return v, nil
}

// nftCounters parses the output of "nft -j list counter(s) ...": the
// packet count of each named counter.
func nftCounters(out string) (map[string]uint64, error) {
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return nil, fmt.Errorf("parse nft counters %q: %w", out, err)
	}
	n := map[string]uint64{}
	for _, o := range doc.Nftables {
		if o.Counter != nil {
			n[o.Counter.Name] = o.Counter.Packets
		}
	}
	return n, nil
}

// counter reads a packet count that only grows: a run's output.
type counter func() (uint64, error)

// sinkCount is the counter of copies arriving at the sink.
func (t *topology) sinkCount() (uint64, error) { return arrivals(t.sink) }

// settle waits until count has stopped moving for two polls in a row,
// 300 ms (the daemon has drained its queues; that assumes an NFLOG batch
// timeout below that), at most limit, and returns its last value.
func settle(count counter, limit time.Duration) (uint64, error) {
	deadline := time.Now().Add(limit)
	last, err := count()
	if err != nil {
		return 0, err
	}
	for still := 0; still < 2 && time.Now().Before(deadline); {
		time.Sleep(150 * time.Millisecond)
		n, err := count()
		if err != nil {
			return 0, err
		}
		if n == last {
			still++
		} else {
			still = 0
		}
		last = n
	}
	return last, nil
}

// arrival is one copy received by the sink's raw socket.
type arrival struct {
	seq uint32 // the quoted TCP sequence number
	at  time.Time
}

// receiver records the copies arriving at the sink's IP stack, with the
// time its reading thread saw them.
type receiver struct {
	fd    int
	relay relay
	stop  atomic.Bool
	wg    sync.WaitGroup

	mu  sync.Mutex
	got []arrival
	err error
}

// startReceiver opens the socket the copies of relay arrive on in ns, and
// reads from it until close.
func startReceiver(ns *netlab.NS, rl relay) (*receiver, error) {
	r := &receiver{fd: -1, relay: rl}
	err := ns.Do(func() error {
		fd, err := rl.listen()
		if err != nil {
			return err
		}
		r.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
			return fmt.Errorf("sink: set SO_RCVBUFFORCE: %w", err)
		}
		// A receive timeout lets the reading loop notice close.
		tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return fmt.Errorf("sink: set SO_RCVTIMEO: %w", err)
		}
		return nil
	})
	if err != nil {
		if r.fd >= 0 {
			unix.Close(r.fd)
		}
		return nil, err
	}
	r.wg.Add(1)
	go r.loop()
	return r, nil
}

// loop reads packets until stop is set.
func (r *receiver) loop() {
	defer r.wg.Done()
	buf := make([]byte, 65536)
	for !r.stop.Load() {
		n, err := unix.Read(r.fd, buf)
		at := time.Now()
		switch {
		case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			r.mu.Lock()
			r.err = fmt.Errorf("sink: read %s copies: %w", r.relay, err)
			r.mu.Unlock()
			return
		}
		if seq, ok := r.relay.seq(buf[:n]); ok {
			r.mu.Lock()
			r.got = append(r.got, arrival{seq: seq, at: at})
			r.mu.Unlock()
		}
	}
}

// close stops reading, closes the socket and returns what arrived.
func (r *receiver) close() ([]arrival, error) {
	r.stop.Store(true)
	r.wg.Wait()
	unix.Close(r.fd)
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got, r.err
}
