package ublk

// Kernel ABI of ublk_drv, from include/uapi/linux/ublk_cmd.h (Linux 6.12). abi_test.go checks
// every value and layout here against that header compiled with gcc.

// ioctl-style encoding of command numbers (_IOC from include/uapi/asm-generic/ioctl.h).
const (
	iocWrite = 1
	iocRead  = 2
)

func ioc(dir, nr, size uint32) uint32 { return dir<<30 | size<<16 | uint32('u')<<8 | nr }

// Control commands (on /dev/ublk-control).
var (
	cmdGetDevInfo        = ioc(iocRead, 0x02, ctrlCmdSize)
	cmdAddDev            = ioc(iocRead|iocWrite, 0x04, ctrlCmdSize)
	cmdDelDev            = ioc(iocRead|iocWrite, 0x05, ctrlCmdSize)
	cmdDelDevAsync       = ioc(iocRead, 0x14, ctrlCmdSize)
	cmdStartDev          = ioc(iocRead|iocWrite, 0x06, ctrlCmdSize)
	cmdStopDev           = ioc(iocRead|iocWrite, 0x07, ctrlCmdSize)
	cmdSetParams         = ioc(iocRead|iocWrite, 0x08, ctrlCmdSize)
	cmdGetParams         = ioc(iocRead, 0x09, ctrlCmdSize)
	cmdStartUserRecovery = ioc(iocRead|iocWrite, 0x10, ctrlCmdSize)
	cmdEndUserRecovery   = ioc(iocRead|iocWrite, 0x11, ctrlCmdSize)
	cmdGetFeatures       = ioc(iocRead, 0x13, ctrlCmdSize)
	ioFetchReq           = ioc(iocRead|iocWrite, 0x20, ioCmdSize)
	ioCommitAndFetchReq  = ioc(iocRead|iocWrite, 0x21, ioCmdSize)
)

// Feature flags (UBLK_F_*), in GET_FEATURES' mask and ublksrv_ctrl_dev_info.flags.
const (
	FeatureZeroCopy            = 1 << 0
	FeatureURingCmdCompInTask  = 1 << 1
	FeatureNeedGetData         = 1 << 2
	FeatureUserRecovery        = 1 << 3
	FeatureUserRecoveryReissue = 1 << 4
	FeatureUnprivilegedDev     = 1 << 5
	FeatureCmdIoctlEncode      = 1 << 6
	FeatureUserCopy            = 1 << 7
	FeatureZoned               = 1 << 8
)

// Device states (UBLK_S_DEV_*).
const (
	stateDead     = 0
	stateLive     = 1
	stateQuiesced = 2
)

// Request operations (UBLK_IO_OP_*) and flags (UBLK_IO_F_*) in ublksrv_io_desc.op_flags.
const (
	opRead        = 0
	opWrite       = 1
	opFlush       = 2
	opDiscard     = 3
	opWriteSame   = 4
	opWriteZeroes = 5

	ioFlagFUA     = 1 << 13
	ioFlagNoUnmap = 1 << 15
)

// I/O command results (UBLK_IO_RES_*); ABORT is -ENODEV.
const (
	ioResOK          = 0
	ioResNeedGetData = 1
)

// Offsets into /dev/ublkcN.
const (
	cmdBufOffset  = 0          // UBLKSRV_CMD_BUF_OFFSET: mmap of the descriptors
	ioBufOffset   = 0x80000000 // UBLKSRV_IO_BUF_OFFSET: pread/pwrite with USER_COPY
	maxQueueDepth = 4096       // UBLK_MAX_QUEUE_DEPTH
	ioBufBits     = 25         // UBLK_IO_BUF_BITS
	tagBits       = 16         // UBLK_TAG_BITS
	tagOff        = ioBufBits  // UBLK_TAG_OFF
	qidOff        = tagOff + tagBits
)

// Parameter types and attributes.
const (
	paramTypeBasic   = 1 << 0
	paramTypeDiscard = 1 << 1

	attrReadOnly      = 1 << 0
	attrVolatileCache = 1 << 2
	attrFUA           = 1 << 3
)

// ctrlCmd is struct ublksrv_ctrl_cmd, the payload of a control command.
type ctrlCmd struct {
	DevID      uint32
	QueueID    uint16
	Len        uint16
	Addr       uint64
	Data       uint64
	DevPathLen uint16
	Pad        uint16
	Reserved   uint32
}

const ctrlCmdSize = 32

// DevInfo is struct ublksrv_ctrl_dev_info.
type DevInfo struct {
	NrHWQueues    uint16
	QueueDepth    uint16
	State         uint16
	Pad0          uint16
	MaxIOBufBytes uint32
	DevID         uint32
	ServerPID     int32
	Pad1          uint32
	Flags         uint64
	ServerFlags   uint64
	OwnerUID      uint32
	OwnerGID      uint32
	Reserved1     uint64
	Reserved2     uint64
}

// ioDesc is struct ublksrv_io_desc, one per tag in the mapped descriptor array.
type ioDesc struct {
	OpFlags     uint32
	NrSectors   uint32
	StartSector uint64
	Addr        uint64
}

const ioDescSize = 24

// ioCmd is struct ublksrv_io_cmd, the payload of FETCH_REQ and COMMIT_AND_FETCH_REQ.
type ioCmd struct {
	QID    uint16
	Tag    uint16
	Result int32
	Addr   uint64
}

const ioCmdSize = 16

type paramBasic struct {
	Attrs            uint32
	LogicalBSShift   uint8
	PhysicalBSShift  uint8
	IOOptShift       uint8
	IOMinShift       uint8
	MaxSectors       uint32
	ChunkSectors     uint32
	DevSectors       uint64
	VirtBoundaryMask uint64
}

type paramDiscard struct {
	DiscardAlignment      uint32
	DiscardGranularity    uint32
	MaxDiscardSectors     uint32
	MaxWriteZeroesSectors uint32
	MaxDiscardSegments    uint16
	Reserved0             uint16
}

type paramDevt struct {
	CharMajor, CharMinor, DiskMajor, DiskMinor uint32
}

type paramZoned struct {
	MaxOpenZones         uint32
	MaxActiveZones       uint32
	MaxZoneAppendSectors uint32
	Reserved             [20]uint8
}

// params is struct ublk_params of Linux 6.12 (newer kernels append more; the driver accepts a
// shorter len).
type params struct {
	Len     uint32
	Types   uint32
	Basic   paramBasic
	Discard paramDiscard
	Devt    paramDevt
	Zoned   paramZoned
}

// userCopyOffset is the /dev/ublkcN file position of byte 0 of request (q, tag) with USER_COPY.
func userCopyOffset(q, tag uint16) int64 {
	return ioBufOffset + int64(q)<<qidOff + int64(tag)<<tagOff
}

// descOffset is the mmap offset of queue q's descriptor array, and descLen its length for
// depth tags; both are page multiples.
func descOffset(q uint16, page int) int64 {
	return cmdBufOffset + int64(q)*int64(roundUp(maxQueueDepth*ioDescSize, page))
}

func descLen(depth, page int) int { return roundUp(depth*ioDescSize, page) }

func roundUp(n, to int) int { return (n + to - 1) / to * to }
