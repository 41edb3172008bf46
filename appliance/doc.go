// Package appliance is the daemon and the command line: it reads hast.conf, runs one worker per
// resource with HAST's roles (init, primary, secondary), serves the control API on a unix socket,
// accepts replication connections, runs `exec` hooks, exports primary volumes through the
// frontends, and implements the CLI verbs (`hast role`, `create`, `list`, `status`, `dump`,
// `demo`). It holds no data-path logic: that lives in replicate and blockdev.
package appliance
