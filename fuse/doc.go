// Package fuse presents replicated volumes as regular files in a FUSE mount (by default
// /run/hast), one file per resource for which this node is primary.
//
// It is a frontend: it turns kernel file requests into calls on a replicate.Volume and knows
// nothing about replication. The appliance calls Add when a resource is promoted and Remove when
// it is demoted; Unmount takes the whole view down.
//
// # Semantics of a volume file
//
//   - The file is a fixed-size regular file (mode 0600, owned by root) whose size is the volume's
//     data size. It cannot be truncated, grown, renamed, linked or unlinked through the mount, and
//     no other file can be created next to it.
//   - Reads and writes work at any offset and length. Requests the kernel sends aligned to the
//     volume's sector size go straight to the Volume; unaligned ones are turned into whole-sector
//     read-modify-write cycles, serialised against other writes to the same sectors, so byte-wise
//     tools such as dd bs=1 work. Reads past the end are short; writes past the end fail with
//     ENOSPC, as on a block device.
//   - fsync and fdatasync call Volume.Flush. fallocate with FALLOC_FL_PUNCH_HOLE discards the
//     sector-aligned part of the range and writes zeros over the unaligned edges;
//     FALLOC_FL_ZERO_RANGE writes zeros; plain fallocate within the size succeeds.
//   - Files are opened with FOPEN_DIRECT_IO, so the kernel keeps no page cache for them (see
//     openFlags for why).
//
// # Removal
//
// Remove refuses to take away a file that is still open unless forced. A forced removal makes
// every request on the still-open handles fail with EIO, and waits for requests already inside
// the Volume to return, so once Remove returns the Volume is no longer used by this package.
package fuse
