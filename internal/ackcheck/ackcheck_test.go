package ackcheck

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestBlockEncodeDecode(t *testing.T) {
	good := make([]byte, BlockSize)
	EncodeBlock(good, 8192, 42, 3)
	mutate := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	resum := func(b []byte) {
		binary.LittleEndian.PutUint32(b[crcOff:], crc32.Checksum(b[:crcOff], castagnoli))
	}
	tests := []struct {
		name    string
		block   []byte
		want    Header
		zero    bool
		wantErr error
	}{
		{"intact", good, Header{Offset: 8192, Seq: 42, Writer: 3}, false, nil},
		{"zeros", make([]byte, BlockSize), Header{}, true, nil},
		{"bad magic", mutate(func(b []byte) { b[0] = 'X' }), Header{}, false, ErrNotBlock},
		{"random data", bytes.Repeat([]byte{0xa5}, BlockSize), Header{}, false, ErrNotBlock},
		{"flipped filler bit", mutate(func(b []byte) { b[1000] ^= 1 }), Header{}, false, ErrChecksum},
		{"flipped seq bit", mutate(func(b []byte) { b[16] ^= 1 }), Header{}, false, ErrChecksum},
		{"torn: tail zeroed", mutate(func(b []byte) { clear(b[2048:]) }), Header{}, false, ErrChecksum},
		{"header moved onto other data, checksum redone", mutate(func(b []byte) {
			binary.LittleEndian.PutUint64(b[16:], 43)
			resum(b)
		}), Header{}, false, ErrFiller},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, zero, err := DecodeBlock(tc.block)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if err == nil && (h != tc.want || zero != tc.zero) {
				t.Fatalf("got %+v zero=%v, want %+v zero=%v", h, zero, tc.want, tc.zero)
			}
		})
	}
	if _, _, err := DecodeBlock(good[:100]); err == nil {
		t.Fatal("short block decoded")
	}
	// Different writes and offsets give different fillers.
	other := make([]byte, BlockSize)
	EncodeBlock(other, 8192, 43, 3)
	if bytes.Equal(good[hdrSize:crcOff], other[hdrSize:crcOff]) {
		t.Fatal("two writes have the same filler")
	}
	EncodeBlock(other, 12288, 42, 3)
	if bytes.Equal(good[hdrSize:crcOff], other[hdrSize:crcOff]) {
		t.Fatal("two blocks of one write have the same filler")
	}
}

// memTarget is a volume in memory. decide, if set, picks per write whether the data is stored
// and what the caller is told.
type memTarget struct {
	mu      sync.Mutex
	data    []byte
	decide  func(seq uint64) (store bool, err error)
	flushes int
	flushFn func() error
}

func newMem(size int) *memTarget { return &memTarget{data: make([]byte, size)} }

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	h, _, err := DecodeBlock(p)
	if err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	store, werr := true, error(nil)
	if m.decide != nil {
		store, werr = m.decide(h.Seq)
	}
	if store {
		copy(m.data[off:], p)
	}
	if werr != nil {
		return 0, werr
	}
	return len(p), nil
}

func (m *memTarget) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushes++
	if m.flushFn != nil {
		return m.flushFn()
	}
	return nil
}

func (m *memTarget) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off+int64(len(p)) > int64(len(m.data)) {
		return 0, io.EOF
	}
	return copy(p, m.data[off:]), nil
}

