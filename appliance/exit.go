package appliance

import "errors"

// sysexits(3) codes HAST's tools use.
const (
	exOK          = 0
	exUsage       = 64
	exDataErr     = 65
	exNoInput     = 66
	exUnavailable = 69
	exSoftware    = 70
	exOSErr       = 71
	exOSFile      = 72
	exIOErr       = 74
	exTempFail    = 75
	exConfig      = 78
)

// ExitError carries the process exit status an error should produce.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

func exitErr(code int, err error) error { return &ExitError{Code: code, Err: err} }

// ExitCode maps an error to an exit status (1 when it carries none).
func ExitCode(err error) int {
	if err == nil {
		return exOK
	}
	var e *ExitError
	if errors.As(err, &e) {
		return e.Code
	}
	return 1
}
