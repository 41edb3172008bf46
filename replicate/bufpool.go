package replicate

import "hast/internal/bufpool"

// Buffers for request payloads come from power-of-two size classes (4 KiB … 1 MiB) so a 4 KiB
// write does not pin a 1 MiB buffer and nothing is allocated per request in steady state.
var bufs = bufpool.New(12, 20)

// getBuf returns a buffer of length n. Sizes above 1 MiB are allocated and not pooled.
func getBuf(n int) []byte { return bufs.Get(n) }

func putBuf(b []byte) { bufs.Put(b) }
