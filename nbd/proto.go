package nbd

import (
	"fmt"

	"hast/internal/bufpool"
)

// Magic numbers of the handshake and transmission phases.
const (
	magicNBD         = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt         = 0x49484156454f5054 // "IHAVEOPT"
	magicOptReply    = 0x0003e889045565a9
	magicRequest     = 0x25609513
	magicSimpleReply = 0x67446698
	magicStructReply = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1
)

// Option types.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
)

// Option reply types.
const (
	repAck              = 1
	repServer           = 2
	repInfo             = 3
	repFlagError        = 1 << 31
	repErrUnsup         = repFlagError | 1
	repErrPolicy        = repFlagError | 2
	repErrInvalid       = repFlagError | 3
	repErrPlatform      = repFlagError | 4
	repErrTLSReqd       = repFlagError | 5
	repErrUnknown       = repFlagError | 6
	repErrShutdown      = repFlagError | 7
	repErrBlockSizeReqd = repFlagError | 8
	repErrTooBig        = repFlagError | 9
)

// Information types of NBD_REP_INFO.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Transmission flags.
const (
	flagHasFlags        = 1 << 0
	flagSendFlush       = 1 << 2
	flagSendFUA         = 1 << 3
	flagSendTrim        = 1 << 5
	flagSendWriteZeroes = 1 << 6
	flagCanMultiConn    = 1 << 8

	// exportFlags is what every export offers: the Volume has flush, discard and is shared by
	// all connections, so a flush on one connection covers writes completed on any other.
	exportFlags = flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendWriteZeroes |
		flagCanMultiConn
)

// Command types.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Command flags.
const (
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4
)

// Sizes of the fixed parts of messages.
const (
	requestSize     = 28
	simpleReplySize = 16
	optHeaderSize   = 16
	optReplySize    = 20
)

// Limits.
const (
	// MaxRequest is the largest READ or WRITE payload served (and advertised as the maximum
	// block size); it is also the largest the spec asks clients to assume without negotiation.
	MaxRequest = 32 << 20
	// preferredBlock is the advertised preferred block size (floored at the sector size).
	preferredBlock = 4096
	// maxOptionLen caps the data of one option; no valid option comes close to it.
	maxOptionLen = 64 << 10
	// maxOptions caps the options of one handshake, so a client cannot loop forever.
	maxOptions = 4096
	// maxNameLen is the spec's limit on strings such as export names.
	maxNameLen = 4096
	// maxInFlight bounds the requests one connection has being served at once.
	maxInFlight = 128
)

// Payload memory (see budget.go): the bytes of request buffers held at once (write data being
// received or written, read data being read or waiting to be sent).
const (
	// MaxInFlightBytes bounds what all the connections of one Server hold together. Three
	// resources written at depth 128 with 1 MiB requests use all of it and run as fast as with
	// 64 MiB each (`hast bench --daemon-rss`): at 800 MiB/s it is 80 ms of writes, far more
	// than a fullsync round trip.
	MaxInFlightBytes = 64 << 20
	// reserveBytes of it are kept for connections that hold nothing: one request of any size.
	reserveBytes = MaxRequest
	// connInFlightBytes bounds what one connection holds: at least MaxRequest, so that any
	// request fits.
	connInFlightBytes = MaxInFlightBytes - reserveBytes
)

// Errno is an error value of an NBD reply. The client returns it (wrapped) when the server
// answers a request with an error.
type Errno uint32

// Error values defined by the protocol.
const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

var errnoText = map[Errno][2]string{
	EPERM:     {"NBD_EPERM", "operation not permitted"},
	EIO:       {"NBD_EIO", "input/output error"},
	ENOMEM:    {"NBD_ENOMEM", "cannot allocate memory"},
	EINVAL:    {"NBD_EINVAL", "invalid argument"},
	ENOSPC:    {"NBD_ENOSPC", "no space left on device"},
	EOVERFLOW: {"NBD_EOVERFLOW", "value too large"},
	ENOTSUP:   {"NBD_ENOTSUP", "operation not supported"},
	ESHUTDOWN: {"NBD_ESHUTDOWN", "server is shutting down"},
}

// String returns the protocol's name for e, such as "NBD_EINVAL".
func (e Errno) String() string {
	if t, ok := errnoText[e]; ok {
		return t[0]
	}
	return fmt.Sprintf("NBD_E%d", uint32(e))
}

func (e Errno) Error() string {
	if t, ok := errnoText[e]; ok {
		return t[1] + " (" + t[0] + ")"
	}
	return fmt.Sprintf("NBD error %d", uint32(e))
}

func cmdName(t uint16) string {
	switch t {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdDisc:
		return "disc"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdCache:
		return "cache"
	case cmdWriteZeroes:
		return "write-zeroes"
	case cmdBlockStatus:
		return "block-status"
	}
	return fmt.Sprintf("cmd-%d", t)
}

func optName(o uint32) string {
	switch o {
	case optExportName:
		return "export-name"
	case optAbort:
		return "abort"
	case optList:
		return "list"
	case optStartTLS:
		return "starttls"
	case optInfo:
		return "info"
	case optGo:
		return "go"
	case optStructuredReply:
		return "structured-reply"
	}
	return fmt.Sprintf("opt-%d", o)
}

// Buffer pools by power-of-two size class, from 512 bytes up to MaxRequest, so that the data
// path does not allocate per request.
const (
	minClassShift = 9
	maxClassShift = 25 // MaxRequest
)

var bufs = bufpool.New(minClassShift, maxClassShift)

// getBuf returns a buffer of length n (n <= MaxRequest) from the pools.
func getBuf(n int) []byte { return bufs.Get(n) }

// bufCap is the capacity of the buffer getBuf(n) returns.
func bufCap(n int) int { return bufs.Cap(n) }

// putBuf returns a buffer obtained from getBuf.
func putBuf(b []byte) { bufs.Put(b) }
