package peers

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/internal/watch"
)

func TestParseList(t *testing.T) {
	a, b, c := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("198.18.1.11"), netip.MustParseAddr("2001:db8::1")
	pa, pb, pc := Peer{V4: a}, Peer{V4: b}, Peer{V6: c}
	for _, tc := range []struct {
		name, in string
		want     []Peer
		err      string
	}{
		{"empty", "", nil, ""},
		{"only a comment", "# no nodes yet\n", nil, ""},
		{"commas", "198.18.1.10,198.18.1.11", []Peer{pa, pb}, ""},
		{"blank space and newlines", "198.18.1.10 \t198.18.1.11\r\n", []Peer{pa, pb}, ""},
		{"comments", "198.18.1.10 # node a\n# node b:\n198.18.1.11", []Peer{pa, pb}, ""},
		{"mixed, trailing comma", " 198.18.1.10,\n,198.18.1.11,", []Peer{pa, pb}, ""},
		{"IPv4-mapped is unmapped", "::ffff:198.18.1.10", []Peer{pa}, ""},
		{"IPv6 parses", "2001:db8::1", []Peer{pc}, ""},
		{"dual-stack", "198.18.1.10+2001:db8::1 198.18.1.11", []Peer{{V4: a, V6: c}, pb}, ""},
		{"dual-stack, IPv6 first", "2001:db8::1+198.18.1.10", []Peer{{V4: a, V6: c}}, ""},
		{"duplicates are kept (the relay removes them)", "198.18.1.10 198.18.1.10", []Peer{pa, pa}, ""},
		{"two of a family", "198.18.1.10+198.18.1.11", nil, `line 1: "198.18.1.10+198.18.1.11": one address of each family at most`},
		{"three", "198.18.1.10+2001:db8::1+2001:db8::2", nil, `one address of each family at most`},
		{"dangling plus", "198.18.1.10+", nil, `line 1: "198.18.1.10+" is not an IP address`},
		{"a name", "198.18.1.10\nnode-b\n", nil, `line 2: "node-b" is not an IP address`},
		{"a CIDR", "198.18.1.0/24", nil, `line 1: "198.18.1.0/24" is not an IP address`},
		{"a zone", "fe80::1%eth0", nil, `is not an IP address`},
		{"a control character", "198.18.1.10\x1b[2J", nil, `"198.18.1.10?[2J" is not an IP address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseList([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseList(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("ParseList(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

// FuzzParseList: any input parses or fails without panicking, an error is
// one line, and a parsed list printed back parses to itself.
func FuzzParseList(f *testing.F) {
	f.Add([]byte("198.18.1.10, 198.18.1.11 # b\n2001:db8::1"))
	f.Add([]byte("::ffff:1.2.3.4\n#\n,,"))
	f.Add([]byte("198.18.1.10+2001:db8::1 2001:db8::2+198.18.1.11 ++"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseList(b)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		var sb strings.Builder
		for _, a := range got {
			fmt.Fprintf(&sb, "%v\n", a)
		}
		again, err := ParseList([]byte(sb.String()))
		if err != nil || !slices.Equal(again, got) {
			t.Fatalf("round trip: %v, %v; want %v", again, err, got)
		}
	})
}

// configMapDir lays out a directory as the kubelet mounts a ConfigMap:
// dir/peers → ..data/peers, ..data → ..<version>/. swap replaces the
// content the kubelet's way: a new version directory, then a new ..data
// symlink renamed over the old one. The file's own inode never changes
// under a watch on it.
type configMapDir struct {
	t   *testing.T
	dir string
	n   int
}

func newConfigMapDir(t *testing.T, content string) *configMapDir {
	d := &configMapDir{t: t, dir: t.TempDir()}
	d.swap(content)
	if err := os.Symlink("..data/peers", filepath.Join(d.dir, "peers")); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *configMapDir) path() string { return filepath.Join(d.dir, "peers") }

func (d *configMapDir) swap(content string) {
	d.n++
	v := fmt.Sprintf("..2026_11_30_10_00_%02d.%d", d.n, 1000+d.n)
	if err := os.Mkdir(filepath.Join(d.dir, v), 0o755); err != nil {
		d.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, v, "peers"), []byte(content), 0o644); err != nil {
		d.t.Fatal(err)
	}
	tmp := filepath.Join(d.dir, "..data_tmp")
	if err := os.Symlink(v, tmp); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.dir, "..data")); err != nil {
		d.t.Fatal(err)
	}
}

// TestFileFollowsKubeletSwaps: a File reads the initial set, reports each
// kubelet-style swap with the whole new set, reports a file that does not
// parse once as an error, and goes on after it. Polling is off (an hour),
// so what is seen is what inotify on the directory reported.
func TestFileFollowsKubeletSwaps(t *testing.T) {
	d := newConfigMapDir(t, "198.18.1.10\n198.18.1.11\n")
	f, err := NewFile(d.path(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Peers(); len(got) != 2 {
		t.Fatalf("initial set %v, want 2 addresses", got)
	}
	f.PollInterval = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	updates := make(chan Update, 16)
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx, func(u Update) { updates <- u }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	next := func() Update {
		t.Helper()
		select {
		case u := <-updates:
			return u
		case <-time.After(30 * time.Second):
			t.Fatal("no update within 30 s")
			return Update{}
		}
	}
	// Run may not have its watch yet: swap until the first update comes.
	want := []Peer{{V4: netip.MustParseAddr("198.18.1.10")}, {V4: netip.MustParseAddr("198.18.1.12")}}
	var u Update
	for range 300 {
		d.swap("198.18.1.10, 198.18.1.12 # c replaces b\n")
		select {
		case u = <-updates:
		case <-time.After(100 * time.Millisecond):
			continue
		}
		break
	}
	if u.Err != nil || !slices.Equal(u.Peers, want) {
		t.Fatalf("after the swap: %+v, want %v", u, want)
	}
	d.swap("198.18.1.10\nnode-c\n")
	if u := next(); u.Err == nil || !strings.Contains(u.Err.Error(), `line 2: "node-c"`) {
		t.Fatalf("after a bad swap: %+v, want an error naming line 2", u)
	}
	d.swap("# empty now\n")
	if u := next(); u.Err != nil || len(u.Peers) != 0 {
		t.Fatalf("after emptying: %+v, want an empty set", u)
	}
	select {
	case u := <-updates:
		t.Fatalf("unexpected update %+v", u)
	default:
	}
}

// TestFilePollsWithoutEvents: with the file changed in a way no inotify
// watch on its directory sees (its directory's symlink target moves), the
// poll finds the change.
func TestFilePollsWithoutEvents(t *testing.T) {
	real := t.TempDir()
	if err := os.WriteFile(filepath.Join(real, "peers"), []byte("198.18.1.10"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "cfg")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	f, err := NewFile(filepath.Join(link, "peers"), nil)
	if err != nil {
		t.Fatal(err)
	}
	f.PollInterval = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	updates := make(chan Update, 1)
	go f.Run(ctx, func(u Update) { updates <- u })
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "peers"), []byte("198.18.1.11"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Repoint the symlink atomically: nothing in the watched directory
	// (real) changes.
	tmp := link + ".tmp"
	if err := os.Symlink(other, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
	select {
	case u := <-updates:
		if u.Err != nil || len(u.Peers) != 1 || u.Peers[0] != (Peer{V4: netip.MustParseAddr("198.18.1.11")}) {
			t.Fatalf("update %+v, want 198.18.1.11", u)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the poll found no change within 30 s")
	}
}

func TestNewFileErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("198.18.1.10\n198.18.1\n"), 0o644)
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, watch.MaxSize+1), 0o644)
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "missing"), "no such file"},
		{bad, `bad: line 2: "198.18.1" is not an IP address`},
		{big, "larger than"},
		{dir, "is a directory"},
	} {
		if _, err := NewFile(tc.path, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewFile(%s) = %v, want an error containing %q", tc.path, err, tc.want)
		}
	}
}
