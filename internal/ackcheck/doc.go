// Package ackcheck is the acknowledged-write checker of the fault scenarios: a workload that
// writes self-describing 4 KiB blocks through any WriterAt with Flush (a replicate.Volume, an
// *nbd.Client), remembers what was acknowledged, and afterwards proves from a copy of the data
// — the new primary after a failover, a local component read from its file — that every
// acknowledged write is there.
//
// Each block carries its offset, the 64-bit sequence number of the write, the writer id, a
// filler derived from those, and a CRC-32C, so a block read back says exactly which write put it
// there (see EncodeBlock). Writers own disjoint shares of the region and keep one write in flight
// each, so every block has one ordered history and Verify can classify it:
//
//   - its last acknowledged write, or a later one that was never acknowledged: fine ("in doubt"
//     when the latter — a failed or interrupted write may or may not have landed);
//   - an older write, or zeros, while a newer write was acknowledged: lost. In fullsync and
//     memsync mode nothing may be lost; in async mode the lost writes measure the loss window;
//   - anything else (bad checksum, a write that never touched this block, a misdirected block):
//     corrupt.
//
// Writes covered by a successful Flush are flagged, since a flush promises durability on both
// nodes whatever the mode.
package ackcheck
