package ublk

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/rs/zerolog"

	"hast/replicate"
)

// Options shape a device. Zero values pick the defaults.
type Options struct {
	Queues     int  // hardware queues; default runtime.NumCPU() (the driver clamps to the CPU count)
	Depth      int  // requests in flight per queue; default 64
	MaxIO      int  // largest request in bytes; default replicate.MaxIO
	NoUserCopy bool // use the per-tag buffers even when the driver offers UBLK_F_USER_COPY
	// Recovery asks for UBLK_F_USER_RECOVERY with REISSUE: when the server dies the device stays,
	// holding new I/O and requeueing what the dead server had not completed, until [Recover]
	// attaches a new server. Without it the driver deletes the disk when the server dies.
	Recovery bool
	Log      zerolog.Logger

	failStart bool // tests: fail between arming the queues and START_DEV
}

// Device is one /dev/ublkbN serving a Volume.
type Device struct {
	vol      replicate.Volume
	ctrl     *control
	info     DevInfo
	cdev     *os.File
	queues   []*queue
	log      zerolog.Logger
	userCopy bool

	closed    atomic.Bool // new requests fail with EIO
	started   bool        // START_DEV (or END_USER_RECOVERY) succeeded
	abandon   atomic.Bool // the device never started: queue threads exit when woken
	closeOnce sync.Once
	closeErr  error
}

// Create adds a ublk device serving vol and starts it; /dev/ublkbN exists when it returns.
func Create(vol replicate.Volume, opt Options) (*Device, error) {
	if opt.Queues <= 0 {
		opt.Queues = runtime.NumCPU()
	}
	if opt.Depth <= 0 {
		opt.Depth = 64
	}
	if opt.Depth > maxQueueDepth {
		opt.Depth = maxQueueDepth
	}
	if opt.MaxIO <= 0 {
		opt.MaxIO = replicate.MaxIO
	}
	ss := vol.SectorSize()
	if ss < 512 || ss > 4096 || ss&(ss-1) != 0 {
		return nil, fmt.Errorf("ublk: sector size %d not supported", ss)
	}
	if vol.Size()%int64(ss) != 0 || vol.Size() == 0 {
		return nil, fmt.Errorf("ublk: volume size %d is not a positive multiple of the sector size %d", vol.Size(), ss)
	}
	ctrl, err := openControl()
	if err != nil {
		return nil, err
	}
	feat, err := ctrl.features()
	if err != nil {
		ctrl.close()
		return nil, err
	}
	d := &Device{vol: vol, ctrl: ctrl, log: opt.Log}
	d.userCopy = feat&FeatureUserCopy != 0 && !opt.NoUserCopy
	d.info = DevInfo{NrHWQueues: uint16(opt.Queues), QueueDepth: uint16(opt.Depth),
		MaxIOBufBytes: uint32(opt.MaxIO), DevID: ^uint32(0)}
	if d.userCopy {
		d.info.Flags |= FeatureUserCopy
	}
	const recovery = FeatureUserRecovery | FeatureUserRecoveryReissue
	if opt.Recovery {
		if feat&recovery != recovery {
			ctrl.close()
			return nil, fmt.Errorf("ublk: the driver does not offer user recovery (features %#x)", feat)
		}
		d.info.Flags |= recovery
	}
	if err := ctrl.addDev(&d.info); err != nil {
		ctrl.close()
		return nil, err
	}
	if err := d.start(opt.failStart); err != nil {
		d.teardown()
		return nil, err
	}
	d.log.Info().Str("device", d.BlockPath()).Int("queues", int(d.info.NrHWQueues)).
		Int("depth", int(d.info.QueueDepth)).Bool("user_copy", d.userCopy).Msg("ublk device started")
	return d, nil
}

func (d *Device) start(fail bool) error {
	id := d.info.DevID
	p := d.params()
	if err := d.ctrl.setParams(id, &p); err != nil {
		return err
	}
	if err := d.startQueues(); err != nil {
		return err
	}
	if fail {
		return errors.New("ublk: start failed (test)")
	}
	// START_DEV returns once every tag has a FETCH_REQ armed and the disk is added (which
	// reads the partition table through the queues already serving).
	if err := d.ctrl.simple("START_DEV", cmdStartDev, id, uint64(os.Getpid())); err != nil {
		return err
	}
	d.started = true
	return nil
}

