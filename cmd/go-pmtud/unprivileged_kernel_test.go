package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// TestRelaysWithoutPrivileges runs the real binary as a container without
// privileges has it: /proc/sys read-only (a private mount namespace
// remounts it) and only the chart's capabilities (the bounding set, as
// `capabilities: drop: [ALL], add: [...]` leaves it).
//   - udp relay, on both nodes, CAP_NET_ADMIN and CAP_NET_RAW, the
//     Kubernetes case: the download comes from a pod behind A's DNAT, the
//     nodes drop conntrack-INVALID packets and filter reverse paths
//     strictly. Each daemon sets its veth pair up over rtnetlink; the pod
//     learns the path MTU from B's copy and the download completes; the two
//     daemons do not ping-pong (A relays nothing); the device sends nothing
//     (no IPv6 link-local address, so no DAD, router solicitation or MLD).
//   - the same with CAP_NET_ADMIN alone (a manifest from before --inject):
//     the daemon falls back to a TUN device, and all of the above holds.
//   - icmp relay, on B alone, CAP_NET_ADMIN and CAP_NET_RAW, the anycast
//     case (its copies cannot reach a pod behind DNAT): A learns the MTU.
func TestRelaysWithoutPrivileges(t *testing.T) {
	for _, tc := range []struct {
		name, relay string
		caps        string
		nodes       []int
		device      string // the kind of pmtud0, for the udp relay
	}{
		{"udp", "udp", "-all,+net_admin,+net_raw", []int{0, 1}, "veth"},
		{"udp-without-net-raw", "udp", "-all,+net_admin", []int{0, 1}, "tun"},
		{"icmp", "icmp", "-all,+net_admin,+net_raw", []int{1}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) { testRelayWithoutPrivileges(t, tc.relay, tc.caps, tc.nodes, tc.device) })
	}
}

func testRelayWithoutPrivileges(t *testing.T, relay, caps string, nodes []int, device string) {
	for _, tool := range []string{"unshare", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is missing (util-linux): %v", tool, err)
		}
	}
	lab := netlab.NewT(t)
	c, err := netlab.BuildCluster(lab, 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	server := c.Nodes[0] // the flow's owner: node A, or the pod behind it
	if relay == "udp" {
		if server, err = c.AddPod(lab); err != nil {
			t.Fatal(err)
		}
	}
	bin, keyFile := buildDaemon(t), writeKeyFile(t)
	// Prove the sandbox first: a write to /proc/sys fails inside it.
	probe := exec.Command("ip", "netns", "exec", c.Nodes[0].Name(), "unshare", "-m", "--propagation", "private", "sh", "-c",
		"mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec setpriv --bounding-set -all,+net_admin sh -c 'echo 1 > /proc/sys/net/ipv4/conf/lo/forwarding'")
	if out, err := probe.CombinedOutput(); err == nil || !strings.Contains(string(out), "Read-only file system") {
		t.Fatalf("the sandbox does not make /proc/sys read-only: %v %s", err, out)
	}
	argv := []string{"unshare", "-m", "--propagation", "private", "sh", "-c",
		`mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec setpriv --bounding-set "$0" "$1"`, caps, bin}
	var ds []*daemon
	for _, i := range nodes {
		ds = append(ds, startDaemonArgv(t, argv, c.Nodes[i], netlab.NodeAddr(i), "PMTUD_RELAY="+relay, "NODE_NAME=node-"+string(rune('a'+i)),
			"PMTUD_PEERS="+netlab.NodeAddr(0).String()+","+netlab.NodeAddr(1).String(),
			"PMTUD_IGNORE_NETWORKS=198.18.1.0/24", "PMTUD_RELAY_KEY_FILE="+keyFile))
	}
	for _, d := range ds {
		if code, body := d.get("/healthz"); code != 200 {
			t.Fatalf("/healthz = %d %q\n%s", code, body, d.stderr.String())
		}
	}
	if mtu, err := server.CachedMTU(netlab.ClientAddr.String()); err != nil || mtu != 0 {
		t.Fatalf("before the transfer the server caches mtu %d (%v), want none", mtu, err)
	}
	const size = 1 << 20
	got, err := c.Transfer(server, size, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if mtu, _ := server.CachedMTU(netlab.ClientAddr.String()); got != size || mtu != 1400 {
		t.Fatalf("transferred %d of %d bytes, the server caches mtu %d; want all and 1400\nB's log:\n%s", got, size, mtu, ds[len(ds)-1].stderr.String())
	}
	if relay != "udp" {
		return
	}
	// No ping-pong: A injected B's copies and relayed none of its own.
	ds[0].waitMetric(`go_pmtud_sent_packets_total{node="node-a"} 0`)
	if _, m := ds[0].get("/metrics"); strings.Contains(m, `go_pmtud_relay_injected_total{node="node-a"} 0`+"\n") {
		t.Errorf("A injected nothing:\n%s", m)
	}
	for i, n := range c.Nodes {
		if link := n.MustRun(t, "ip", "-d", "link", "show", "pmtud0"); !strings.Contains(link, "\n    "+device+" ") {
			t.Errorf("node %d: pmtud0 is no %s device:\n%s", i, device, link)
		}
		tx := strings.TrimSpace(n.MustRun(t, "cat", "/sys/class/net/pmtud0/statistics/tx_packets"))
		if tx != "0" {
			t.Errorf("node %d's device sent %s packets, want none", i, tx)
		}
		if v := strings.TrimSpace(n.MustRun(t, "cat", "/proc/sys/net/ipv4/conf/pmtud0/forwarding")); v != "1" {
			t.Errorf("node %d: pmtud0 forwarding %s, want 1", i, v)
		}
	}
}

// TestMissingCapabilityIsNamed: started without the capability a relay
// needs, the daemon exits with one line naming it.
func TestMissingCapabilityIsNamed(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skipf("setpriv is missing (util-linux): %v", err)
	}
	c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	bin := buildDaemon(t)
	for _, tc := range []struct{ relay, caps, want string }{
		{"udp", "-all", "needs CAP_NET_ADMIN"},
		{"icmp", "-all,+net_admin", "needs CAP_NET_RAW"},
		{"icmp", "-all,+net_raw", "needs CAP_NET_ADMIN"},
	} {
		cmd := exec.Command("ip", "netns", "exec", c.Nodes[1].Name(), "setpriv", "--bounding-set", tc.caps, bin,
			"--relay", tc.relay, "--peers", netlab.NodeAddr(0).String(), "--insecure-no-auth", "--metrics-port", "0")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
			t.Errorf("%s relay with %s: %v, output %q; want one line saying %q", tc.relay, tc.caps, err, out, tc.want)
		}
	}
}