func mustChecker(t *testing.T, cfg Config) *Checker {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func run(t *testing.T, c *Checker, tg Target) Stats {
	t.Helper()
	st, err := c.Run(context.Background(), tg)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Offset: 100, Blocks: 10},
		{Offset: -4096, Blocks: 10},
		{Blocks: 3, Writers: 4},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

func TestIntactVolumeVerifies(t *testing.T) {
	const blocks = 300
	c := mustChecker(t, Config{Offset: 2 * BlockSize, Blocks: blocks, Writers: 5, MaxRun: 6, Writes: 60, FlushEvery: 7, Seed: 1})
	m := newMem((blocks + 4) * BlockSize)
	st := run(t, c, m)
	if st.Writes != 300 || st.Acked != 300 || st.Failed != 0 {
		t.Fatalf("stats %+v, want 300 writes all acknowledged", st)
	}
	if st.Flushes != uint64(m.flushes) || st.Flushes != 5*(60/7) {
		t.Fatalf("%d flushes recorded, target saw %d, want %d", st.Flushes, m.flushes, 5*(60/7))
	}
	rep, err := c.Verify(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	if rep.Written == 0 || rep.Written > blocks || rep.InDoubt != 0 || rep.Acked != 300 {
		t.Fatalf("report %v", rep)
	}
	// Nothing outside the region was touched.
	if !isZero(m.data[:2*BlockSize]) || !isZero(m.data[(blocks+2)*BlockSize:]) {
		t.Fatal("the workload wrote outside its region")
	}
	// A second run extends the history and still verifies.
	run(t, c, m)
	if rep, err = c.Verify(m); err != nil || !rep.OK() || rep.Acked != 600 {
		t.Fatalf("after a second run: %v %v", rep, err)
	}
}

// blockSeqs returns, from a target's data, the sequence number held by each block of the region.
func blockSeqs(t *testing.T, data []byte, blocks int) []uint64 {
	t.Helper()
	out := make([]uint64, blocks)
	for b := range blocks {
		h, _, err := DecodeBlock(data[b*BlockSize:])
		if err != nil {
			t.Fatalf("block %d: %v", b, err)
		}
		out[b] = h.Seq
	}
	return out
}

// TestLaggingReplicaLossWindow models an async secondary that stopped applying writes after the
// first k: the lost writes Verify reports must be exactly the acknowledged writes that are newer
// than what the replica holds on one of their blocks, computed here by brute force.
func TestLaggingReplicaLossWindow(t *testing.T) {
	const blocks = 64
	for _, k := range []uint64{0, 1, 37, 150, 200} {
		c := mustChecker(t, Config{Blocks: blocks, Writers: 4, MaxRun: 5, Writes: 50, FlushEvery: 10, Seed: k})
		primary := newMem(blocks * BlockSize)
		replica := newMem(blocks * BlockSize)
		type wr struct {
			seq      uint64
			first, n int
		}
		var mu sync.Mutex
		var history []wr
		tg := &fanout{primary: primary, replica: replica, k: k, record: func(seq uint64, off int64, n int) {
			mu.Lock()
			history = append(history, wr{seq: seq, first: int(off / BlockSize), n: n})
			mu.Unlock()
		}}
		run(t, c, tg)
		rep, err := c.Verify(replica)
		if err != nil {
			t.Fatal(err)
		}
		// The primary has everything.
		if prep, err := c.Verify(primary); err != nil || !prep.OK() {
			t.Fatalf("primary: %v %v", prep, err)
		}
		have := blockSeqs(t, replica.data, blocks)
		want := map[uint64]int{} // seq → blocks missing
		for _, w := range history {
			for b := w.first; b < w.first+w.n; b++ {
				if have[b] < w.seq {
					want[w.seq]++
				}
			}
		}
		got := map[uint64]int{}
		var bytes int64
		for _, l := range rep.Lost {
			got[l.Seq] = l.Blocks
			bytes += int64(l.Blocks) * BlockSize
		}
		if len(got) != len(want) {
			t.Fatalf("k=%d: %d lost writes reported, %d expected", k, len(got), len(want))
		}
		for s, n := range want {
			if got[s] != n {
				t.Fatalf("k=%d: write %d: %d blocks reported lost, %d expected", k, s, got[s], n)
			}
		}
		if k >= 200 && len(rep.Lost) != 0 {
			t.Fatalf("a replica with every write lost %d", len(rep.Lost))
		}
		if k < 200 && len(rep.Lost) == 0 {
			t.Fatalf("k=%d: a replica missing %d writes lost nothing", k, 200-k)
		}
		if rep.LostBytes != bytes || len(rep.Corrupt) != 0 || rep.OK() != (len(want) == 0) {
			t.Fatalf("k=%d: report %v", k, rep)
		}
		if len(rep.Lost) > 0 {
			first, last := rep.Lost[0].AckedAt, rep.Lost[0].AckedAt
			for _, l := range rep.Lost {
				if l.AckedAt.Before(first) {
					first = l.AckedAt
				}
				if l.AckedAt.After(last) {
					last = l.AckedAt
				}
			}
			if !rep.WindowStart.Equal(first) || !rep.WindowEnd.Equal(last) || rep.LossWindow() < 0 {
				t.Fatalf("window %v..%v, lost acks span %v..%v", rep.WindowStart, rep.WindowEnd, first, last)
			}
			if !sort.SliceIsSorted(rep.Lost, func(i, j int) bool { return rep.Lost[i].Seq < rep.Lost[j].Seq }) {
				t.Fatal("lost writes not in sequence order")
			}
		}
	}
}

// fanout writes to primary always and to replica for the first k sequence numbers only.
type fanout struct {
	primary, replica *memTarget
	k                uint64
	record           func(seq uint64, off int64, n int)
}

func (f *fanout) WriteAt(p []byte, off int64) (int, error) {
	h, _, err := DecodeBlock(p)
	if err != nil {
		return 0, err
	}
	f.record(h.Seq, off, len(p)/BlockSize)
	if h.Seq <= f.k {
		f.replica.WriteAt(p, off)
	}
	return f.primary.WriteAt(p, off)
}

func (f *fanout) Flush() error { return f.primary.Flush() }

// TestErrorsAreInDoubtNotLost: a write that fails may or may not land; neither outcome is loss.
func TestErrorsAreInDoubtNotLost(t *testing.T) {
	tests := []struct {
		name   string
		store  bool
		doubts bool
	}{
		{"failed and not stored", false, false},
		{"failed but stored", true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			const blocks = 16
			c := mustChecker(t, Config{Blocks: blocks, Writers: 2, MaxRun: 2, Writes: 20, Seed: 9})
			m := newMem(blocks * BlockSize)
			failing := map[uint64]bool{}
			m.decide = func(seq uint64) (bool, error) {
				// The last writes fail too, so nothing later overwrites them.
				if seq%7 == 0 || seq > 36 {
					failing[seq] = true
					return tc.store, errors.New("injected")
				}
				return true, nil
			}
			st := run(t, c, m)
			if st.Failed != uint64(len(failing)) || st.Acked+st.Failed != st.Writes || st.LastError != "injected" {
				t.Fatalf("stats %+v with %d failures injected", st, len(failing))
			}
			rep, err := c.Verify(m)
			if err != nil {
				t.Fatal(err)
			}
			if !rep.OK() {
				t.Fatal(rep.Err())
			}
			if (rep.InDoubt > 0) != tc.doubts {
				t.Fatalf("in doubt %d (store=%v)", rep.InDoubt, tc.store)
			}
		})
	}
}

// TestAcknowledgedButNotStoredIsLost is the case a broken replication engine produces: the
// target says yes and keeps nothing. Writes covered by a flush are flagged.
func TestAcknowledgedButNotStoredIsLost(t *testing.T) {
	const blocks = 8
	c := mustChecker(t, Config{Blocks: blocks, Writers: 1, MaxRun: 1, Writes: 30, Seed: 3})
	m := newMem(blocks * BlockSize)
	dropped := map[uint64]bool{}
	m.decide = func(seq uint64) (bool, error) {
		if seq == 5 || seq == 25 {
			dropped[seq] = true
			return false, nil
		}
		return true, nil
	}
	// Flush once in the middle: write 5 is covered, write 25 is not.
	ctx := context.Background()
	c.cfg.Writes = 15
	if _, err := c.Run(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(m); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Run(ctx, m); err != nil {
		t.Fatal(err)
	}
	rep, err := c.Verify(m)
	if err != nil {
		t.Fatal(err)
	}
	// A dropped write is lost only if no later write of the same block was stored.
	have := blockSeqs(t, m.data, blocks)
	wantLost := map[uint64]bool{}
	for s := range dropped {
		w := c.writes[s-1]
		if have[w.first] < s {
			wantLost[s] = true
		}
	}
	if len(rep.Lost) != len(wantLost) {
		t.Fatalf("lost %v, want %v", rep.Lost, wantLost)
	}
	flushed := 0
	for _, l := range rep.Lost {
		if !wantLost[l.Seq] {
			t.Fatalf("write %d reported lost", l.Seq)
		}
		if l.Flushed != (l.Seq <= 15) {
			t.Fatalf("write %d flushed=%v", l.Seq, l.Flushed)
		}
		if l.Flushed {
			flushed++
		}
	}
	if rep.LostFlushed != flushed {
		t.Fatalf("LostFlushed %d, want %d", rep.LostFlushed, flushed)
	}
	if len(wantLost) > 0 && rep.Err() == nil {
		t.Fatal("Err is nil with lost writes")
	}
}

// TestFlushOnNewPrimaryDoesNotCoverOldWrites models a failover: the first run writes through the
// old primary (flushing), whose replica missed the last writes; the second run writes and flushes
// through the replica. The lost writes were never covered by a flush of the old primary after
// their acknowledgement, and the new primary's flushes must not count for them.
func TestFlushOnNewPrimaryDoesNotCoverOldWrites(t *testing.T) {
	// One writer keeps the history deterministic. Its last two writes of the first run come
	// after its last flush there (every 5th acknowledgement).
	const blocks = 1024
	c := mustChecker(t, Config{Blocks: blocks, Writers: 1, MaxRun: 1, Writes: 42, FlushEvery: 5, Seed: 11})
	old, replica := newMem(blocks*BlockSize), newMem(blocks*BlockSize)
	const k = 37 // the replica has writes 1..37 of 42
	run(t, c, &fanout{primary: old, replica: replica, k: k, record: func(uint64, int64, int) {}})
	c.cfg.Writes = 20
	run(t, c, replica)
	rep, err := c.Verify(replica)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Lost) == 0 {
		t.Fatal("the replica that missed 5 writes lost none")
	}
	unflushed := 0
	for _, l := range rep.Lost {
		if !l.Flushed {
			unflushed++
		}
		if l.Seq <= k {
			t.Fatalf("write %d reached the replica and is reported lost", l.Seq)
		}
		// Writers flush after every 5th acknowledgement: a write acknowledged before the old
		// primary's last flush is covered, later ones are not, whatever the new primary flushed.
		w := c.writes[l.Seq-1]
		if l.Flushed != (w.ackNo <= c.flushed[0]) || w.run != 0 {
			t.Fatalf("write %d (run %d, ack %d): flushed=%v with run 0 flushed up to %d", l.Seq, w.run, w.ackNo, l.Flushed, c.flushed[0])
		}
	}
	if unflushed == 0 || rep.LostFlushed != len(rep.Lost)-unflushed {
		t.Fatalf("%d lost, %d of them flushed, %d unflushed: the writes after the old primary's last flush must count as unflushed", len(rep.Lost), rep.LostFlushed, unflushed)
	}
	if c.flushed[1] <= c.flushed[0] {
		t.Fatalf("second run's flushes recorded up to %d, first run's %d", c.flushed[1], c.flushed[0])
	}
}

func TestFlushErrorLeavesWritesUnflushed(t *testing.T) {
	const blocks = 4
	c := mustChecker(t, Config{Blocks: blocks, Writers: 1, MaxRun: 1, Writes: 3, FlushEvery: 1, Seed: 1})
	m := newMem(blocks * BlockSize)
	m.flushFn = func() error { return errors.New("flush failed") }
	st := run(t, c, m)
	if st.Flushes != 0 || st.FlushErrors != 3 {
		t.Fatalf("stats %+v", st)
	}
	if len(c.flushed) != 0 {
		t.Fatalf("failed flushes marked acknowledgements flushed: %v", c.flushed)
	}
}

func TestCorruptionIsReported(t *testing.T) {
	const blocks = 32
	setup := func(t *testing.T) (*Checker, *memTarget) {
		c := mustChecker(t, Config{Blocks: blocks, Writers: 2, MaxRun: 1, Writes: 200, Seed: 5})
		m := newMem(blocks * BlockSize)
		run(t, c, m)
		return c, m
	}
	// Find a block that was written and one of another writer's blocks.
	tests := []struct {
		name   string
		damage func(c *Checker, m *memTarget) int64 // returns the damaged offset
		reason string
	}{
		{"bit flip", func(c *Checker, m *memTarget) int64 {
			m.data[3*BlockSize+500] ^= 0x10
			return 3 * BlockSize
		}, "checksum"},
		{"misdirected write", func(c *Checker, m *memTarget) int64 {
			copy(m.data[5*BlockSize:], m.data[4*BlockSize:5*BlockSize])
			return 5 * BlockSize
		}, "misdirected"},
		{"another block's write with the right offset", func(c *Checker, m *memTarget) int64 {
			// Writer 1 owns the upper half; take one of its writes and encode it for block 2.
			seq := c.blocks[blocks-1][0]
			EncodeBlock(m.data[2*BlockSize:], 2*BlockSize, seq, c.writes[seq-1].writer)
			return 2 * BlockSize
		}, "never wrote this block"},
		{"wrong writer id", func(c *Checker, m *memTarget) int64 {
			seq := c.blocks[1][len(c.blocks[1])-1]
			EncodeBlock(m.data[1*BlockSize:], 1*BlockSize, seq, c.writes[seq-1].writer+7)
			return 1 * BlockSize
		}, "writer"},
		{"garbage", func(c *Checker, m *memTarget) int64 {
			copy(m.data[7*BlockSize:], strings.Repeat("x", BlockSize))
			return 7 * BlockSize
		}, "magic"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, m := setup(t)
			if rep, err := c.Verify(m); err != nil || !rep.OK() {
				t.Fatalf("before damage: %v %v", rep, err)
			}
			off := tc.damage(c, m)
			rep, err := c.Verify(m)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Corrupt) != 1 || rep.Corrupt[0].Offset != off || !strings.Contains(rep.Corrupt[0].Reason, tc.reason) {
				t.Fatalf("corrupt %+v, want one at %d mentioning %q", rep.Corrupt, off, tc.reason)
			}
			if rep.OK() || rep.Err() == nil {
				t.Fatal("a corrupt volume verifies")
			}
		})
	}
	t.Run("data in a block never written", func(t *testing.T) {
		c := mustChecker(t, Config{Blocks: blocks, Writers: 1, MaxRun: 1, Writes: 1, Seed: 5})
		m := newMem(blocks * BlockSize)
		run(t, c, m)
		var target int
		for b := range blocks {
			if len(c.blocks[b]) == 0 {
				target = b
				break
			}
		}
		EncodeBlock(m.data[target*BlockSize:], int64(target)*BlockSize, 99, 0)
		rep, err := c.Verify(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Corrupt) != 1 || rep.Corrupt[0].Offset != int64(target)*BlockSize {
			t.Fatalf("corrupt %+v", rep.Corrupt)
		}
	})
	t.Run("zeroed block that was written is lost", func(t *testing.T) {
		c, m := setup(t)
		clear(m.data[6*BlockSize : 7*BlockSize])
		rep, err := c.Verify(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Lost) == 0 || len(rep.Corrupt) != 0 {
			t.Fatalf("report %v", rep)
		}
		for _, l := range rep.Lost {
			if l.Offset != 6*BlockSize {
				t.Fatalf("lost write at %d", l.Offset)
			}
		}
	})
}

