package tun

import (
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Per-device settings through rtnetlink (RTM_SETLINK with IFLA_AF_SPEC),
// which needs CAP_NET_ADMIN and no write access to /proc/sys: a container
// without privileges has /proc/sys read-only.

// IFLA_INET_CONF (include/uapi/linux/if_link.h): the nested IPv4 devconf
// values, each attribute typed by its IPV4_DEVCONF_* index
// (include/uapi/linux/ip.h).
const (
	iflaInetConf          = 1
	ipv4DevconfForwarding = 1
	ipv4DevconfRPFilter   = 8
)

// IFLA_INET6_ADDR_GEN_MODE (include/uapi/linux/if_link.h) and
// IN6_ADDR_GEN_MODE_NONE: no link-local address, so no DAD, router
// solicitation or MLD report from one.
const (
	iflaInet6AddrGenMode = 8
	in6AddrGenModeNone   = 1
)

// setLink sends RTM_SETLINK for interface index with the attributes attrs
// writes, and waits for the kernel's answer.
func setLink(index int, attrs func(ae *netlink.AttributeEncoder)) error {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return fmt.Errorf("rtnetlink: %w", err)
	}
	defer c.Close()
	ae := netlink.NewAttributeEncoder()
	attrs(ae)
	b, err := ae.Encode()
	if err != nil {
		return err
	}
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_SETLINK, Flags: netlink.Request | netlink.Acknowledge},
		Data:   append(ifinfomsg(index), b...),
	})
	return err
}

// setInetConf sets the device's IPv4 rp_filter and forwarding.
func setInetConf(index int, rpFilter, forwarding uint32) error {
	return setLink(index, func(ae *netlink.AttributeEncoder) {
		ae.Nested(unix.IFLA_AF_SPEC, func(ae *netlink.AttributeEncoder) error {
			ae.Nested(unix.AF_INET, func(ae *netlink.AttributeEncoder) error {
				ae.Nested(iflaInetConf, func(ae *netlink.AttributeEncoder) error {
					ae.Uint32(ipv4DevconfRPFilter, rpFilter)
					ae.Uint32(ipv4DevconfForwarding, forwarding)
					return nil
				})
				return nil
			})
			return nil
		})
	})
}

// setAddrGenModeNone makes the device generate no IPv6 link-local address.
func setAddrGenModeNone(index int) error {
	return setLink(index, func(ae *netlink.AttributeEncoder) {
		ae.Nested(unix.IFLA_AF_SPEC, func(ae *netlink.AttributeEncoder) error {
			ae.Nested(unix.AF_INET6, func(ae *netlink.AttributeEncoder) error {
				ae.Uint8(iflaInet6AddrGenMode, in6AddrGenModeNone)
				return nil
			})
			return nil
		})
	})
}
