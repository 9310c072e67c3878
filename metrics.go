package pmtud

import (
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
)

// relayMetrics are the Prometheus series of one Relay. All are created up
// front, never per packet, so an update is one atomic add. The per-peer
// series live in the peer set (peerState) and are written from the set in
// force at scrape time (Relay.writePeerMetrics).
type relayMetrics struct {
	set *metrics.Set

	recv      *metrics.Counter
	sent      *metrics.Counter
	errors    *metrics.Counter
	overruns  *metrics.Counter
	lost      *metrics.Counter
	malformed *metrics.Counter
	dropped   [dropReasonCount]*metrics.Counter
	duration  *metrics.PrometheusHistogram
	// go_pmtud_targeted_total and go_pmtud_targeted_peers_total by scope:
	// ICMPs relayed, and the peers chosen for them.
	targeted, targetedPeers [scopeCount]*metrics.Counter
	// sendErrors counts copies the kernel refused, all peers, including
	// peers that have left since.
	sendErrors atomic.Uint64

	// go_pmtud_peer_updates_total by result.
	updApplied, updUnchanged, updError *metrics.Counter
	// go_pmtud_key_reloads_total by result (udp relay).
	keyApplied, keyUnchanged, keyError *metrics.Counter

	// The udp relay's receive side.
	relayRecv    *metrics.Counter
	injected     *metrics.Counter
	relayDropped [recvDropReasonCount]*metrics.Counter
}

// labelEscaper escapes a Prometheus label value. A Replacer is safe for
// concurrent use and never changes.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// quote renders a Prometheus label value.
func quote(v string) string { return `"` + labelEscaper.Replace(v) + `"` }

// nodeLabels renders the label set of the per-node series.
func nodeLabels(node string) string { return `{node=` + quote(node) + `}` }

// newRelayMetrics creates the relay's series; peers reports the number of
// peers in force.
func newRelayMetrics(node string, mode Mode, peers func() int) *relayMetrics {
	s := metrics.NewSet()
	n := nodeLabels(node)
	m := &relayMetrics{
		set:       s,
		recv:      s.NewCounter("go_pmtud_recv_packets_total" + n),
		sent:      s.NewCounter("go_pmtud_sent_packets_total" + n),
		errors:    s.NewCounter("go_pmtud_error_total" + n),
		overruns:  s.NewCounter("go_pmtud_nflog_overruns_total" + n),
		lost:      s.NewCounter("go_pmtud_nflog_lost_packets_total" + n),
		malformed: s.NewCounter("go_pmtud_nflog_malformed_total" + n),
		duration:  s.NewPrometheusHistogram("go_pmtud_callback_duration_seconds" + n),
	}
	if mode == ModeUDP {
		m.relayRecv = s.NewCounter("go_pmtud_relay_received_total" + n)
		m.injected = s.NewCounter("go_pmtud_relay_injected_total" + n)
		for _, r := range RecvDropReasons() {
			m.relayDropped[r] = s.NewCounter(fmt.Sprintf("go_pmtud_relay_dropped_total{node=%s,reason=%s}", quote(node), quote(r.String())))
		}
	}
	for _, r := range DropReasons() {
		m.dropped[r] = s.NewCounter(fmt.Sprintf("go_pmtud_dropped_packets_total{node=%s,reason=%s}", quote(node), quote(r.String())))
	}
	s.NewGauge("go_pmtud_peers"+n, func() float64 { return float64(peers()) })
	for sc := range scopeCount {
		m.targeted[sc] = s.NewCounter(fmt.Sprintf("go_pmtud_targeted_total{node=%s,scope=%s}", quote(node), quote(sc.String())))
		m.targetedPeers[sc] = s.NewCounter(fmt.Sprintf("go_pmtud_targeted_peers_total{node=%s,scope=%s}", quote(node), quote(sc.String())))
	}
	upd := func(result string) *metrics.Counter {
		return s.NewCounter(fmt.Sprintf("go_pmtud_peer_updates_total{node=%s,result=%s}", quote(node), quote(result)))
	}
	m.updApplied, m.updUnchanged, m.updError = upd("applied"), upd("unchanged"), upd("error")
	if mode == ModeUDP {
		key := func(result string) *metrics.Counter {
			return s.NewCounter(fmt.Sprintf("go_pmtud_key_reloads_total{node=%s,result=%s}", quote(node), quote(result)))
		}
		m.keyApplied, m.keyUnchanged, m.keyError = key("applied"), key("unchanged"), key("error")
	} else {
		// Counted, never exposed: the icmp relay has no keys.
		m.keyApplied, m.keyUnchanged, m.keyError = new(metrics.Counter), new(metrics.Counter), new(metrics.Counter)
	}
	return m
}
