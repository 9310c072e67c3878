package pmtud_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/internal/kubetest"
)

// renderChart renders the Helm chart with the given --set values, with the
// helm CI builds ($(go env GOPATH)/bin/helm) or one on PATH.
func renderChart(t *testing.T, set ...string) string {
	t.Helper()
	helm, err := exec.LookPath("helm")
	if err != nil {
		gopath, _ := exec.Command("go", "env", "GOPATH").Output()
		helm = filepath.Join(strings.TrimSpace(string(gopath)), "bin", "helm")
		if _, err := os.Stat(helm); err != nil {
			t.Skipf("no helm (CI builds it: go install helm.sh/helm/v3/cmd/helm@v3.22.0): %v", err)
		}
	}
	args := []string{"template", "go-pmtud", "deploy/chart/go-pmtud", "-n", "kube-system"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := exec.Command(helm, args...).Output()
	if err != nil {
		t.Fatalf("helm template %v: %v", set, err)
	}
	return string(out)
}

// initScript returns the shell script of the DaemonSet's init container
// (manageRules: iptables-init): the folded (>-) block after its "- sh",
// "- -c" arguments, lines joined with spaces as YAML folds them.
func initScript(t *testing.T) string {
	t.Helper()
	lines := strings.Split(renderChart(t, "manageRules=iptables-init"), "\n")
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
	t.Fatal("the iptables-init rendering has no init container script (- sh, - -c, - >-)")
	return ""
}

// TestDaemonSetInitContainerInstallsRules runs the shipped DaemonSet's init
// script twice in a fresh namespace, as two pod starts on one node would:
// it installs exactly the NFLOG rules the tests use (netlab.NFLOGRule,
// NFLOGRule6, which TestDocumentedRulesLogRouterErrors shows to work), once.
func TestDaemonSetInitContainerInstallsRules(t *testing.T) {
	// The default leaves the rules to the daemon: no init container.
	if out, err := os.ReadFile("deploy/daemonset.yaml"); err != nil || strings.Contains(string(out), "initContainers") || !strings.Contains(string(out), `PMTUD_MANAGE_RULES: "nftables"`) {
		t.Fatalf("deploy/daemonset.yaml (%v) should have no init container and PMTUD_MANAGE_RULES nftables", err)
	}
	if r := renderChart(t, "manageRules=iptables-init"); !strings.Contains(r, `PMTUD_MANAGE_RULES: "none"`) {
		t.Fatal("with the init container the daemon must be told not to manage rules")
	}
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

// TestChartPassesServerDryRun renders the chart in every mode and has a
// real kube-apiserver v1.37.2 (started without --allow-privileged, as a
// hardened cluster runs) accept each rendering in a server-side dry run
// with strict field validation: no unknown fields, no privileged pod.
func TestChartPassesServerDryRun(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skipf("no kubectl (apt-get install kubernetes-client): %v", err)
	}
	api := kubetest.StartT(t)
	for _, set := range [][]string{
		nil,
		{"relay=icmp"},
		{"peersFrom=file"},
		{"peersFrom=static", "relay=icmp"},
		{"manageRules=iptables-init"},
		{"podMonitor.enabled=true"},
	} {
		cmd := exec.Command(kubectl, "--kubeconfig", api.Admin, "apply", "--dry-run=server", "--validate=strict", "-f", "-")
		cmd.Stdin = strings.NewReader(renderChart(t, set...))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%v: %v\n%s", set, err, out)
		}
	}
}
