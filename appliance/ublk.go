package appliance

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"hast/replicate"
	"hast/ublk"
)

// ublkLinkDir holds the /dev/hast/<resource> links to the ublk block devices (HAST's names).
// We create them ourselves: the appliance has no udev.
const ublkLinkDir = "/dev/hast"

// ublkFrontend serves every primary volume as /dev/ublkbN, linked as /dev/hast/<name>.
type ublkFrontend struct {
	log      zerolog.Logger
	recovery bool // devices outlive a crashed daemon (UBLK_F_USER_RECOVERY)
	mu       sync.Mutex
	devs     map[string]*ublk.Device
}

// newUblkFrontend applies --ublk: "off", "on" (the daemon does not start without ublk) or
// "auto" (ublk where the kernel has it). It loads ublk_drv when /dev/ublk-control is missing.
func newUblkFrontend(mode string, log zerolog.Logger) (*ublkFrontend, error) {
	switch mode {
	case "off":
		return nil, nil
	case "", "auto", "on":
	default:
		return nil, exitErr(exUsage, fmt.Errorf("--ublk %q: expected on, off or auto", mode))
	}
	if _, err := os.Stat(ublk.ControlPath); errors.Is(err, os.ErrNotExist) {
		if out, err := exec.Command("modprobe", "ublk_drv").CombinedOutput(); err != nil {
			log.Debug().Err(err).Bytes("output", out).Msg("modprobe ublk_drv")
		}
	}
	feat, err := ublk.Features()
	if err != nil {
		if mode == "on" {
			return nil, exitErr(exOSErr, fmt.Errorf("--ublk on: %w", err))
		}
		log.Info().Err(err).Msg("no ublk: primary volumes are not block devices (FUSE and NBD serve them)")
		return nil, nil
	}
	log.Info().Str("features", fmt.Sprintf("%#x", feat)).Msg("ublk: primary volumes appear as " + ublkLinkDir + "/<resource>")
	const recovery = ublk.FeatureUserRecovery | ublk.FeatureUserRecoveryReissue
	return &ublkFrontend{log: log, recovery: feat&recovery == recovery, devs: map[string]*ublk.Device{}}, nil
}

// add serves v as name's device. When /dev/hast/<name> still links to a device a killed daemon
// served, that device is re-attached (I/O its users issued meanwhile was held, not failed).
func (u *ublkFrontend) add(name string, v replicate.Volume) error {
	opt := ublk.Options{Log: u.log.With().Str("resource", name).Logger(), Recovery: u.recovery}
	link := filepath.Join(ublkLinkDir, name)
	var dev *ublk.Device
	if target, err := os.Readlink(link); err == nil && u.recovery {
		var id int
		if _, err := fmt.Sscanf(target, "/dev/ublkb%d", &id); err == nil {
			dev, err = ublk.Recover(id, v, 15*time.Second, opt)
			if err != nil && !errors.Is(err, ublk.ErrNotRecoverable) {
				u.log.Warn().Err(err).Str("resource", name).Msg("ublk: the device a previous daemon left cannot be re-attached; creating a new one")
			}
		}
	}
	if dev == nil {
		var err error
		if dev, err = ublk.Create(v, opt); err != nil {
			return err
		}
	}
	os.MkdirAll(ublkLinkDir, 0o755)
	os.Remove(link)
	if err := os.Symlink(dev.BlockPath(), link); err != nil {
		dev.Close()
		return err
	}
	u.mu.Lock()
	u.devs[name] = dev
	u.mu.Unlock()
	return nil
}

// busy reports whether name's device is open or mounted.
func (u *ublkFrontend) busy(name string) error {
	u.mu.Lock()
	dev := u.devs[name]
	u.mu.Unlock()
	if dev == nil {
		return nil
	}
	return dev.Busy()
}

// remove deletes name's device; I/O still arriving on it fails with EIO.
func (u *ublkFrontend) remove(name string) {
	u.mu.Lock()
	dev := u.devs[name]
	delete(u.devs, name)
	u.mu.Unlock()
	if dev == nil {
		return
	}
	link := filepath.Join(ublkLinkDir, name)
	if t, err := os.Readlink(link); err == nil && t == dev.BlockPath() {
		os.Remove(link)
	}
	if err := dev.Close(); err != nil {
		u.log.Warn().Err(err).Str("resource", name).Msg("ublk device close")
	}
}

// paths returns the /dev/hast link and the ublk device of name, or empty strings.
func (u *ublkFrontend) paths(name string) (link, dev string) {
	if u == nil {
		return "", ""
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if d := u.devs[name]; d != nil {
		return filepath.Join(ublkLinkDir, name), d.BlockPath()
	}
	return "", ""
}

// dropOrphan deletes the device a killed daemon left for name, when this node will not serve it
// (the resource became secondary here): the I/O it held fails instead of waiting for ever.
func (u *ublkFrontend) dropOrphan(name string) {
	if u == nil {
		return
	}
	u.mu.Lock()
	mine := u.devs[name] != nil
	u.mu.Unlock()
	link := filepath.Join(ublkLinkDir, name)
	target, err := os.Readlink(link)
	if mine || err != nil {
		return
	}
	var id int
	if _, err := fmt.Sscanf(target, "/dev/ublkb%d", &id); err != nil {
		return
	}
	if err := ublk.DeleteOrphan(id); err != nil {
		u.log.Warn().Err(err).Str("resource", name).Msg("ublk: device left by a previous daemon not removed")
		return
	}
	os.Remove(link)
	u.log.Info().Str("resource", name).Str("device", target).Msg("ublk: removed the device a previous daemon left; its pending I/O failed")
}