type errReader struct{}

func (errReader) ReadAt([]byte, int64) (int, error) { return 0, errors.New("disk gone") }

func TestVerifyReadErrorAndOverlap(t *testing.T) {
	c := mustChecker(t, Config{Blocks: 8, Writers: 1})
	if _, err := c.Verify(errReader{}); err == nil || !strings.Contains(err.Error(), "disk gone") {
		t.Fatalf("read error: %v", err)
	}
	// A target that blocks lets us observe Run in progress.
	m := newMem(8 * BlockSize)
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	m.decide = func(uint64) (bool, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		<-release
		return true, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := c.Run(ctx, m); done <- err }()
	<-started
	if _, err := c.Run(ctx, m); err == nil {
		t.Fatal("a second concurrent Run was accepted")
	}
	if _, err := c.Verify(m); err == nil {
		t.Fatal("Verify during Run was accepted")
	}
	cancel()
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if rep, err := c.Verify(m); err != nil || !rep.OK() {
		t.Fatalf("after the run: %v %v", rep, err)
	}
}

func TestRunStopsWithContextAndBacksOffOnErrors(t *testing.T) {
	c := mustChecker(t, Config{Blocks: 8, Writers: 2})
	m := newMem(8 * BlockSize)
	m.decide = func(uint64) (bool, error) { return false, errors.New("down") }
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	st, err := c.Run(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	// Each writer waits errorBackoff after every failure, however slow the machine is.
	limit := 2 * (uint64(time.Since(start)/errorBackoff) + 1)
	if st.Failed == 0 || st.Acked != 0 || st.Failed > limit {
		t.Fatalf("stats %+v, want 1..%d failures", st, limit)
	}
}
