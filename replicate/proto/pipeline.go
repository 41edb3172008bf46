package proto

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"unsafe"

	"hast/internal/lzf"
	"hast/internal/nv"
)

// Checksum selects the checksum of transmitted data (hast.conf "checksum").
type Checksum uint8

// Checksums, numbered as HAST_CHECKSUM_*.
const (
	ChecksumNone Checksum = iota
	ChecksumCRC32
	ChecksumSHA256
)

// String returns the name used in hast.conf and on the wire.
func (c Checksum) String() string {
	switch c {
	case ChecksumNone:
		return "none"
	case ChecksumCRC32:
		return "crc32"
	case ChecksumSHA256:
		return "sha256"
	}
	return fmt.Sprintf("checksum(%d)", uint8(c))
}

// ParseChecksum maps a hast.conf name to a Checksum.
func ParseChecksum(s string) (Checksum, error) {
	for c := ChecksumNone; c <= ChecksumSHA256; c++ {
		if c.String() == s {
			return c, nil
		}
	}
	return 0, fmt.Errorf("%w: checksum %q (want none, crc32 or sha256)", ErrUnknownAlgorithm, s)
}

// Compression selects the compression of transmitted data (hast.conf "compression").
type Compression uint8

// Compressions, numbered as HAST_COMPRESSION_*.
const (
	CompressionNone Compression = iota
	CompressionHole
	CompressionLZF
)

// String returns the name used in hast.conf and on the wire.
func (c Compression) String() string {
	switch c {
	case CompressionNone:
		return "none"
	case CompressionHole:
		return "hole"
	case CompressionLZF:
		return "lzf"
	}
	return fmt.Sprintf("compression(%d)", uint8(c))
}

// ParseCompression maps a hast.conf name to a Compression.
func ParseCompression(s string) (Compression, error) {
	for c := CompressionNone; c <= CompressionLZF; c++ {
		if c.String() == s {
			return c, nil
		}
	}
	return 0, fmt.Errorf("%w: compression %q (want none, hole or lzf)", ErrUnknownAlgorithm, s)
}

const (
	// lzfMin is HAST_LZF_COMPRESS_MIN: smaller blocks are not worth compressing, and
	// larger ones must shrink by at least this much to be sent compressed.
	lzfMin = 1024
	// origSizeLen is the little-endian uint32 original length that starts hole and lzf
	// payloads.
	origSizeLen = 4
)

// Field names of the data pipeline.
const (
	fieldCompression = "compression"
	fieldChecksum    = "checksum"
	fieldHash        = "hash"
	fieldSize        = "size"
)

