package uring

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// abiProgram prints the kernel header's view of every layout and constant we mirror, one
// "name value" per line. Constants the installed header predates are skipped with #ifdef.
const abiProgram = `#include <stdio.h>
#include <stddef.h>
#include <linux/io_uring.h>
#define S(t) printf("sizeof %s %zu\n", #t, sizeof(struct t));
#define O(t, f) printf("offsetof %s.%s %zu\n", #t, #f, offsetof(struct t, f));
#define C(name) printf("const %s %llu\n", #name, (unsigned long long)(name));
int main(void) {
	S(io_uring_sqe) S(io_uring_cqe) S(io_uring_params) S(io_sqring_offsets) S(io_cqring_offsets)
	O(io_uring_sqe, opcode) O(io_uring_sqe, flags) O(io_uring_sqe, ioprio) O(io_uring_sqe, fd)
	O(io_uring_sqe, off) O(io_uring_sqe, cmd_op) O(io_uring_sqe, addr) O(io_uring_sqe, len)
	O(io_uring_sqe, rw_flags) O(io_uring_sqe, fsync_flags) O(io_uring_sqe, user_data)
	O(io_uring_sqe, buf_index) O(io_uring_sqe, personality) O(io_uring_sqe, splice_fd_in)
	O(io_uring_sqe, addr3) O(io_uring_sqe, cmd)
	O(io_uring_cqe, user_data) O(io_uring_cqe, res) O(io_uring_cqe, flags) O(io_uring_cqe, big_cqe)
	O(io_uring_params, sq_entries) O(io_uring_params, features) O(io_uring_params, wq_fd)
	O(io_uring_params, sq_off) O(io_uring_params, cq_off)
	O(io_sqring_offsets, array) O(io_cqring_offsets, cqes)
	C(IORING_SETUP_SQE128) C(IORING_SETUP_CQE32) C(IORING_SETUP_SINGLE_ISSUER) C(IORING_SETUP_COOP_TASKRUN)
	C(IORING_SETUP_DEFER_TASKRUN) C(IORING_SETUP_TASKRUN_FLAG) C(IORING_SETUP_SQPOLL) C(IORING_SETUP_CQSIZE)
	C(IORING_FEAT_SINGLE_MMAP) C(IORING_FEAT_NODROP) C(IORING_FEAT_EXT_ARG)
	C(IORING_OP_NOP) C(IORING_OP_FSYNC) C(IORING_OP_READ_FIXED) C(IORING_OP_WRITE_FIXED) C(IORING_OP_POLL_ADD)
	C(IORING_OP_ASYNC_CANCEL) C(IORING_OP_FALLOCATE) C(IORING_OP_READ) C(IORING_OP_WRITE) C(IORING_OP_URING_CMD)
	C(IORING_FSYNC_DATASYNC) C(IOSQE_FIXED_FILE) C(IOSQE_IO_LINK) C(IOSQE_ASYNC) C(IOSQE_CQE_SKIP_SUCCESS)
	C(IORING_CQE_F_MORE) C(IORING_ENTER_GETEVENTS) C(IORING_ENTER_EXT_ARG)
	C(IORING_OFF_SQ_RING) C(IORING_OFF_CQ_RING) C(IORING_OFF_SQES)
	C(IORING_REGISTER_PROBE) C(IORING_REGISTER_EVENTFD) C(IORING_REGISTER_BUFFERS) C(IORING_REGISTER_ENABLE_RINGS)
#ifdef IORING_ASYNC_CANCEL_ANY
	C(IORING_ASYNC_CANCEL_ALL) C(IORING_ASYNC_CANCEL_ANY)
#endif
#ifdef IORING_SETUP_NO_SQARRAY
	C(IORING_SETUP_NO_MMAP) C(IORING_SETUP_NO_SQARRAY)
#endif
	return 0;
}
`

