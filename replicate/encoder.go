package replicate

import (
	"net"

	"hast/internal/nv"
	"hast/replicate/proto"
)

// batchEncoder encodes a batch of frames for one writev: every header into one buffer, the
// payloads referenced where they are. Its buffers are reused from batch to batch; the primary's
// link and the secondary's replies each keep one under the lock of their connection.
type batchEncoder struct {
	nvl      nv.List // the frame being built, then handed to add
	hdr      []byte
	spans    []int // per frame: header start, header end
	payloads [][]byte
	bufs     net.Buffers
}

func (e *batchEncoder) reset() {
	e.hdr, e.spans, e.payloads = e.hdr[:0], e.spans[:0], e.payloads[:0]
}

// add appends a frame made of e.nvl and payload.
func (e *batchEncoder) add(version uint8, payload []byte) {
	start := len(e.hdr)
	e.hdr = proto.EncodeFrame(e.hdr, version, &e.nvl)
	e.spans = append(e.spans, start, len(e.hdr))
	e.payloads = append(e.payloads, payload)
}

// buffers returns the batch in wire order; valid until the next reset.
func (e *batchEncoder) buffers() net.Buffers {
	e.bufs = e.bufs[:0]
	for i, p := range e.payloads {
		e.bufs = append(e.bufs, e.hdr[e.spans[2*i]:e.spans[2*i+1]])
		if len(p) > 0 {
			e.bufs = append(e.bufs, p)
		}
	}
	return e.bufs
}

// release drops the references to the payloads once they are sent, so the encoder does not
// keep callers' buffers reachable.
func (e *batchEncoder) release() { clear(e.payloads) }
