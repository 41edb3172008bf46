// Package bench is `hast bench`: a workload generator, the targets it drives and the report it
// prints.
//
// Every figure it reports is a ratio against a baseline measured in the same run on the same disk,
// never an absolute number to compare with another machine. The baselines are
//
//   - raw: the same workload on the two bare backing files (a write goes to both, as the two nodes
//     of the in-process pair share this machine's disk; a read comes from one), O_DIRECT where the
//     request is aligned, both copies submitted at once with Linux AIO;
//   - ideal: the least a replicated write has to do with no protocol at all: write locally and send
//     the same bytes over one TCP connection to a receiver that writes them to the second file and
//     acknowledges (fullsync semantics), batched with writev, with asynchronous I/O on the
//     receiver and no per-request goroutine or allocation — a slow baseline would only flatter
//     the product;
//   - nbdkit: Debian's nbdkit file plugin, the peer our NBD export is compared with.
//
// The product targets are a replicated volume (a replicate.Primary paired in-process over
// 127.0.0.1 with a secondary behind a replicate.Acceptor) in each replication mode, that volume
// through the FUSE file view, and through the NBD export. The matrix runner drives workloads ×
// modes × targets and reports a table, JSON and a PNG chart, with kbench's sanity "red flags".
// The fio mode runs the bundled job set of docs/benchmarking.md §E.3 and folds fio's JSON into the
// same report; the resync benchmark times the copy of a dirty volume against the ideal copy.
//
// Nothing here is a timed assertion: the package only measures and reports.
package bench
