package main

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/go-pmtud/go-pmtud/nl"
	"golang.org/x/sys/unix"
)

// nflogCeiling is the NFLOG delivery ceiling: the highest rate at which
// the node's kernel delivers the logged ICMPs to a reader that does nothing
// but read them. The reader is the daemon's own nl.Reader with the
// daemon's defaults (nl.Config with only the group set), on a goroutine
// locked to its thread so that the thread's CPU time is the reader's.
type nflogCeiling struct {
	steps   []nflogStep
	best    int  // index of the highest held step; -1: none
	limited bool // the sweep ended because the injector fell short
}

// nflogStep is one rate of the ceiling's sweep.
type nflogStep struct {
	target float64
	inj    injection
	atEnd  uint64        // packets read when the injection ended
	read   uint64        // packets read in all, after draining
	lost   uint64        // packets the reader saw the kernel drop (sequence gaps)
	cpu    time.Duration // the reader thread's CPU time, kernel included
}

// loss returns the fraction of injected ICMPs the reader never read.
func (s nflogStep) loss() float64 {
	if s.inj.sent == 0 {
		return 0
	}
	return 1 - float64(s.read)/float64(s.inj.sent)
}

// lag returns how much input, in time at the injected rate, the reader had
// not read when the injection ended.
func (s nflogStep) lag() time.Duration {
	behind := float64(s.inj.sent) - float64(s.atEnd)
	if behind <= 0 || s.inj.sent == 0 {
		return 0
	}
	return time.Duration(behind / s.inj.rate() * float64(time.Second))
}

// injectorLimited reports whether the injector fell short of the target
// by more than 3%.
func (s nflogStep) injectorLimited() bool { return s.inj.rate() < 0.97*s.target }

// kept reports whether the reader read what was injected, as a held load
// does: loss under lossLimit, lag under lagLimit.
func (s nflogStep) kept() bool { return s.loss() < lossLimit && s.lag() < lagLimit }

// cpuPerICMP returns the reader thread's CPU time per packet read.
func (s nflogStep) cpuPerICMP() time.Duration {
	if s.read == 0 {
		return 0
	}
	return s.cpu / time.Duration(s.read)
}

// rate returns the held rate, 0 if no step held.
func (c nflogCeiling) rate() float64 {
	if c.best < 0 {
		return 0
	}
	return c.steps[c.best].inj.rate()
}

// nflogCeilingStart is the first rate of the ceiling's sweep, in ICMP/s.
const nflogCeilingStart = 25000

// nflogCeilingStep is the factor between the rates of the ceiling's sweep.
const nflogCeilingStep = 1.5

// measureNFLOGCeiling sweeps the injection rate up from start by
// nflogCeilingStep, each step o.sweepStep long, with a plain reader bound
// to the node's NFLOG group in place of the daemon, until a step loses
// more than lossLimit, lags, the injector falls short of the rate or
// sweepBudget is spent. The daemon must not be running: the reader binds
// its group.
func measureNFLOGCeiling(t *topology, inj *injector, o options, start float64) (nflogCeiling, error) {
	c := nflogCeiling{best: -1}
	var rd *nl.Reader
	if err := t.node.Do(func() error {
		var err error
		rd, err = nl.Listen(nl.Config{Group: nflogGroup})
		return err
	}); err != nil {
		return c, fmt.Errorf("NFLOG ceiling: %w", err)
	}
	var read, lost atomic.Uint64
	tid := make(chan int, 1)
	var rerr error // the reader's failure, set before done closes
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Locked, so that the thread's CPU time is the reader's alone.
		runtime.LockOSThread()
		tid <- unix.Gettid()
		b := nl.NewBatch()
		for {
			err := rd.Read(b)
			read.Add(uint64(len(b.Packets)))
			lost.Add(uint64(b.Lost))
			switch {
			case err == nil, errors.Is(err, unix.ENOBUFS):
			case errors.Is(err, net.ErrClosed):
				return
			default:
				rerr = err
				return
			}
		}
	}()
	reader := <-tid
	defer func() {
		rd.Close()
		<-done
	}()
	count := func() (uint64, error) { return read.Load(), nil }
	deadline := time.Now().Add(sweepBudget)
	for rate := start; rate <= maxRate && time.Now().Before(deadline); rate = roundK(rate * nflogCeilingStep) {
		progress("NFLOG ceiling: %.0f ICMP/s for %v into a plain reader", rate, o.sweepStep)
		s := nflogStep{target: rate}
		read0, lost0 := read.Load(), lost.Load()
		cpu0, err := taskCPU(reader)
		if err != nil {
			return c, err
		}
		if s.inj, err = inj.run(rate, o.sweepStep, nil); err != nil {
			return c, err
		}
		s.atEnd = read.Load() - read0
		n, err := settle(count, 3*time.Second)
		if err != nil {
			return c, err
		}
		cpu1, err := taskCPU(reader)
		if err != nil {
			return c, err
		}
		s.read, s.lost, s.cpu = n-read0, lost.Load()-lost0, cpu1-cpu0
		c.steps = append(c.steps, s)
		if !s.kept() {
			break
		}
		c.best = len(c.steps) - 1
		if s.injectorLimited() {
			c.limited = true
			break
		}
	}
	select {
	case <-done:
		return c, fmt.Errorf("NFLOG ceiling: reader: %w", rerr)
	default:
	}
	return c, nil
}
