package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// configMap is a directory laid out as the kubelet lays out a mounted
// ConfigMap with one key, peers:
//
//	DIR/peers -> ..data/peers
//	DIR/..data -> ..2026_01_02_15_04_05.123456789
//	DIR/..2026_01_02_15_04_05.123456789/peers
//
// write updates it the kubelet's way: a new timestamped directory holding
// the file, a symlink ..data_tmp to it, ..data_tmp renamed over ..data,
// then the old directory removed. The daemon's --peers-file is DIR/peers;
// it watches DIR with inotify and sees the rename.
type configMap struct {
	dir string
	cur string // the timestamped directory ..data points to
}

// configMapKey is the ConfigMap's one key: the file the daemon reads.
const configMapKey = "peers"

// newConfigMap creates dir with content as its peers file.
func newConfigMap(dir string, content []byte) (*configMap, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("peers ConfigMap: %w", err)
	}
	c := &configMap{dir: dir}
	if err := c.write(content); err != nil {
		return nil, err
	}
	if err := os.Symlink(filepath.Join("..data", configMapKey), c.path()); err != nil {
		return nil, fmt.Errorf("peers ConfigMap: %w", err)
	}
	return c, nil
}

// path returns the path the daemon reads: DIR/peers.
func (c *configMap) path() string { return filepath.Join(c.dir, configMapKey) }

// write makes content the peers file, the kubelet's way (see configMap).
func (c *configMap) write(content []byte) error {
	ts, err := os.MkdirTemp(c.dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return fmt.Errorf("peers ConfigMap: %w", err)
	}
	tmp := filepath.Join(c.dir, "..data_tmp")
	err = errors.Join(
		os.Chmod(ts, 0o755),
		os.WriteFile(filepath.Join(ts, configMapKey), content, 0o644),
		os.Symlink(filepath.Base(ts), tmp),
	)
	if err == nil {
		err = os.Rename(tmp, filepath.Join(c.dir, "..data"))
	}
	if err != nil {
		os.Remove(tmp)
		os.RemoveAll(ts)
		return fmt.Errorf("peers ConfigMap: %w", err)
	}
	old := c.cur
	c.cur = ts
	if old != "" {
		if err := os.RemoveAll(old); err != nil {
			return fmt.Errorf("peers ConfigMap: %w", err)
		}
	}
	return nil
}

// peerList renders addrs as a peers file: one address a line.
func peerList(addrs []netip.Addr) []byte {
	var b strings.Builder
	b.WriteString("# go-pmtud load harness\n")
	for _, a := range addrs {
		b.WriteString(a.String())
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// swapper alternates a configMap between two peer sets while a run lasts:
// the P peers of the topology, and the same with the last one replaced by
// the sink's spare address. Both are P peers the sink counts alike (its
// counter takes every packet from the node, whatever the address), so a
// run with swaps expects P copies per ICMP as one without. They differ by
// one peer, so the daemon sees every swap as a change (one peer added, one
// removed) and applies it.
type swapper struct {
	cm    *configMap
	every time.Duration
	sets  [2][]byte
	next  int // index into sets of the next content to write
}

// newSwapper returns a swapper of cm, which holds the topology's peers,
// every interval.
func newSwapper(cm *configMap, t *topology, every time.Duration) *swapper {
	alt := append([]netip.Addr(nil), t.peers...)
	alt[len(alt)-1] = t.spare
	return &swapper{cm: cm, every: every, sets: [2][]byte{peerList(t.peers), peerList(alt)}, next: 1}
}

// swapping is a swapper at work.
type swapping struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	n     uint64 // swaps written
	err   error
}

// start writes the other set every s.every from now on, in a goroutine,
// until the returned swapping is stopped.
func (s *swapper) start() *swapping {
	w := &swapping{stopc: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		tick := time.NewTicker(s.every)
		defer tick.Stop()
		for {
			select {
			case <-w.stopc:
				return
			case <-tick.C:
			}
			if w.err = s.cm.write(s.sets[s.next]); w.err != nil {
				return
			}
			s.next ^= 1
			w.n++
		}
	}()
	return w
}

// stop ends the swapping and returns how many swaps it wrote.
func (w *swapping) stop() (uint64, error) {
	close(w.stopc)
	w.wg.Wait()
	return w.n, w.err
}

// swapNote describes sw in progress lines.
func swapNote(sw *swapper) string {
	if sw == nil {
		return ""
	}
	return fmt.Sprintf(", swapping the peers file every %v", sw.every)
}
