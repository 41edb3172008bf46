package uring

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrUnsupported is wrapped by setup errors when this kernel cannot run io_uring for us:
// built without it, disabled by sysctl or policy, or too old for the opcodes we need.
// Callers fall back to blocking system calls.
var ErrUnsupported = errors.New("uring: io_uring unsupported")

// disabledSysctl is the knob (Linux 6.6+) that turns io_uring off for everyone (2) or
// for processes outside io_uring_group (1).
const disabledSysctl = "/proc/sys/kernel/io_uring_disabled"

// RawRing is one io_uring instance with its rings mapped: the kernel object as it is,
// for a single owner. Nothing here is safe for concurrent use, and with
// [SetupSingleIssuer] every submission must come from the thread that set it up (lock
// it with runtime.LockOSThread).
type RawRing struct {
	fd     int
	params Params

	sqRing, cqRing, sqesMem []byte // cqRing aliases sqRing with FeatSingleMmap

	sqKHead, sqKTail, sqKFlags *uint32
	sqMask, sqEntries          uint32
	sqeSize                    uintptr
	sqes                       unsafe.Pointer
	sqeHead, sqeTail           uint32 // published to the kernel / handed out to the caller

	cqKHead, cqKTail, cqKOverflow *uint32
	cqMask, cqEntries             uint32
	cqeSize                       uintptr
	cqes                          unsafe.Pointer
}

