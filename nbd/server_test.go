package nbd

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"hast/replicate"
)

// unhex decodes a hex string written with spaces for readability.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return b
}

// NBD constants as the spec writes them, kept separate from the package's own so that a wrong
// constant there cannot make a test agree with it.
const (
	tOptExportName = 1
	tOptAbort      = 2
	tOptList       = 3
	tOptStartTLS   = 5
	tOptInfo       = 6
	tOptGo         = 7
	tOptStructured = 8

	tRepAck       = 1
	tRepServer    = 2
	tRepInfo      = 3
	tErrUnsup     = 0x80000001
	tErrInvalid   = 0x80000003
	tErrUnknown   = 0x80000006
	tErrBlockReqd = 0x80000008

	tCmdRead        = 0
	tCmdWrite       = 1
	tCmdDisc        = 2
	tCmdFlush       = 3
	tCmdTrim        = 4
	tCmdCache       = 5
	tCmdWriteZeroes = 6
	tCmdBlockStatus = 7

	tFlagFUA      = 1
	tFlagNoHole   = 2
	tFlagDF       = 4
	tFlagFastZero = 16

	tEIO       = 5
	tEINVAL    = 22
	tENOSPC    = 28
	tESHUTDOWN = 108
)

func TestGreetingAndList(t *testing.T) {
	ts := startServer(t, newExports("disk2", newMemVolume(1<<20, 512), "disk1", newMemVolume(1<<20, 512)))
	r := dialRaw(t, ts.sock)
	r.greet(1) // fixed newstyle, zeroes not declined

	r.option(tOptList, []byte("x"))
	r.expectOptReply(tOptList, tErrInvalid)

	r.option(tOptList, nil)
	// Sorted: disk1 then disk2, each as NBD_REP_SERVER with a 32-bit name length.
	r.expect("list disk1", unhex(t, "0003e889045565a9 00000003 00000002 00000009 00000005")) // header
	r.expect("list disk1 name", []byte("disk1"))
	r.expect("list disk2", unhex(t, "0003e889045565a9 00000003 00000002 00000009 00000005"))
	r.expect("list disk2 name", []byte("disk2"))
	r.expect("list ack", unhex(t, "0003e889045565a9 00000003 00000001 00000000"))
}

func TestOptions(t *testing.T) {
	vol := newMemVolume(1<<20, 512)
	big := newMemVolume(1<<20, 4096)
	ts := startServer(t, newExports("disk1", vol, "big", big))
	r := dialRaw(t, ts.sock)
	r.greet(3)

	// An unknown option's data is skipped and the stream stays in step.
	r.option(0x1234, []byte("some data the server does not understand"))
	r.expectOptReply(0x1234, tErrUnsup)
	r.option(tOptStructured, nil)
	r.expectOptReply(tOptStructured, tErrUnsup)
	r.option(tOptStartTLS, nil)
	r.expectOptReply(tOptStartTLS, tErrUnsup)

	// Malformed NBD_OPT_INFO.
	r.option(tOptInfo, []byte{0, 0, 0})
	r.expectOptReply(tOptInfo, tErrInvalid)
	r.option(tOptInfo, append(be32(100), 'a', 'b', 0, 0)) // name length beyond the data
	r.expectOptReply(tOptInfo, tErrInvalid)
	r.option(tOptInfo, append(goData("disk1", 3), 0)) // stray byte after the requests
	r.expectOptReply(tOptInfo, tErrInvalid)
	r.option(tOptGo, goData("disk1", 3)[:len(goData("disk1", 3))-2]) // count says 1, none sent
	r.expectOptReply(tOptGo, tErrInvalid)

	// NBD_OPT_INFO with every information type asked for, byte for byte.
	r.option(tOptInfo, goData("disk1", 1, 2, 3))
	r.expect("info export", unhex(t, "0003e889045565a9 00000006 00000003 0000000c"+
		"0000 0000000000100000 016d"))
	r.expect("info name", unhex(t, "0003e889045565a9 00000006 00000003 00000007 0001"))
	r.expect("info name value", []byte("disk1"))
	desc := "1048576 bytes, 512-byte sectors"
	r.expect("info description", append(unhex(t, "0003e889045565a9 00000006 00000003"),
		append(be32(uint32(2+len(desc))), 0, 2)...))
	r.expect("info description value", []byte(desc))
	r.expect("info block size", unhex(t, "0003e889045565a9 00000006 00000003 0000000e"+
		"0003 00000200 00001000 02000000"))
	r.expect("info ack", unhex(t, "0003e889045565a9 00000006 00000001 00000000"))

	// Without a request for block sizes, only export and block size information come back.
	r.option(tOptInfo, goData("big"))
	r.expect("big export", unhex(t, "0003e889045565a9 00000006 00000003 0000000c"+
		"0000 0000000000100000 016d"))
	r.expect("big block size", unhex(t, "0003e889045565a9 00000006 00000003 0000000e"+
		"0003 00001000 00001000 02000000"))
	r.expect("big ack", unhex(t, "0003e889045565a9 00000006 00000001 00000000"))

	// A 4096-byte-sector export refuses NBD_OPT_GO from a client that ignores block sizes.
	r.option(tOptGo, goData("big"))
	r.expectOptReply(tOptGo, tErrBlockReqd)

	// NBD_OPT_GO enters transmission: a read works right after the ACK.
	vol.fill(0x5a)
	r.option(tOptGo, goData("disk1", 3))
	r.expect("go export", unhex(t, "0003e889045565a9 00000007 00000003 0000000c"+
		"0000 0000000000100000 016d"))
	r.expect("go block size", unhex(t, "0003e889045565a9 00000007 00000003 0000000e"+
		"0003 00000200 00001000 02000000"))
	r.expect("go ack", unhex(t, "0003e889045565a9 00000007 00000001 00000000"))
	r.request(0, tCmdRead, 0xfeedface, 512, 1024, nil)
	r.expect("read reply", unhex(t, "67446698 00000000 00000000feedface"))
	r.expect("read data", bytes.Repeat([]byte{0x5a}, 1024))
	vol.requireNoViolations(t)
}

