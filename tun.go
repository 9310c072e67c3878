package pmtud

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// tunDevice is the TUN device the udp relay writes received packets into:
// the kernel then handles each one as if it had arrived from the router.
// The relay creates it, owns it, and it disappears when the relay closes.
type tunDevice struct {
	// file wraps the descriptor so that a close racing a write cannot
	// hand the write a reused descriptor number.
	file  *os.File
	fd    int // for the set-up ioctls only
	name  string
	index int
	ipv6  bool // the device takes IPv6 packets (see setupTUN6)
}

// sysctlRoot is where the per-device settings live; the error messages
// name the paths under it.
const sysctlRoot = "/proc/sys/net"

// openTUN creates TUN device name (no packet information header), makes the
// kernel accept packets written into it, and brings it up. When
// net.ipv4.conf.all.rp_filter is not 0, addr becomes the device's /32
// address: loose mode on the device then accepts packets only when the
// device has an address (measured on Linux 6.18).
func openTUN(name string, addr netip.Addr) (*tunDevice, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("pmtud: open /dev/net/tun: %w", err)
	}
	t := &tunDevice{fd: fd, name: name}
	if err := t.setup(addr); err != nil {
		unix.Close(fd)
		return nil, err
	}
	t.file = os.NewFile(uintptr(fd), name)
	return t, nil
}

func (t *tunDevice) setup(addr netip.Addr) error {
	ifr, err := unix.NewIfreq(t.name)
	if err != nil {
		return fmt.Errorf("pmtud: TUN name %q: %w", t.name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(t.fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("pmtud: create TUN device %s: %w", t.name, err)
	}
	t.name = ifr.Name() // the kernel may have expanded a %d
	ifi, err := net.InterfaceByName(t.name)
	if err != nil {
		return fmt.Errorf("pmtud: TUN device %s: %w", t.name, err)
	}
	t.index = ifi.Index

	if t.ipv6, err = setupTUN6(t.name); err != nil {
		return err
	}
	all, err := readSysctl("ipv4/conf/all/rp_filter")
	if err != nil {
		return err
	}
	// The effective rp_filter is the larger of conf.all and the device's.
	// Strict (1) drops every injected packet, since the route back to the
	// router leaves by the cluster interface. With conf.all at 0 the
	// device's 0 suffices; otherwise loose (2) on the device plus an
	// address on it.
	rp := "0"
	if all != "0" {
		rp = "2"
		if !addr.IsValid() {
			return fmt.Errorf("pmtud: net.ipv4.conf.all.rp_filter is %s: the TUN device needs an address (--tun-address) for loose reverse-path filtering to accept injected packets", all)
		}
	}
	if err := writeSysctl("ipv4/conf/"+t.name+"/rp_filter", rp); err != nil {
		return err
	}
	// The kernel checks the in-device's forwarding flag before it forwards
	// an injected packet to a pod; local delivery does not need it.
	if err := writeSysctl("ipv4/conf/"+t.name+"/forwarding", "1"); err != nil {
		return err
	}

	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("pmtud: socket for TUN ioctls: %w", err)
	}
	defer unix.Close(s)
	if rp == "2" {
		a := addr.As4()
		for _, op := range []struct {
			req  uint
			val  []byte
			what string
		}{
			{unix.SIOCSIFADDR, a[:], "address"},
			{unix.SIOCSIFNETMASK, []byte{255, 255, 255, 255}, "netmask"},
		} {
			ifr, _ := unix.NewIfreq(t.name)
			if err := ifr.SetInet4Addr(op.val); err != nil {
				return err
			}
			if err := unix.IoctlIfreq(s, op.req, ifr); err != nil {
				return fmt.Errorf("pmtud: set %s %v/32 on %s: %w", op.what, addr, t.name, err)
			}
		}
	}
	// A write to a TUN device that is down fails with EIO.
	ifr, _ = unix.NewIfreq(t.name)
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("pmtud: get flags of %s: %w", t.name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP | unix.IFF_NOARP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("pmtud: bring %s up: %w", t.name, err)
	}
	return nil
}

// setupTUN6 lets the device take IPv6 packets (an injected Packet Too Big)
// while it sends none: no link-local address (so no DAD, router
// solicitation or MLD report from one), no router advertisements taken.
// The per-device forwarding flag stays 0: IPv6 forwards by
// net.ipv6.conf.all.forwarding alone, and the flag would join the device to
// the all-routers groups. The device stays IPv4-only where the host has no
// IPv6, where the operator disabled it (conf.all.disable_ipv6=1), and on a
// kernel without addr_gen_mode (before 4.11), where it could not stay
// silent. It reports whether the device takes IPv6.
func setupTUN6(name string) (bool, error) {
	dir := "ipv6/conf/" + name + "/"
	if _, err := os.Stat(sysctlRoot + "/" + dir); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	all, err := readSysctl("ipv6/conf/all/disable_ipv6")
	if err != nil {
		return false, err
	}
	_, err = os.Stat(sysctlRoot + "/" + dir + "addr_gen_mode")
	if all == "1" || errors.Is(err, os.ErrNotExist) {
		return false, writeSysctl(dir+"disable_ipv6", "1")
	}
	for _, kv := range [][2]string{
		{"addr_gen_mode", "1"}, // IN6_ADDR_GEN_MODE_NONE (include/uapi/linux/if_link.h)
		{"accept_ra", "0"},
		{"router_solicitations", "0"},
		{"disable_ipv6", "0"},
	} {
		if err := writeSysctl(dir+kv[0], kv[1]); err != nil {
			return false, err
		}
	}
	return true, nil
}

// write injects one IPv4 or IPv6 packet. It allocates nothing.
func (t *tunDevice) write(pkt []byte) error {
	_, err := t.file.Write(pkt)
	return err
}

// close deletes the device (it is not persistent). It is safe to call twice.
func (t *tunDevice) close() error {
	if err := t.file.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("pmtud: close TUN %s: %w", t.name, err)
	}
	return nil
}

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(sysctlRoot + "/" + path)
	if err != nil {
		return "", fmt.Errorf("pmtud: read %s: %w", sysctlName(path), err)
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(path, value string) error {
	if err := os.WriteFile(sysctlRoot+"/"+path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("pmtud: set %s=%s (is /proc/sys read-only? the udp relay needs to configure its TUN device): %w", sysctlName(path), value, err)
	}
	return nil
}

// sysctlName turns "ipv4/conf/x/rp_filter" into "net.ipv4.conf.x.rp_filter".
func sysctlName(path string) string { return "net." + strings.ReplaceAll(path, "/", ".") }
