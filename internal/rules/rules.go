// Package rules installs and removes the netfilter rules that hand the
// daemon its ICMPs: one nftables table of its own, "go_pmtud" (family
// inet), whose prerouting chain (hook prerouting, priority raw) logs to an
// NFLOG group
//
//   - IPv4 "fragmentation needed" (type 3, code 4) that is not a non-first
//     fragment, and
//   - ICMPv6 Packet Too Big (type 2, code 0),
//
// except what arrives on the udp relay's own TUN device (those are copies
// the daemon injected; logging them again would cost a second NFLOG
// delivery per injected packet). It talks nftables over netlink
// (github.com/google/nftables), so it needs CAP_NET_ADMIN and no nft
// binary.
package rules

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// ErrNoNFTables wraps Install's error when the kernel has no nf_tables
// (or its inet family): no netlink subsystem to talk to.
var ErrNoNFTables = errors.New("rules: the kernel has no nf_tables")

// Table is the name of the daemon's nftables table.
const Table = "go_pmtud"

var table = &nftables.Table{Name: Table, Family: nftables.TableFamilyINet}

// Install makes the table hold exactly the daemon's rules for NFLOG group
// group, excluding in-interface tun ("" excludes none), in one netlink
// transaction: a table left behind by a daemon that was killed is
// replaced, not duplicated, and a second start changes nothing.
func Install(group uint16, tun string) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("rules: nftables: %w", err)
	}
	// Adding an existing table is no error; flushing it removes its
	// chains' rules, so the batch below leaves exactly one set of rules.
	c.AddTable(table)
	c.FlushTable(table)
	ch := c.AddChain(&nftables.Chain{
		Name:     "prerouting",
		Table:    table,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityRaw,
	})
	for _, exprs := range [][]expr.Any{ipv4Rule(group, tun), ipv6Rule(group, tun)} {
		c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: exprs})
	}
	if err := c.Flush(); err != nil {
		if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("%w: %w", ErrNoNFTables, err)
		}
		return fmt.Errorf("rules: install nftables table %s: %w%s", Table, err, needs(err))
	}
	return nil
}

// Remove deletes the table; a table that is not there is no error.
func Remove() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("rules: nftables: %w", err)
	}
	c.DelTable(table)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("rules: remove nftables table %s: %w", Table, err)
	}
	return nil
}

// needs names the capability a refused change lacks.
func needs(err error) string {
	if errors.Is(err, unix.EPERM) {
		return " (needs CAP_NET_ADMIN)"
	}
	return ""
}

// ipv4Rule: meta nfproto ipv4, ip frag-off & 0x1fff == 0, meta l4proto
// icmp, icmp type 3 code 4, iifname != tun, log group group.
func ipv4Rule(group uint16, tun string) []expr.Any {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		// The fragment offset (IPv4 header bytes 6-7, less the flags).
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 6, Len: 2},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 2, Mask: []byte{0x1f, 0xff}, Xor: []byte{0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
		// ICMP type and code.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{3, 4}},
	}
	return append(append(e, notFrom(tun)...), &expr.Log{Key: 1 << unix.NFTA_LOG_GROUP, Group: group})
}

// ipv6Rule: meta nfproto ipv6, meta l4proto ipv6-icmp, icmpv6 type 2
// code 0, iifname != tun, log group group. A non-first fragment has no
// transport header for the payload match, so it never matches.
func ipv6Rule(group uint16, tun string) []expr.Any {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{2, 0}},
	}
	return append(append(e, notFrom(tun)...), &expr.Log{Key: 1 << unix.NFTA_LOG_GROUP, Group: group})
}

// notFrom matches packets whose in-interface is not tun; nothing when tun
// is "".
func notFrom(tun string) []expr.Any {
	if tun == "" {
		return nil
	}
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, tun)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: name},
	}
}