func TestOptionsUnknownExport(t *testing.T) {
	ts := startServer(t, newExports("disk1", newMemVolume(1<<20, 512)))
	r := dialRaw(t, ts.sock)
	r.greet(3)
	r.option(tOptInfo, goData("nope", 3))
	rep := r.expectOptReply(tOptInfo, tErrUnknown)
	if !bytes.Contains(rep.data, []byte("nope")) {
		t.Errorf("error message %q does not name the export", rep.data)
	}
	r.option(tOptGo, goData("nope"))
	r.expectOptReply(tOptGo, tErrUnknown)
	// Still in option haggling: a valid GO works.
	r.option(tOptGo, goData("disk1", 3))
	for rep := r.optReply(); rep.typ != tRepAck; rep = r.optReply() {
		if rep.typ != tRepInfo {
			t.Fatalf("GO reply type %#x", rep.typ)
		}
	}
	r.request(0, tCmdRead, 1, 0, 512, nil)
	r.expectReply(1, 0)
	r.read(512)
}

func TestExportName(t *testing.T) {
	vol := newMemVolume(1<<20, 512)
	vol.fill(0x77)
	ts := startServer(t, newExports("disk1", vol))

	t.Run("no-zeroes", func(t *testing.T) {
		r := dialRaw(t, ts.sock)
		r.greet(3)
		r.option(tOptExportName, []byte("disk1"))
		r.expect("export-name reply", unhex(t, "0000000000100000 016d"))
		r.request(0, tCmdRead, 9, 0, 512, nil)
		r.expect("read reply", unhex(t, "67446698 00000000 0000000000000009"))
		r.expect("read data", bytes.Repeat([]byte{0x77}, 512))
	})
	t.Run("zeroes", func(t *testing.T) {
		r := dialRaw(t, ts.sock)
		r.greet(1)
		r.option(tOptExportName, []byte("disk1"))
		r.expect("export-name reply", append(unhex(t, "0000000000100000 016d"), make([]byte, 124)...))
		r.request(0, tCmdFlush, 10, 0, 0, nil)
		r.expectReply(10, 0)
	})
	t.Run("unknown", func(t *testing.T) {
		r := dialRaw(t, ts.sock)
		r.greet(3)
		r.option(tOptExportName, []byte("disk9"))
		r.expectClosed()
	})
}

func TestAbort(t *testing.T) {
	ts := startServer(t, newExports("disk1", newMemVolume(1<<20, 512)))
	r := dialRaw(t, ts.sock)
	r.greet(3)
	r.option(tOptAbort, nil)
	r.expect("abort ack", unhex(t, "0003e889045565a9 00000002 00000001 00000000"))
	r.expectClosed()
}

