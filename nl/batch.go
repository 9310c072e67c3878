package nl

// maxDatagram is the receive buffer size: larger than any NFLOG datagram.
// The kernel allocates a batch with alloc_skb(max(nlbufsiz, packet size)),
// nlbufsiz being at most 131072; with skb_shared_info added, the allocation
// is rounded up to 256 KiB, and nfulnl_log_packet keeps adding packets while
// they fit in all of it. On Linux 6.18, TestKernelLargeBatchesFitTheBuffer
// receives 261204-byte datagrams with BufSize 131072: a 128 KiB buffer would
// truncate them. (net/netfilter/nfnetlink_log.c: nfulnl_alloc_skb,
// nfulnl_log_packet.)
const maxDatagram = 256 << 10

// Batch owns one receive buffer and the packets decoded from the last Read
// into it. A Batch is reused Read after Read; it is not safe for concurrent
// use. A zero Batch works too: it gets its buffer on its first Read.
type Batch struct {
	// Packets are the packets of the last datagram read into the Batch. Their
	// payloads are views into the Batch's buffer, valid until the next Read.
	Packets []Packet
	// Lost is how many packets the kernel numbered but never delivered
	// (sequence-number gaps) between the previous Read and the packets of
	// this one; 0 normally.
	Lost uint64

	buf []byte
}

// NewBatch returns a Batch with a receive buffer large enough for the
// largest datagram the kernel sends (256 KiB) and room for 256 packets. It
// allocates both once; Read reuses them.
func NewBatch() *Batch {
	return &Batch{
		Packets: make([]Packet, 0, 256),
		buf:     make([]byte, maxDatagram),
	}
}
