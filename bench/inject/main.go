// Command inject measures what injecting a relayed packet into the kernel
// costs, through each of the udp relay's devices: a TUN device (one
// write(2) per packet, tun.Device) and a veth pair (a batch per
// sendmmsg(2) on an AF_PACKET socket, tun.VethWriter).
//
// In a network namespace it creates (and deletes on every exit path), it
// opens the device as the daemon does, then injects -packets router
// frag-needed ICMPs (576 bytes, from 198.19.255.1, each quoting its own TCP
// sequence number) addressed to 198.18.100.1 on the namespace's lo, on one
// locked thread, and prints that thread's CPU time per packet (user and
// system: the kernel handles each injected packet inside the system call,
// so its receive path is included) and how many of them the kernel
// delivered (IcmpInDestUnreachs). Nothing leaves the namespace.
//
//	sudo go run ./bench/inject -device tun
//	sudo go run ./bench/inject -device veth -batch 15
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/go-pmtud/go-pmtud/bench/netlab"
	"github.com/go-pmtud/go-pmtud/internal/tun"
	"github.com/go-pmtud/go-pmtud/wire"
)

var (
	router = netip.MustParseAddr("198.19.255.1")
	local  = netip.MustParseAddr("198.18.100.1")
	remote = netip.MustParseAddr("198.18.200.5")
)

// fragNeeded is a 576-byte router ICMP quoting a TCP packet from local,
// told apart by seq.
func fragNeeded(seq uint32) []byte {
	tcp := make([]byte, 528)
	binary.BigEndian.PutUint16(tcp[0:], uint16(1024+seq%60000))
	binary.BigEndian.PutUint16(tcp[2:], 443)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	inner := wire.AppendIPv4(nil, local, remote, unix.IPPROTO_TCP, 64, tcp)
	return wire.AppendIPv4(nil, router, local, unix.IPPROTO_ICMP, 64, wire.AppendFragNeeded(nil, 1400, inner))
}

func main() {
	device := flag.String("device", "veth", "tun or veth")
	batch := flag.Int("batch", 15, "packets per flush (veth: per sendmmsg), 1..256")
	packets := flag.Int("packets", 300000, "packets to inject")
	flag.Parse()
	if (*device != "tun" && *device != "veth") || *batch < 1 || *batch > 256 || *packets < 1 {
		fmt.Fprintln(os.Stderr, "inject: want -device tun or veth, -batch 1..256, -packets > 0")
		os.Exit(2)
	}
	if err := run(*device, *batch, *packets); err != nil {
		fmt.Fprintln(os.Stderr, "inject:", err)
		os.Exit(1)
	}
}

func run(device string, batch, packets int) error {
	lab, err := netlab.New("pmtud-inject")
	if err != nil {
		return err
	}
	defer lab.Close()
	ns, err := lab.AddNS("node")
	if err != nil {
		return err
	}
	for _, c := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "addr", "add", local.String() + "/32", "dev", "lo"},
	} {
		if _, err := ns.Run(c...); err != nil {
			return err
		}
	}
	pkts := make([][]byte, 4096)
	for i := range pkts {
		pkts[i] = fragNeeded(uint32(i))
	}
	delivered := func() (uint64, error) {
		out, err := ns.Run("nstat", "-az", "IcmpInDestUnreachs")
		if err != nil {
			return 0, err
		}
		f := strings.Fields(out)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "IcmpInDestUnreachs" {
				return strconv.ParseUint(f[i+1], 10, 64)
			}
		}
		return 0, fmt.Errorf("nstat: no IcmpInDestUnreachs in %q", out)
	}
	return ns.Do(func() error {
		var w tun.Writer
		switch device {
		case "tun":
			d, err := tun.Open("pmtud0", netip.MustParseAddr("169.254.42.1"))
			if err != nil {
				return err
			}
			defer d.Close()
			if w, err = d.Writer(); err != nil {
				return err
			}
		default:
			v, err := tun.OpenVeth("pmtud0", netip.MustParseAddr("169.254.42.1"))
			if err != nil {
				return err
			}
			defer v.Close()
			if w, err = v.Writer(); err != nil {
				return err
			}
		}
		defer w.Close()
		before, err := delivered()
		if err != nil {
			return err
		}
		// ns.Do runs fn on a thread of its own: its CPU time is the
		// injection's.
		cpu0 := threadCPU()
		start := time.Now()
		failed := 0
		for i := 0; i < packets; {
			n := min(batch, packets-i)
			for k := range n {
				w.Queue(pkts[(i+k)%len(pkts)])
			}
			_, f, _ := w.Flush()
			failed += f
			i += n
		}
		cpu, wall := threadCPU()-cpu0, time.Since(start)
		after, err := delivered()
		if err != nil {
			return err
		}
		fmt.Printf("%s, %d per flush: %.2f us CPU per packet (%.2f us wall), %d packets, %d failed, %d delivered as ICMP\n",
			device, batch, float64(cpu.Nanoseconds())/float64(packets)/1e3, float64(wall.Nanoseconds())/float64(packets)/1e3,
			packets, failed, after-before)
		return nil
	})
}

// threadCPU returns the calling thread's CPU time, user and system.
func threadCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
