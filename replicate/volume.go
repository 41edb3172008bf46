package replicate

import "errors"

// Volume is what every frontend (FUSE, NBD, ublk) serves: the data area of one resource on the node
// where it is primary. Offsets are relative to the start of the data area (HAST's localoff is
// already applied). All methods are safe for many concurrent callers.
//
// Acknowledgement rules follow the resource's replication mode (fullsync, memsync, async). A Flush
// that returns nil means every write acknowledged before it was called survives the loss of either
// node. A frontend serving a FUA write calls WriteAt and then Flush.
type Volume interface {
	// ReadAt reads len(p) bytes at off. Reads are served locally, and from the peer when the
	// local read fails or the local copy of that range is known to be stale.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes p at off. The caller may reuse p as soon as WriteAt returns.
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes all completed writes durable on both nodes (or locally, when degraded).
	Flush() error
	// Discard tells both nodes the range is unused (punch hole on files, BLKZEROOUT on block
	// devices). Afterwards the range reads as zeros on both nodes.
	Discard(off, length int64) error
	// Size is the data size in bytes (HAST's datasize).
	Size() int64
	// SectorSize is the logical sector size of the local component; offsets and lengths of
	// frontend requests are multiples of it.
	SectorSize() int
}

// Errors a Volume returns; frontends map them onto their protocol's error codes.
var (
	// ErrRange means the request does not lie within [0, Size()) or is not sector aligned.
	ErrRange = errors.New("replicate: request out of range or misaligned")
	// ErrNotPrimary means the resource stopped being primary on this node; the volume is gone.
	ErrNotPrimary = errors.New("replicate: resource is not primary on this node")
)
