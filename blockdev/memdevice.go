package blockdev

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
)

// MemDevice is an in-memory Device for tests.
//
// By default a write is durable as soon as WriteAt returns. In power-loss mode
// (SetPowerLossMode) the device behaves like a disk with a volatile write cache: writes
// after the last Flush are kept in a separate layer, visible to reads, and PowerLoss drops
// every one of them as a crash would, while Flush makes them durable. PowerLossPartial
// keeps a random subset instead, which is what a real disk may do and what exposes a
// missing ordering flush (data durable, bitmap not).
//
// The unflushed layer has sector granularity: each sector survives or is lost whole.
type MemDevice struct {
	mu      sync.RWMutex
	data    []byte // durable contents
	sector  int
	plm     bool
	pending map[int64][]byte // sector number → unflushed contents of the whole sector
	closed  bool
	flushes int
}

var _ Device = (*MemDevice)(nil)

// NewMemDevice returns a zero-filled device of size bytes. sectorSize is what SectorSize
// reports and the granularity of power loss; it must be a power of two, else 512 is
// used.
func NewMemDevice(size int64, sectorSize int) *MemDevice {
	if sectorSize <= 0 || sectorSize&(sectorSize-1) != 0 {
		sectorSize = fileSectorSize
	}
	return &MemDevice{
		data:    make([]byte, max(size, 0)),
		sector:  sectorSize,
		pending: make(map[int64][]byte),
	}
}

// SetPowerLossMode turns the volatile write cache on or off. Turning it off makes the
// unflushed writes durable, as a disk flushes its cache when the cache is disabled.
func (m *MemDevice) SetPowerLossMode(on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !on {
		m.applyPending()
	}
	m.plm = on
}

// PowerLoss drops every write since the last Flush, as a crash would.
func (m *MemDevice) PowerLoss() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.pending)
}

// PowerLossPartial simulates a crash in which the disk had written back some of its
// cache: each unflushed sector independently survives with probability keep, using a
// generator seeded with seed so a failing case can be replayed.
func (m *MemDevice) PowerLossPartial(seed uint64, keep float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rng := rand.New(rand.NewPCG(seed, 0))
	// Map iteration order is random; visit sectors in order so the seed decides alone.
	secs := make([]int64, 0, len(m.pending))
	for s := range m.pending {
		secs = append(secs, s)
	}
	slices.Sort(secs)
	for _, s := range secs {
		if rng.Float64() < keep {
			copy(m.data[s*int64(m.sector):], m.pending[s])
		}
	}
	clear(m.pending)
}

// Reopen clears the closed state so a test can restart an engine on the same "disk"
// after a simulated crash. Unflushed writes are kept unless PowerLoss was called.
func (m *MemDevice) Reopen() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = false
}

// Unflushed returns the number of sectors written since the last Flush in power-loss
// mode.
func (m *MemDevice) Unflushed() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.pending)
}

// Flushes returns how many times Flush succeeded.
func (m *MemDevice) Flushes() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.flushes
}

func (m *MemDevice) applyPending() {
	for s, b := range m.pending {
		copy(m.data[s*int64(m.sector):], b)
	}
	clear(m.pending)
}

func (m *MemDevice) errClosed(op string) error {
	return fmt.Errorf("memdevice %s: %w", op, os.ErrClosed)
}

// ReadAt implements Device.ReadAt.
func (m *MemDevice) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return 0, m.errClosed("read")
	}
	n, eof, err := checkRead(len(p), off, int64(len(m.data)))
	if err != nil {
		return 0, fmt.Errorf("memdevice: %w", err)
	}
	copy(p[:n], m.data[off:])
	if len(m.pending) > 0 && n > 0 {
		ss := int64(m.sector)
		end := off + int64(n)
		for s := off / ss; s*ss < end; s++ {
			b, ok := m.pending[s]
			if !ok {
				continue
			}
			lo, hi := max(s*ss, off), min((s+1)*ss, end)
			copy(p[lo-off:hi-off], b[lo-s*ss:hi-s*ss])
		}
	}
	return readResult(n, eof, nil)
}

// WriteAt implements Device.WriteAt.
func (m *MemDevice) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, m.errClosed("write")
	}
	if err := checkRange("write", off, int64(len(p)), int64(len(m.data))); err != nil {
		return 0, fmt.Errorf("memdevice: %w", err)
	}
	m.write(p, off)
	return len(p), nil
}

func (m *MemDevice) write(p []byte, off int64) {
	if !m.plm {
		copy(m.data[off:], p)
		return
	}
	ss := int64(m.sector)
	end := off + int64(len(p))
	for s := off / ss; s*ss < end; s++ {
		b, ok := m.pending[s]
		if !ok {
			b = make([]byte, ss)
			copy(b, m.data[s*ss:])
			m.pending[s] = b
		}
		lo, hi := max(s*ss, off), min((s+1)*ss, end)
		copy(b[lo-s*ss:hi-s*ss], p[lo-off:hi-off])
	}
}

// Flush implements Device.Flush: unflushed writes become durable.
func (m *MemDevice) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return m.errClosed("flush")
	}
	m.applyPending()
	m.flushes++
	return nil
}

// Discard implements Device.Discard: the range reads back as zeros, like a punched hole.
func (m *MemDevice) Discard(off, length int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return m.errClosed("discard")
	}
	if err := checkRange("discard", off, length, int64(len(m.data))); err != nil {
		return fmt.Errorf("memdevice: %w", err)
	}
	if !m.plm {
		clear(m.data[off : off+length])
		return nil
	}
	zeros := make([]byte, min(length, zeroChunk))
	for length > 0 {
		n := min(length, int64(len(zeros)))
		m.write(zeros[:n], off)
		off += n
		length -= n
	}
	return nil
}

// Size implements Device.Size.
func (m *MemDevice) Size() int64 { return int64(len(m.data)) }

// SectorSize implements Device.SectorSize.
func (m *MemDevice) SectorSize() int { return m.sector }

// Close implements Device.Close. Later operations fail until Reopen.
func (m *MemDevice) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return m.errClosed("close")
	}
	m.closed = true
	return nil
}
