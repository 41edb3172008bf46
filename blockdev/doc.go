// Package blockdev is hast's local component: the disk (or regular file) a resource
// keeps its copy of the data on, and the bookkeeping HAST stores at its start.
//
// # Layout
//
// The layout is HAST's, byte for byte, so a disk can move between FreeBSD's hastd and
// this implementation:
//
//	offset 0          4096                 LocalOff = 4096+mapsize       LocalOff+DataSize
//	| metadata block | activemap bitmap    | user data (DataSize bytes) ... | slack
//
// The metadata block is one nv list (package hast/internal/nv) padded with zeros to
// [MetadataSize] bytes; [WriteMetadata] and [ReadMetadata] encode and validate it. The
// bitmap has one bit per extent of the data area (bit e is bit e&7 of byte e>>3) and is
// read and written whole by [ReadBitmap] and [WriteBitmap]. [ComputeGeometry] derives
// the sizes from the media size exactly as hastctl create does.
//
// # Devices
//
// [Open] returns a [Device] for a regular file or a block device, locked with flock so
// two daemons (or two resources) cannot use the same disk. [CreateFile] makes a
// preallocated backing file. For tests there are [MemDevice], an in-memory disk whose
// volatile write cache can be dropped to simulate power loss, and [FaultDevice], which
// wraps any Device and injects I/O errors.
//
// # Activemap
//
// [ActiveMap] is the dirty-extent tracker of HAST §8 as pure logic with no I/O: the
// replication engine asks it whether the on-disk bitmap must be rewritten before a write
// is sent anywhere, writes [ActiveMap.Image] with [WriteBitmap], and reports it back with
// [ActiveMap.MarkDurable]. Keeping the I/O outside lets the engine choose when to flush
// and lets the bookkeeping be tested exhaustively with tables.
package blockdev