func TestHandshakeAbuseCloses(t *testing.T) {
	ts := startServer(t, newExports("disk1", newMemVolume(1<<20, 512)))
	cases := []struct {
		name string
		run  func(r *rawConn)
	}{
		{"unknown client flag", func(r *rawConn) {
			r.expect("greeting", []byte("NBDMAGICIHAVEOPT\x00\x03"))
			r.write(be32(1 | 4))
		}},
		{"not fixed newstyle", func(r *rawConn) {
			r.expect("greeting", []byte("NBDMAGICIHAVEOPT\x00\x03"))
			r.write(be32(0))
		}},
		{"oversized option", func(r *rawConn) {
			r.greet(3)
			r.write([]byte("IHAVEOPT"), be32(tOptGo), be32(1<<20))
		}},
		{"oversized unknown option", func(r *rawConn) {
			r.greet(3)
			r.write([]byte("IHAVEOPT"), be32(0x999), be32(64<<10+1))
		}},
		{"bad option magic", func(r *rawConn) {
			r.greet(3)
			r.write([]byte("IHAVEOPX"), be32(tOptList), be32(0))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := dialRaw(t, ts.sock)
			tc.run(r)
			r.expectClosed()
		})
	}
}

// TestRequestRefusals sends malformed (and empty) requests after NBD_OPT_GO: each gets the
// right reply, the connection stays usable, and nothing reaches the volume.
func TestRequestRefusals(t *testing.T) {
	const size = 1 << 20
	cases := []struct {
		name    string
		flags   uint16
		typ     uint16
		off     uint64
		length  uint32
		payload bool
		errno   uint32
	}{
		{"read past end", 0, tCmdRead, size - 512, 1024, false, tEINVAL},
		{"read at end", 0, tCmdRead, size, 512, false, tEINVAL},
		{"read offset overflow", 0, tCmdRead, 1<<64 - 512, 1024, false, tEINVAL},
		{"read misaligned offset", 0, tCmdRead, 100, 512, false, tEINVAL},
		{"read misaligned length", 0, tCmdRead, 0, 100, false, tEINVAL},
		{"read zero length past end", 0, tCmdRead, size + 512, 0, false, tEINVAL},
		{"read zero length", 0, tCmdRead, 512, 0, false, 0},
		{"read too long", 0, tCmdRead, 0, 32<<20 + 512, false, tEINVAL},
		{"read with DF", tFlagDF, tCmdRead, 0, 512, false, tEINVAL},
		{"write past end", 0, tCmdWrite, size - 512, 1024, true, tENOSPC},
		{"write far past end", tFlagFUA, tCmdWrite, 1 << 40, 512, true, tENOSPC},
		{"write misaligned", 0, tCmdWrite, 1, 512, true, tEINVAL},
		{"write misaligned length", 0, tCmdWrite, 0, 513, true, tEINVAL},
		{"write unknown flag", 1 << 9, tCmdWrite, 0, 512, true, tEINVAL},
		{"write NO_HOLE", tFlagNoHole, tCmdWrite, 0, 512, true, tEINVAL},
		{"write zero length", tFlagFUA, tCmdWrite, 0, 0, false, 0},
		{"write zero length misaligned", 0, tCmdWrite, 1, 0, false, tEINVAL},
		{"trim zero length at end", 0, tCmdTrim, size, 0, false, 0},
		{"write-zeroes zero length", 0, tCmdWriteZeroes, 4096, 0, false, 0},
		{"trim past end", 0, tCmdTrim, size - 512, 1024, false, tEINVAL},
		{"trim misaligned", 0, tCmdTrim, 256, 512, false, tEINVAL},
		{"write-zeroes past end", tFlagNoHole, tCmdWriteZeroes, size, 512, false, tENOSPC},
		{"write-zeroes misaligned", 0, tCmdWriteZeroes, 0, 100, false, tEINVAL},
		{"write-zeroes FAST_ZERO", tFlagFastZero, tCmdWriteZeroes, 0, 512, false, tEINVAL},
		{"cache", 0, tCmdCache, 0, 512, false, tEINVAL},
		{"block status", 0, tCmdBlockStatus, 0, 512, false, tEINVAL},
		{"unknown command", 0, 99, 0, 512, false, tEINVAL},
		{"flush unknown flag", 1 << 12, tCmdFlush, 0, 0, false, tEINVAL},
	}
	vol := newMemVolume(size, 512)
	vol.fill(0x33)
	ts := startServer(t, newExports("disk1", vol))
	r := dialRaw(t, ts.sock)
	r.enterGo("disk1")
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r.t = t
			var payload []byte
			if tc.payload {
				// The payload is all 0xee: if any of it reached the volume, the check below sees it.
				payload = bytes.Repeat([]byte{0xee}, int(tc.length))
			}
			cookie := uint64(1000 + i)
			r.request(tc.flags, tc.typ, cookie, tc.off, tc.length, payload)
			r.expectReply(cookie, tc.errno)
			// The stream is still in step: a valid read follows.
			r.request(0, tCmdRead, cookie+1<<32, 0, 512, nil)
			r.expectReply(cookie+1<<32, 0)
			r.expect("read data", bytes.Repeat([]byte{0x33}, 512))
		})
	}
	writes, _, flushes, discards := vol.counts()
	if writes != 0 || flushes != 0 || discards != 0 {
		t.Errorf("refused requests reached the volume: %d writes, %d flushes, %d discards", writes, flushes, discards)
	}
	if !bytes.Equal(vol.snapshot(), bytes.Repeat([]byte{0x33}, size)) {
		t.Errorf("volume contents changed")
	}
	vol.requireNoViolations(t)
}

