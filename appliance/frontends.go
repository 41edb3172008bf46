package appliance

import (
	"fmt"
	"path/filepath"
	"strings"

	"hast/appliance/config"
)

// checkFrontendPaths refuses an NBD unix socket inside the FUSE directory: the mount would
// cover the socket, so clients could not reach it, and the socket file would stay behind hidden
// under the mount at exit.
func checkFrontendPaths(fuseDir string, nbdAddrs []string) error {
	if fuseDir == "" {
		return nil
	}
	dir, err := filepath.Abs(fuseDir)
	if err != nil {
		return fmt.Errorf("--fuse %s: %w", fuseDir, err)
	}
	for _, s := range nbdAddrs {
		a, err := config.ParseAddr(s, defaultPort)
		if err != nil || a.Network != "unix" {
			continue // listenAddr reports bad addresses
		}
		sock, err := filepath.Abs(a.Address)
		if err != nil {
			return fmt.Errorf("--nbd %s: %w", s, err)
		}
		if rel, err := filepath.Rel(dir, sock); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return fmt.Errorf("--nbd %s: the socket is inside the FUSE directory %s, whose mount would hide it; put it outside, e.g. --nbd unix://%s",
				s, dir, filepath.Join(filepath.Dir(dir), filepath.Base(dir)+"-nbd.sock"))
		}
	}
	return nil
}
