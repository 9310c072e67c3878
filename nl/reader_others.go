//go:build !linux

package nl

import (
	"errors"
	"fmt"
)

// Reader receives the packets logged to one NFLOG group. NFLOG exists on
// Linux only: elsewhere Listen fails and Reader does nothing.
type Reader struct{}

// Listen fails with an error matching errors.ErrUnsupported: NFLOG is a
// Linux interface.
func Listen(cfg Config) (*Reader, error) {
	return nil, fmt.Errorf("nl: listen group %d: %w", cfg.Group, errors.ErrUnsupported)
}

// Read fails with an error matching errors.ErrUnsupported.
func (r *Reader) Read(b *Batch) error { return fmt.Errorf("nl: read: %w", errors.ErrUnsupported) }

// Close does nothing.
func (r *Reader) Close() error { return nil }