// startQueues opens /dev/ublkcN and starts every queue's thread, which arms FETCH_REQ.
func (d *Device) startQueues() error {
	var err error
	// devtmpfs creates the node as the driver registers it; no udev involved.
	d.cdev, err = os.OpenFile(d.CharPath(), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("ublk: %w", err)
	}
	for q := 0; q < int(d.info.NrHWQueues); q++ {
		qu, err := startQueue(d, uint16(q))
		if err != nil {
			return err
		}
		d.queues = append(d.queues, qu)
	}
	return nil
}

func (d *Device) params() params {
	ss := d.vol.SectorSize()
	shift := uint8(bits.TrailingZeros(uint(ss)))
	phys := shift
	if phys < 12 {
		phys = 12 // 4 KiB physical: file systems align to it
	}
	p := params{Types: paramTypeBasic | paramTypeDiscard}
	p.Len = uint32(8 + 32 + 20) // basic and discard; the driver accepts a prefix
	p.Basic = paramBasic{
		Attrs:           attrVolatileCache | attrFUA,
		LogicalBSShift:  shift,
		PhysicalBSShift: phys,
		IOMinShift:      shift,
		IOOptShift:      phys,
		MaxSectors:      d.info.MaxIOBufBytes >> 9,
		DevSectors:      uint64(d.vol.Size()) >> 9,
	}
	p.Discard = paramDiscard{
		DiscardGranularity:    4096,
		MaxDiscardSectors:     (64 << 20) >> 9,
		MaxWriteZeroesSectors: (64 << 20) >> 9,
		MaxDiscardSegments:    1,
	}
	return p
}

// ID is the device number N of /dev/ublkbN.
func (d *Device) ID() int { return int(d.info.DevID) }

// BlockPath is /dev/ublkbN.
func (d *Device) BlockPath() string { return fmt.Sprintf("/dev/ublkb%d", d.info.DevID) }

// CharPath is /dev/ublkcN, the server's side.
func (d *Device) CharPath() string { return fmt.Sprintf("/dev/ublkc%d", d.info.DevID) }

// UserCopy reports whether data moves with pread/pwrite on /dev/ublkcN (UBLK_F_USER_COPY).
func (d *Device) UserCopy() bool { return d.userCopy }

// Info asks the driver for the device's current information (GET_DEV_INFO).
func (d *Device) Info() (DevInfo, error) { return d.ctrl.devInfo(d.info.DevID) }

// Close fails requests still arriving with EIO, stops the device (the block device goes away;
// open file descriptors on it get errors), waits for the queues to finish what they hold, and
// deletes it. It is safe to call more than once.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		d.closed.Store(true)
		d.closeErr = d.teardown()
	})
	return d.closeErr
}

func (d *Device) teardown() error {
	id := d.info.DevID
	var errs []error
	switch {
	case len(d.queues) > 0 && !d.started:
		// STOP_DEV does nothing to a device that never started, so the armed FETCH_REQs
		// would hold the queue threads for ever: wake them to close their rings, which
		// cancels the commands.
		d.abandon.Store(true)
		for _, q := range d.queues {
			q.wake()
		}
	case len(d.queues) > 0:
		if err := d.ctrl.simple("STOP_DEV", cmdStopDev, id, 0); err != nil {
			errs = append(errs, err)
		}
	}
	for _, q := range d.queues {
		if err := q.wait(); err != nil {
			errs = append(errs, err)
		}
	}
	if d.cdev != nil {
		d.cdev.Close()
	}
	// DEL_DEV waits for the last reference to the device, and a process holding /dev/ublkbN
	// open holds one. DEL_DEV_ASYNC (Linux 6.9+) returns at once; the number is freed when the
	// last opener closes. Our own mappings and fds of /dev/ublkcN are gone by now.
	err := d.ctrl.simple("DEL_DEV_ASYNC", cmdDelDevAsync, id, 0)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EINVAL) {
		err = d.ctrl.simple("DEL_DEV", cmdDelDev, id, 0)
	}
	if err != nil {
		errs = append(errs, err)
	}
	d.ctrl.close()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	d.log.Info().Str("device", d.BlockPath()).Msg("ublk device deleted")
	return nil
}

// errno maps a Volume error onto the negative errno the block layer gets.
func errno(err error) int32 {
	var e syscall.Errno
	if errors.As(err, &e) {
		switch e {
		case syscall.EIO, syscall.ENOSPC, syscall.EOPNOTSUPP, syscall.ETIMEDOUT, syscall.ENOLINK:
			return -int32(e)
		}
	}
	if errors.Is(err, replicate.ErrRange) {
		return -int32(syscall.EINVAL)
	}
	return -int32(syscall.EIO)
}
