// Package uring drives Linux io_uring through golang.org/x/sys/unix, with no cgo and no
// third-party module. It is shared by the local component (package blockdev, which reads
// and writes backing files through it) and by the ublk frontend (which needs SQE128 and
// IORING_OP_URING_CMD); it knows nothing about what the I/O is for.
//
// # Layers
//
// [RawRing] is the kernel object as it is: io_uring_setup, the mmapped SQ and CQ rings
// and SQE array, io_uring_enter and io_uring_register. It is not safe for concurrent
// use; a caller that owns a thread (ublk's per-queue loop) drives it directly, filling
// [SQE] or [SQE128] slots and consuming [CQE] or [CQE32] entries.
//
// [Ring] is the concurrency-safe layer on top: any number of goroutines call
// [Ring.Read], [Ring.Write], [Ring.Fsync] or [Ring.Fallocate] and block until their own
// completion arrives. One ordinary goroutine, the loop, submits everything queued and
// reaps every completion with one io_uring_enter per batch, and waits in the Go poller
// on an eventfd the kernel signals; with [Options].Direct a lone operation on an idle
// ring is the plain system call instead. [Ring]'s documentation has the measurements
// behind this shape.
//
// # Memory
//
// The kernel reads and writes the caller's buffer after the submitting call has
// returned into the runtime, so a buffer handed to [Ring] is referenced from the slot
// table (keeping it reachable and on the heap) until its completion has been consumed.
// Go's collector does not move heap objects, so no pinning beyond that is needed.
//
// # Errors
//
// A kernel built without io_uring (ENOSYS), or with it disabled by
// /proc/sys/kernel/io_uring_disabled or a seccomp/LSM policy (EPERM, EACCES), yields an
// error wrapping [ErrUnsupported], so callers can fall back to blocking system calls.
// Failed operations return the kernel's errno (a [syscall.Errno], usable with
// errors.Is) wrapped with the operation's name.
package uring
