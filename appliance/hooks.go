package appliance

import (
	"os/exec"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"
)

// hooks runs hast.conf's `exec` program on events, as HAST does: argv[0] is the program's base
// name, then the event and the resource name, then event-specific arguments. Hooks run
// asynchronously; their exit status is logged, and a hook still running after a minute is
// reported every minute.
type hooks struct {
	log zerolog.Logger
}

func (h *hooks) run(path string, event string, args ...string) {
	if path == "" {
		return
	}
	argv := append([]string{event}, args...)
	cmd := exec.Command(path, argv...)
	cmd.Args[0] = filepath.Base(path)
	log := h.log.With().Str("hook", path).Strs("args", argv).Logger()
	if err := cmd.Start(); err != nil {
		log.Error().Err(err).Msg("unable to start hook")
		return
	}
	go func() {
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		start := time.Now()
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case err := <-done:
				if err != nil {
					log.Error().Err(err).Msg("hook failed")
				} else {
					log.Debug().Dur("took", time.Since(start)).Msg("hook finished")
				}
				return
			case <-t.C:
				log.Warn().Dur("running", time.Since(start)).Msg("hook is still running")
			}
		}
	}()
}
