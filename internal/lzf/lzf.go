// Package lzf implements the LZF compression format of Marc Lehmann's liblzf, which
// HAST uses for its "lzf" wire compression. Streams are raw (no header, no length);
// HAST sends the uncompressed length separately.
//
// A stream is a sequence of chunks, each introduced by a control byte:
//
//	000LLLLL                    literal run: the next L+1 bytes (1..32) are copied as is
//	LLLooooo oooooooo           back-reference, L in 1..6: copy L+2 bytes starting
//	                            (ooooo<<8 | oooooooo)+1 bytes back in the output
//	111ooooo LLLLLLLL oooooooo  back-reference with length LLLLLLLL+9 (9..264)
//
// Back-references may overlap the bytes they produce (a run of one byte repeated is a
// reference one byte back). The compressor here is written from that description and
// produces streams that liblzf's lzf_decompress accepts; its output is not byte-identical
// to liblzf's, which the format does not require.
package lzf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"
)

const (
	maxLit = 1 << 5              // longest literal run
	maxOff = 1 << 13             // farthest back-reference distance
	maxRef = (1 << 8) + (1 << 3) // longest back-reference: 7+255+2
	minRef = 3

	hashLog  = 14
	hashSize = 1 << hashLog
)

// ErrCorrupt is wrapped by errors about malformed or truncated streams.
var ErrCorrupt = errors.New("lzf: corrupt input")

// ErrShortBuffer is wrapped when the decompressed data does not fit in dst.
var ErrShortBuffer = errors.New("lzf: output buffer too small")

// hashTable maps a hash of 3 input bytes to the position after the most recent
// occurrence (0 = none). Tables are pooled because 64 KiB per call would otherwise be
// allocated (or grow a goroutine stack) for every block.
type hashTable [hashSize]int32

var tables = sync.Pool{New: func() any { return new(hashTable) }}

// hash3 hashes the 3 bytes at b[0:3] into a table of 1<<(32-shift) entries.
func hash3(b []byte, shift uint) uint32 {
	v := uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2])
	return (v * 2654435761) >> shift
}

// tableBits sizes the hash table to the input: clearing the full 64 KiB table would
// cost more than compressing a 4 KiB block.
func tableBits(n int) uint {
	bits := uint(10)
	for bits < hashLog && 1<<bits < n {
		bits++
	}
	return bits
}

// literal appends b to the open literal run whose control byte is at op-lit-1,
// closing the run when it is full, and returns the new op and lit; ok is false when
// dst has no room.
func literal(dst []byte, b byte, op, lit int) (int, int, bool) {
	if op >= len(dst) {
		return op, lit, false
	}
	dst[op] = b
	op++
	lit++
	if lit == maxLit {
		dst[op-lit-1] = maxLit - 1
		lit = 0
		op++ // control byte of the next run
	}
	return op, lit, true
}

// matchLen extends a match of known length k between a (earlier) and b (current, cut
// to the longest allowed match) and returns its length. a may overlap b; it is at
// least as long as b. Eight bytes are compared at a time because zero-filled and
// repetitive blocks produce long matches.
func matchLen(a, b []byte, k int) int {
	for k+8 <= len(b) {
		x := binary.LittleEndian.Uint64(a[k:]) ^ binary.LittleEndian.Uint64(b[k:])
		if x != 0 {
			return k + bits.TrailingZeros64(x)/8
		}
		k += 8
	}
	for k < len(b) && a[k] == b[k] {
		k++
	}
	return k
}

