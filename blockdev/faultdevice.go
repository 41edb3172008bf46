package blockdev

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
)

// Op names an operation of a Device for fault injection.
type Op int

// Operations a Fault can target. OpAny, the zero value, matches all four.
const (
	OpAny Op = iota
	OpRead
	OpWrite
	OpFlush
	OpDiscard
)

func (o Op) String() string {
	switch o {
	case OpAny:
		return "any"
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpFlush:
		return "flush"
	case OpDiscard:
		return "discard"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// ErrInjected is wrapped by every error a FaultDevice injects, next to the fault's
// Err (syscall.EIO by default), so tests can tell injected failures from real ones.
var ErrInjected = errors.New("blockdev: injected fault")

// Fault describes when a FaultDevice fails an operation. A fault matches operations of
// kind Op whose byte range overlaps [Off, Off+Len); Off and Len both 0 match any range,
// Len 0 with Off > 0 means "from Off to the end", and a ranged fault never matches
// Flush, which has no range. Of the matching operations the first After pass; after
// that each fails, or with probability Prob when 0 < Prob < 1. Times > 0 limits how
// often the fault fires (0 = unlimited). Err is the cause (nil = syscall.EIO); a failed
// operation is not performed at all.
type Fault struct {
	Op       Op
	Off, Len int64
	After    int
	Prob     float64
	Err      error
	Times    int
}

type faultState struct {
	Fault
	id    int
	seen  int
	fired int
}

func (f *faultState) matches(op Op, off, n int64, ranged bool) bool {
	if f.Op != OpAny && f.Op != op {
		return false
	}
	if f.Off == 0 && f.Len == 0 {
		return true
	}
	if !ranged {
		return false
	}
	end := off + max(n, 1)
	if f.Len == 0 {
		return end > f.Off
	}
	return off < f.Off+f.Len && end > f.Off
}

// FaultDevice wraps a Device and injects errors according to the faults registered
// with Inject. It is safe for concurrent use; with concurrent callers which operation
// hits a counted or random fault depends on scheduling.
type FaultDevice struct {
	d        Device
	mu       sync.Mutex
	rng      *rand.Rand
	faults   []*faultState // in id order, so evaluation is deterministic
	nextID   int
	injected int
}

var _ Device = (*FaultDevice)(nil)

// NewFaultDevice wraps d; seed drives the probabilistic faults.
func NewFaultDevice(d Device, seed int64) *FaultDevice {
	return &FaultDevice{d: d, rng: rand.New(rand.NewPCG(uint64(seed), 0x68617374))}
}

// Inject registers a fault and returns its id for Clear and Fired.
func (f *FaultDevice) Inject(fault Fault) (id int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextID++
	f.faults = append(f.faults, &faultState{Fault: fault, id: f.nextID})
	return f.nextID
}

// Clear removes a fault; unknown ids are ignored.
func (f *FaultDevice) Clear(id int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, fs := range f.faults {
		if fs.id == id {
			f.faults = append(f.faults[:i], f.faults[i+1:]...)
			return
		}
	}
}

// Injected returns how many operations failed because of injected faults.
func (f *FaultDevice) Injected() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.injected
}

// Fired returns how many times the fault id fired (0 for unknown or cleared ids).
func (f *FaultDevice) Fired(id int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fs := range f.faults {
		if fs.id == id {
			return fs.fired
		}
	}
	return 0
}

// check decides whether the operation fails. Every matching fault counts the
// operation, so After counts are independent of each other.
func (f *FaultDevice) check(op Op, off, n int64, ranged bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var hit *faultState
	for _, fs := range f.faults {
		if !fs.matches(op, off, n, ranged) {
			continue
		}
		fs.seen++
		if hit != nil || fs.seen <= fs.After || (fs.Times > 0 && fs.fired >= fs.Times) {
			continue
		}
		if fs.Prob > 0 && fs.Prob < 1 && f.rng.Float64() >= fs.Prob {
			continue
		}
		hit = fs
	}
	if hit == nil {
		return nil
	}
	hit.fired++
	f.injected++
	cause := hit.Err
	if cause == nil {
		cause = syscall.EIO
	}
	if !ranged {
		return fmt.Errorf("%w (fault %d): %s: %w", ErrInjected, hit.id, op, cause)
	}
	return fmt.Errorf("%w (fault %d): %s [%d,+%d): %w", ErrInjected, hit.id, op, off, n, cause)
}

// ReadAt implements Device.ReadAt.
func (f *FaultDevice) ReadAt(p []byte, off int64) (int, error) {
	if err := f.check(OpRead, off, int64(len(p)), true); err != nil {
		return 0, err
	}
	return f.d.ReadAt(p, off)
}

// WriteAt implements Device.WriteAt.
func (f *FaultDevice) WriteAt(p []byte, off int64) (int, error) {
	if err := f.check(OpWrite, off, int64(len(p)), true); err != nil {
		return 0, err
	}
	return f.d.WriteAt(p, off)
}

// Flush implements Device.Flush.
func (f *FaultDevice) Flush() error {
	if err := f.check(OpFlush, 0, 0, false); err != nil {
		return err
	}
	return f.d.Flush()
}

// Discard implements Device.Discard.
func (f *FaultDevice) Discard(off, length int64) error {
	if err := f.check(OpDiscard, off, length, true); err != nil {
		return err
	}
	return f.d.Discard(off, length)
}

// Size implements Device.Size.
func (f *FaultDevice) Size() int64 { return f.d.Size() }

// SectorSize implements Device.SectorSize.
func (f *FaultDevice) SectorSize() int { return f.d.SectorSize() }

// Close implements Device.Close; it is never failed.
func (f *FaultDevice) Close() error { return f.d.Close() }
