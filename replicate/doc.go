// Package replicate mirrors one HAST resource between two nodes.
//
// It owns the wire format (HAST protocol version 2 framing over two TCP connections), the
// handshake, the primary and secondary engines, synchronisation of dirty extents, and the
// sync-direction / split-brain decision (Decide), which is pure logic.
//
// The primary serves a Volume to the frontends. A write marks its extent in the activemap and
// persists the bitmap before the data leaves the node, is then written locally and sent to the
// peer at the same time, and is acknowledged according to the replication mode:
//
//   - fullsync: after the local write and the peer's final ("written") reply;
//   - memsync:  after the local write and the peer's "received" reply;
//   - async:    after the local write.
//
// Unlike HAST, a write whose remote leg fails for any reason (not sent, error reply, connection
// lost while in flight) leaves its extent dirty so that it is resynchronised.
package replicate
