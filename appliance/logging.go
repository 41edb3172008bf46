package appliance

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// logTimeFormat is the timestamp of every log line, in both formats: milliseconds matter when
// reading two daemons' logs side by side.
const logTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// newLogger makes the daemon's logger: zerolog's own JSON lines with format "json", otherwise
// console lines, coloured only on a terminal and never when NO_COLOR is set (no-color.org).
// The timestamp comes from a hook rather than zerolog's global time format, which library code
// must not depend on.
func newLogger(w io.Writer, format string, debug int) (zerolog.Logger, error) {
	lvl := zerolog.InfoLevel
	if debug > 0 {
		lvl = zerolog.DebugLevel
	}
	stamp := zerolog.HookFunc(func(e *zerolog.Event, _ zerolog.Level, _ string) {
		e.Str(zerolog.TimestampFieldName, time.Now().Format(logTimeFormat))
	})
	switch format {
	case "json":
		return zerolog.New(w).Level(lvl).Hook(stamp), nil
	case "", "console":
		cw := zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000", NoColor: !colourTerminal(w)}
		return zerolog.New(cw).Level(lvl).Hook(stamp), nil
	}
	return zerolog.Logger{}, fmt.Errorf("--log-format %q: expected console or json", format)
}

// colourTerminal reports whether w is a terminal and NO_COLOR is unset or empty.
func colourTerminal(w io.Writer) bool {
	if os.Getenv("NO_COLOR") != "" {
		return false
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
