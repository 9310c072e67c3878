package tun

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/mdlayher/netlink"

	"github.com/go-pmtud/go-pmtud/internal/transport"
	"golang.org/x/sys/unix"
)

// Veth is a veth pair the udp relay injects packets through, in batches:
// a Writer sends them as Ethernet frames out of one end (the "-tx" end) to
// the other end's address, and the kernel receives them on that end, the
// device named by OpenVeth, as it would receive them from the router. A
// TUN device takes one packet per write(2); an AF_PACKET socket takes a
// batch per sendmmsg(2), which on the 2-vCPU VM cost half the CPU per
// injected packet (docs/performance.md). It needs CAP_NET_ADMIN to create
// the pair and CAP_NET_RAW for the Writers' sockets. The relay creates
// it, owns it, and Close deletes it.
type Veth struct {
	name   string // the end packets arrive on
	index  int
	txName string // the end they are sent out of
	tx     int
	mac    [6]byte // name's address: the frames' destination
	ipv6   bool
	// conn is an rtnetlink socket in the pair's network namespace: Close
	// deletes the pair there, whichever namespace its caller's thread is
	// in. nil once closed.
	conn *netlink.Conn
	lock int // the name's lock (see lockName), held until Close
}

// vethMTU is both ends' MTU, the largest a veth device takes
// (ETH_MAX_MTU, include/uapi/linux/if_ether.h): an AF_PACKET send refuses
// a packet above the device's MTU, and a relayed packet may be any size.
const vethMTU = 65535

// VETH_INFO_PEER (include/uapi/linux/veth.h): the peer's ifinfomsg and
// attributes, nested in IFLA_INFO_DATA.
const vethInfoPeer = 1

// TxName returns the name of the end a Veth named name sends out of: name
// (its first 12 bytes) with "-tx" appended.
func TxName(name string) string { return name[:min(len(name), unix.IFNAMSIZ-4)] + "-tx" }

// OpenVeth creates veth pair name (where injected packets arrive) and
// TxName(name), sets name up as Open sets up a TUN device (reverse-path
// filter, forwarding, addr as its /32 address when
// net.ipv4.conf.all.rp_filter is not 0, IPv6 without a link-local
// address), keeps the -tx end silent (no addresses, no ARP, no IPv6
// link-local) and brings both up. A veth pair named name left behind by a
// daemon that was killed is deleted first; any other device of that name
// is an error.
func OpenVeth(name string, addr netip.Addr) (*Veth, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ || strings.ContainsAny(name, "%/ ") {
		return nil, fmt.Errorf("tun: veth name %q is empty, longer than %d bytes or holds %%, / or a space", name, unix.IFNAMSIZ-1)
	}
	lock, err := lockName(name)
	if err != nil {
		return nil, err
	}
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		unix.Close(lock)
		return nil, fmt.Errorf("tun: rtnetlink: %w", err)
	}
	v := &Veth{name: name, txName: TxName(name), conn: c, lock: lock}
	fail := func(err error) (*Veth, error) {
		c.Close()
		unix.Close(lock)
		return nil, err
	}
	if err := removeStaleVeth(c, name); err != nil {
		return fail(err)
	}
	// Addresses of our own choosing: the kernel marks them set by the
	// user, and udev (MACAddressPolicy=persistent) leaves them alone. A
	// random address the kernel picked could be replaced after we read
	// it, and every frame to the old one would be dropped unseen.
	var macs [2][6]byte
	for i := range macs {
		if _, err := rand.Read(macs[i][:]); err != nil {
			return fail(err)
		}
		macs[i][0] = macs[i][0]&^1 | 2 // unicast, locally administered
	}
	v.mac = macs[1]
	if err := createVeth(c, v.txName, name, macs[0], macs[1]); err != nil {
		return fail(fmt.Errorf("tun: create veth pair %s/%s (needs CAP_NET_ADMIN): %w", name, v.txName, err))
	}
	if err := v.setup(addr); err != nil {
		v.Close()
		return nil, err
	}
	return v, nil
}

func (v *Veth) setup(addr netip.Addr) error {
	rx, err := net.InterfaceByName(v.name)
	if err != nil {
		return fmt.Errorf("tun: veth %s: %w", v.name, err)
	}
	tx, err := net.InterfaceByName(v.txName)
	if err != nil {
		return fmt.Errorf("tun: veth %s: %w", v.txName, err)
	}
	v.index, v.tx = rx.Index, tx.Index
	if !bytes.Equal(rx.HardwareAddr, v.mac[:]) {
		return fmt.Errorf("tun: veth %s has address %v, not the %v it was created with", v.name, rx.HardwareAddr, net.HardwareAddr(v.mac[:]))
	}
	// The -tx end sends frames only to its peer: no IPv6 link-local
	// address, so no DAD, router solicitation or MLD report arrives on
	// the receiving end.
	if _, err := setupTUN6(v.txName, v.tx); err != nil {
		return err
	}
	if v.ipv6, err = setupInject(v.name, v.index, addr); err != nil {
		return err
	}
	for _, n := range []string{v.txName, v.name} {
		if err := up(n); err != nil {
			return err
		}
	}
	return nil
}

