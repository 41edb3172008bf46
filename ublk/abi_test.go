package ublk

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"hast/image"
)

// uapiHeader returns include/uapi/linux/ublk_cmd.h of the kernel the guests boot, from Debian's
// linux-headers-*-common package (fetched through apt and cached; never installed).
func uapiHeader(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	arch, err := image.Resolve(ctx, "linux-headers-6.12-cloud-amd64", "linux-headers-")
	if err != nil {
		t.Fatal(err)
	}
	common := strings.TrimSuffix(arch, "-cloud-amd64") + "-common"
	dir, err := image.CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	root, err := image.FetchDeb(ctx, dir, common)
	if err != nil {
		t.Fatal(err)
	}
	h := filepath.Join(root, "usr/src", common, "include/uapi/linux/ublk_cmd.h")
	if _, err := os.Stat(h); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestABIAgainstUAPIHeader compiles the kernel's ublk_cmd.h with gcc and compares every
// constant, struct size and field offset abi.go declares.
func TestABIAgainstUAPIHeader(t *testing.T) {
	h := uapiHeader(t)
	want := map[string]uint64{}
	var c strings.Builder
	c.WriteString("#include <stdio.h>\n#include <stddef.h>\n#include <linux/ioctl.h>\n#include <linux/ublk_cmd.h>\nint main(void){\n")
	val := func(expr string, got uint64) {
		want[expr] = got
		fmt.Fprintf(&c, "printf(\"%%s=%%llu\\n\", %q, (unsigned long long)(%s));\n", expr, expr)
	}
	for name, v := range map[string]uint32{
		"UBLK_U_CMD_GET_DEV_INFO": cmdGetDevInfo, "UBLK_U_CMD_ADD_DEV": cmdAddDev, "UBLK_U_CMD_DEL_DEV": cmdDelDev, "UBLK_U_CMD_DEL_DEV_ASYNC": cmdDelDevAsync,
		"UBLK_U_CMD_START_DEV": cmdStartDev, "UBLK_U_CMD_STOP_DEV": cmdStopDev, "UBLK_U_CMD_SET_PARAMS": cmdSetParams,
		"UBLK_U_CMD_GET_PARAMS": cmdGetParams, "UBLK_U_CMD_START_USER_RECOVERY": cmdStartUserRecovery,
		"UBLK_U_CMD_END_USER_RECOVERY": cmdEndUserRecovery, "UBLK_U_CMD_GET_FEATURES": cmdGetFeatures,
		"UBLK_U_IO_FETCH_REQ": ioFetchReq, "UBLK_U_IO_COMMIT_AND_FETCH_REQ": ioCommitAndFetchReq,
	} {
		val(name, uint64(v))
	}
	for name, v := range map[string]uint64{
		"UBLK_F_SUPPORT_ZERO_COPY": FeatureZeroCopy, "UBLK_F_URING_CMD_COMP_IN_TASK": FeatureURingCmdCompInTask,
		"UBLK_F_NEED_GET_DATA": FeatureNeedGetData, "UBLK_F_USER_RECOVERY": FeatureUserRecovery,
		"UBLK_F_USER_RECOVERY_REISSUE": FeatureUserRecoveryReissue, "UBLK_F_UNPRIVILEGED_DEV": FeatureUnprivilegedDev,
		"UBLK_F_CMD_IOCTL_ENCODE": FeatureCmdIoctlEncode, "UBLK_F_USER_COPY": FeatureUserCopy, "UBLK_F_ZONED": FeatureZoned,
		"UBLK_S_DEV_DEAD": stateDead, "UBLK_S_DEV_LIVE": stateLive, "UBLK_S_DEV_QUIESCED": stateQuiesced,
		"UBLK_IO_OP_READ": opRead, "UBLK_IO_OP_WRITE": opWrite, "UBLK_IO_OP_FLUSH": opFlush,
		"UBLK_IO_OP_DISCARD": opDiscard, "UBLK_IO_OP_WRITE_SAME": opWriteSame, "UBLK_IO_OP_WRITE_ZEROES": opWriteZeroes,
		"UBLK_IO_F_FUA": ioFlagFUA, "UBLK_IO_F_NOUNMAP": ioFlagNoUnmap,
		"UBLK_IO_RES_OK": ioResOK, "UBLK_IO_RES_NEED_GET_DATA": ioResNeedGetData,
		"UBLKSRV_CMD_BUF_OFFSET": cmdBufOffset, "UBLKSRV_IO_BUF_OFFSET": ioBufOffset,
		"UBLK_MAX_QUEUE_DEPTH": maxQueueDepth, "UBLK_IO_BUF_BITS": ioBufBits, "UBLK_TAG_OFF": tagOff,
		"UBLK_TAG_BITS": tagBits, "UBLK_QID_OFF": qidOff,
		"UBLK_PARAM_TYPE_BASIC": paramTypeBasic, "UBLK_PARAM_TYPE_DISCARD": paramTypeDiscard,
		"UBLK_ATTR_READ_ONLY": attrReadOnly, "UBLK_ATTR_VOLATILE_CACHE": attrVolatileCache, "UBLK_ATTR_FUA": attrFUA,
	} {
		val(name, v)
	}
	layout := func(cstruct string, size uintptr, fields map[string]uintptr) {
		val("sizeof(struct "+cstruct+")", uint64(size))
		for f, off := range fields {
			val("offsetof(struct "+cstruct+", "+f+")", uint64(off))
		}
	}
	if unsafe.Sizeof(ctrlCmd{}) != ctrlCmdSize || unsafe.Sizeof(ioDesc{}) != ioDescSize || unsafe.Sizeof(ioCmd{}) != ioCmdSize {
		t.Fatal("the size constants disagree with the structs")
	}
	var cc ctrlCmd
	layout("ublksrv_ctrl_cmd", unsafe.Sizeof(cc), map[string]uintptr{"dev_id": unsafe.Offsetof(cc.DevID),
		"queue_id": unsafe.Offsetof(cc.QueueID), "len": unsafe.Offsetof(cc.Len), "addr": unsafe.Offsetof(cc.Addr),
		"data": unsafe.Offsetof(cc.Data), "dev_path_len": unsafe.Offsetof(cc.DevPathLen), "reserved": unsafe.Offsetof(cc.Reserved)})
	var di DevInfo
	layout("ublksrv_ctrl_dev_info", unsafe.Sizeof(di), map[string]uintptr{"nr_hw_queues": unsafe.Offsetof(di.NrHWQueues),
		"queue_depth": unsafe.Offsetof(di.QueueDepth), "state": unsafe.Offsetof(di.State),
		"max_io_buf_bytes": unsafe.Offsetof(di.MaxIOBufBytes), "dev_id": unsafe.Offsetof(di.DevID),
		"ublksrv_pid": unsafe.Offsetof(di.ServerPID), "flags": unsafe.Offsetof(di.Flags),
		"ublksrv_flags": unsafe.Offsetof(di.ServerFlags), "owner_uid": unsafe.Offsetof(di.OwnerUID),
		"owner_gid": unsafe.Offsetof(di.OwnerGID), "reserved1": unsafe.Offsetof(di.Reserved1), "reserved2": unsafe.Offsetof(di.Reserved2)})
	var io ioDesc
	layout("ublksrv_io_desc", unsafe.Sizeof(io), map[string]uintptr{"op_flags": unsafe.Offsetof(io.OpFlags),
		"nr_sectors": unsafe.Offsetof(io.NrSectors), "start_sector": unsafe.Offsetof(io.StartSector), "addr": unsafe.Offsetof(io.Addr)})
	var ic ioCmd
	layout("ublksrv_io_cmd", unsafe.Sizeof(ic), map[string]uintptr{"q_id": unsafe.Offsetof(ic.QID),
		"tag": unsafe.Offsetof(ic.Tag), "result": unsafe.Offsetof(ic.Result), "addr": unsafe.Offsetof(ic.Addr)})
	var pb paramBasic
	layout("ublk_param_basic", unsafe.Sizeof(pb), map[string]uintptr{"attrs": unsafe.Offsetof(pb.Attrs),
		"logical_bs_shift": unsafe.Offsetof(pb.LogicalBSShift), "physical_bs_shift": unsafe.Offsetof(pb.PhysicalBSShift),
		"io_opt_shift": unsafe.Offsetof(pb.IOOptShift), "io_min_shift": unsafe.Offsetof(pb.IOMinShift),
		"max_sectors": unsafe.Offsetof(pb.MaxSectors), "chunk_sectors": unsafe.Offsetof(pb.ChunkSectors),
		"dev_sectors": unsafe.Offsetof(pb.DevSectors), "virt_boundary_mask": unsafe.Offsetof(pb.VirtBoundaryMask)})
	var pd paramDiscard
	layout("ublk_param_discard", unsafe.Sizeof(pd), map[string]uintptr{"discard_alignment": unsafe.Offsetof(pd.DiscardAlignment),
		"discard_granularity": unsafe.Offsetof(pd.DiscardGranularity), "max_discard_sectors": unsafe.Offsetof(pd.MaxDiscardSectors),
		"max_write_zeroes_sectors": unsafe.Offsetof(pd.MaxWriteZeroesSectors), "max_discard_segments": unsafe.Offsetof(pd.MaxDiscardSegments)})
	var pv paramDevt
	layout("ublk_param_devt", unsafe.Sizeof(pv), map[string]uintptr{"disk_minor": unsafe.Offsetof(pv.DiskMinor)})
	var pz paramZoned
	layout("ublk_param_zoned", unsafe.Sizeof(pz), map[string]uintptr{"reserved": unsafe.Offsetof(pz.Reserved)})
	var p params
	layout("ublk_params", unsafe.Sizeof(p), map[string]uintptr{"len": unsafe.Offsetof(p.Len), "types": unsafe.Offsetof(p.Types),
		"basic": unsafe.Offsetof(p.Basic), "discard": unsafe.Offsetof(p.Discard), "devt": unsafe.Offsetof(p.Devt),
		"zoned": unsafe.Offsetof(p.Zoned)})
	c.WriteString("return 0;}\n")

	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "linux"), 0o755); err != nil {
		t.Fatal(err)
	}
	hb, err := os.ReadFile(h)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "linux/ublk_cmd.h"), hb, 0o644)
	os.WriteFile(filepath.Join(dir, "abi.c"), []byte(c.String()), 0o644)
	if out, err := exec.Command("gcc", "-I", dir, "-o", filepath.Join(dir, "abi"), filepath.Join(dir, "abi.c")).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, err := exec.Command(filepath.Join(dir, "abi")).Output()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		name, v, _ := strings.Cut(line, "=")
		var got uint64
		fmt.Sscan(v, &got)
		if want[name] != got {
			t.Errorf("%s: header says %#x, abi.go %#x", name, got, want[name])
		}
		seen++
	}
	if seen != len(want) {
		t.Fatalf("checked %d of %d values", seen, len(want))
	}
	t.Logf("%d constants, sizes and offsets match %s", seen, h)
}

func TestUserCopyOffsetAndDescMapping(t *testing.T) {
	if got := userCopyOffset(0, 0); got != 0x80000000 {
		t.Fatalf("q0 tag0 at %#x", got)
	}
	if got := userCopyOffset(1, 3); got != 0x80000000+1<<41+3<<25 {
		t.Fatalf("q1 tag3 at %#x", got)
	}
	if descOffset(1, 4096) != 4096*24 || descLen(64, 4096) != 4096 || descLen(200, 4096) != 8192 {
		t.Fatal("descriptor mapping")
	}
}
