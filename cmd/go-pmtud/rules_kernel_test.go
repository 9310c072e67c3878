package main

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// TestDaemonOwnsItsRules: with --manage-rules nftables and no rule
// installed by anyone else, the daemons install their table, A learns the
// path MTU from B's copy through it; a daemon killed with SIGKILL leaves
// its table behind, and the next start replaces it rather than adding a
// second set; SIGTERM removes it.
func TestDaemonOwnsItsRules(t *testing.T) {
	c, err := netlab.BuildCluster(netlab.NewT(t), 2, 1400)
	if err != nil {
		t.Fatal(err)
	}
	bin, keyFile := buildDaemon(t), writeKeyFile(t)
	env := func(i int) []string {
		return []string{"PMTUD_MANAGE_RULES=nftables", "PMTUD_RELAY_KEY_FILE=" + keyFile,
			"PMTUD_PEERS=" + netlab.NodeAddr(0).String() + "," + netlab.NodeAddr(1).String(),
			"PMTUD_IGNORE_NETWORKS=198.18.1.0/24", "NODE_NAME=node-" + string(rune('a'+i))}
	}
	a, b := c.Nodes[0], c.Nodes[1]
	table := func(ns *netlab.NS) string {
		out, _ := ns.Run("nft", "list", "table", "inet", "go_pmtud")
		return out
	}
	startDaemon(t, bin, a, netlab.NodeAddr(0), env(0)...).get("/healthz")
	first := startDaemon(t, bin, b, netlab.NodeAddr(1), env(1)...)
	first.get("/healthz")
	if n := strings.Count(table(b), "log group 33"); n != 2 {
		t.Fatalf("B's table has %d logging rules, want 2:\n%s", n, table(b))
	}
	first.cmd.Process.Kill()
	<-first.exited
	if n := strings.Count(table(b), "log group 33"); n != 2 {
		t.Fatalf("after SIGKILL B's table has %d logging rules, want the 2 left behind", n)
	}
	second := startDaemon(t, bin, b, netlab.NodeAddr(1), env(1)...)
	second.get("/healthz")
	if n := strings.Count(table(b), "log group 33"); n != 2 {
		t.Fatalf("after a restart B's table has %d logging rules, want 2, not another set:\n%s", n, table(b))
	}
	const size = 1 << 20
	got, err := c.Transfer(a, size, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if mtu, _ := a.CachedMTU(netlab.ClientAddr.String()); got != size || mtu != 1400 {
		t.Fatalf("transferred %d of %d bytes, A caches mtu %d; want all and 1400\nB's log:\n%s", got, size, mtu, second.stderr.String())
	}
	if err := second.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-second.exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, second.stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10 s of SIGTERM")
	}
	if out, _ := b.Run("nft", "list", "tables"); strings.Contains(out, "go_pmtud") {
		t.Fatalf("the table is still there after SIGTERM:\n%s", out)
	}
}
