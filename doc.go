// Package pmtud is the go-pmtud relay: it reads ICMP "fragmentation needed"
// (and, with the udp relay, ICMPv6 "packet too big") messages that iptables
// logs to an NFLOG group, validates them, and sends a copy of each to every
// peer node, so the node that owns the flow learns the
// path MTU even when ECMP delivered the ICMP elsewhere.
//
// # Data flow
//
//	nl.Reader ──► wire.Parse ──► policy, dedup ──► fan-out (sendmmsg)
//
// A Relay reads whole NFLOG datagrams (many packets each under load) into a
// buffer it owns, parses every packet in place, applies the policy (ignored
// networks, loop guard) and hands the accepted ICMP messages, still views into
// the receive buffer, to the fan-out, which sends each of them to every peer
// with as few sendmmsg calls as the kernel allows. Nothing on that path
// allocates in steady state; TestRelayAllocs proves it.
//
// # Peers
//
// Everything derived from the peers (addresses, loop guard, per-peer
// counters and replay windows) is one immutable peer set behind an atomic
// pointer. SetPeers swaps it while packets flow: a batch keeps the set it
// started with, and SetPeers returns once no batch holds the old one.
// Sources of peer sets (a file, the Kubernetes API) live in internal/peers;
// the sockets in internal/transport, the TUN device in internal/tun.
//
// # Loop safety
//
// A copy must never be copied again, or N nodes that list each other would
// ping-pong forever. Besides the operator's ignored networks, the policy drops
// every ICMP whose outer source is a peer or one of the node's own addresses
// (those are copies), one logged on the udp relay's TUN device, and one it
// relayed or injected within the dedup window.
//
// # Namespaces
//
// New opens its sockets in the network namespace of the calling thread; they
// stay there for their whole life, whatever thread uses them later.
package pmtud
