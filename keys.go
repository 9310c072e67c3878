package pmtud

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/go-pmtud/go-pmtud/wire"
)

// keySet is the udp relay's keys in force: the first seals, each opens.
// Immutable; SetKeys swaps it. Each preparer keeps a sealer made for the
// set it last saw and makes a new one when the set changes; the receiver
// opens each batch with the opener of the set in force.
type keySet struct {
	keys []wire.Key
	// openers[f] is used by the goroutine of the receiver of family f
	// only: an Opener reuses its HMAC state and buffers.
	openers [2]*wire.Opener
}

// newKeySet checks keys (see Config.Validate) and builds their openers.
func newKeySet(keys []wire.Key) (*keySet, error) {
	if err := checkKeys(keys); err != nil {
		return nil, err
	}
	s := &keySet{keys: slices.Clone(keys)}
	for f := range s.openers {
		o, err := wire.NewOpener(keys...)
		if err != nil {
			return nil, fmt.Errorf("pmtud: relay keys: %w", err)
		}
		s.openers[f] = o
	}
	return s, nil
}

// checkKeys reports what is wrong with a list of relay keys: more than
// two, id 0, a secret shorter than wire.MinSecretLen, two keys with one id.
func checkKeys(keys []wire.Key) error {
	if len(keys) > 2 {
		return fmt.Errorf("%d relay keys: at most two (the current and the previous) are accepted", len(keys))
	}
	for i, k := range keys {
		if k.ID == 0 {
			return errors.New("relay key id 0 is reserved for unauthenticated datagrams")
		}
		if len(k.Secret) < wire.MinSecretLen {
			return fmt.Errorf("relay key %d is %d bytes, want at least %d", k.ID, len(k.Secret), wire.MinSecretLen)
		}
		if i == 1 && k.ID == keys[0].ID {
			return fmt.Errorf("relay keys share the id %d", k.ID)
		}
	}
	return nil
}

// equal reports whether s holds exactly keys, in order.
func (s *keySet) equal(keys []wire.Key) bool {
	return slices.EqualFunc(s.keys, keys, func(a, b wire.Key) bool {
		return a.ID == b.ID && bytes.Equal(a.Secret, b.Secret)
	})
}

// ids returns the key ids, for logs (never the secrets).
func (s *keySet) ids() []uint16 {
	ids := make([]uint16, len(s.keys))
	for i, k := range s.keys {
		ids[i] = k.ID
	}
	return ids
}

// SetKeys makes keys the udp relay's keys while it runs: the first seals
// the copies of the next batches, each opens datagrams from the next
// receive batch on. A key rolls in two steps, each applied on every node
// (add the new key as the second line everywhere, then swap the lines
// everywhere), so copies keep flowing throughout. The outcome is counted
// in go_pmtud_key_reloads_total (applied, unchanged, error) and a change
// is logged with the key ids. Keys that fail Config's checks, an empty
// list, or a relay that was started without keys (unauthenticated) leave
// the keys in force and return an error. It allocates; it is for the key
// file's watcher, not the packet path.
func (r *Relay) SetKeys(keys []wire.Key) (changed bool, err error) {
	r.keyMu.Lock()
	defer r.keyMu.Unlock()
	cur := r.keys.Load()
	switch {
	case cur == nil:
		err = errors.New("relay keys cannot change: the relay is not the udp relay")
	case len(cur.keys) == 0:
		err = errors.New("relay keys cannot be added: the relay was started unauthenticated")
	case len(keys) == 0:
		err = errors.New("no relay keys: the relay keeps its keys")
	}
	var next *keySet
	if err == nil {
		next, err = newKeySet(keys)
	}
	if err != nil {
		r.m.keyError.Inc()
		return false, err
	}
	if cur.equal(keys) {
		r.m.keyUnchanged.Inc()
		return false, nil
	}
	r.keys.Store(next)
	r.m.keyApplied.Inc()
	r.log.Info("relay keys changed", "seal", next.keys[0].ID, "open", next.ids())
	return true, nil
}

// KeyReloadFailed records that the key file could not be read or parsed:
// the keys in force stay, go_pmtud_key_reloads_total{result="error"}
// counts it, and one line is logged (without the file's content).
func (r *Relay) KeyReloadFailed(err error) {
	r.m.keyError.Inc()
	r.log.Warn("relay keys not reloaded; the keys in force stay", "err", err)
}

// rekey makes p's sealers seal with the first key of s, one for each of
// the node's source addresses. It allocates (an HMAC state per sealer),
// once per key change.
func (p *preparer) rekey(s *keySet) error {
	var key *wire.Key
	if len(s.keys) > 0 {
		key = &s.keys[0]
	}
	newSealer := wire.NewSealer
	switch p.r.cfg.Envelope {
	case 1:
		newSealer = wire.NewSealerV1
	case 3:
		newSealer = wire.NewSealerPacked
	}
	var sealers [2]*wire.Sealer
	for t, can := range p.r.cfg.transports() {
		if !can {
			continue
		}
		sealer, err := newSealer(key, p.r.seq, p.r.cfg.source(t))
		if err != nil {
			return fmt.Errorf("pmtud: relay key: %w", err)
		}
		sealers[t] = sealer
	}
	p.sealers, p.keys = sealers, s
	p.packed = p.r.cfg.Envelope == 3
	return nil
}
