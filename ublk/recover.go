package ublk

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"hast/replicate"
)

// ErrNotRecoverable means the device cannot be taken over by [Recover]: it does not exist, was
// not created with Options.Recovery, or serves a volume of another size.
var ErrNotRecoverable = errors.New("ublk: device not recoverable")

// Recover attaches this process as the server of device id, whose previous server died (a
// crashed or killed daemon): it waits up to wait for the driver to quiesce the device (the
// driver notices a dead server within about 5 s), then START_USER_RECOVERY, arms every queue
// and END_USER_RECOVERY. I/O the kernel held meanwhile, and the requests the dead server had
// not completed, are then served from vol; the file system above saw only a delay.
func Recover(id int, vol replicate.Volume, wait time.Duration, opt Options) (*Device, error) {
	ctrl, err := openControl()
	if err != nil {
		return nil, err
	}
	info, err := ctrl.devInfo(uint32(id))
	if err != nil {
		ctrl.close()
		return nil, fmt.Errorf("%w: %v", ErrNotRecoverable, err)
	}
	if info.Flags&FeatureUserRecovery == 0 {
		ctrl.close()
		return nil, fmt.Errorf("%w: /dev/ublkb%d was created without user recovery", ErrNotRecoverable, id)
	}
	var p params
	p.Len = uint32(unsafe.Sizeof(p))
	if err := ctrl.do(cmdGetParams, devCmd(uint32(id)), unsafe.Pointer(&p), int(p.Len)); err != nil {
		ctrl.close()
		return nil, fmt.Errorf("ublk: GET_PARAMS %d: %w", id, err)
	}
	if p.Basic.DevSectors<<9 != uint64(vol.Size()) || 1<<p.Basic.LogicalBSShift != vol.SectorSize() {
		ctrl.close()
		return nil, fmt.Errorf("%w: /dev/ublkb%d has %d bytes in %d-byte sectors, the volume %d in %d", ErrNotRecoverable,
			id, p.Basic.DevSectors<<9, 1<<p.Basic.LogicalBSShift, vol.Size(), vol.SectorSize())
	}
	for deadline := time.Now().Add(wait); info.State != stateQuiesced; {
		if info.State == stateLive && alive(int(info.ServerPID)) {
			ctrl.close()
			return nil, fmt.Errorf("%w: /dev/ublkb%d is served by the live process %d", ErrNotRecoverable, id, info.ServerPID)
		}
		if time.Now().After(deadline) {
			ctrl.close()
			return nil, fmt.Errorf("ublk: /dev/ublkb%d not quiesced after %v (state %d, server pid %d)", id, wait, info.State, info.ServerPID)
		}
		time.Sleep(50 * time.Millisecond)
		if info, err = ctrl.devInfo(uint32(id)); err != nil {
			ctrl.close()
			return nil, err
		}
	}
	d := &Device{vol: vol, ctrl: ctrl, log: opt.Log, info: info, userCopy: info.Flags&FeatureUserCopy != 0}
	if err := ctrl.simple("START_USER_RECOVERY", cmdStartUserRecovery, uint32(id), 0); err != nil {
		ctrl.close()
		return nil, err
	}
	if err := d.startQueues(); err != nil {
		d.teardown()
		return nil, err
	}
	// END_USER_RECOVERY, like START_DEV, returns once every tag is armed; the held I/O flows.
	if err := ctrl.simple("END_USER_RECOVERY", cmdEndUserRecovery, uint32(id), uint64(os.Getpid())); err != nil {
		d.teardown()
		return nil, err
	}
	d.started = true
	d.log.Info().Str("device", d.BlockPath()).Int("dead_server", int(info.ServerPID)).Msg("ublk device recovered")
	return d, nil
}

// alive reports whether process pid exists and has not exited (a zombie has).
func alive(pid int) bool {
	if pid <= 0 || unix.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may itself hold spaces.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z'
	}
	return true
}

// DeleteOrphan removes device id when no live process serves it (its server was killed and
// nobody recovered it): STOP_DEV fails the I/O the driver was holding, DEL_DEV_ASYNC frees it.
// A device with a live server is left alone (ErrNotRecoverable).
func DeleteOrphan(id int) error {
	ctrl, err := openControl()
	if err != nil {
		return err
	}
	defer ctrl.close()
	info, err := ctrl.devInfo(uint32(id))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotRecoverable, err)
	}
	if info.State == stateLive && alive(int(info.ServerPID)) {
		return fmt.Errorf("%w: /dev/ublkb%d is served by the live process %d", ErrNotRecoverable, id, info.ServerPID)
	}
	if err := ctrl.simple("STOP_DEV", cmdStopDev, uint32(id), 0); err != nil {
		return err
	}
	return ctrl.simple("DEL_DEV_ASYNC", cmdDelDevAsync, uint32(id), 0)
}