// kernelABI compiles and runs abiProgram against the installed UAPI header.
func kernelABI(t *testing.T) map[string]uint64 {
	t.Helper()
	const header = "/usr/include/linux/io_uring.h"
	cc, err := exec.LookPath("cc")
	_, herr := os.Stat(header)
	if err != nil || herr != nil {
		// Debian's packages for a C compiler and the kernel's UAPI headers.
		out, ierr := exec.Command("apt-get", "install", "-y", "-qq", "--no-install-recommends",
			"gcc", "libc6-dev", "linux-libc-dev").CombinedOutput()
		if ierr != nil {
			t.Fatalf("reading the kernel's io_uring ABI needs cc and %s (apt-get install gcc libc6-dev linux-libc-dev), and installing them failed: %v\n%s",
				header, ierr, out)
		}
		if cc, err = exec.LookPath("cc"); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "abi.c"), filepath.Join(dir, "abi")
	if err := os.WriteFile(src, []byte(abiProgram), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(cc, "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("compile ABI probe: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatalf("run ABI probe: %v", err)
	}
	abi := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		v, err := strconv.ParseUint(f[2], 10, 64)
		if len(f) != 3 || err != nil {
			t.Fatalf("ABI probe line %q", sc.Text())
		}
		abi[f[0]+" "+f[1]] = v
	}
	return abi
}