// Compress compresses src into dst and returns the number of bytes written, or 0 if the
// compressed stream does not fit in dst (or src is empty). HAST relies on that to fall
// back to sending data uncompressed.
func Compress(dst, src []byte) int {
	n := len(src)
	if n == 0 || int64(n) >= 1<<31-1 { // positions are kept in int32
		return 0
	}
	pooled := tables.Get().(*hashTable)
	defer tables.Put(pooled)
	tb := tableBits(n)
	ht := pooled[:1<<tb]
	clear(ht)
	shift := 32 - tb

	ip, op := 0, 1 // op starts past the control byte of the first literal run
	lit := 0       // bytes in the open literal run; its control byte is at op-lit-1

	for ip+minRef <= n {
		h := hash3(src[ip:], shift)
		ref := int(ht[h]) - 1
		ht[h] = int32(ip + 1)
		off := ip - ref - 1
		if ref < 0 || off >= maxOff || src[ref] != src[ip] || src[ref+1] != src[ip+1] || src[ref+2] != src[ip+2] {
			var ok bool
			if op, lit, ok = literal(dst, src[ip], op, lit); !ok {
				return 0
			}
			ip++
			continue
		}

		mlen := matchLen(src[ref:], src[ip:min(n, ip+maxRef)], minRef)

		// Close the open literal run, or take back its unused control byte.
		if lit > 0 {
			dst[op-lit-1] = byte(lit - 1)
		} else {
			op--
		}
		l := mlen - 2
		need := 2
		if l >= 7 {
			need = 3
		}
		if op+need > len(dst) {
			return 0
		}
		if l < 7 {
			dst[op] = byte(l<<5 | off>>8)
			op++
		} else {
			dst[op] = byte(7<<5 | off>>8)
			dst[op+1] = byte(l - 7)
			op += 2
		}
		dst[op] = byte(off)
		op++
		lit = 0
		op++ // control byte of the next literal run

		ip += mlen
		// Index the last positions of the match so the next search finds them.
		for p := ip - 2; p < ip && p+minRef <= n; p++ {
			ht[hash3(src[p:], shift)] = int32(p + 1)
		}
	}
	for ; ip < n; ip++ {
		var ok bool
		if op, lit, ok = literal(dst, src[ip], op, lit); !ok {
			return 0
		}
	}
	if lit > 0 {
		dst[op-lit-1] = byte(lit - 1)
	} else {
		op--
	}
	return op
}

// Decompress decompresses the raw LZF stream src into dst and returns the number of
// bytes written. It fails, without panicking, on truncated or corrupt input and when
// the output would exceed len(dst).
func Decompress(dst, src []byte) (int, error) {
	ip, op := 0, 0
	for ip < len(src) {
		at := ip
		c := int(src[ip])
		ip++
		if c < maxLit {
			l := c + 1
			if len(src)-ip < l {
				return op, fmt.Errorf("%w: literal run of %d bytes at input offset %d has only %d", ErrCorrupt, l, at, len(src)-ip)
			}
			if len(dst)-op < l {
				return op, fmt.Errorf("%w: need %d bytes, have %d", ErrShortBuffer, op+l, len(dst))
			}
			copy(dst[op:], src[ip:ip+l])
			ip += l
			op += l
			continue
		}

		l := c >> 5
		if l == 7 {
			if ip >= len(src) {
				return op, fmt.Errorf("%w: back-reference at input offset %d lacks its length byte", ErrCorrupt, at)
			}
			l += int(src[ip])
			ip++
		}
		if ip >= len(src) {
			return op, fmt.Errorf("%w: back-reference at input offset %d lacks its offset byte", ErrCorrupt, at)
		}
		dist := ((c&0x1f)<<8 | int(src[ip])) + 1
		ip++
		l += 2
		if dist > op {
			return op, fmt.Errorf("%w: back-reference at input offset %d reaches %d bytes back, only %d produced", ErrCorrupt, at, dist, op)
		}
		if len(dst)-op < l {
			return op, fmt.Errorf("%w: need %d bytes, have %d", ErrShortBuffer, op+l, len(dst))
		}
		ref := op - dist
		if dist >= l {
			copy(dst[op:op+l], dst[ref:ref+l])
		} else {
			// Overlapping: each byte may depend on one just written.
			for i := range l {
				dst[op+i] = dst[ref+i]
			}
		}
		op += l
	}
	return op, nil
}
