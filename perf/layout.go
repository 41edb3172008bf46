package perf

// The histograms live in one BPF array of one element: Probe p's histogram starts at u64 index
// p*stride: Buckets counts, then the sum of nanoseconds, bytes and errors. Counters follow
// the histograms.
const (
	stride   = Buckets + 4
	slotSum  = Buckets
	slotByte = Buckets + 1
	slotErr  = Buckets + 2
)

// Probe names one histogram.
type Probe int

// The probes. Block probes see every request on the devices under the local components
// (whoever issued it); syscall and run-queue probes see only the daemon's threads; TCP probes see
// only connections to or from the replication ports.
const (
	BlockWrite   Probe = iota // block request latency, issue → complete, writes
	BlockRead                 // reads
	BlockFlush                // flushes (and anything that is not a read, write or discard)
	BlockDiscard              // discards
	SysPwrite                 // pwrite64, pwritev, pwritev2
	SysPread                  // pread64, preadv, preadv2
	SysFsync                  // fsync, fdatasync
	SysURing                  // io_uring_enter
	SysSend                   // write, writev, sendmsg, sendto
	SysRecv                   // read, readv, recvmsg, recvfrom
	RunQueue                  // wakeup (or preemption) → running again, per thread
	TCPRTT                    // smoothed RTT at each ACK received (tcp_probe)
	numProbes
)

// Counter names one event counter.
type Counter int

const (
	TCPRetransmits Counter = iota // segments retransmitted on the replication connections
	BlockLost                     // block requests not counted: their slot was taken by another
	numCounters
)

var probeNames = [numProbes]string{"block_write", "block_read", "block_flush", "block_discard",
	"sys_pwrite", "sys_pread", "sys_fsync", "sys_io_uring_enter", "sys_send", "sys_recv",
	"runqueue", "tcp_srtt"}

var counterNames = [numCounters]string{"tcp_retransmits", "block_lost"}

func (p Probe) String() string   { return probeNames[p] }
func (c Counter) String() string { return counterNames[c] }

// Probes lists every probe in order.
func Probes() []Probe {
	out := make([]Probe, numProbes)
	for i := range out {
		out[i] = Probe(i)
	}
	return out
}

const totalSlots = int(numProbes)*stride + int(numCounters)

func histOff(p Probe, slot int) uint32 { return uint32((int(p)*stride + slot) * 8) }
func counterOff(c Counter) uint32      { return uint32((int(numProbes)*stride + int(c)) * 8) }
