// Package ublk presents a replicate.Volume to the Linux kernel as a block device, /dev/ublkbN,
// through the ublk driver (ublk_drv, Linux 6.0+), on the project's own io_uring code
// (internal/uring). It knows nothing of replication.
//
// # Lifecycle
//
// [Create] asks /dev/ublk-control (a ring with 128-byte SQEs) for the driver's features
// (GET_FEATURES), adds a device (ADD_DEV), sets its parameters from the volume (SET_PARAMS),
// starts one goroutine per hardware queue — each locked to its OS thread, because the driver
// records the task that fetches as the queue's daemon — which opens a ring, maps the queue's
// request descriptors from /dev/ublkcN and arms FETCH_REQ for every tag, and finally sends
// START_DEV, which returns once the disk exists. [Device.Close] fails new requests with EIO at
// once, sends STOP_DEV (the driver then completes every armed command with -ENODEV), waits for
// the queues to drain, unmaps and closes everything that pins /dev/ublkcN, and sends DEL_DEV.
//
// # Requests
//
// A completion for tag t means descriptor t holds a request. It is served on its own goroutine
// (a queue has up to Depth requests in flight and the Volume is safe for concurrent callers);
// the result goes back to the queue thread through a list and an eventfd whose read is armed in
// the same ring, and the queue thread answers with COMMIT_AND_FETCH_REQ, which also re-arms t.
//
//	READ          Volume.ReadAt
//	WRITE         Volume.WriteAt, then Volume.Flush when the request carries FUA
//	FLUSH         Volume.Flush
//	DISCARD       Volume.Discard
//	WRITE_ZEROES  Volume.Discard (the range reads as zeros afterwards); with NOUNMAP, zeros are written
//
// The device advertises a volatile write cache and FUA, so the kernel sends FLUSH and FUA and a
// flush acknowledged is one the Volume made durable. Data moves through a per-tag buffer the
// driver copies to and from, or, when the driver offers UBLK_F_USER_COPY, with pread/pwrite on
// /dev/ublkcN from the serving goroutine. Volume errors reach the block layer as an errno: EIO,
// ENOSPC, EOPNOTSUPP and ETIMEDOUT pass through, replicate.ErrNotPrimary and anything else is EIO.
//
// # Kernel ABI
//
// The structures and command numbers in abi.go follow include/uapi/linux/ublk_cmd.h of Linux
// 6.12; a test compiles that header (from Debian's linux-headers package) and compares sizes,
// offsets and values.
package ublk