// TestRequestFatal sends requests after which the server must close the connection without
// touching the volume.
func TestRequestFatal(t *testing.T) {
	cases := []struct {
		name string
		send func(r *rawConn)
	}{
		{"bad magic", func(r *rawConn) {
			r.write(unhex(t, "25609514 0000 0001 0000000000000001 0000000000000000 00000200"), make([]byte, 512))
		}},
		{"write over 32 MiB", func(r *rawConn) {
			r.request(0, tCmdWrite, 1, 0, 32<<20+512, make([]byte, 4096))
		}},
		{"write of 4 GiB", func(r *rawConn) {
			r.request(0, tCmdWrite, 1, 0, 0xfffffe00, make([]byte, 4096))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vol := newMemVolume(64<<20, 512)
			ts := startServer(t, newExports("disk1", vol))
			r := dialRaw(t, ts.sock)
			r.enterGo("disk1")
			tc.send(r)
			r.expectClosed()
			if w, _, _, _ := vol.counts(); w != 0 {
				t.Errorf("%d writes reached the volume", w)
			}
		})
	}
}

// TestRawCommands drives every command with hand-built requests.
func TestRawCommands(t *testing.T) {
	vol := newMemVolume(4<<20, 512)
	vol.fill(0xff)
	ts := startServer(t, newExports("disk1", vol))
	r := dialRaw(t, ts.sock)
	r.enterGo("disk1")

	data := pattern(8192, 1)
	r.request(0, tCmdWrite, 1, 4096, 8192, data)
	r.expectReply(1, 0)
	if w, _, f, _ := vol.counts(); w != 1 || f != 0 {
		t.Fatalf("after plain write: %d writes %d flushes, want 1 and 0", w, f)
	}
	r.request(tFlagFUA, tCmdWrite, 2, 0, 512, data[:512])
	r.expectReply(2, 0)
	if w, _, f, _ := vol.counts(); w != 2 || f != 1 {
		t.Fatalf("after FUA write: %d writes %d flushes, want 2 and 1", w, f)
	}
	r.request(tFlagFUA, tCmdRead, 3, 4096, 8192, nil) // FUA on a read is accepted and ignored
	r.expectReply(3, 0)
	r.expect("read back", data)

	r.request(0, tCmdFlush, 4, 0, 0, nil)
	r.expectReply(4, 0)
	if _, _, f, _ := vol.counts(); f != 2 {
		t.Fatalf("flushes = %d after flush, want 2", f)
	}

	r.request(0, tCmdTrim, 5, 1<<20, 1<<20, nil)
	r.expectReply(5, 0)
	r.request(tFlagFUA, tCmdTrim, 6, 3<<20, 512, nil)
	r.expectReply(6, 0)
	if got, want := vol.discardList(), [][2]int64{{1 << 20, 1 << 20}, {3 << 20, 512}}; !equalPairs(got, want) {
		t.Fatalf("discards = %v, want %v", got, want)
	}
	if _, _, f, _ := vol.counts(); f != 3 {
		t.Fatalf("flushes = %d after FUA trim, want 3", f)
	}

	// Disconnect: the server closes after serving what is outstanding.
	r.request(0, tCmdWrite, 7, 0, 512, bytes.Repeat([]byte{0xab}, 512))
	r.request(0, tCmdDisc, 8, 0, 0, nil)
	r.expectReply(7, 0)
	r.expectClosed()
	if got := vol.snapshot()[:512]; !bytes.Equal(got, bytes.Repeat([]byte{0xab}, 512)) {
		t.Errorf("write sent before NBD_CMD_DISC was not applied")
	}
	vol.requireNoViolations(t)
}

