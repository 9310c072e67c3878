package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
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

	// services, with --peers-from kubernetes and --target-services,
	// follows the Services that say which nodes own which flows.
	services *peers.Services

	log *slog.Logger

	mu      sync.Mutex
	pending error // why the source is not ready; nil when it is
	// The targeting state: the node names of the last peer set, the last
	// owners, and the state of the Services source.
	names     map[string][]netip.Addr
	owners    []peers.Owner
	targetErr error // nil once synced and while it works
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
		s.relay.Peers = relayPeers(f.Peers())
		if err := s.relay.Validate(); err != nil {
			return nil, fmt.Errorf("--peers-file %s: %w", s.peersFile, err)
		}
		return &source{name: "file", follow: f.Run, log: log}, nil
	case s.kube != nil:
		k, err := peers.NewKubernetes(*s.kube, log)
		if err != nil {
			return nil, err
		}
		src := &source{name: "kubernetes", follow: k.Run, pending: errNotSynced, log: log}
		if s.targetServices {
			if src.services, err = peers.NewServices(s.kube.Kubeconfig, log); err != nil {
				return nil, err
			}
			src.targetErr = errServicesNotSynced
		}
		return src, nil
	}
	return &source{name: "static", log: log}, nil
}

// errServicesNotSynced is the Services source's state until its first
// owners.
var errServicesNotSynced = errors.New("services not synced yet")

// run applies the source's updates to relay until ctx is done.
func (src *source) run(ctx context.Context, relay *pmtud.Relay) error {
	if src.follow == nil {
		return nil
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if src.services != nil {
		wg.Go(func() {
			err := src.services.Run(ctx, func(u peers.OwnersUpdate) {
				src.mu.Lock()
				defer src.mu.Unlock()
				if u.Err != nil {
					src.targetErr = u.Err
					return
				}
				src.owners, src.targetErr = u.Owners, nil
				src.applyTargets(relay)
			})
			if err != nil {
				src.log.Error("cannot follow services; every ICMP goes to every peer", "err", err)
			}
		})
	}
	return src.follow(ctx, func(u peers.Update) {
		if u.Err != nil {
			relay.PeerUpdateFailed(u.Err)
			src.set(u.Err)
			return
		}
		if _, err := relay.SetPeers(relayPeers(u.Peers)); err != nil {
			// SetPeers counted it; the set in force stays, as for a
			// source error.
			src.log.Warn("peer set refused; the peers in force stay", "err", err)
			src.set(err)
			return
		}
		src.set(nil)
		if src.services != nil {
			src.mu.Lock()
			src.names = u.Names
			if src.owners != nil {
				src.applyTargets(relay)
			}
			src.mu.Unlock()
		}
	})
}

// applyTargets gives relay the targets of the last owners, their node
// names resolved with the last peer set's. A name the peer set does not
// hold (a node outside --node-selector, or not known yet) becomes an
// invalid address, which makes the relay send that address's ICMPs to
// every peer. Call it with src.mu held.
func (src *source) applyTargets(relay *pmtud.Relay) {
	ts := make([]pmtud.Target, 0, len(src.owners))
	for _, o := range src.owners {
		t := pmtud.Target{Scope: pmtud.ScopeService, Prefix: netip.PrefixFrom(o.Addr, o.Addr.BitLen()), Proto: o.Proto, Port: o.Port}
		for _, n := range o.Nodes {
			as, ok := src.names[n]
			if !ok {
				as = []netip.Addr{{}}
			}
			t.Nodes = append(t.Nodes, as...)
		}
		ts = append(ts, t)
	}
	if err := relay.SetTargets(ts); err != nil {
		src.log.Warn("targets refused; the targets in force stay", "err", err)
	}
}

// targeting describes the Services source for /readyz: what the relay
// targets by, or why every ICMP goes to every peer.
func (src *source) targeting() string {
	if src.services == nil {
		return "targets: no services followed"
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	if src.targetErr != nil {
		return fmt.Sprintf("targets: %v (owners in force: %d service addresses and ports)", src.targetErr, len(src.owners))
	}
	return fmt.Sprintf("targets: services synced, %d service addresses and ports owned by some nodes", len(src.owners))
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
