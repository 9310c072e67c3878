package pmtud

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/VictoriaMetrics/metrics"
)

// relayMetrics are the Prometheus series of one Relay. All are created up
// front (and again when the peer set changes), never per packet, so an
// update is one atomic add.
type relayMetrics struct {
	set *metrics.Set

	recv       *metrics.Counter
	sent       *metrics.Counter
	errors     *metrics.Counter
	overruns   *metrics.Counter
	lost       *metrics.Counter
	malformed  *metrics.Counter
	dropped    [dropReasonCount]*metrics.Counter
	duration   *metrics.PrometheusHistogram
	peerSent   []*metrics.Counter
	peerErrors []*metrics.Counter
	// udp relay: ICMP errors reported for copies to each peer.
	peerUnreachable []*metrics.Counter

	// The udp relay's receive side.
	relayRecv    *metrics.Counter
	injected     *metrics.Counter
	relayDropped [recvDropReasonCount]*metrics.Counter
}

// quote renders a Prometheus label value.
func quote(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(v) + `"`
}

// nodeLabels renders the label set of the per-node series.
func nodeLabels(node string) string { return `{node=` + quote(node) + `}` }

func newRelayMetrics(node string, mode Mode, peers []netip.Addr) *relayMetrics {
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
	s.NewGauge("go_pmtud_peers"+n, func() float64 { return float64(len(peers)) })
	for _, p := range peers {
		l := fmt.Sprintf("{node=%s,peer=%s}", quote(node), quote(p.String()))
		m.peerSent = append(m.peerSent, s.NewCounter("go_pmtud_sent_packets_peer"+l))
		m.peerErrors = append(m.peerErrors, s.NewCounter("go_pmtud_sent_error_peer_total"+l))
		if mode == ModeUDP {
			m.peerUnreachable = append(m.peerUnreachable, s.NewCounter("go_pmtud_relay_unreachable_total"+l))
		}
	}
	return m
}
