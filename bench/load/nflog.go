package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
)

// nflogCounters are the node kernel's side of the NFLOG accounting: what the
// rule logged and what the daemon's netlink socket dropped. Together with
// the daemon's go_pmtud_recv_packets_total and
// go_pmtud_nflog_lost_packets_total they say whether every logged ICMP was
// either read or counted lost.
type nflogCounters struct {
	// logged is the packet counter of the node's NFLOG rule (iptables -t
	// raw PREROUTING): every packet it handed to nfnetlink_log.
	logged uint64
	// sockDrops is the Drops column of /proc/net/netlink for the socket
	// bound to the NFLOG group: datagrams (batches of packets, not packets)
	// the kernel could not queue on it (sk_drops, netlink_overrun).
	sockDrops uint64
	// rmem is that socket's Rmem column: bytes queued, unread, when read.
	rmem uint64
}

// sub returns n - o, counter by counter; rmem is a level, kept from n.
func (n nflogCounters) sub(o nflogCounters) nflogCounters {
	return nflogCounters{logged: n.logged - o.logged, sockDrops: n.sockDrops - o.sockDrops, rmem: n.rmem}
}

// readNFLOGCounters reads ns's NFLOG rule counter and the drops of the
// netlink socket that owns group.
func readNFLOGCounters(ns *netlab.NS, group int) (nflogCounters, error) {
	var c nflogCounters
	out, err := ns.Run("iptables", "-t", "raw", "-nvxL", "PREROUTING")
	if err != nil {
		return c, err
	}
	if c.logged, err = nflogRulePackets(out, group); err != nil {
		return c, err
	}
	groups, err := ns.Run("cat", "/proc/net/netfilter/nfnetlink_log")
	if err != nil {
		return c, err
	}
	port, ok := nflogPort(groups, group)
	if !ok {
		return c, nil // no daemon bound (yet): no socket to read
	}
	sockets, err := ns.Run("cat", "/proc/net/netlink")
	if err != nil {
		return c, err
	}
	c.sockDrops, c.rmem, err = netlinkSocket(sockets, port)
	return c, err
}

// nflogRulePackets returns the packet count of the NFLOG rule for group in
// the output of "iptables -nvxL": the sum over such rules.
func nflogRulePackets(out string, group int) (uint64, error) {
	var sum uint64
	found := false
	want := "nflog-group " + strconv.Itoa(group)
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != "NFLOG" || !strings.Contains(line, want) {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse NFLOG rule counter %q: %w", line, err)
		}
		sum += n
		found = true
	}
	if !found {
		return 0, fmt.Errorf("no NFLOG rule for group %d in %q", group, out)
	}
	return sum, nil
}

// nflogPort returns the netlink port ID bound to group in the text of
// /proc/net/netfilter/nfnetlink_log (group, port ID, ...).
func nflogPort(out string, group int) (uint64, bool) {
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != strconv.Itoa(group) {
			continue
		}
		port, err := strconv.ParseUint(f[1], 10, 32)
		return port, err == nil
	}
	return 0, false
}

// netlinkSocket returns the Drops and Rmem columns of the NETLINK_NETFILTER
// (12) socket with port ID port in the text of /proc/net/netlink (sk, Eth,
// Pid, Groups, Rmem, Wmem, Dump, Locks, Drops, Inode).
func netlinkSocket(out string, port uint64) (drops, rmem uint64, err error) {
	p := strconv.FormatUint(port, 10)
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 9 || f[1] != "12" || f[2] != p {
			continue
		}
		if drops, err = strconv.ParseUint(f[8], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("parse /proc/net/netlink Drops %q: %w", line, err)
		}
		if rmem, err = strconv.ParseUint(f[4], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("parse /proc/net/netlink Rmem %q: %w", line, err)
		}
		return drops, rmem, nil
	}
	return 0, 0, fmt.Errorf("no NETLINK_NETFILTER socket with port ID %d in /proc/net/netlink", port)
}

// unaccounted returns how many of the ICMPs the rule logged during run l
// the daemon neither read nor counted lost (negative: it read or counted
// more than the rule logged).
func (l load) unaccounted() float64 {
	return float64(l.nflog.logged) - l.daemon.recv - l.daemon.lost
}

// nflogNote describes the NFLOG accounting of run l.
func nflogNote(l load) string {
	n, m := l.nflog, l.daemon
	u := l.unaccounted()
	share := 0.0
	if n.logged > 0 {
		share = 100 * u / float64(n.logged)
	}
	return fmt.Sprintf("rule logged %d; daemon read %.0f + counted lost %.0f; unaccounted %.0f (%.2f %%); netlink socket drops %d datagrams, overruns %.0f, %d bytes still queued",
		n.logged, m.recv, m.lost, u, share, n.sockDrops, m.overruns, n.rmem)
}

// drained waits, at most limit, until the daemon has read everything the
// kernel queued on its NFLOG socket: the socket holds no bytes and the
// daemon's read and lost counters stood still over two polls 150 ms apart.
// It returns the daemon's read + lost count. Without p.nflog (the receive
// mode) it returns at once.
func drained(p path, d *daemon, limit time.Duration) (float64, error) {
	if p.nflog == nil {
		return 0, nil
	}
	deadline := time.Now().Add(limit)
	last := -1.0
	for still := 0; ; {
		n, err := p.nflog()
		if err != nil {
			return 0, err
		}
		m, err := d.metrics()
		if err != nil {
			return 0, err
		}
		read := m.recv + m.lost
		if n.rmem == 0 && read == last {
			still++
		} else {
			still = 0
		}
		last = read
		if still >= 2 {
			return read, nil
		}
		if time.Now().After(deadline) {
			return read, fmt.Errorf("the daemon's NFLOG socket did not drain within %v (%d bytes queued)", limit, n.rmem)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// probeSeen waits, at most limit, until the daemon's read + lost count has
// passed before: it has read the probe (or counted it lost).
func probeSeen(d *daemon, before float64, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		m, err := d.metrics()
		if err != nil {
			return err
		}
		if m.recv+m.lost > before {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the daemon did not read the probe within %v", limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
