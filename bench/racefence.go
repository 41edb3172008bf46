//go:build !race

package bench

import "hast/replicate"

// raceFenceDialer is the plain dialer outside race-detector builds (see racefence_race.go).
func raceFenceDialer() replicate.Dialer { return replicate.TCPDialer }
