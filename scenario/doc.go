// Package scenario holds the two-node fault scenarios: two real `hast daemon` processes, each
// in its own network namespace (internal/faultnet), driven through the CLI and their NBD
// exports like an operator and an application would, while the acknowledged-write checker
// (internal/ackcheck) writes under load. Faults are injected — SIGKILL of the primary, link
// cuts, loss and delay for a whole run, a restart in the middle of a resynchronisation — and
// each scenario then proves that no acknowledged write was lost (fullsync, memsync), measures
// the loss window (async), and compares both local components byte for byte after resync.
//
// The failover scenarios (failover_test.go) add Debian's keepalived on both nodes and a client
// namespace on a shared segment that follows the service address.
//
// The package has only tests. They need root, `ip` (iproute2) and `nft` (nftables), and
// keepalived for the failover scenarios, and fail rather than skip without them. With HAST_RELIABILITY_OUT=path set, a run writes its results
// table into that file (docs/RELIABILITY.md) between the scenario markers.
package scenario
