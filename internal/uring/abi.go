package uring

import "unsafe"

// The kernel ABI of include/uapi/linux/io_uring.h. Only what hast uses is named; the
// numbers are fixed by the kernel and never change once released.

// Setup flags (io_uring_params.flags).
const (
	SetupIOPoll       = 1 << 0
	SetupSQPoll       = 1 << 1
	SetupSQAff        = 1 << 2
	SetupCQSize       = 1 << 3
	SetupClamp        = 1 << 4
	SetupAttachWQ     = 1 << 5
	SetupRDisabled    = 1 << 6
	SetupSubmitAll    = 1 << 7
	SetupCoopTaskrun  = 1 << 8
	SetupTaskrunFlag  = 1 << 9
	SetupSQE128       = 1 << 10 // 128-byte SQEs, required by IORING_OP_URING_CMD users such as ublk
	SetupCQE32        = 1 << 11 // 32-byte CQEs
	SetupSingleIssuer = 1 << 12
	SetupDeferTaskrun = 1 << 13
	SetupNoMmap       = 1 << 14
	SetupRegisteredFD = 1 << 15
	SetupNoSQArray    = 1 << 16
)

// Feature flags reported by the kernel (io_uring_params.features).
const (
	FeatSingleMmap     = 1 << 0
	FeatNoDrop         = 1 << 1
	FeatSubmitStable   = 1 << 2
	FeatRWCurPos       = 1 << 3
	FeatCurPersonality = 1 << 4
	FeatFastPoll       = 1 << 5
	FeatPoll32Bits     = 1 << 6
	FeatSQPollNonfixed = 1 << 7
	FeatExtArg         = 1 << 8
	FeatNativeWorkers  = 1 << 9
	FeatRsrcTags       = 1 << 10
	FeatCQESkip        = 1 << 11
	FeatLinkedFile     = 1 << 12
)

// Opcodes (io_uring_sqe.opcode). The enum is positional in the header.
const (
	OpNop         = 0
	OpReadv       = 1
	OpWritev      = 2
	OpFsync       = 3
	OpReadFixed   = 4
	OpWriteFixed  = 5
	OpPollAdd     = 6
	OpPollRemove  = 7
	OpAsyncCancel = 14
	OpFallocate   = 17
	OpRead        = 22
	OpWrite       = 23
	OpURingCmd    = 46
)

// SQE flags (io_uring_sqe.flags).
const (
	SQEFixedFile      = 1 << 0
	SQEIODrain        = 1 << 1
	SQEIOLink         = 1 << 2
	SQEIOHardlink     = 1 << 3
	SQEAsync          = 1 << 4
	SQEBufferSelect   = 1 << 5
	SQECQESkipSuccess = 1 << 6
)

// Per-opcode flags (the io_uring_sqe.op_flags union).
const (
	FsyncDatasync  = 1 << 0 // fsync_flags: fdatasync instead of fsync
	URingCmdFixed  = 1 << 0 // uring_cmd_flags: the command uses a registered buffer
	AsyncCancelAll = 1 << 0 // cancel_flags: every match, not only the first
	AsyncCancelFD  = 1 << 1 // cancel_flags: match by fd instead of user_data
	AsyncCancelAny = 1 << 2 // cancel_flags: match any request
)

// CQE flags (io_uring_cqe.flags).
const (
	CQEFBuffer       = 1 << 0
	CQEFMore         = 1 << 1
	CQEFSockNonempty = 1 << 2
	CQEFNotif        = 1 << 3
)

// io_uring_enter flags. [RawRing.Enter] adds EnterGetEvents itself when asked to wait.
const (
	EnterGetEvents    = 1 << 0
	EnterSQWakeup     = 1 << 1
	EnterSQWait       = 1 << 2
	EnterExtArg       = 1 << 3
	EnterRegisteredFD = 1 << 4
)

// io_uring_register opcodes, for [RawRing.Register].
const (
	RegisterBuffers     = 0
	UnregisterBuffers   = 1
	RegisterFiles       = 2
	UnregisterFiles     = 3
	RegisterEventFD     = 4
	UnregisterEventFD   = 5
	RegisterProbe       = 8
	RegisterEnableRings = 12
)

// mmap offsets of the rings and the SQE array.
const (
	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000
)

// SQE is struct io_uring_sqe: one 64-byte submission. Unions are flattened to the
// member hast uses; the accessor methods name the others.
type SQE struct {
	Opcode      uint8
	Flags       uint8
	IOPrio      uint16
	FD          int32
	Off         uint64 // also addr2, or cmd_op (low 32 bits) for URING_CMD
	Addr        uint64 // buffer address, or splice_off_in
	Len         uint32
	OpFlags     uint32 // rw_flags, fsync_flags, cancel_flags, uring_cmd_flags, ...
	UserData    uint64
	BufIndex    uint16 // buf_index or buf_group
	Personality uint16
	SpliceFDIn  int32 // also file_index
	Addr3       uint64
	pad2        uint64
}

// SQE128 is the slot layout of a ring set up with [SetupSQE128]: the ordinary SQE
// followed by 64 more bytes, which together with Addr3 and the padding form the 80-byte
// command area of IORING_OP_URING_CMD.
type SQE128 struct {
	SQE
	ext [64]byte
}

// CQE is struct io_uring_cqe.
type CQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

// CQE32 is the entry of a ring set up with [SetupCQE32]: a CQE and 16 bytes the
// operation may fill (URING_CMD passthrough results).
type CQE32 struct {
	CQE
	Big [2]uint64
}

