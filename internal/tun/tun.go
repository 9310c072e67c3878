// Package tun creates and owns the device through which the udp relay
// injects the router's packets received from peers, so that the kernel
// handles each one as if it had arrived from the router: a veth pair
// written in batches by AF_PACKET sockets (Veth), or a TUN device written
// one packet at a time (Device). It sets the device up so that the kernel
// accepts what arrives on it (rp_filter, forwarding, IPv6 without a
// link-local address) and deletes it on Close.
package tun

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Device is a TUN device the udp relay writes received packets into. The
// relay creates it, owns it, and it disappears when Close is called.
type Device struct {
	// file wraps the descriptor so that a close racing a write cannot
	// hand the write a reused descriptor number.
	file  *os.File
	fd    int // for the set-up ioctls only
	name  string
	index int
	ipv6  bool // the device takes IPv6 packets (see setupTUN6)
	lock  int  // the name's lock (see lockName), held until Close
}

// sysctlRoot is where the per-device settings live; the error messages
// name the paths under it.
const sysctlRoot = "/proc/sys/net"

// Open creates TUN device name (no packet information header), makes the
// kernel accept packets written into it, and brings it up. When
// net.ipv4.conf.all.rp_filter is not 0, addr becomes the device's /32
// address: loose mode on the device then accepts packets only when the
// device has an address (measured on Linux 6.18).
//
// A veth pair of that name, left by a go-pmtud that injected through one
// and was killed, is deleted first.
func Open(name string, addr netip.Addr) (*Device, error) {
	lock, err := lockName(name)
	if err != nil {
		return nil, err
	}
	if err := removeVethNamed(name); err != nil {
		unix.Close(lock)
		return nil, err
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(lock)
		return nil, fmt.Errorf("tun: open /dev/net/tun: %w", err)
	}
	t := &Device{fd: fd, name: name, lock: lock}
	if err := t.setup(addr); err != nil {
		unix.Close(fd)
		unix.Close(lock)
		return nil, err
	}
	t.file = os.NewFile(uintptr(fd), name)
	return t, nil
}

func (t *Device) setup(addr netip.Addr) error {
	ifr, err := unix.NewIfreq(t.name)
	if err != nil {
		return fmt.Errorf("tun: TUN name %q: %w", t.name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(t.fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("tun: create TUN device %s: %w", t.name, err)
	}
	t.name = ifr.Name() // the kernel may have expanded a %d
	ifi, err := net.InterfaceByName(t.name)
	if err != nil {
		return fmt.Errorf("tun: TUN device %s: %w", t.name, err)
	}
	t.index = ifi.Index
	if t.ipv6, err = setupInject(t.name, t.index, addr); err != nil {
		return err
	}
	// A write to a TUN device that is down fails with EIO.
	return up(t.name)
}

// setupInject makes the kernel accept packets that arrive on device name
// (index): IPv6 (see setupTUN6), reverse-path filtering and forwarding,
// and addr as its /32 address where loose filtering needs one. It
// reports whether the device takes IPv6 packets.
func setupInject(name string, index int, addr netip.Addr) (ipv6 bool, err error) {
	if ipv6, err = setupTUN6(name, index); err != nil {
		return false, err
	}
	all, err := readSysctl("ipv4/conf/all/rp_filter")
	if err != nil {
		return false, err
	}
	// The effective rp_filter is the larger of conf.all and the device's.
	// Strict (1) drops every injected packet, since the route back to the
	// router leaves by the cluster interface. With conf.all at 0 the
	// device's 0 suffices; otherwise loose (2) on the device plus an
	// address on it.
	rp := uint32(0)
	if all != "0" {
		rp = 2
		if !addr.IsValid() {
			return false, fmt.Errorf("tun: net.ipv4.conf.all.rp_filter is %s: the device %s needs an address (--tun-address) for loose reverse-path filtering to accept injected packets", all, name)
		}
	}
	// The kernel checks the in-device's forwarding flag before it forwards
	// an injected packet to a pod; local delivery does not need it. Both
	// go over rtnetlink: /proc/sys may be read-only.
	if err := setInetConf(index, rp, 1); err != nil {
		return false, fmt.Errorf("tun: set net.ipv4.conf.%s.rp_filter=%d and forwarding=1 over rtnetlink (needs CAP_NET_ADMIN): %w", name, rp, err)
	}
	if rp != 2 {
		return ipv6, nil
	}
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("tun: socket for device ioctls: %w", err)
	}
	defer unix.Close(s)
	a := addr.As4()
	for _, op := range []struct {
		req  uint
		val  []byte
		what string
	}{
		{unix.SIOCSIFADDR, a[:], "address"},
		{unix.SIOCSIFNETMASK, []byte{255, 255, 255, 255}, "netmask"},
	} {
		ifr, _ := unix.NewIfreq(name)
		if err := ifr.SetInet4Addr(op.val); err != nil {
			return false, err
		}
		if err := unix.IoctlIfreq(s, op.req, ifr); err != nil {
			return false, fmt.Errorf("tun: set %s %v/32 on %s: %w", op.what, addr, name, err)
		}
	}
	return ipv6, nil
}

// up brings device name up, without ARP.
func up(name string) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tun: socket for device ioctls: %w", err)
	}
	defer unix.Close(s)
	ifr, _ := unix.NewIfreq(name)
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("tun: get flags of %s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP | unix.IFF_NOARP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("tun: bring %s up: %w", name, err)
	}
	return nil
}

