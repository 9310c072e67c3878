package main

import (
	"fmt"
	"slices"
)

// runOverload measures how delivery degrades under overload, on one daemon:
// the sweep finds the held rate H, then each of o.overload rounds runs
// -duration at H and -duration at 2×H, in turn, so both rates meet the same
// machine state. A round's ratio is the copies/s delivered at 2×H over
// those at H in the same round. Every run also checks the NFLOG accounting:
// every ICMP the node's rule logged was read by the daemon or counted lost
// (go_pmtud_nflog_lost_packets_total). It prints one line per run and a
// summary, and returns the sweep for the report.
func runOverload(p path, d *daemon, o options, c ceiling) (sweep, error) {
	start := max(1000, roundK(c.rate/float64(o.peers)/4))
	s, err := sweepRates(p, d, o, start)
	if err != nil || s.best < 0 {
		return s, err
	}
	h := s.steps[s.best].target
	var ratios []float64
	var logged, unaccounted float64
	for round := 1; round <= o.overload; round++ {
		var at [2]load
		for i, rate := range []float64{h, 2 * h} {
			progress("overload round %d: %.0f ICMP/s for %v", round, rate, o.duration)
			if at[i], err = measureLoad(p, d, rate, o.duration); err != nil {
				return s, err
			}
			l := at[i]
			logged += float64(l.nflog.logged)
			unaccounted += l.unaccounted()
			fmt.Printf("overload round %d at %.2f×H: injected %.0f ICMP/s, delivered %.0f copies/s, loss %.2f%%, daemon %.2f s CPU, others %.2f s CPU; NFLOG logged %d, read %.0f, counted lost %.0f, unaccounted %.0f\n",
				round, rate/h, l.inj.rate(), l.outRate(), 100*l.loss(), l.cpu.daemon.Seconds(), l.cpu.others().Seconds(),
				l.nflog.logged, l.daemon.recv, l.daemon.lost, l.unaccounted())
		}
		r := at[1].outRate() / at[0].outRate()
		ratios = append(ratios, r)
		fmt.Printf("overload round %d: 2×H delivered %.1f%% of H's copies/s\n", round, 100*r)
	}
	slices.Sort(ratios)
	fmt.Printf("overload: H = %.0f ICMP/s (%d peers); 2×H delivered %.1f%% (median of %d rounds; min %.1f%%, max %.1f%%) of H's copies/s; NFLOG: %.0f logged, %.0f unaccounted (%.3f%%)\n",
		h, o.peers, 100*ratios[len(ratios)/2], len(ratios), 100*ratios[0], 100*ratios[len(ratios)-1],
		logged, unaccounted, 100*unaccounted/max(1, logged))
	return s, nil
}
