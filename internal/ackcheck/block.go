package ackcheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// BlockSize is the unit the workload writes and Verify checks.
const BlockSize = 4096

// Magic opens every block the workload writes.
var Magic = [8]byte{'H', 'A', 'S', 'T', 'A', 'C', 'K', '1'}

// Block layout, little-endian:
//
//	0    magic "HASTACK1"
//	8    byte offset of the block on the volume
//	16   sequence number of the write (unique per Checker, from 1)
//	24   writer id
//	32   filler derived from the sequence number and offset (4060 bytes)
//	4092 CRC-32C of bytes 0..4091
const (
	hdrSize = 32
	crcOff  = BlockSize - 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header is what a block says about itself.
type Header struct {
	Offset int64
	Seq    uint64
	Writer uint32
}

// Errors DecodeBlock returns for blocks that are not intact workload blocks.
var (
	ErrNotBlock = errors.New("ackcheck: not a workload block (bad magic)")
	ErrChecksum = errors.New("ackcheck: block checksum mismatch")
	ErrFiller   = errors.New("ackcheck: block filler does not match its header")
)

// EncodeBlock fills b (BlockSize bytes) with the block of write seq by writer at offset off.
func EncodeBlock(b []byte, off int64, seq uint64, writer uint32) {
	b = b[:BlockSize]
	copy(b, Magic[:])
	binary.LittleEndian.PutUint64(b[8:], uint64(off))
	binary.LittleEndian.PutUint64(b[16:], seq)
	binary.LittleEndian.PutUint64(b[24:], uint64(writer))
	fill(b[hdrSize:crcOff], off, seq)
	binary.LittleEndian.PutUint32(b[crcOff:], crc32.Checksum(b[:crcOff], castagnoli))
}

// fill writes a xorshift stream seeded by (off, seq): incompressible, different for every block
// of every write, and recomputable from the header alone.
func fill(b []byte, off int64, seq uint64) {
	x := seq*0x9e3779b97f4a7c15 ^ uint64(off) ^ 0x2545f4914f6cdd1d
	if x == 0 {
		x = 1
	}
	var w [8]byte
	for i := 0; i < len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(w[:], x)
		copy(b[i:], w[:])
	}
}

// DecodeBlock parses and checks a block. An all-zero block is the state before any write: it
// decodes to a zero Header with zero true.
func DecodeBlock(b []byte) (h Header, zero bool, err error) {
	if len(b) < BlockSize {
		return h, false, fmt.Errorf("ackcheck: block of %d bytes, want %d", len(b), BlockSize)
	}
	b = b[:BlockSize]
	if isZero(b) {
		return h, true, nil
	}
	if [8]byte(b[:8]) != Magic {
		return h, false, ErrNotBlock
	}
	if got, want := binary.LittleEndian.Uint32(b[crcOff:]), crc32.Checksum(b[:crcOff], castagnoli); got != want {
		return h, false, fmt.Errorf("%w (stored %08x, computed %08x)", ErrChecksum, got, want)
	}
	h.Offset = int64(binary.LittleEndian.Uint64(b[8:]))
	h.Seq = binary.LittleEndian.Uint64(b[16:])
	h.Writer = uint32(binary.LittleEndian.Uint64(b[24:]))
	// The CRC proves the block is what some encoder wrote; the filler proves the header was not
	// swapped onto another write's data before the CRC was computed (a buggy merge would).
	var want [crcOff - hdrSize]byte
	fill(want[:], h.Offset, h.Seq)
	if [crcOff - hdrSize]byte(b[hdrSize:crcOff]) != want {
		return h, false, ErrFiller
	}
	return h, false, nil
}

func isZero(b []byte) bool {
	for i := 0; i+8 <= len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:]) != 0 {
			return false
		}
	}
	return true
}
