package appliance

import (
	"errors"
	"fmt"
	"sync"

	"hast/appliance/config"
	"hast/replicate"
)

// liveVolume is what the frontends serve for a primary resource: its current engine, which a
// reload replaces underneath them, so an open FUSE file or NBD connection outlives a change of
// timeout, remote, checksum and the like.
type liveVolume struct {
	mu sync.RWMutex
	v  replicate.Volume
}

// hold returns the current engine, read-locked: the caller defers l.mu.RUnlock first.
func (l *liveVolume) hold() replicate.Volume {
	l.mu.RLock()
	return l.v
}

func (l *liveVolume) ReadAt(p []byte, off int64) (int, error) {
	defer l.mu.RUnlock()
	return l.hold().ReadAt(p, off)
}

func (l *liveVolume) WriteAt(p []byte, off int64) (int, error) {
	defer l.mu.RUnlock()
	return l.hold().WriteAt(p, off)
}

func (l *liveVolume) Flush() error { defer l.mu.RUnlock(); return l.hold().Flush() }
func (l *liveVolume) Discard(off, length int64) error {
	defer l.mu.RUnlock()
	return l.hold().Discard(off, length)
}
func (l *liveVolume) Size() int64     { defer l.mu.RUnlock(); return l.hold().Size() }
func (l *liveVolume) SectorSize() int { defer l.mu.RUnlock(); return l.hold().SectorSize() }

// inPlace reports whether a resource can go from configuration a to b without its volume
// disappearing: everything but the local component and the exported name.
func inPlace(a, b *config.Resource) bool {
	return a.Local == b.Local && a.Provname == b.Provname
}

// reconfigure applies a changed hast.conf resource (SIGHUP). A primary keeps its volume: its
// engine is closed and reopened on the same local component with the new settings, which makes
// it reconnect, while the frontends wait at the liveVolume. What would replace the volume itself
// (local component, provider name) needs a demotion, which the demotion guard may refuse; the
// resource then keeps its old configuration, and the error says why.
func (r *resource) reconfigure(rc *config.Resource) error {
	r.mu.Lock()
	old, role := r.cfg, r.role
	r.mu.Unlock()
	if *old == *rc {
		return nil
	}
	onlyExec := *old
	onlyExec.Exec = rc.Exec
	if onlyExec == *rc {
		return r.setConfig(rc) // the hook is looked up at each event
	}
	if role == RolePrimary && inPlace(old, rc) {
		if err := r.setConfig(rc); err != nil {
			return err
		}
		return r.reopenPrimary()
	}
	if _, err := r.setRole(RoleInit, false); err != nil {
		return fmt.Errorf("keeping the old configuration of %s: local or name changed while it is in use: %w", rc.Name, err)
	}
	if err := r.setConfig(rc); err != nil {
		return err
	}
	if _, err := r.setRole(role, false); err != nil {
		return fmt.Errorf("restore role %s after reload: %w", role, err)
	}
	return nil
}

// reopenPrimary replaces the primary's engine with one built from the current configuration.
func (r *resource) reopenPrimary() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.role != RolePrimary || r.live == nil {
		return nil
	}
	r.live.mu.Lock()
	defer r.live.mu.Unlock()
	if err := r.primary.Close(); err != nil {
		r.log.Warn().Err(err).Msg("closing primary")
	}
	p, err := replicate.OpenPrimary(r.rcfg, r.dev, r.log)
	if err != nil {
		// The volume cannot be served any more: withdraw it like a forced demotion would.
		r.live.v = failedVolume{r.live.v.Size(), r.live.v.SectorSize()}
		r.primary = nil
		r.dev.Close()
		r.dev = nil
		r.role = RoleInit
		go r.d.unexport(r.cfg.Name, true)
		return fmt.Errorf("reopen primary with the new configuration: %w", err)
	}
	r.primary, r.live.v = p, p
	r.log.Info().Msg("primary reopened with the new configuration")
	return nil
}

// failedVolume answers for a primary whose engine could not be reopened.
type failedVolume struct {
	size int64
	sect int
}

var errNotServed = errors.New("the volume is no longer served here")

func (f failedVolume) ReadAt([]byte, int64) (int, error)  { return 0, errNotServed }
func (f failedVolume) WriteAt([]byte, int64) (int, error) { return 0, errNotServed }
func (f failedVolume) Flush() error                       { return errNotServed }
func (f failedVolume) Discard(int64, int64) error         { return errNotServed }
func (f failedVolume) Size() int64                        { return f.size }
func (f failedVolume) SectorSize() int                    { return f.sect }
