package peers

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/go-pmtud/go-pmtud/internal/watch"
)

// DefaultPollInterval is how often a File re-reads its file even when no
// change was reported: a safety net under inotify, which a file system
// may not support (NFS, some FUSE mounts).
const DefaultPollInterval = watch.DefaultPollInterval

// File is a peer source that reads addresses from a file and reads it
// again when it changes. It watches the file's directory with inotify
// (package watch), so it sees the way the kubelet updates a mounted
// ConfigMap (a new "..2026_…" directory, then the "..data" symlink
// renamed over the old one), which a watch on the file's inode misses;
// and it polls every PollInterval besides.
type File struct {
	path string
	log  *slog.Logger
	// PollInterval is the longest a change goes unnoticed when inotify
	// reports nothing; 0 means DefaultPollInterval.
	PollInterval time.Duration

	last  []byte // the content last read
	peers []Peer
}

// NewFile reads and parses the file at path. An error names the file and
// what is wrong with it; a daemon should refuse to start with it.
func NewFile(path string, log *slog.Logger) (*File, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &File{path: path, log: log}
	b, err := watch.Read(path)
	if err != nil {
		return nil, fmt.Errorf("peers file: %w", err)
	}
	if f.peers, err = ParseList(b); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f.last = b
	return f, nil
}

// Peers returns the peers NewFile read.
func (f *File) Peers() []Peer { return f.peers }

// Run calls apply whenever the file's content changes, from this goroutine,
// until ctx is done; then it returns nil. A file that cannot be read or
// does not parse gives one Update with Err per change; the caller keeps
// the set in force. It returns an error only if it cannot watch at all.
func (f *File) Run(ctx context.Context, apply func(Update)) error {
	w := &watch.File{Path: f.path, PollInterval: f.PollInterval, Log: f.log}
	return w.Run(ctx, f.last, func(b []byte, err error) {
		if err != nil {
			apply(Update{Err: fmt.Errorf("peers file: %w", err)})
			return
		}
		ps, err := ParseList(b)
		if err != nil {
			apply(Update{Err: fmt.Errorf("%s: %w", f.path, err)})
			return
		}
		f.peers = ps
		apply(Update{Peers: ps})
	})
}

// ParseList parses a list of peers (see ParsePeer: an address, or
// IPv4+IPv6 for a dual-stack node) separated by commas, blank space or
// newlines; "#" starts a comment that runs to the end of the line. An
// empty list is valid. An error names the line and the word.
func ParseList(b []byte) ([]Peer, error) {
	var out []Peer
	for n, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		for _, w := range strings.FieldsFunc(line, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\r' || r == '\v' || r == '\f' }) {
			p, err := ParsePeer(w)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n+1, err)
			}
			out = append(out, p)
		}
	}
	return out, nil
}

// printable shortens w and escapes its control characters, so an error
// that repeats a file's word stays one short line.
func printable(w string) string {
	if len(w) > 64 {
		w = w[:64] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, w)
}
