package replicate

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"hast/internal/nv"
	"hast/replicate/proto"
)

// TestLinkKeepsSubmissionOrder mixes requests the submitter sends itself (small, link idle)
// with ones the send loop batches (large, or submitted while another send is under way): the
// peer must see sequence numbers in the order they were given, every payload intact, and every
// request must complete.
func TestLinkKeepsSubmissionOrder(t *testing.T) {
	out, peerIn := net.Pipe()
	peerOut, in := net.Pipe()
	cfg := &Config{Name: "r0", Timeout: 5 * time.Second, Keepalive: time.Hour, Compression: proto.CompressionNone}
	l := newLink(out, in, proto.Version, cfg, zerolog.Nop(), nil)
	defer l.close()

	peerErr := make(chan error, 1)
	go func() {
		rd := proto.NewReader(peerIn, MaxRecvIO+4096)
		var last uint64
		var reply nv.List
		for {
			_, msg, payload, err := rd.Next()
			if err != nil {
				peerErr <- nil // the link was closed
				return
			}
			seq, _ := msg.Uint64("seq")
			n, _ := msg.Uint64("length")
			if seq != last+1 {
				peerErr <- fmt.Errorf("got seq %d after %d", seq, last)
				return
			}
			last = seq
			data, err := proto.DecodeData(msg, payload, nil)
			if err != nil || uint64(len(data)) != n || (n > 0 && data[0] != byte(n>>12)) {
				peerErr <- fmt.Errorf("seq %d: payload of %d bytes (want %d), err %v", seq, len(data), n, err)
				return
			}
			reply.Reset()
			reply.AddUint64("seq", seq)
			if err := proto.WriteFrame(peerOut, proto.Version, &reply, nil); err != nil {
				peerErr <- nil
				return
			}
		}
	}()

	const writers, each = 8, 200
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				size := 4096 * (1 + (w*each+i)%4) // small: sent directly when the link is idle
				if i%17 == 0 {
					size = 256 << 10 // large: always through the send loop
				}
				data := make([]byte, size)
				data[0] = byte(size >> 12)
				r := &rreq{cmd: proto.CmdWrite, off: int64(i) * 4096, length: int64(size), data: data}
				if err := l.do(r); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	select {
	case err := <-peerErr:
		t.Fatal(err)
	default:
	}
	if got := l.frames.Load(); got != writers*each {
		t.Fatalf("%d frames sent, want %d", got, writers*each)
	}
	if l.batches.Load() >= writers*each {
		t.Logf("no batching happened (%d batches)", l.batches.Load())
	}
	l.close()
	if err := <-peerErr; err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
}