// removeStaleVeth deletes the device called name if it is a veth pair's
// end, and refuses any other device of that name.
func removeStaleVeth(c *netlink.Conn, name string) error {
	kind, err := removeVeth(c, name)
	if err != nil {
		return err
	}
	if kind != "" && kind != "veth" {
		return fmt.Errorf("tun: a device named %s exists and is no veth (%q): choose another --tun-name", name, kind)
	}
	return nil
}

// removeVeth deletes the device called name if it is a veth pair's end,
// and returns its kind ("" if there is no such device). The caller holds
// the name's lock: no live go-pmtud owns the pair.
func removeVeth(c *netlink.Conn, name string) (kind string, err error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return "", nil // no such device
	}
	if kind, err = linkKind(c, ifi.Index); err != nil {
		return "", fmt.Errorf("tun: %s exists, and its kind is unknown: %w", name, err)
	}
	if kind != "veth" {
		return kind, nil
	}
	if err := deleteLink(c, ifi.Index, ""); err != nil {
		return kind, fmt.Errorf("tun: delete the veth pair %s left by a previous run: %w", name, err)
	}
	return kind, nil
}

// Name returns the name of the end packets arrive on.
func (v *Veth) Name() string { return v.name }

// Index returns the interface index of the end packets arrive on: NFLOG
// reports it as their in-interface.
func (v *Veth) Index() int { return v.index }

// IPv6 reports whether the device takes IPv6 packets.
func (v *Veth) IPv6() bool { return v.ipv6 }

// Up returns nil while both ends exist under their names and are up; else
// what is wrong. It asks the kernel and allocates: for health probes.
func (v *Veth) Up() error {
	for _, e := range []struct {
		name  string
		index int
	}{{v.name, v.index}, {v.txName, v.tx}} {
		ifi, err := net.InterfaceByIndex(e.index)
		if err != nil || ifi.Name != e.name {
			return fmt.Errorf("veth %s is gone", e.name)
		}
		if ifi.Flags&net.FlagUp == 0 {
			return fmt.Errorf("veth %s is down", e.name)
		}
		if e.index == v.index && !bytes.Equal(ifi.HardwareAddr, v.mac[:]) {
			// Frames to the old address would arrive as another host's.
			return fmt.Errorf("veth %s changed its address to %v", e.name, ifi.HardwareAddr)
		}
	}
	return nil
}

// Close deletes the pair, in its own network namespace. It is safe to
// call twice.
func (v *Veth) Close() error {
	c := v.conn
	if c == nil {
		return nil
	}
	v.conn = nil
	defer c.Close()
	defer unix.Close(v.lock) // after the pair is gone
	// By index once set up: a device that took the name since is not ours.
	err := deleteLink(c, v.index, v.name)
	if err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("tun: delete veth %s: %w", v.name, err)
	}
	return nil
}

// vethQueue is how many packets a VethWriter holds before Queue asks for
// a Flush.
const vethQueue = 256

// VethWriter injects packets through a Veth from one goroutine, in
// batches: Queue takes packets, Flush sends them as frames to the
// receiving end in sendmmsg calls, through a transport.Fanout of its own
// (an AF_PACKET socket). It allocates nothing after Writer.
type VethWriter struct {
	fan  *transport.Fanout
	pkts [][]byte // queued, up to vethQueue
}

// Writer returns a VethWriter with a socket of its own, for one
// goroutine. It needs CAP_NET_RAW, and it must be called in the pair's
// network namespace: the socket names the -tx end by its index there.
func (v *Veth) Writer() (Writer, error) {
	if ifi, err := net.InterfaceByIndex(v.tx); err != nil || ifi.Name != v.txName {
		return nil, fmt.Errorf("tun: veth %s is not interface %d here: Writer called outside the pair's network namespace, or the pair is gone", v.txName, v.tx)
	}
	fan, err := transport.NewL2To(v.tx, v.mac)
	if err != nil {
		return nil, fmt.Errorf("tun: veth %s (needs CAP_NET_RAW): %w", v.txName, err)
	}
	return &VethWriter{fan: fan, pkts: make([][]byte, 0, vethQueue)}, nil
}

// Queue adds pkt, an IPv4 or IPv6 packet, to the batch; pkt must stay
// unchanged until the next Flush. It reports whether the batch is full:
// the caller should Flush before it queues more (a batch grows past
// vethQueue, allocating, rather than lose a packet).
func (w *VethWriter) Queue(pkt []byte) (full bool) {
	if len(pkt) > 0 { // an empty packet has no version to frame it by
		w.pkts = append(w.pkts, pkt)
	}
	return len(w.pkts) >= vethQueue
}