// setupTUN6 lets the device take IPv6 packets (an injected Packet Too Big)
// while it sends none: with address generation mode none
// (IFLA_INET6_ADDR_GEN_MODE over rtnetlink, before the device is up) it
// gets no link-local address, so it sends no DAD, router solicitation or
// MLD report, and nobody sends it router advertisements. The per-device
// forwarding flag stays 0: IPv6 forwards by net.ipv6.conf.all.forwarding
// alone, and the flag would join the device to the all-routers groups.
//
// The device stays IPv4-only where the host has no IPv6, where IPv6 is off
// for new devices (net.ipv6.conf.default.disable_ipv6=1, which
// conf.all.disable_ipv6=1 also sets), and on a kernel without
// addr_gen_mode (before 4.11), where it could not stay silent: there, and
// only there, it writes disable_ipv6 through /proc/sys. It reads /proc/sys
// (allowed read-only) and reports whether the device takes IPv6.
func setupTUN6(name string, index int) (bool, error) {
	dir := "ipv6/conf/" + name + "/"
	if _, err := os.Stat(sysctlRoot + "/" + dir); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	off, err := readSysctl(dir + "disable_ipv6")
	if err != nil {
		return false, err
	}
	if off == "1" {
		return false, nil
	}
	if _, err := os.Stat(sysctlRoot + "/" + dir + "addr_gen_mode"); errors.Is(err, os.ErrNotExist) {
		return false, writeSysctl(dir+"disable_ipv6", "1")
	}
	if err := setAddrGenModeNone(index); err != nil {
		return false, fmt.Errorf("tun: set net.ipv6.conf.%s.addr_gen_mode=1 over rtnetlink (needs CAP_NET_ADMIN): %w", name, err)
	}
	return true, nil
}

// Name returns the device's name, as the kernel gave it.
func (t *Device) Name() string { return t.name }

// Index returns the device's interface index: NFLOG reports it as the
// in-interface of the packets injected through it.
func (t *Device) Index() int { return t.index }

// IPv6 reports whether the device takes IPv6 packets: false where the host
// has IPv6 off (a written IPv6 packet would be dropped unseen).
func (t *Device) IPv6() bool { return t.ipv6 }

// Up returns nil while the device exists, under its name, and is up; else
// what is wrong (someone deleted it or took it down: injected packets would
// be lost). It asks the kernel (RTM_GETLINK) and allocates: it is for health
// probes, not the packet path.
func (t *Device) Up() error {
	ifi, err := net.InterfaceByIndex(t.index)
	if err != nil || ifi.Name != t.name {
		return fmt.Errorf("TUN device %s is gone", t.name)
	}
	if ifi.Flags&net.FlagUp == 0 {
		return fmt.Errorf("TUN device %s is down", t.name)
	}
	return nil
}

// Write injects one IPv4 or IPv6 packet. It allocates nothing.
func (t *Device) Write(pkt []byte) error {
	_, err := t.file.Write(pkt)
	return err
}

// Writer injects packets for one goroutine. Queue takes a packet, which
// must stay unchanged until the next Flush, and reports whether the
// writer is full (the caller must Flush before it queues more); Flush
// injects what is queued and returns how many packets were queued, how
// many of them failed and the first error. Neither allocates.
type Writer interface {
	Queue(pkt []byte) (full bool)
	Flush() (queued, failed int, err error)
	Close() error
}

// Writer returns a Writer that writes each packet into the device as it
// is queued (a TUN device takes one packet per write): Flush only reports.
// Several may write at once.
func (t *Device) Writer() (Writer, error) { return &tunWriter{dev: t}, nil }

// tunWriter is Device's Writer.
type tunWriter struct {
	dev            *Device
	queued, failed int
	err            error
}

func (w *tunWriter) Queue(pkt []byte) bool {
	w.queued++
	if err := w.dev.Write(pkt); err != nil {
		w.failed++
		if w.err == nil {
			w.err = err
		}
	}
	return false
}

func (w *tunWriter) Flush() (queued, failed int, err error) {
	queued, failed, err = w.queued, w.failed, w.err
	w.queued, w.failed, w.err = 0, 0, nil
	return queued, failed, err
}

// Close does nothing: the device is closed by its own Close.
func (w *tunWriter) Close() error { return nil }

// Close deletes the device (it is not persistent). It is safe to call
// twice.
func (t *Device) Close() error {
	if err := t.file.Close(); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return nil // closed before, lock and all
		}
		return fmt.Errorf("tun: close TUN %s: %w", t.name, err)
	}
	unix.Close(t.lock)
	return nil
}

// removeVethNamed deletes a veth pair called name, if there is one.
func removeVethNamed(name string) error {
	if _, err := net.InterfaceByName(name); err != nil {
		return nil // nothing of that name: no rtnetlink socket needed
	}
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return fmt.Errorf("tun: rtnetlink: %w", err)
	}
	defer c.Close()
	_, err = removeVeth(c, name)
	return err
}

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(sysctlRoot + "/" + path)
	if err != nil {
		return "", fmt.Errorf("tun: read %s: %w", sysctlName(path), err)
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(path, value string) error {
	if err := os.WriteFile(sysctlRoot+"/"+path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("tun: set %s=%s (is /proc/sys read-only? the udp relay needs to configure its TUN device): %w", sysctlName(path), value, err)
	}
	return nil
}

// sysctlName turns "ipv4/conf/x/rp_filter" into "net.ipv4.conf.x.rp_filter".
func sysctlName(path string) string { return "net." + strings.ReplaceAll(path, "/", ".") }
