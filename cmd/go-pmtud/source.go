package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/go-pmtud/go-pmtud"
	"github.com/go-pmtud/go-pmtud/internal/peers"
	"github.com/go-pmtud/go-pmtud/internal/watch"
	"github.com/go-pmtud/go-pmtud/wire"
)

// source is the daemon's peer source: the static list, a file or the
// Kubernetes API, and whether it has a set in force that it stands by
// (/readyz).
type source struct {
	name string
	// run follows the source until ctx is done, applying each set to the
	// relay; nil for the static list.
	follow func(ctx context.Context, apply func(peers.Update)) error

	log *slog.Logger

	mu      sync.Mutex
	pending error // why the source is not ready; nil when it is
}

// errNotSynced is the Kubernetes source's state until its first set.
var errNotSynced = errors.New("the Kubernetes node list has not synced yet")

// openSource prepares the peer source of s. A peers file is read here, so
// a file that does not parse stops the start-up; its set becomes the
// relay's first.
func openSource(s *settings, log *slog.Logger) (*source, error) {
	switch {
	case s.peersFile != "":
		f, err := peers.NewFile(s.peersFile, log)
		if err != nil {
			return nil, fmt.Errorf("--peers-file: %w", err)
		}
		s.relay.Peers = f.Addrs()
		if err := s.relay.Validate(); err != nil {
			return nil, fmt.Errorf("--peers-file %s: %w", s.peersFile, err)
		}
		return &source{name: "file", follow: f.Run, log: log}, nil
	case s.kube != nil:
		k, err := peers.NewKubernetes(*s.kube, log)
		if err != nil {
			return nil, err
		}
		return &source{name: "kubernetes", follow: k.Run, pending: errNotSynced, log: log}, nil
	}
	return &source{name: "static", log: log}, nil
}

// run applies the source's updates to relay until ctx is done.
func (src *source) run(ctx context.Context, relay *pmtud.Relay) error {
	if src.follow == nil {
		return nil
	}
	return src.follow(ctx, func(u peers.Update) {
		if u.Err != nil {
			relay.PeerUpdateFailed(u.Err)
			src.set(u.Err)
			return
		}
		if _, err := relay.SetPeers(u.Addrs); err != nil {
			// SetPeers counted it; the set in force stays, as for a
			// source error.
			src.log.Warn("peer set refused; the peers in force stay", "err", err)
			src.set(err)
			return
		}
		src.set(nil)
	})
}

func (src *source) set(err error) {
	src.mu.Lock()
	src.pending = err
	src.mu.Unlock()
}

// ready returns nil when the source's last update was applied, else why
// not: not synced yet, unreachable, or a set that could not be used.
func (src *source) ready() error {
	src.mu.Lock()
	defer src.mu.Unlock()
	return src.pending
}

// followKeys applies the relay key file to relay whenever it changes (a
// Secret volume is updated the way a ConfigMap is) and on SIGHUP, until
// ctx is done. A file that does not parse leaves the keys in force.
func followKeys(ctx context.Context, s *settings, relay *pmtud.Relay, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reread := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				select {
				case reread <- struct{}{}:
				default:
				}
			}
		}
	}()
	w := &watch.File{Path: s.keyFile, Reread: reread, Log: log}
	err := w.Run(ctx, s.keyData, func(b []byte, err error) {
		var keys []wire.Key
		if err == nil {
			keys, err = parseKeys(b)
		}
		if err != nil {
			relay.KeyReloadFailed(fmt.Errorf("--relay-key-file: %w", err))
			return
		}
		if _, err := relay.SetKeys(keys); err != nil {
			log.Warn("relay keys not applied; the keys in force stay", "err", err)
		}
	})
	if err != nil {
		log.Error("cannot follow the relay key file", "err", err)
	}
}
