// Package watch follows a small file that is replaced at run time, as the
// kubelet replaces a mounted ConfigMap or Secret: it writes a new
// "..2026_…" directory and renames a new "..data" symlink over the old
// one, which a watch on the file's own inode misses. Watch therefore
// watches the file's directory with inotify, polls besides (for file
// systems without inotify), and re-reads on demand (SIGHUP).
package watch

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultPollInterval is how often a File is read even when inotify
// reported nothing.
const DefaultPollInterval = 10 * time.Second

// MaxSize bounds a watched file: a larger one is refused, not read into
// memory.
const MaxSize = 8 << 20

// File follows the file at Path.
type File struct {
	Path string
	// PollInterval is the longest a change goes unnoticed when inotify
	// reports nothing; 0 means DefaultPollInterval.
	PollInterval time.Duration
	// Reread, when set, makes Run read the file at once on every receive
	// (a SIGHUP), and report it even if unchanged.
	Reread <-chan struct{}
	// Log gets one line when the directory cannot be watched; nil: none.
	Log *slog.Logger
}

// Read reads the file, refusing one larger than MaxSize. The error names
// the file.
func Read(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, MaxSize)
	}
	return b, nil
}

// Run calls changed, from this goroutine, whenever the file's content
// differs from last (and then from what it last passed), or it could not
// be read, until ctx is done; then it returns nil. The same read error is
// passed once, not once a poll. After a Reread it calls changed whatever
// the content. Without inotify it polls alone, after one warning. It
// returns nil.
func (w *File) Run(ctx context.Context, last []byte, changed func(b []byte, err error)) error {
	notify := make(chan struct{}, 1)
	dir := filepath.Dir(w.Path)
	// IN_MOVED_TO is the kubelet's rename of ..data; the others catch
	// editors and tools that write in place or replace the file.
	const mask = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_CLOSE_WRITE | unix.IN_DELETE | unix.IN_ATTRIB
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err == nil {
		events := os.NewFile(uintptr(fd), "inotify") // non-blocking: Read parks in the netpoller, Close wakes it
		defer events.Close()
		if _, err = unix.InotifyAddWatch(fd, dir, mask); err == nil {
			go func() {
				buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
				for {
					if _, err := events.Read(buf); err != nil {
						return // closed
					}
					select {
					case notify <- struct{}{}:
					default: // a check is pending already
					}
				}
			}()
		}
	}
	// No inotify (out of instances: fs.inotify.max_user_instances, or a
	// file system without it): polling alone still follows the file.
	if err != nil && w.Log != nil {
		w.Log.Warn("cannot watch the directory; polling only", "dir", dir, "interval", w.poll(), "err", err)
	}
	tick := time.NewTicker(w.poll())
	defer tick.Stop()
	var lastErr string
	for {
		force := false
		select {
		case <-ctx.Done():
			return nil
		case <-notify:
		case <-tick.C:
		case <-w.Reread:
			force = true
		}
		b, err := Read(w.Path)
		switch {
		case err != nil:
			if force || err.Error() != lastErr {
				lastErr = err.Error()
				changed(nil, err)
			}
		case force || !bytes.Equal(b, last):
			lastErr = ""
			last = b
			changed(b, nil)
		default:
			lastErr = ""
		}
	}
}

func (w *File) poll() time.Duration {
	if w.PollInterval > 0 {
		return w.PollInterval
	}
	return DefaultPollInterval
}
