package nbd

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"
)

// enterExportName does the handshake and NBD_OPT_EXPORT_NAME for name on a fresh raw
// connection.
func (r *rawConn) enterExportName(name string) {
	r.t.Helper()
	r.greet(3)
	r.option(tOptExportName, []byte(name))
	r.read(10) // size and transmission flags
}

// TestUnalignedRequests: a client that was told no block sizes (NBD_OPT_EXPORT_NAME, or
// NBD_OPT_GO without asking for them) reads, writes, zeroes and trims at any byte offset and
// length, and the volume still sees whole sectors only.
func TestUnalignedRequests(t *testing.T) {
	const size = 64 << 10
	for _, enter := range []struct {
		name   string
		sector int
		enter  func(r *rawConn)
	}{
		{"export-name", 4096, func(r *rawConn) { r.enterExportName("disk1") }},
		// Larger sectors make NBD_OPT_GO insist on block sizes.
		{"go without block sizes", 512, func(r *rawConn) {
			r.greet(3)
			r.option(tOptGo, goData("disk1"))
			for r.optReply().typ != 1 {
			}
		}},
	} {
		t.Run(enter.name, func(t *testing.T) {
			sector := enter.sector
			vol := newMemVolume(size, sector)
			vol.fill(0x55)
			model := bytes.Repeat([]byte{0x55}, size)
			ts := startServer(t, newExports("disk1", vol))
			r := dialRaw(t, ts.sock)
			enter.enter(r)
			cookie := uint64(0)
			do := func(typ uint16, off int, length int, payload []byte) {
				t.Helper()
				cookie++
				r.request(0, typ, cookie, uint64(off), uint32(length), payload)
				r.expectReply(cookie, 0)
			}
			// Within one sector, across a boundary, and from a partial sector over whole
			// ones to another partial one.
			for i, w := range [][2]int{{1, 3}, {sector - 2, 5}, {3*sector - 100, 2*sector + 300}} {
				data := pattern(w[1], byte(i+1))
				do(tCmdWrite, w[0], w[1], data)
				copy(model[w[0]:], data)
			}
			do(tCmdWriteZeroes, 7*sector+10, sector+20, nil)
			clear(model[7*sector+10:][:sector+20])
			do(tCmdTrim, sector+1, 3*sector, nil)
			if got, want := vol.discardList(), [][2]int64{{2 * int64(sector), 2 * int64(sector)}}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("trim of [%d, %d) discarded %v, want only the whole sectors %v", sector+1, 4*sector+1, got, want)
			}
			if got := vol.snapshot(); !bytes.Equal(got, model) {
				t.Fatal("the volume differs from what was written")
			}
			for _, rd := range [][2]int{{0, 1}, {sector - 3, 7}, {sector + 5, 5*sector + 1}} {
				do(tCmdRead, rd[0], rd[1], nil)
				if got := r.read(rd[1]); !bytes.Equal(got, model[rd[0]:][:rd[1]]) {
					t.Errorf("read of %d bytes at %d returned other data", rd[1], rd[0])
				}
			}
			vol.requireNoViolations(t)
		})
	}
}

// TestUnalignedWritesToOneSector: clients on several connections write disjoint byte ranges of
// the same sector at once, each patching the sector by read-modify-write. No write may undo
// another's: at the end each range holds the last bytes its writer wrote.
func TestUnalignedWritesToOneSector(t *testing.T) {
	const (
		sector  = 4096
		writers = 8
		rounds  = 50
		span    = sector / writers
	)
	vol := newMemVolume(16<<10, sector)
	ts := startServer(t, newExports("disk1", slowReads{vol}))
	var wg sync.WaitGroup
	last := make([][]byte, writers)
	for k := range writers {
		r := dialRaw(t, ts.sock)
		r.enterExportName("disk1")
		wg.Go(func() {
			// Ranges start off the sector boundary and leave a gap, so that every write
			// patches.
			off := sector + k*span + 1
			for i := range rounds {
				data := bytes.Repeat([]byte{byte(k*rounds + i + 1)}, span-2)
				r.request(0, tCmdWrite, uint64(i), uint64(off), uint32(len(data)), data)
				if errno, _ := r.reply(); errno != 0 {
					t.Errorf("writer %d round %d: errno %d", k, i, errno)
					return
				}
				last[k] = data
			}
		})
	}
	wg.Wait()
	got := vol.snapshot()
	for k := range writers {
		off := sector + k*span + 1
		if !bytes.Equal(got[off:][:span-2], last[k]) {
			t.Errorf("writer %d's bytes at %d were overwritten by another writer's read-modify-write", k, off)
		}
	}
	vol.requireNoViolations(t)
}

// slowReads widens the window between a read-modify-write's read and its write-back.
type slowReads struct{ *memVolume }

func (v slowReads) ReadAt(p []byte, off int64) (int, error) {
	n, err := v.memVolume.ReadAt(p, off)
	time.Sleep(50 * time.Microsecond)
	return n, err
}
