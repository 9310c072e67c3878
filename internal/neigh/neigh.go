// Package neigh reads the kernel's neighbour table, the link-layer
// addresses of the hosts on a segment, over rtnetlink, and asks the kernel to
// resolve an address it does not hold yet. The l2 relay's unicast frames take
// their destinations from it. Nothing here is on the packet path: each call
// allocates.
package neigh

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// MAC is an Ethernet address.
type MAC [6]byte

// usable are the NUD_* states (include/uapi/linux/neighbour.h) whose entry
// holds a link-layer address a frame can be sent to: confirmed, or stale
// and being reconfirmed by the kernel, or static.
const usable = unix.NUD_REACHABLE | unix.NUD_STALE | unix.NUD_DELAY | unix.NUD_PROBE | unix.NUD_PERMANENT

// Conn is a netlink socket to the kernel's neighbour table. It belongs to
// the network namespace of the thread that called Dial, whichever thread
// uses it later. It is safe for concurrent use (calls are serialised).
type Conn struct{ c *netlink.Conn }

// Dial opens a Conn in the calling thread's network namespace.
func Dial() (*Conn, error) {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return nil, fmt.Errorf("neigh: rtnetlink: %w", err)
	}
	return &Conn{c}, nil
}

// Close closes the socket.
func (n *Conn) Close() error { return n.c.Close() }

// Table returns the IPv4 and IPv6 neighbours of interface ifindex that hold
// a usable 6-byte link-layer address. It dumps the kernel's table with one
// RTM_GETNEIGH request.
func (n *Conn) Table(ifindex int) (map[netip.Addr]MAC, error) {
	c := n.c
	// struct ndmsg (include/uapi/linux/neighbour.h): family, pad1, pad2,
	// ifindex, state, flags, type. AF_UNSPEC dumps both families.
	req := make([]byte, unix.SizeofNdMsg)
	binary.NativeEndian.PutUint32(req[4:8], uint32(ifindex))
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETNEIGH, Flags: netlink.Request | netlink.Dump},
		Data:   req,
	})
	if err != nil {
		return nil, fmt.Errorf("neigh: dump: %w", err)
	}
	out := make(map[netip.Addr]MAC)
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWNEIGH || len(m.Data) < unix.SizeofNdMsg {
			continue
		}
		d := m.Data
		state := binary.NativeEndian.Uint16(d[8:10])
		if int(binary.NativeEndian.Uint32(d[4:8])) != ifindex || state&usable == 0 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(d[unix.SizeofNdMsg:])
		if err != nil {
			continue
		}
		var dst netip.Addr
		var mac MAC
		var haveMAC bool
		for ad.Next() {
			switch ad.Type() {
			case unix.NDA_DST:
				dst, _ = netip.AddrFromSlice(ad.Bytes())
			case unix.NDA_LLADDR:
				if b := ad.Bytes(); len(b) == len(mac) {
					copy(mac[:], b)
					haveMAC = true
				}
			}
		}
		if dst.IsValid() && haveMAC {
			out[dst.Unmap()] = mac
		}
	}
	return out, nil
}

// Resolve asks the kernel to resolve addr on interface ifindex as if a
// packet were waiting for it: RTM_NEWNEIGH with NTF_USE creates the entry if
// there is none and sends a solicitation (ARP, or IPv6 neighbour
// discovery). It returns once the kernel took the request; Table shows the
// address after the neighbour answered. The entry is an ordinary dynamic
// one, which the kernel ages out as usual. It needs CAP_NET_ADMIN.
func (n *Conn) Resolve(ifindex int, addr netip.Addr) error {
	c := n.c
	addr = addr.Unmap()
	req := make([]byte, unix.SizeofNdMsg)
	req[0] = unix.AF_INET
	if addr.Is6() {
		req[0] = unix.AF_INET6
	}
	binary.NativeEndian.PutUint32(req[4:8], uint32(ifindex))
	req[10] = unix.NTF_USE // ndm_flags
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(unix.NDA_DST, addr.AsSlice())
	b, err := ae.Encode()
	if err != nil {
		return err
	}
	if _, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_NEWNEIGH, Flags: netlink.Request | netlink.Acknowledge | netlink.Create},
		Data:   append(req, b...),
	}); err != nil {
		return fmt.Errorf("neigh: resolve %v: %w", addr, err)
	}
	return nil
}
