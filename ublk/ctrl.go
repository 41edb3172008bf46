package ublk

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"hast/internal/uring"
)

// ControlPath is the driver's control device; it exists once ublk_drv is loaded.
const ControlPath = "/dev/ublk-control"

// ErrNoDriver means /dev/ublk-control does not exist: ublk_drv is not loaded or not built.
var ErrNoDriver = errors.New("ublk: " + ControlPath + " does not exist (is ublk_drv loaded?)")

// control sends commands to /dev/ublk-control, one at a time, on a ring with 128-byte SQEs (the
// 32-byte ublksrv_ctrl_cmd does not fit the 16-byte command area of an ordinary SQE).
type control struct {
	mu   sync.Mutex
	f    *os.File
	ring *uring.RawRing
}

func openControl() (*control, error) {
	f, err := os.OpenFile(ControlPath, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNoDriver
		}
		return nil, fmt.Errorf("ublk: %w", err)
	}
	ring, err := uring.SetupRaw(4, uring.SetupSQE128)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("ublk: control ring: %w", err)
	}
	return &control{f: f, ring: ring}, nil
}

func (c *control) close() {
	c.ring.Close()
	c.f.Close()
}

// do sends one command and returns the driver's result. buf, when not nil, is the command's
// in/out buffer (its address and length go into cmd).
func (c *control) do(op uint32, cmd ctrlCmd, buf unsafe.Pointer, n int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if buf != nil {
		cmd.Addr = uint64(uintptr(buf))
		cmd.Len = uint16(n)
	}
	sqe := c.ring.NextSQE128()
	if sqe == nil {
		return fmt.Errorf("ublk: control ring full")
	}
	sqe.PrepURingCmd(int(c.f.Fd()), op, uint64(op))
	*(*ctrlCmd)(unsafe.Pointer(&sqe.Cmd()[0])) = cmd
	if _, err := c.ring.SubmitAndWait(1); err != nil {
		return fmt.Errorf("ublk: control command %#x: %w", op, err)
	}
	cqe := c.ring.PeekCQE()
	res := cqe.Res
	c.ring.AdvanceCQ(1)
	runtime.KeepAlive(buf)
	if res < 0 {
		return syscall.Errno(-res)
	}
	return nil
}

// devCmd returns a command addressed to device id.
func devCmd(id uint32) ctrlCmd { return ctrlCmd{DevID: id, QueueID: 0xffff} }

// Features returns the driver's UBLK_F_* mask (GET_FEATURES), or ErrNoDriver.
func Features() (uint64, error) {
	c, err := openControl()
	if err != nil {
		return 0, err
	}
	defer c.close()
	return c.features()
}

func (c *control) features() (uint64, error) {
	var f uint64
	if err := c.do(cmdGetFeatures, devCmd(^uint32(0)), unsafe.Pointer(&f), 8); err != nil {
		return 0, fmt.Errorf("ublk: GET_FEATURES: %w", err)
	}
	return f, nil
}

func (c *control) addDev(info *DevInfo) error {
	if err := c.do(cmdAddDev, devCmd(info.DevID), unsafe.Pointer(info), int(unsafe.Sizeof(*info))); err != nil {
		return fmt.Errorf("ublk: ADD_DEV: %w", err)
	}
	return nil
}

func (c *control) devInfo(id uint32) (DevInfo, error) {
	var info DevInfo
	if err := c.do(cmdGetDevInfo, devCmd(id), unsafe.Pointer(&info), int(unsafe.Sizeof(info))); err != nil {
		return info, fmt.Errorf("ublk: GET_DEV_INFO %d: %w", id, err)
	}
	return info, nil
}

func (c *control) setParams(id uint32, p *params) error {
	if err := c.do(cmdSetParams, devCmd(id), unsafe.Pointer(p), int(p.Len)); err != nil {
		return fmt.Errorf("ublk: SET_PARAMS %d: %w", id, err)
	}
	return nil
}

func (c *control) simple(name string, op, id uint32, data uint64) error {
	cmd := devCmd(id)
	cmd.Data = data
	if err := c.do(op, cmd, nil, 0); err != nil {
		return fmt.Errorf("ublk: %s %d: %w", name, id, err)
	}
	return nil
}

// pageSize is the mapping granularity of the descriptor arrays.
var pageSize = unix.Getpagesize()