// Flush sends the queued packets (Fanout.Send: sendmmsg, resuming after
// partial sends, retrying a full device queue, skipping a packet the
// kernel refuses) and empties the batch. It returns how many packets were
// queued, how many of them failed, and the last error.
func (w *VethWriter) Flush() (queued, failed int, err error) {
	queued = len(w.pkts)
	if queued == 0 {
		return 0, 0, nil
	}
	t := w.fan.Tally()
	before := t.Errors[0]
	w.fan.Send(nil, w.pkts)
	w.pkts = w.pkts[:0]
	if failed = int(t.Errors[0] - before); failed > 0 {
		err = fmt.Errorf("tun: sendmmsg: %w", t.LastErrno)
	}
	return queued, failed, err
}

// Close closes the writer's socket.
func (w *VethWriter) Close() error { return w.fan.Close() }

// createVeth sends RTM_NEWLINK for a veth pair: tx and its peer rx.
func createVeth(c *netlink.Conn, tx, rx string, txMAC, rxMAC [6]byte) error {
	peer := netlink.NewAttributeEncoder()
	peer.String(unix.IFLA_IFNAME, rx)
	peer.Bytes(unix.IFLA_ADDRESS, rxMAC[:])
	peer.Uint32(unix.IFLA_MTU, vethMTU)
	pb, err := peer.Encode()
	if err != nil {
		return err
	}
	// VETH_INFO_PEER holds a struct ifinfomsg, then the peer's attributes.
	peerData := append(make([]byte, unix.SizeofIfInfomsg), pb...)
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.IFLA_IFNAME, tx)
	ae.Bytes(unix.IFLA_ADDRESS, txMAC[:])
	ae.Uint32(unix.IFLA_MTU, vethMTU)
	ae.Nested(unix.IFLA_LINKINFO, func(ae *netlink.AttributeEncoder) error {
		ae.String(unix.IFLA_INFO_KIND, "veth")
		ae.Nested(unix.IFLA_INFO_DATA, func(ae *netlink.AttributeEncoder) error {
			ae.Bytes(vethInfoPeer, peerData)
			return nil
		})
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		return err
	}
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_NEWLINK, Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl},
		Data:   append(ifinfomsg(0), b...),
	})
	return err
}

// deleteLink sends RTM_DELLINK for interface index, or with index 0 for
// the interface called name; for a veth end it deletes the pair.
func deleteLink(c *netlink.Conn, index int, name string) error {
	data := ifinfomsg(index)
	if index == 0 {
		ae := netlink.NewAttributeEncoder()
		ae.String(unix.IFLA_IFNAME, name)
		b, err := ae.Encode()
		if err != nil {
			return err
		}
		data = append(data, b...)
	}
	_, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_DELLINK, Flags: netlink.Request | netlink.Acknowledge},
		Data:   data,
	})
	return err
}

// linkKind returns interface index's IFLA_INFO_KIND ("veth", "tun", ...),
// "" for a device without one.
func linkKind(c *netlink.Conn, index int) (string, error) {
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request},
		Data:   ifinfomsg(index),
	})
	if err != nil {
		return "", err
	}
	for _, m := range msgs {
		if len(m.Data) < unix.SizeofIfInfomsg {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[unix.SizeofIfInfomsg:])
		if err != nil {
			return "", err
		}
		kind := ""
		for ad.Next() {
			if ad.Type() != unix.IFLA_LINKINFO {
				continue
			}
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() == unix.IFLA_INFO_KIND {
						kind = nad.String()
					}
				}
				return nil
			})
		}
		if err := ad.Err(); err != nil {
			return "", err
		}
		return kind, nil
	}
	return "", fmt.Errorf("no answer for interface %d", index)
}

// ifinfomsg returns a struct ifinfomsg (include/uapi/linux/rtnetlink.h:
// family, pad, type, index, flags, change) for interface index: family
// AF_UNSPEC, the rest zero.
func ifinfomsg(index int) []byte {
	hdr := make([]byte, unix.SizeofIfInfomsg)
	hdr[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(hdr[4:8], uint32(index))
	return hdr
}

// lockName takes the lock on device name for this network namespace: an
// abstract unix socket bound to "go-pmtud/dev/" + name. Abstract sockets
// belong to a network namespace, so a second go-pmtud on the node (a pod
// started before the old one has stopped) finds it taken instead of
// deleting a device in use; the kernel releases it when the process dies,
// however it dies. The caller closes the descriptor to release it.
func lockName(name string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("tun: lock %s: %w", name, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: "@go-pmtud/dev/" + name}); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EADDRINUSE) {
			return -1, fmt.Errorf("tun: another go-pmtud in this network namespace owns %s", name)
		}
		return -1, fmt.Errorf("tun: lock %s: %w", name, err)
	}
	return fd, nil
}
