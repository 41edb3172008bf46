package appliance

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/rs/zerolog"

	"hast/replicate"
	"hast/ublk"
)

// ublkLinkDir holds the /dev/hast/<resource> links to the ublk block devices (HAST's names).
// We create them ourselves: the appliance has no udev.
const ublkLinkDir = "/dev/hast"

// ublkFrontend serves every primary volume as /dev/ublkbN, linked as /dev/hast/<name>.
type ublkFrontend struct {
	log  zerolog.Logger
	mu   sync.Mutex
	devs map[string]*ublk.Device
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
	return &ublkFrontend{log: log, devs: map[string]*ublk.Device{}}, nil
}

func (u *ublkFrontend) add(name string, v replicate.Volume) error {
	dev, err := ublk.Create(v, ublk.Options{Log: u.log.With().Str("resource", name).Logger()})
	if err != nil {
		return err
	}
	link := filepath.Join(ublkLinkDir, name)
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
