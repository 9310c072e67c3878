package peers

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultPollInterval is how often a File re-reads its file even when no
// change was reported: a safety net under inotify, which a file system
// may not support (NFS, some FUSE mounts).
const DefaultPollInterval = 10 * time.Second

// maxFileSize bounds a peers file: 65,536 addresses of 40 bytes each with
// room for comments. A larger file is refused, not read into memory.
const maxFileSize = 8 << 20

// File is a peer source that reads addresses from a file and reads it
// again when it changes. It watches the file's directory with inotify, so
// it sees the way the kubelet updates a mounted ConfigMap (a new
// "..2026_…" directory, then the "..data" symlink renamed over the old
// one), which a watch on the file's inode misses; and it polls every
// PollInterval besides.
type File struct {
	path string
	log  *slog.Logger
	// PollInterval is the longest a change goes unnoticed when inotify
	// reports nothing; 0 means DefaultPollInterval.
	PollInterval time.Duration

	last  []byte // the content last read
	addrs []netip.Addr
}

// NewFile reads and parses the file at path. An error names the file and
// what is wrong with it; a daemon should refuse to start with it.
func NewFile(path string, log *slog.Logger) (*File, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &File{path: path, log: log}
	b, err := readFile(path)
	if err != nil {
		return nil, err
	}
	if f.addrs, err = ParseList(b); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f.last = b
	return f, nil
}

// Addrs returns the addresses NewFile read.
func (f *File) Addrs() []netip.Addr { return f.addrs }

// Run calls apply whenever the file's content changes, from this goroutine,
// until ctx is done; then it returns nil. A file that cannot be read or
// does not parse gives one Update with Err per change; the caller keeps
// the set in force. It returns an error only if it cannot watch at all.
func (f *File) Run(ctx context.Context, apply func(Update)) error {
	dir := filepath.Dir(f.path)
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("peers file: inotify: %w", err)
	}
	events := os.NewFile(uintptr(fd), "inotify") // non-blocking: Read parks in the netpoller, Close wakes it
	defer events.Close()
	// IN_MOVED_TO is the kubelet's rename of ..data; the others catch
	// editors and tools that write in place or replace the file.
	const mask = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_CLOSE_WRITE | unix.IN_DELETE | unix.IN_ATTRIB
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		f.log.Warn("cannot watch the peers file's directory; polling only", "dir", dir, "interval", f.poll(), "err", err)
	} else {
		changed := make(chan struct{}, 1)
		go func() {
			buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
			for {
				if _, err := events.Read(buf); err != nil {
					return // closed
				}
				select {
				case changed <- struct{}{}:
				default: // a check is pending already
				}
			}
		}()
		return f.loop(ctx, changed, apply)
	}
	return f.loop(ctx, nil, apply)
}

func (f *File) poll() time.Duration {
	if f.PollInterval > 0 {
		return f.PollInterval
	}
	return DefaultPollInterval
}

// loop re-reads the file on each signal from changed and on every tick.
func (f *File) loop(ctx context.Context, changed <-chan struct{}, apply func(Update)) error {
	tick := time.NewTicker(f.poll())
	defer tick.Stop()
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-tick.C:
		}
		b, err := readFile(f.path)
		if err == nil && bytes.Equal(b, f.last) {
			lastErr = ""
			continue
		}
		var addrs []netip.Addr
		if err == nil {
			if addrs, err = ParseList(b); err != nil {
				err = fmt.Errorf("%s: %w", f.path, err)
			}
		}
		if err != nil {
			// The same failure on every tick is one failed update, not one
			// a tick.
			if err.Error() != lastErr {
				lastErr = err.Error()
				apply(Update{Err: err})
			}
			continue
		}
		lastErr = ""
		f.last, f.addrs = b, addrs
		apply(Update{Addrs: addrs})
	}
}

// readFile reads path, refusing files larger than maxFileSize.
func readFile(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("peers file: %w", err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("peers file: read %s: %w", path, err)
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("peers file %s is larger than %d bytes", path, maxFileSize)
	}
	return b, nil
}

// ParseList parses a list of IP addresses separated by commas, blank space
// or newlines; "#" starts a comment that runs to the end of the line. An
// empty list is valid. An error names the line and the word.
func ParseList(b []byte) ([]netip.Addr, error) {
	var out []netip.Addr
	for n, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		for _, w := range strings.FieldsFunc(line, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\r' || r == '\v' || r == '\f' }) {
			a, err := netip.ParseAddr(w)
			if err != nil || a.Zone() != "" {
				return nil, fmt.Errorf("line %d: %q is not an IP address", n+1, printable(w))
			}
			out = append(out, a.Unmap())
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
