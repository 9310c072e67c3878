// Command go-pmtud replicates ICMP "fragmentation needed" messages, logged by
// iptables to an NFLOG group, to every peer node of an ECMP cluster, so the
// node that owns the flow learns the path MTU.
//
// Every flag can also be set by an environment variable PMTUD_<NAME>, for
// example PMTUD_PEERS or PMTUD_NFLOG_GROUP; a flag on the command line wins.
// Invalid configuration exits with status 2 and one line saying what is wrong.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/go-pmtud/go-pmtud"
	"github.com/go-pmtud/go-pmtud/internal/rules"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
}

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1 // a runtime failure: NFLOG, sockets, HTTP listener
	exitUsage   = 2 // invalid flags or environment
)

func run(args []string, getenv func(string) string, stderr io.Writer) int {
	o, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "go-pmtud: %v\n", err)
		return exitUsage
	}
	if o.version {
		fmt.Println(version())
		return exitOK
	}
	s, err := resolve(o, getenv, system{})
	if err != nil {
		fmt.Fprintf(stderr, "go-pmtud: invalid configuration: %v\n", err)
		return exitUsage
	}
	var h slog.Handler = slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: s.logLevel})
	if s.logJSON {
		h = slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: s.logLevel})
	}
	log := slog.New(h)
	src, err := openSource(&s, log)
	if err != nil {
		fmt.Fprintf(stderr, "go-pmtud: invalid configuration: %v\n", err)
		return exitUsage
	}

	// SIGHUP re-reads the relay key file (followKeys); without one it is
	// ignored rather than ending the daemon.
	signal.Ignore(syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// After the first signal, a second one kills the process (the
	// default action) instead of being swallowed while the relay drains.
	context.AfterFunc(ctx, stop)

	relay, err := pmtud.New(s.relay, log)
	if err != nil {
		log.Error("start-up failed", "err", err)
		return exitFailure
	}
	c := s.relay
	if s.manageRules {
		// After New: the NFLOG group is bound, so nothing logged is lost,
		// and the TUN device the rules exclude exists.
		tun := ""
		if c.Mode == pmtud.ModeUDP {
			tun = c.TUNName
		}
		switch err := rules.Install(c.NFLOG.Group, tun); {
		case err == nil:
			log.Info("nftables rules installed", "table", "inet "+rules.Table, "nflog_group", c.NFLOG.Group, "excluded_iif", tun)
			defer func() {
				if err := rules.Remove(); err != nil {
					log.Error("removing the nftables rules failed", "err", err)
				}
			}()
		case s.rulesAuto && errors.Is(err, rules.ErrNoNFTables):
			log.Warn("the kernel has no nf_tables: the NFLOG rules must be installed elsewhere (--manage-rules none says so)", "err", err)
		default:
			relay.Close()
			log.Error("start-up failed", "err", err)
			return exitFailure
		}
	}
	if len(c.IgnoreNetworks) == 0 {
		log.Info("--ignore-networks is empty: only ICMPs from peers and own addresses are recognised as copies")
	}
	log.Info("go-pmtud started", "node", c.NodeName, "relay", c.Mode, "source", c.Source,
		"peer_source", src.name, "peer_addrs", len(relay.Peers()), "nflog_group", c.NFLOG.Group, "ttl", c.TTL, "workers", max(c.Workers, 1), "cpus", c.CPUs, "ignore_networks", c.IgnoreNetworks)
	if len(relay.Peers()) <= 32 {
		log.Info("peers", "addrs", relay.Peers())
	}

	var srv *http.Server
	if s.metricsAddr != "" {
		ln, err := net.Listen("tcp", s.metricsAddr)
		if err != nil {
			relay.Close()
			log.Error("metrics listener failed", "addr", s.metricsAddr, "err", err)
			return exitFailure
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			relay.WritePrometheus(w)
		})
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if err := relay.Health(); err != nil {
				http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			io.WriteString(w, "ok\n")
		})
		// Ready: healthy (so NFLOG is bound and the receiver listens) and
		// the peer source's last update is in force.
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			err := relay.Health()
			if err == nil {
				err = src.ready()
			}
			if err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			// The Services source does not gate readiness: until it
			// syncs, and while it cannot, ICMPs go to every peer or by
			// the last owners, which is safe.
			io.WriteString(w, "ok\n"+src.targeting()+"\n")
		})
		srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server failed", "err", err)
			}
		}()
		log.Info("serving metrics", "addr", ln.Addr().String())
	}

	srcDone := make(chan error, 1)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		err := src.run(runCtx, relay)
		if err != nil {
			log.Error("peer source failed", "source", src.name, "err", err)
			cancel() // a daemon whose peers can no longer follow the cluster stops
		}
		srcDone <- err
	}()
	if s.keyFile != "" {
		go followKeys(runCtx, &s, relay, log)
	}
	err = relay.Run(runCtx)
	cancel()
	if e := <-srcDone; e != nil {
		err = errors.Join(err, e)
	}
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		srv.Shutdown(sctx)
		cancel()
	}
	if err != nil {
		log.Error("relay stopped", "err", err)
		return exitFailure
	}
	log.Info("go-pmtud stopped", "signal", "received")
	return exitOK
}

// version describes the build: the module version, the VCS revision and
// time it was built from (with "+dirty" for uncommitted changes), and the
// Go version, from the binary's build info.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "go-pmtud (no build info)"
	}
	v := "go-pmtud " + bi.Main.Version
	var rev, at, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if rev != "" {
		v += " (revision " + rev + dirty
		if at != "" {
			v += ", committed " + at
		}
		v += ")"
	}
	return v + " " + bi.GoVersion
}
