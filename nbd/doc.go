// Package nbd presents a replicate.Volume to Network Block Device clients (qemu, qemu-img,
// qemu-io, nbd-client) and provides a small pipelined client for the demo, tests and benchmarks.
//
// The package knows nothing about replication: the daemon tells the Server which volumes are
// exported right now through the Exports interface (only resources for which this node is primary),
// and calls Disconnect when a resource is demoted. Durability rules are the Volume's: a FLUSH is
// answered after Volume.Flush returns, a FUA write after WriteAt and then Flush.
//
// # Protocol
//
// Only the fixed newstyle handshake is spoken (NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES). The
// options understood are NBD_OPT_EXPORT_NAME, NBD_OPT_ABORT, NBD_OPT_LIST, NBD_OPT_INFO, NBD_OPT_GO
// and, on a listener with TLS, NBD_OPT_STARTTLS; every other option, including
// NBD_OPT_STRUCTURED_REPLY, is answered with NBD_REP_ERR_UNSUP, so transmission always uses simple
// replies. NBD_OPT_GO and NBD_OPT_INFO report the export size and flags and the block size
// constraints (minimum = the volume's sector size, preferred 4 KiB, maximum 32 MiB).
//
// Transmission supports READ, WRITE (with FUA), DISC, FLUSH, TRIM and WRITE_ZEROES. A client that
// asked for NBD_INFO_BLOCK_SIZE must align its requests to the sector size. One that did not (every
// NBD_OPT_EXPORT_NAME client) is served at any byte offset and length, as the spec requires:
// partial sectors are read whole, and written by read-modify-write under a range lock of the
// export, so that concurrent writes to one sector do not undo each other. Requests are validated
// before anything reaches the Volume: misaligned requests from a client that agreed to block sizes,
// out-of-range requests, unknown commands and unknown flags get NBD_EINVAL (NBD_ENOSPC for writes
// past the end), a WRITE whose payload exceeds 32 MiB or a request with a bad magic closes the
// connection. Empty (zero-length) requests at a valid offset succeed without reaching the Volume.
// Volume errors map to NBD_EIO, except replicate.ErrRange (NBD_EINVAL) and replicate.ErrNotPrimary
// (NBD_ESHUTDOWN, after which the connection is closed).
//
// # Security
//
// A listener is served with a Policy (Server.ServePolicy). With a TLS configuration, TLS is
// forced: before NBD_OPT_STARTTLS every option but NBD_OPT_ABORT gets NBD_REP_ERR_TLS_REQD and
// NBD_OPT_EXPORT_NAME closes the connection, so exports are neither listed nor served in the
// clear; client certificates are checked when the configuration asks for them. Only
// certificates are offered: crypto/tls has no pre-shared-key cipher suites, so the TLS-PSK
// credentials of qemu and nbd-client cannot be spoken. An allow-list of networks closes TCP
// connections from anywhere else before the greeting.
//
// # Concurrency
//
// Each connection has one reader goroutine that parses requests and hands them to a pool of worker
// goroutines (created on demand, at most 128, reused for the life of the connection), and one
// writer goroutine that batches every reply ready at the time into a single writev. Payload
// buffers come from size-classed pools. The payload bytes in flight are bounded for the whole
// server (MaxInFlightBytes, shared by all connections, granted in arrival order) so that the
// daemon's memory does not grow with the number of clients, and for each connection. One
// request's worth of the server's budget is reserved for connections that hold none of it, so
// clients that stop reading their replies cannot stall a well-behaved one; such a client is
// disconnected, which gives its share back, once its replies (or its write payload) have not
// moved for 3 s while another connection waits for budget, or have taken a minute.
package nbd