// allZero reports whether p contains only zero bytes. Probing the start, middle and
// end first returns early for ordinary data, as hast_compression.c does.
func allZero(p []byte) bool {
	if len(p) == 0 {
		return true
	}
	if p[0]|p[len(p)/2]|p[len(p)-1] != 0 {
		return false
	}
	for len(p) >= 8 {
		if binary.LittleEndian.Uint64(p) != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// overlaps reports whether the array behind dst (up to its capacity) shares any byte
// with p; decompressing in place would overwrite input not yet read.
func overlaps(dst, p []byte) bool {
	if cap(dst) == 0 || len(p) == 0 {
		return false
	}
	d := uintptr(unsafe.Pointer(unsafe.SliceData(dst)))
	s := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
	return d < s+uintptr(len(p)) && s < d+uintptr(cap(dst))
}

// resize returns b with length n, reusing its array when it is large enough.
func resize(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// EncodeData applies the send pipeline to a data blob p and describes it in l.
//
// Compression comes first. hole: if p is entirely zero and its length a multiple of 8,
// the payload becomes p's length as a little-endian uint32. lzf: hole is tried first;
// otherwise, if len(p) > 1024, p is LZF-compressed into at most len(p)-1024 bytes and
// the payload is p's length followed by the stream; if it does not fit, p is sent
// as is. The field "compression" (string) names what was actually used, and is absent
// when nothing was.
//
// Then the checksum, over the bytes to transmit: crc32 (IEEE, stored little-endian,
// 4 bytes) or sha256 (32 bytes), as the fields "checksum" (string) and "hash"
// (uint8 array). Finally "size" (uint32) is the transmitted length.
//
// The result is p itself when uncompressed, or a slice of scratch (reallocated if too
// small; scratch may be nil) holding the compressed payload. Call it only for messages
// that carry data: WRITE requests, READ replies and the handshake bitmap.
func EncodeData(l *nv.List, p []byte, c Compression, cs Checksum, scratch []byte) ([]byte, error) {
	if c > CompressionLZF {
		return nil, fmt.Errorf("%w: %v", ErrUnknownAlgorithm, c)
	}
	if cs > ChecksumSHA256 {
		return nil, fmt.Errorf("%w: %v", ErrUnknownAlgorithm, cs)
	}
	if uint64(len(p)) > math.MaxUint32 {
		return nil, fmt.Errorf("%w: data of %d bytes does not fit the uint32 size field", ErrFrameTooLarge, len(p))
	}

	payload := p
	if c != CompressionNone && len(p) > 0 {
		if len(p)%8 == 0 && allZero(p) {
			payload = resize(scratch, origSizeLen)
			binary.LittleEndian.PutUint32(payload, uint32(len(p)))
			l.AddString(fieldCompression, CompressionHole.String())
		} else if c == CompressionLZF && len(p) > lzfMin {
			buf := resize(scratch, origSizeLen+len(p)-lzfMin)
			if n := lzf.Compress(buf[origSizeLen:], p); n > 0 {
				binary.LittleEndian.PutUint32(buf, uint32(len(p)))
				payload = buf[:origSizeLen+n]
				l.AddString(fieldCompression, CompressionLZF.String())
			}
		}
	}

	switch cs {
	case ChecksumCRC32:
		var h [crc32.Size]byte
		binary.LittleEndian.PutUint32(h[:], crc32.ChecksumIEEE(payload))
		l.AddString(fieldChecksum, cs.String())
		l.AddUint8Array(fieldHash, h[:])
	case ChecksumSHA256:
		h := sha256.Sum256(payload)
		l.AddString(fieldChecksum, cs.String())
		l.AddUint8Array(fieldHash, h[:])
	}
	l.AddUint32(fieldSize, uint32(len(payload)))
	return payload, nil
}

// DecodeData reverses the pipeline described by l's fields, whatever the sender chose,
// with decoded data limited to MaxDataSize. See DecodeDataLimit.
func DecodeData(l *nv.List, payload []byte, dst []byte) ([]byte, error) {
	return DecodeDataLimit(l, payload, dst, MaxDataSize)
}

// DecodeDataLimit reverses the pipeline described by l's fields: it checks that
// payload has the length in "size", verifies "hash" against "checksum" (a mismatch is
// ErrHashMismatch), then decompresses according to "compression" into dst, grown if
// needed, refusing to produce more than maxSize bytes (ErrFrameTooLarge). Unknown
// algorithm names are ErrUnknownAlgorithm. Without a "compression" field the payload
// itself is returned. A dst that shares memory with payload (for instance the result of
// an earlier uncompressed DecodeData, which aliases the Reader's buffer) is not
// written to; a new buffer is allocated instead.
func DecodeDataLimit(l *nv.List, payload []byte, dst []byte, maxSize int) ([]byte, error) {
	if err := checkSize(l, len(payload)); err != nil {
		return nil, err
	}
	if err := verifyChecksum(l, payload); err != nil {
		return nil, err
	}

	algo, ok := l.String(fieldCompression)
	if !ok {
		if l.Has(fieldCompression) {
			return nil, fmt.Errorf("%w: compression field is not a string", ErrMalformed)
		}
		return payload, nil
	}
	var orig uint32
	switch algo {
	case "hole":
		if len(payload) != origSizeLen {
			return nil, fmt.Errorf("%w: hole payload is %d bytes, want %d", ErrCorruptData, len(payload), origSizeLen)
		}
	case "lzf":
		if len(payload) <= origSizeLen {
			return nil, fmt.Errorf("%w: lzf payload of %d bytes has no stream", ErrCorruptData, len(payload))
		}
	default:
		return nil, fmt.Errorf("%w: compression %q", ErrUnknownAlgorithm, algo)
	}
	orig = binary.LittleEndian.Uint32(payload)
	if uint64(orig) > uint64(maxSize) {
		return nil, fmt.Errorf("%w: %s data decompresses to %d bytes, limit %d", ErrFrameTooLarge, algo, orig, maxSize)
	}
	if overlaps(dst, payload) {
		dst = nil
	}
	dst = resize(dst, int(orig))
	if algo == "hole" {
		clear(dst)
		return dst, nil
	}
	n, err := lzf.Decompress(dst, payload[origSizeLen:])
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorruptData, err)
	}
	if n != int(orig) {
		return nil, fmt.Errorf("%w: lzf stream gave %d bytes, header says %d", ErrCorruptData, n, orig)
	}
	return dst, nil
}

func verifyChecksum(l *nv.List, payload []byte) error {
	algo, ok := l.String(fieldChecksum)
	if !ok {
		if l.Has(fieldChecksum) {
			return fmt.Errorf("%w: checksum field is not a string", ErrMalformed)
		}
		return nil
	}
	want, ok := l.Uint8Array(fieldHash)
	if !ok {
		return fmt.Errorf("%w: checksum %q without a uint8 array hash", ErrMalformed, algo)
	}
	var sum [sha256.Size]byte
	var got []byte
	switch algo {
	case "crc32":
		got = binary.LittleEndian.AppendUint32(sum[:0], crc32.ChecksumIEEE(payload))
	case "sha256":
		sum = sha256.Sum256(payload)
		got = sum[:]
	default:
		return fmt.Errorf("%w: checksum %q", ErrUnknownAlgorithm, algo)
	}
	if len(want) != len(got) {
		return fmt.Errorf("%w: %s hash of %d bytes, want %d", ErrMalformed, algo, len(want), len(got))
	}
	if !bytes.Equal(want, got) {
		return fmt.Errorf("%w: %s of %d bytes is %x, sender says %x", ErrHashMismatch, algo, len(payload), got, want)
	}
	return nil
}