// SetupRaw creates a ring with at least entries submission slots (rounded up to a power
// of two by the kernel) and the given setup flags, and maps it. Errors meaning the kernel
// cannot do io_uring wrap [ErrUnsupported]; an EINVAL for flags this kernel does not know
// is returned as is so the caller can retry without them.
func SetupRaw(entries uint32, flags uint32) (*RawRing, error) {
	r := &RawRing{fd: -1}
	r.params.Flags = flags
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&r.params)), 0)
	if errno != 0 {
		return nil, setupError(errno, flags)
	}
	r.fd = int(fd)
	if err := r.mmap(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func setupError(errno syscall.Errno, flags uint32) error {
	switch errno {
	case unix.ENOSYS:
		return fmt.Errorf("io_uring_setup: %w (kernel built without io_uring): %w", ErrUnsupported, errno)
	case unix.EPERM, unix.EACCES:
		reason := "denied by policy"
		if b, err := os.ReadFile(disabledSysctl); err == nil && strings.TrimSpace(string(b)) != "0" {
			reason = disabledSysctl + " = " + strings.TrimSpace(string(b))
		}
		return fmt.Errorf("io_uring_setup: %w (%s): %w", ErrUnsupported, reason, errno)
	}
	return fmt.Errorf("io_uring_setup (flags %#x): %w", flags, errno)
}

func (r *RawRing) mmap() error {
	p := &r.params
	if p.Features&FeatSingleMmap == 0 {
		// Kernels before 5.4 map the two rings separately; they also lack
		// IORING_OP_READ/WRITE, so there is nothing to gain from supporting them.
		return fmt.Errorf("io_uring: %w (kernel lacks IORING_FEAT_SINGLE_MMAP, needs Linux 5.4+)", ErrUnsupported)
	}
	r.sqeSize, r.cqeSize = unsafe.Sizeof(SQE{}), unsafe.Sizeof(CQE{})
	if p.Flags&SetupSQE128 != 0 {
		r.sqeSize = unsafe.Sizeof(SQE128{})
	}
	if p.Flags&SetupCQE32 != 0 {
		r.cqeSize = unsafe.Sizeof(CQE32{})
	}
	sqSize := uintptr(p.sqOff.Array) + uintptr(p.SQEntries)*4
	cqSize := uintptr(p.cqOff.CQEs) + uintptr(p.CQEntries)*r.cqeSize
	size := max(sqSize, cqSize)
	ring, err := unix.Mmap(r.fd, offSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("io_uring: mmap rings (%d bytes): %w", size, err)
	}
	r.sqRing, r.cqRing = ring, ring
	sqes, err := unix.Mmap(r.fd, offSQEs, int(uintptr(p.SQEntries)*r.sqeSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("io_uring: mmap SQE array: %w", err)
	}
	r.sqesMem = sqes
	r.sqes = unsafe.Pointer(&sqes[0])

	u32 := func(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&ring[off])) }
	r.sqKHead, r.sqKTail, r.sqKFlags = u32(p.sqOff.Head), u32(p.sqOff.Tail), u32(p.sqOff.Flags)
	r.sqMask, r.sqEntries = *u32(p.sqOff.RingMask), *u32(p.sqOff.RingEntries)
	r.cqKHead, r.cqKTail, r.cqKOverflow = u32(p.cqOff.Head), u32(p.cqOff.Tail), u32(p.cqOff.Overflow)
	r.cqMask, r.cqEntries = *u32(p.cqOff.RingMask), *u32(p.cqOff.RingEntries)
	r.cqes = unsafe.Pointer(&ring[p.cqOff.CQEs])
	// SQE slots are always filled in ring order, so the indirection array is the
	// identity and is written once.
	array := unsafe.Slice(u32(p.sqOff.Array), r.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.sqeHead = atomic.LoadUint32(r.sqKTail)
	r.sqeTail = r.sqeHead
	return nil
}

// Close unmaps the rings and closes the ring descriptor. The kernel cancels what it can
// and waits for the rest; buffers of operations still in flight must stay valid until
// then, so callers drain their completions first.
func (r *RawRing) Close() error {
	var errs []error
	for _, m := range [][]byte{r.sqesMem, r.sqRing} {
		if m != nil {
			if err := unix.Munmap(m); err != nil {
				errs = append(errs, fmt.Errorf("io_uring: munmap: %w", err))
			}
		}
	}
	r.sqesMem, r.sqRing, r.cqRing = nil, nil, nil
	if r.fd >= 0 {
		if err := unix.Close(r.fd); err != nil {
			errs = append(errs, fmt.Errorf("io_uring: close: %w", err))
		}
		r.fd = -1
	}
	return errors.Join(errs...)
}

// FD returns the ring's file descriptor.
func (r *RawRing) FD() int { return r.fd }

// Params returns the parameters the kernel completed at setup: sizes, effective flags
// and features.
func (r *RawRing) Params() Params { return r.params }

// SQEntries returns the number of submission slots.
func (r *RawRing) SQEntries() uint32 { return r.sqEntries }

// CQEntries returns the number of completion slots.
func (r *RawRing) CQEntries() uint32 { return r.cqEntries }

// SQSpace returns how many SQEs can be handed out before the kernel consumes some.
func (r *RawRing) SQSpace() uint32 {
	return r.sqEntries - (r.sqeTail - atomic.LoadUint32(r.sqKHead))
}

func (r *RawRing) nextSlot() unsafe.Pointer {
	if r.sqeTail-atomic.LoadUint32(r.sqKHead) >= r.sqEntries {
		return nil
	}
	p := unsafe.Add(r.sqes, uintptr(r.sqeTail&r.sqMask)*r.sqeSize)
	r.sqeTail++
	return p
}

// NextSQE hands out the next free submission slot, or nil when the SQ is full. The slot
// holds stale data: use one of the Prep methods or Reset. It goes to the kernel at the
// next [RawRing.Submit] or [RawRing.Enter].
func (r *RawRing) NextSQE() *SQE {
	return (*SQE)(r.nextSlot())
}

// NextSQE128 is NextSQE for a ring set up with [SetupSQE128]; it returns nil on other
// rings.
func (r *RawRing) NextSQE128() *SQE128 {
	if r.params.Flags&SetupSQE128 == 0 {
		return nil
	}
	return (*SQE128)(r.nextSlot())
}

// flush publishes handed-out SQEs by moving the kernel-visible tail and returns how many
// are waiting for io_uring_enter.
func (r *RawRing) flush() uint32 {
	if r.sqeTail != r.sqeHead {
		r.sqeHead = r.sqeTail
		// The atomic store orders the SQE contents before the tail, as the kernel's
		// smp_load_acquire of the tail expects.
		atomic.StoreUint32(r.sqKTail, r.sqeTail)
	}
	return r.sqeTail - atomic.LoadUint32(r.sqKHead)
}

// Enter publishes handed-out SQEs and calls io_uring_enter with them, waiting for at
// least minComplete completions when minComplete > 0. It returns the number of SQEs the
// kernel consumed. EINTR is returned as is, and the kernel may also return before
// minComplete completions are there (after running task work, for example): callers
// check the CQ and enter again as needed.
func (r *RawRing) Enter(minComplete uint32, flags uint32) (int, error) {
	return r.enter(r.flush(), minComplete, flags)
}

func (r *RawRing) enter(toSubmit, minComplete, flags uint32) (int, error) {
	if minComplete > 0 {
		flags |= EnterGetEvents
	}
	n, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(minComplete), uintptr(flags), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// Submit publishes handed-out SQEs and submits them without waiting.
func (r *RawRing) Submit() (int, error) {
	for {
		n, err := r.Enter(0, 0)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// SubmitAndWait publishes handed-out SQEs, submits them and waits until at least want
// completions are in the CQ, entering the kernel again after interruptions and early
// returns.
func (r *RawRing) SubmitAndWait(want uint32) (int, error) {
	total := 0
	for {
		n, err := r.Enter(want, EnterGetEvents)
		total += n
		if err != nil && err != unix.EINTR {
			return total, err
		}
		if r.CQReady() >= want {
			return total, nil
		}
	}
}

// CQReady returns how many completions are waiting in the CQ.
func (r *RawRing) CQReady() uint32 {
	return atomic.LoadUint32(r.cqKTail) - atomic.LoadUint32(r.cqKHead)
}

// PeekCQE returns the oldest unconsumed completion, or nil when the CQ is empty. The
// entry stays valid until [RawRing.AdvanceCQ] releases it.
func (r *RawRing) PeekCQE() *CQE {
	head := atomic.LoadUint32(r.cqKHead)
	if head == atomic.LoadUint32(r.cqKTail) {
		return nil
	}
	return (*CQE)(unsafe.Add(r.cqes, uintptr(head&r.cqMask)*r.cqeSize))
}

// PeekCQE32 is PeekCQE for a ring set up with [SetupCQE32]; nil on other rings.
func (r *RawRing) PeekCQE32() *CQE32 {
	if r.params.Flags&SetupCQE32 == 0 {
		return nil
	}
	return (*CQE32)(unsafe.Pointer(r.PeekCQE()))
}

// AdvanceCQ releases n consumed completions back to the kernel.
func (r *RawRing) AdvanceCQ(n uint32) {
	atomic.StoreUint32(r.cqKHead, atomic.LoadUint32(r.cqKHead)+n)
}

// CQOverflow returns the kernel's count of completions it could not post (without
// FeatNoDrop) or had to buffer.
func (r *RawRing) CQOverflow() uint32 { return atomic.LoadUint32(r.cqKOverflow) }

// Register calls io_uring_register(2) with opcode, arg and nrArgs.
func (r *RawRing) Register(opcode uint32, arg unsafe.Pointer, nrArgs uint32) error {
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), uintptr(opcode), uintptr(arg), uintptr(nrArgs), 0, 0)
	if errno != 0 {
		return fmt.Errorf("io_uring_register %d: %w", opcode, errno)
	}
	return nil
}

// probeOps bounds the opcode table asked of the kernel; it only needs to cover the
// opcodes hast uses.
const probeOps = 64

// probe is struct io_uring_probe followed by its ops (struct io_uring_probe_op).
type probe struct {
	LastOp uint8
	OpsLen uint8
	resv   uint16
	resv2  [3]uint32
	Ops    [probeOps]struct {
		Op    uint8
		resv  uint8
		Flags uint16 // IO_URING_OP_SUPPORTED = 1
		resv2 uint32
	}
}

// Supported reports whether this kernel implements all of ops (IORING_REGISTER_PROBE,
// Linux 5.6+); kernels without the probe support none of the opcodes added with it,
// READ and WRITE among them.
func (r *RawRing) Supported(ops ...uint8) (bool, error) {
	var p probe
	if err := r.Register(RegisterProbe, unsafe.Pointer(&p), probeOps); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return false, nil
		}
		return false, err
	}
	for _, op := range ops {
		if op > p.LastOp || int(op) >= probeOps || p.Ops[op].Flags&1 == 0 {
			return false, nil
		}
	}
	return true, nil
}