func TestABIMatchesKernelHeader(t *testing.T) {
	abi := kernelABI(t)
	var sqe SQE
	var cqe CQE32
	var p Params
	ours := map[string]uint64{
		"sizeof io_uring_sqe":                 uint64(unsafe.Sizeof(sqe)),
		"sizeof io_uring_cqe":                 uint64(unsafe.Sizeof(CQE{})),
		"sizeof io_uring_params":              uint64(unsafe.Sizeof(p)),
		"sizeof io_sqring_offsets":            uint64(unsafe.Sizeof(sqringOffsets{})),
		"sizeof io_cqring_offsets":            uint64(unsafe.Sizeof(cqringOffsets{})),
		"offsetof io_uring_sqe.opcode":        uint64(unsafe.Offsetof(sqe.Opcode)),
		"offsetof io_uring_sqe.flags":         uint64(unsafe.Offsetof(sqe.Flags)),
		"offsetof io_uring_sqe.ioprio":        uint64(unsafe.Offsetof(sqe.IOPrio)),
		"offsetof io_uring_sqe.fd":            uint64(unsafe.Offsetof(sqe.FD)),
		"offsetof io_uring_sqe.off":           uint64(unsafe.Offsetof(sqe.Off)),
		"offsetof io_uring_sqe.cmd_op":        uint64(unsafe.Offsetof(sqe.Off)),
		"offsetof io_uring_sqe.addr":          uint64(unsafe.Offsetof(sqe.Addr)),
		"offsetof io_uring_sqe.len":           uint64(unsafe.Offsetof(sqe.Len)),
		"offsetof io_uring_sqe.rw_flags":      uint64(unsafe.Offsetof(sqe.OpFlags)),
		"offsetof io_uring_sqe.fsync_flags":   uint64(unsafe.Offsetof(sqe.OpFlags)),
		"offsetof io_uring_sqe.user_data":     uint64(unsafe.Offsetof(sqe.UserData)),
		"offsetof io_uring_sqe.buf_index":     uint64(unsafe.Offsetof(sqe.BufIndex)),
		"offsetof io_uring_sqe.personality":   uint64(unsafe.Offsetof(sqe.Personality)),
		"offsetof io_uring_sqe.splice_fd_in":  uint64(unsafe.Offsetof(sqe.SpliceFDIn)),
		"offsetof io_uring_sqe.addr3":         uint64(unsafe.Offsetof(sqe.Addr3)),
		"offsetof io_uring_sqe.cmd":           cmdOffset,
		"offsetof io_uring_cqe.user_data":     uint64(unsafe.Offsetof(cqe.UserData)),
		"offsetof io_uring_cqe.res":           uint64(unsafe.Offsetof(cqe.Res)),
		"offsetof io_uring_cqe.flags":         uint64(unsafe.Offsetof(cqe.Flags)),
		"offsetof io_uring_cqe.big_cqe":       uint64(unsafe.Offsetof(cqe.Big)),
		"offsetof io_uring_params.sq_entries": uint64(unsafe.Offsetof(p.SQEntries)),
		"offsetof io_uring_params.features":   uint64(unsafe.Offsetof(p.Features)),
		"offsetof io_uring_params.wq_fd":      uint64(unsafe.Offsetof(p.WQFD)),
		"offsetof io_uring_params.sq_off":     uint64(unsafe.Offsetof(p.sqOff)),
		"offsetof io_uring_params.cq_off":     uint64(unsafe.Offsetof(p.cqOff)),
		"offsetof io_sqring_offsets.array":    uint64(unsafe.Offsetof(p.sqOff.Array)),
		"offsetof io_cqring_offsets.cqes":     uint64(unsafe.Offsetof(p.cqOff.CQEs)),
		"const IORING_SETUP_SQE128":           SetupSQE128,
		"const IORING_SETUP_CQE32":            SetupCQE32,
		"const IORING_SETUP_SINGLE_ISSUER":    SetupSingleIssuer,
		"const IORING_SETUP_COOP_TASKRUN":     SetupCoopTaskrun,
		"const IORING_SETUP_DEFER_TASKRUN":    SetupDeferTaskrun,
		"const IORING_SETUP_TASKRUN_FLAG":     SetupTaskrunFlag,
		"const IORING_SETUP_SQPOLL":           SetupSQPoll,
		"const IORING_SETUP_CQSIZE":           SetupCQSize,
		"const IORING_SETUP_NO_MMAP":          SetupNoMmap,
		"const IORING_SETUP_NO_SQARRAY":       SetupNoSQArray,
		"const IORING_FEAT_SINGLE_MMAP":       FeatSingleMmap,
		"const IORING_FEAT_NODROP":            FeatNoDrop,
		"const IORING_FEAT_EXT_ARG":           FeatExtArg,
		"const IORING_OP_NOP":                 OpNop,
		"const IORING_OP_FSYNC":               OpFsync,
		"const IORING_OP_READ_FIXED":          OpReadFixed,
		"const IORING_OP_WRITE_FIXED":         OpWriteFixed,
		"const IORING_OP_POLL_ADD":            OpPollAdd,
		"const IORING_OP_ASYNC_CANCEL":        OpAsyncCancel,
		"const IORING_OP_FALLOCATE":           OpFallocate,
		"const IORING_OP_READ":                OpRead,
		"const IORING_OP_WRITE":               OpWrite,
		"const IORING_OP_URING_CMD":           OpURingCmd,
		"const IORING_FSYNC_DATASYNC":         FsyncDatasync,
		"const IOSQE_FIXED_FILE":              SQEFixedFile,
		"const IOSQE_IO_LINK":                 SQEIOLink,
		"const IOSQE_ASYNC":                   SQEAsync,
		"const IOSQE_CQE_SKIP_SUCCESS":        SQECQESkipSuccess,
		"const IORING_CQE_F_MORE":             CQEFMore,
		"const IORING_ENTER_GETEVENTS":        EnterGetEvents,
		"const IORING_ENTER_EXT_ARG":          EnterExtArg,
		"const IORING_OFF_SQ_RING":            offSQRing,
		"const IORING_OFF_CQ_RING":            offCQRing,
		"const IORING_OFF_SQES":               offSQEs,
		"const IORING_REGISTER_PROBE":         RegisterProbe,
		"const IORING_REGISTER_EVENTFD":       RegisterEventFD,
		"const IORING_REGISTER_BUFFERS":       RegisterBuffers,
		"const IORING_REGISTER_ENABLE_RINGS":  RegisterEnableRings,
		"const IORING_ASYNC_CANCEL_ALL":       AsyncCancelAll,
		"const IORING_ASYNC_CANCEL_ANY":       AsyncCancelAny,
	}
	checked := 0
	for name, want := range abi {
		got, ok := ours[name]
		if !ok {
			t.Errorf("the probe printed %s, which the test does not map", name)
			continue
		}
		checked++
		if got != want {
			t.Errorf("%s: ours %d, kernel header %d", name, got, want)
		}
	}
	// Everything but the constants newer than an old installed header must have been
	// compared; a probe that printed nothing would otherwise pass.
	if checked < len(ours)-4 {
		t.Errorf("compared %d of %d entries", checked, len(ours))
	}
	// SQE128 and CQE32 are not structs in the header: they are defined by the
	// header's comments as doubled entries, with the command area running to the end.
	if got := unsafe.Sizeof(SQE128{}); got != 2*uintptr(abi["sizeof io_uring_sqe"]) {
		t.Errorf("SQE128 is %d bytes, want twice the SQE", got)
	}
	if got := unsafe.Sizeof(CQE32{}); got != 2*uintptr(abi["sizeof io_uring_cqe"]) {
		t.Errorf("CQE32 is %d bytes, want twice the CQE", got)
	}
	var big SQE128
	if n := len(big.Cmd()); n != 80 {
		t.Errorf("SQE128 command area is %d bytes, want 80", n)
	}
	if n := len(sqe.Cmd()); n != 16 {
		t.Errorf("SQE command area is %d bytes, want 16", n)
	}
	t.Log(fmt.Sprintf("compared %d layout facts and constants with the kernel header", checked))
}
