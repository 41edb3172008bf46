// Package proto implements HAST protocol version 2 framing and its data pipeline, as
// FreeBSD's sbin/hastd/hast_proto.c, hast_checksum.c and hast_compression.c define them.
//
// Every message is a 5-byte header (the sender's protocol version as a byte, then the
// length of the nv list as a little-endian uint32), an nv list (package internal/nv),
// and, when the list has a non-zero uint32 "size" field, exactly that many bytes of data:
//
//	+0 u8  version
//	+1 u32 nv length (LE)
//	+5 nv list
//	   data ("size" bytes)
//
// Data travels through a pipeline the sender chooses and describes in the nv list, so a
// receiver honours it whatever its own configuration: compression first ("hole" for an
// all-zero block, "lzf"), then a checksum ("crc32", "sha256") over the bytes actually
// transmitted. EncodeData applies it, DecodeData reverses it.
//
// Reader reads frames with bounded sizes and reusable buffers; the sender side is
// EncodeFrame (header and nv into a caller's buffer, data written separately with
// net.Buffers so it is never copied) or WriteFrame. After any error from Reader.Next the
// stream is no longer in sync and the connection must be closed.
package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"hast/internal/nv"
)

// Version is the protocol version this implementation speaks (HAST_PROTO_VERSION).
const Version = 2

// HeaderSize is the length of the frame header.
const HeaderSize = 5

// MaxNVSize is the largest nv list we accept in a frame. Real headers are a few hundred
// bytes; the limit keeps a hostile peer from making us allocate.
const MaxNVSize = 64 << 10

// MaxDataSize is the default limit on a frame's data and on decoded data. Requests are
// at most 1 MiB (our MAXPHYS); the handshake bitmap of a large resource may be bigger,
// which is why NewReader and DecodeDataLimit take the limit as a parameter.
const MaxDataSize = 4 << 20

// Request commands (the "cmd" field, §7.3 of the reference).
const (
	CmdRead      uint8 = 1
	CmdWrite     uint8 = 2
	CmdDelete    uint8 = 3
	CmdFlush     uint8 = 4
	CmdKeepalive uint8 = 5
)

// Errors. Each is wrapped with details; test with errors.Is.
var (
	// ErrVersion means the peer's frame carries a version newer than Version.
	ErrVersion = errors.New("proto: unsupported protocol version")
	// ErrFrameTooLarge means an nv list or data blob exceeds its limit.
	ErrFrameTooLarge = errors.New("proto: frame too large")
	// ErrEmptyHeader means a frame announced (or a caller tried to send) an empty nv list.
	ErrEmptyHeader = errors.New("proto: empty nv header")
	// ErrMalformed means the nv list is undecodable or its fields are inconsistent.
	ErrMalformed = errors.New("proto: malformed frame")
	// ErrSizeMismatch means the data length differs from the nv "size" field.
	ErrSizeMismatch = errors.New("proto: data length does not match the size field")
	// ErrHashMismatch means the data does not match its checksum.
	ErrHashMismatch = errors.New("proto: hash mismatch")
	// ErrUnknownAlgorithm means a checksum or compression name we do not implement.
	ErrUnknownAlgorithm = errors.New("proto: unknown algorithm")
	// ErrCorruptData means compressed data could not be decompressed.
	ErrCorruptData = errors.New("proto: corrupt compressed data")
)

// AppendHeader appends the 5-byte frame header for an nv list of nvLen bytes.
func AppendHeader(dst []byte, version uint8, nvLen int) []byte {
	return binary.LittleEndian.AppendUint32(append(dst, version), uint32(nvLen))
}

// EncodeFrame appends the frame header and the encoded nv list to dst. The data, if
// any, is sent separately by the caller (e.g. as a second element of net.Buffers).
func EncodeFrame(dst []byte, version uint8, l *nv.List) []byte {
	return l.AppendEncode(AppendHeader(dst, version, l.EncodedLen()))
}

// checkSize verifies that dataLen is what the list's "size" field announces (0 when the
// field is absent), so a frame never desynchronises the stream.
func checkSize(l *nv.List, dataLen int) error {
	want := 0
	if l.Has("size") {
		v, ok := l.Uint32("size")
		if !ok {
			return fmt.Errorf("%w: size field is not a uint32", ErrMalformed)
		}
		want = int(v)
	}
	if want != dataLen {
		return fmt.Errorf("%w: size field says %d, data has %d bytes", ErrSizeMismatch, want, dataLen)
	}
	return nil
}

