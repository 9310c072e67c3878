package pmtud_test

import (
	"os"
	"strings"
	"testing"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// initScript returns the shell script of the DaemonSet's init container:
// the folded (>-) block after its "- sh", "- -c" arguments, lines joined
// with spaces as YAML folds them.
func initScript(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("deploy/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != "- >-" || i < 2 || strings.TrimSpace(lines[i-1]) != "- -c" {
			continue
		}
		indent := len(l) - len(strings.TrimLeft(l, " ")) + 2
		var parts []string
		for _, m := range lines[i+1:] {
			if len(m)-len(strings.TrimLeft(m, " ")) < indent || strings.TrimSpace(m) == "" {
				break
			}
			parts = append(parts, strings.TrimSpace(m))
		}
		return strings.Join(parts, " ")
	}
	t.Fatal("deploy/daemonset.yaml has no init container script (- sh, - -c, - >-)")
	return ""
}

// TestDaemonSetInitContainerInstallsRules runs the shipped DaemonSet's init
// script twice in a fresh namespace, as two pod starts on one node would:
// it installs exactly the NFLOG rules the tests use (netlab.NFLOGRule,
// NFLOGRule6, which TestDocumentedRulesLogRouterErrors shows to work), once.
func TestDaemonSetInitContainerInstallsRules(t *testing.T) {
	script := initScript(t)
	for _, want := range []string{
		"iptables " + strings.Join(netlab.NFLOGRule(group), " "),
		"ip6tables " + strings.Join(netlab.NFLOGRule6(group), " "),
	} {
		if !strings.Contains(script, want) {
			t.Fatalf("the init script does not run %q:\n%s", want, script)
		}
	}
	ns, err := netlab.NewT(t).AddNS("node")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		ns.MustRun(t, "sh", "-c", script)
	}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		out := ns.MustRun(t, cmd, "-t", "raw", "-S", "PREROUTING")
		if n := strings.Count(out, "-j NFLOG --nflog-group 33"); n != 1 {
			t.Errorf("%s raw PREROUTING after two runs has %d NFLOG rules, want 1:\n%s", cmd, n, out)
		}
	}
}
