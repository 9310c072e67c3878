package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// TestImageRunsWithChartSecurityContext builds the image from the static
// binary (FROM scratch, no registry) and runs it on both nodes of a lab as
// the chart runs the udp relay: all capabilities dropped but NET_ADMIN and
// NET_RAW (the daemon injects through a veth pair),
// no privilege escalation, a read-only root file system (and so a
// read-only /proc/sys), /dev/net/tun, the key file mounted read-only. A
// learns the path MTU from B's copy and the download completes.
//
// It needs podman with runc (Debian's packages; .ci/run installs them).
// This machine's cgroup layout (v1 controllers beside a v2 mount) makes
// crun refuse to start containers, hence --runtime runc; its open-files
// hard limit is below podman's default, hence --ulimit; and podman's
// default sysctl net.ipv4.ping_group_range cannot be set in a network
// namespace the container joins, hence a containers.conf without it.
func TestImageRunsWithChartSecurityContext(t *testing.T) {
	for _, tool := range []string{"podman", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is missing (apt-get install podman runc): %v", tool, err)
		}
	}
	bin := buildDaemon(t)
	ctx := t.TempDir()
	if err := os.Rename(bin, filepath.Join(ctx, "go-pmtud")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ctx, "Containerfile"), []byte("FROM scratch\nCOPY go-pmtud /go-pmtud\nENTRYPOINT [\"/go-pmtud\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "containers.conf")
	if err := os.WriteFile(conf, []byte("[containers]\ndefault_sysctls = []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	podman := func(args ...string) *exec.Cmd {
		cmd := exec.Command("podman", args...)
		cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+conf)
		return cmd
	}
	image := fmt.Sprintf("localhost/go-pmtud:test-%d", os.Getpid())
	if out, err := podman("build", "-q", "-t", image, ctx).CombinedOutput(); err != nil {
		t.Fatalf("podman build: %v\n%s", err, out)
	}
	t.Cleanup(func() { podman("rmi", "-f", image).Run() })

	c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := writeKeyFile(t)
	for i, n := range c.Nodes {
		name := fmt.Sprintf("go-pmtud-test-%d-%d", os.Getpid(), i)
		t.Cleanup(func() { podman("rm", "-f", "-t", "1", name).Run() })
		argv := []string{"podman", "run", "--rm", "--name", name, "--runtime", "runc",
			"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
			"--network", "ns:/run/netns/" + n.Name(),
			"--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "--security-opt", "no-new-privileges",
			"--read-only", "--device", "/dev/net/tun",
			"-v", keyFile + ":/etc/go-pmtud/keys:ro",
			"-e", "PMTUD_PEERS=" + netlab.NodeAddr(0).String() + "," + netlab.NodeAddr(1).String(),
			"-e", "PMTUD_IGNORE_NETWORKS=198.18.1.0/24", "-e", "PMTUD_RELAY_KEY_FILE=/etc/go-pmtud/keys",
			"-e", fmt.Sprintf("NODE_NAME=node-%d", i), image}
		// Not under `ip netns exec`: its private /sys hides the cgroup
		// mounts runc needs; the container joins the namespace itself.
		d := startDaemonCmd(t, podman(argv[1:]...), n, netlab.NodeAddr(i))
		if code, body := d.get("/healthz"); code != 200 {
			t.Fatalf("node %d: /healthz = %d %q\n%s", i, code, body, d.stderr.String())
		}
		if link := n.MustRun(t, "ip", "-d", "link", "show", "pmtud0"); !strings.Contains(link, "\n    veth ") {
			t.Errorf("node %d: pmtud0 is no veth device:\n%s", i, link)
		}
	}
	a := c.Nodes[0]
	const size = 1 << 20
	got, err := c.Transfer(a, size, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if mtu, _ := a.CachedMTU(netlab.ClientAddr.String()); got != size || mtu != 1400 {
		t.Fatalf("transferred %d of %d bytes, A caches mtu %d; want all and 1400", got, size, mtu)
	}
}