func equalPairs(a, b [][2]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestWriteZeroes(t *testing.T) {
	const size = 8 << 20
	vol := newMemVolume(size, 512)
	vol.fill(0xff)
	ts := startServer(t, newExports("disk1", vol))
	r := dialRaw(t, ts.sock)
	r.enterGo("disk1")

	// Larger than the server's zero buffer, so it is written in several chunks.
	r.request(tFlagNoHole, tCmdWriteZeroes, 1, 512, 3<<20, nil)
	r.expectReply(1, 0)
	// Without NO_HOLE the server still writes zeroes: the volume does not promise them after
	// a discard.
	r.request(0, tCmdWriteZeroes, 2, 5<<20, 4096, nil)
	r.expectReply(2, 0)
	r.request(tFlagFUA, tCmdWriteZeroes, 3, size-512, 512, nil)
	r.expectReply(3, 0)

	got := vol.snapshot()
	want := bytes.Repeat([]byte{0xff}, size)
	clear(want[512 : 512+3<<20])
	clear(want[5<<20 : 5<<20+4096])
	clear(want[size-512:])
	if !bytes.Equal(got, want) {
		t.Errorf("volume contents after write-zeroes differ")
	}
	if _, _, f, d := vol.counts(); f != 1 || d != 0 {
		t.Errorf("flushes=%d discards=%d, want 1 flush (FUA) and no discard", f, d)
	}
	vol.requireNoViolations(t)
}

func TestVolumeErrors(t *testing.T) {
	ioErr := errors.New("disk on fire")
	cases := []struct {
		name   string
		setup  func(v *memVolume)
		typ    uint16
		flags  uint16
		errno  uint32
		closes bool
	}{
		{"read error", func(v *memVolume) { v.readErr = ioErr }, tCmdRead, 0, tEIO, false},
		{"write error", func(v *memVolume) { v.writeErr = ioErr }, tCmdWrite, 0, tEIO, false},
		{"FUA flush error", func(v *memVolume) { v.flushErr = ioErr }, tCmdWrite, tFlagFUA, tEIO, false},
		{"flush error", func(v *memVolume) { v.flushErr = ioErr }, tCmdFlush, 0, tEIO, false},
		{"trim error", func(v *memVolume) { v.discardErr = ioErr }, tCmdTrim, 0, tEIO, false},
		{"write-zeroes error", func(v *memVolume) { v.writeErr = ioErr }, tCmdWriteZeroes, 0, tEIO, false},
		{"range from volume", func(v *memVolume) { v.writeErr = replicate.ErrRange }, tCmdWrite, 0, tEINVAL, false},
		{"read not primary", func(v *memVolume) { v.readErr = replicate.ErrNotPrimary }, tCmdRead, 0, tESHUTDOWN, true},
		{"write not primary", func(v *memVolume) {
			v.writeErr = fmtWrap(replicate.ErrNotPrimary)
		}, tCmdWrite, 0, tESHUTDOWN, true},
		{"flush not primary", func(v *memVolume) { v.flushErr = replicate.ErrNotPrimary }, tCmdFlush, 0, tESHUTDOWN, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vol := newMemVolume(1<<20, 512)
			tc.setup(vol)
			ts := startServer(t, newExports("disk1", vol))
			r := dialRaw(t, ts.sock)
			r.enterGo("disk1")
			var payload []byte
			var length uint32
			if tc.typ != tCmdFlush {
				length = 4096
			}
			if tc.typ == tCmdWrite {
				payload = make([]byte, length)
			}
			r.request(tc.flags, tc.typ, 42, 8192, length, payload)
			r.expectReply(42, tc.errno) // an error reply to a read carries no data
			if tc.closes {
				r.expectClosed()
				return
			}
			r.request(0, tCmdFlush, 43, 0, 0, nil)
			if tc.setup != nil && vol.flushErr != nil {
				r.expectReply(43, tEIO)
			} else {
				r.expectReply(43, 0)
			}
		})
	}
}

func fmtWrap(err error) error { return errors.Join(errors.New("secondary took over"), err) }