// WriteFrame writes the header, the nv list and data to w. The list's "size" field must
// announce len(data) (EncodeData adds it). It makes one allocation for the header, so
// the replication hot path uses EncodeFrame with its own buffers instead.
func WriteFrame(w io.Writer, version uint8, l *nv.List, data []byte) error {
	n := l.EncodedLen()
	if n == 0 {
		return ErrEmptyHeader
	}
	if n > MaxNVSize {
		return fmt.Errorf("%w: nv list of %d bytes exceeds %d", ErrFrameTooLarge, n, MaxNVSize)
	}
	if err := checkSize(l, len(data)); err != nil {
		return err
	}
	hdr := EncodeFrame(make([]byte, 0, HeaderSize+n), version, l)
	var err error
	if len(data) == 0 {
		_, err = w.Write(hdr)
	} else {
		bufs := net.Buffers{hdr, data}
		_, err = bufs.WriteTo(w)
	}
	if err != nil {
		return fmt.Errorf("proto: write frame: %w", err)
	}
	return nil
}

// Reader reads frames from a stream. It reads exactly one frame per call and never
// past it, so the underlying reader can be handed to something else between frames
// (a TLS upgrade after the handshake); wrap a net.Conn in a bufio.Reader when that is
// not needed, to save system calls. A Reader is not safe for concurrent use.
type Reader struct {
	r       io.Reader
	maxData int
	hdr     [HeaderSize]byte
	nvBuf   []byte
	data    []byte
	list    nv.List
}

// NewReader returns a Reader that refuses data blobs larger than maxData bytes
// (MaxDataSize when maxData <= 0).
func NewReader(r io.Reader, maxData int) *Reader {
	if maxData <= 0 {
		maxData = MaxDataSize
	}
	return &Reader{r: r, maxData: maxData}
}

// readFull wraps io.ReadFull so that a stream ending inside a frame reports
// io.ErrUnexpectedEOF with what was being read.
func (r *Reader) readFull(p []byte, what string) error {
	if _, err := io.ReadFull(r.r, p); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("proto: read %s (%d bytes): %w", what, len(p), err)
	}
	return nil
}

// Next reads one frame: header, nv list and the data blob whose length is the list's
// "size" field. It returns the version from the sender's header. The list and data are
// owned by the Reader and valid only until the next call to Next; data is nil when the
// frame has none.
//
// A stream that ends cleanly between frames returns io.EOF. Next rejects a version above
// Version (ErrVersion), an nv length of 0 (ErrEmptyHeader) or above MaxNVSize
// (ErrFrameTooLarge), an undecodable list or a "size" field that is not a uint32
// (ErrMalformed), and data larger than the Reader's limit (ErrFrameTooLarge). The data
// pipeline is not reversed here; call DecodeData.
func (r *Reader) Next() (version uint8, l *nv.List, data []byte, err error) {
	r.list.Reset()
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		if err == io.EOF {
			return 0, nil, nil, io.EOF
		}
		return 0, nil, nil, fmt.Errorf("proto: read frame header: %w", err)
	}
	version = r.hdr[0]
	if version > Version {
		return 0, nil, nil, fmt.Errorf("%w: peer sent version %d, we speak up to %d", ErrVersion, version, Version)
	}
	size := binary.LittleEndian.Uint32(r.hdr[1:])
	if size == 0 {
		return 0, nil, nil, ErrEmptyHeader
	}
	if size > MaxNVSize {
		return 0, nil, nil, fmt.Errorf("%w: nv list of %d bytes exceeds %d", ErrFrameTooLarge, size, MaxNVSize)
	}
	if cap(r.nvBuf) < int(size) {
		r.nvBuf = make([]byte, size)
	}
	r.nvBuf = r.nvBuf[:size]
	if err := r.readFull(r.nvBuf, "nv list"); err != nil {
		return 0, nil, nil, err
	}
	if err := r.list.DecodeInto(r.nvBuf); err != nil {
		return 0, nil, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	var dlen uint32
	if r.list.Has("size") {
		var ok bool
		if dlen, ok = r.list.Uint32("size"); !ok {
			r.list.Reset()
			return 0, nil, nil, fmt.Errorf("%w: size field is not a uint32", ErrMalformed)
		}
	}
	if uint64(dlen) > uint64(r.maxData) {
		r.list.Reset()
		return 0, nil, nil, fmt.Errorf("%w: data of %d bytes exceeds %d", ErrFrameTooLarge, dlen, r.maxData)
	}
	if dlen > 0 {
		if cap(r.data) < int(dlen) {
			r.data = make([]byte, dlen)
		}
		data = r.data[:dlen]
		if err := r.readFull(data, "data"); err != nil {
			r.list.Reset()
			return 0, nil, nil, err
		}
	}
	return version, &r.list, data, nil
}