// sqringOffsets is struct io_sqring_offsets.
type sqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

// cqringOffsets is struct io_cqring_offsets.
type cqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, CQEs, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

// Params is struct io_uring_params: filled in by the caller with flags (and sizes for
// [SetupCQSize]) and completed by the kernel.
type Params struct {
	SQEntries    uint32
	CQEntries    uint32
	Flags        uint32
	SQThreadCPU  uint32
	SQThreadIdle uint32
	Features     uint32
	WQFD         uint32
	resv         [3]uint32
	sqOff        sqringOffsets
	cqOff        cqringOffsets
}

// Compile-time checks against the kernel ABI: a negative array length (or an
// overflowing constant) stops the build if a layout drifts.
var (
	_ [64 - unsafe.Sizeof(SQE{})]struct{}
	_ [unsafe.Sizeof(SQE{}) - 64]struct{}
	_ [128 - unsafe.Sizeof(SQE128{})]struct{}
	_ [unsafe.Sizeof(SQE128{}) - 128]struct{}
	_ [16 - unsafe.Sizeof(CQE{})]struct{}
	_ [unsafe.Sizeof(CQE{}) - 16]struct{}
	_ [32 - unsafe.Sizeof(CQE32{})]struct{}
	_ [unsafe.Sizeof(CQE32{}) - 32]struct{}
	_ [120 - unsafe.Sizeof(Params{})]struct{}
	_ [unsafe.Sizeof(Params{}) - 120]struct{}
	_ [48 - unsafe.Offsetof(SQE{}.Addr3)]struct{}
	_ [unsafe.Offsetof(SQE{}.Addr3) - 48]struct{}
	_ [32 - unsafe.Offsetof(SQE{}.UserData)]struct{}
	_ [unsafe.Offsetof(SQE{}.UserData) - 32]struct{}
)

// CmdOp returns the URING_CMD sub-command (the low half of the off/addr2 union).
func (s *SQE) CmdOp() uint32 { return uint32(s.Off) }

// SetCmdOp sets the URING_CMD sub-command, leaving the reserved upper half zero.
func (s *SQE) SetCmdOp(op uint32) { s.Off = uint64(op) }

// cmdOffset is where io_uring_sqe.cmd starts (the addr3 union).
const cmdOffset = 48

// Cmd returns the 16-byte command area of an ordinary SQE (io_uring_sqe.cmd).
func (s *SQE) Cmd() []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(&s.Addr3)), 64-cmdOffset)
}

// Cmd returns the 80-byte command area of a 128-byte SQE, the payload of
// IORING_OP_URING_CMD (for ublk, struct ublksrv_io_cmd).
func (s *SQE128) Cmd() []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(&s.Addr3)), 128-cmdOffset)
}

// Reset zeroes the entry; slots are reused, and stale fields would be read by the kernel.
func (s *SQE) Reset() { *s = SQE{} }

// Reset zeroes the whole 128-byte entry.
func (s *SQE128) Reset() { *s = SQE128{} }

// PrepRead fills s for IORING_OP_READ of len(p) bytes at off. The caller keeps p alive
// until the completion is consumed.
func (s *SQE) PrepRead(fd int, p []byte, off int64, userData uint64) {
	s.prepRW(OpRead, fd, p, off, userData)
}

// PrepWrite fills s for IORING_OP_WRITE.
func (s *SQE) PrepWrite(fd int, p []byte, off int64, userData uint64) {
	s.prepRW(OpWrite, fd, p, off, userData)
}

func (s *SQE) prepRW(op uint8, fd int, p []byte, off int64, userData uint64) {
	*s = SQE{Opcode: op, FD: int32(fd), Off: uint64(off), Len: uint32(len(p)), UserData: userData}
	if len(p) > 0 {
		s.Addr = uint64(uintptr(unsafe.Pointer(unsafe.SliceData(p))))
	}
}

// PrepFsync fills s for IORING_OP_FSYNC; flags is 0 or [FsyncDatasync].
func (s *SQE) PrepFsync(fd int, flags uint32, userData uint64) {
	*s = SQE{Opcode: OpFsync, FD: int32(fd), OpFlags: flags, UserData: userData}
}

// PrepFallocate fills s for IORING_OP_FALLOCATE, which keeps its arguments in unusual
// fields: the mode in len and the length in addr.
func (s *SQE) PrepFallocate(fd int, mode uint32, off, length int64, userData uint64) {
	*s = SQE{Opcode: OpFallocate, FD: int32(fd), Off: uint64(off), Addr: uint64(length), Len: mode, UserData: userData}
}

// PrepNop fills s for IORING_OP_NOP.
func (s *SQE) PrepNop(userData uint64) { *s = SQE{Opcode: OpNop, UserData: userData} }

// PrepCancel fills s for IORING_OP_ASYNC_CANCEL of the request submitted with target as
// its user_data.
func (s *SQE) PrepCancel(target uint64, flags uint32, userData uint64) {
	*s = SQE{Opcode: OpAsyncCancel, FD: -1, Addr: target, OpFlags: flags, UserData: userData}
}

// PrepURingCmd fills the fixed part of s for IORING_OP_URING_CMD on fd with sub-command
// op; the payload goes into [SQE128.Cmd].
func (s *SQE128) PrepURingCmd(fd int, op uint32, userData uint64) {
	*s = SQE128{}
	s.Opcode = OpURingCmd
	s.FD = int32(fd)
	s.SetCmdOp(op)
	s.UserData = userData
}
