package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func dialTest(t testing.TB, network, addr, export string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Dial(ctx, network, addr, export)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestClientRoundTrip(t *testing.T) {
	vol := newMemVolume(4<<20, 512)
	ts := startServer(t, newExports("disk1", vol))
	for _, nw := range []struct{ network, addr string }{{"unix", ts.sock}, {"tcp", ts.tcpAddr}} {
		t.Run(nw.network, func(t *testing.T) {
			vol.fill(0)
			c := dialTest(t, nw.network, nw.addr, "disk1")
			if c.Size() != 4<<20 {
				t.Fatalf("Size = %d, want %d", c.Size(), 4<<20)
			}
			data := pattern(64<<10, 3)
			if n, err := c.WriteAt(data, 1<<20); err != nil || n != len(data) {
				t.Fatalf("WriteAt = %d, %v", n, err)
			}
			got := make([]byte, len(data))
			if n, err := c.ReadAt(got, 1<<20); err != nil || n != len(got) {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("read back differs from what was written")
			}
			if !bytes.Equal(vol.snapshot()[1<<20:1<<20+len(data)], data) {
				t.Fatalf("volume does not hold what was written")
			}

			_, _, f0, _ := vol.counts()
			if _, err := c.WriteFUA(data[:4096], 0); err != nil {
				t.Fatalf("WriteFUA: %v", err)
			}
			if _, _, f, _ := vol.counts(); f != f0+1 {
				t.Fatalf("WriteFUA did not flush the volume (flushes %d -> %d)", f0, f)
			}
			if err := c.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			if _, _, f, _ := vol.counts(); f != f0+2 {
				t.Fatalf("Flush did not flush the volume (flushes %d -> %d)", f0, f)
			}
			_, _, _, d0 := vol.counts()
			if err := c.Trim(2<<20, 1<<20); err != nil {
				t.Fatalf("Trim: %v", err)
			}
			if ds := vol.discardList(); len(ds) != d0+1 || ds[d0] != [2]int64{2 << 20, 1 << 20} {
				t.Fatalf("discards = %v, want a last one of [2MiB 1MiB]", ds)
			}
			if err := c.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if _, err := c.ReadAt(got, 0); !errors.Is(err, ErrClosed) {
				t.Fatalf("ReadAt after Close = %v, want ErrClosed", err)
			}
			if err := c.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
		})
	}
	vol.requireNoViolations(t)
}

// TestClientConcurrent runs many goroutines against one client and checks every byte.
func TestClientConcurrent(t *testing.T) {
	const (
		size    = 8 << 20
		workers = 16
		block   = 4096
		perW    = size / workers
	)
	vol := newMemVolume(size, 512)
	ts := startServer(t, newExports("disk1", vol))
	c := dialTest(t, "unix", ts.sock, "disk1")

	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var seed [32]byte
			seed[0] = byte(w)
			src := rand.NewChaCha8(seed)
			rng := rand.New(src)
			base := int64(w * perW)
			shadow := make([]byte, perW)
			buf := make([]byte, block)
			for i := 0; i < 200; i++ {
				off := int64(rng.IntN(perW/block)) * block
				if rng.IntN(3) == 0 {
					if _, err := c.ReadAt(buf, base+off); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(buf, shadow[off:off+block]) {
						errs <- fmt.Errorf("worker %d: read at %d does not match what it wrote", w, base+off)
						return
					}
					continue
				}
				src.Read(buf)
				copy(shadow[off:], buf)
				if _, err := c.WriteAt(buf, base+off); err != nil {
					errs <- err
					return
				}
			}
			if !bytes.Equal(vol.snapshot()[base:base+perW], shadow) {
				errs <- fmt.Errorf("worker %d: volume differs from what it wrote", w)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	vol.requireNoViolations(t)
}

// TestClientLargeRequests checks that requests beyond the 32 MiB limit are split.
func TestClientLargeRequests(t *testing.T) {
	const size = 48 << 20
	vol := newMemVolume(size, 512)
	ts := startServer(t, newExports("disk1", vol))
	c := dialTest(t, "unix", ts.sock, "disk1")
	data := pattern(40<<20, 9)
	if n, err := c.WriteAt(data, 4096); err != nil || n != len(data) {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	if w, _, _, _ := vol.counts(); w != 2 {
		t.Errorf("volume saw %d writes, want 2 (32 MiB + 8 MiB)", w)
	}
	got := make([]byte, len(data))
	if n, err := c.ReadAt(got, 4096); err != nil || n != len(got) {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read back differs")
	}
	vol.requireNoViolations(t)
}

func TestClientErrors(t *testing.T) {
	vol := newMemVolume(1<<20, 4096)
	ts := startServer(t, newExports("disk1", vol))
	c := dialTest(t, "unix", ts.sock, "disk1")
	if c.minBlock != 4096 {
		t.Errorf("client learned minimum block %d, want 4096", c.minBlock)
	}

	buf := make([]byte, 4096)
	if _, err := c.WriteAt(buf[:512], 0); !errors.Is(err, EINVAL) {
		t.Errorf("misaligned write: %v, want EINVAL", err)
	}
	if _, err := c.ReadAt(buf, 512); !errors.Is(err, EINVAL) {
		t.Errorf("misaligned read: %v, want EINVAL", err)
	}
	if _, err := c.WriteAt(buf, 1<<20); !errors.Is(err, ENOSPC) {
		t.Errorf("write past end: %v, want ENOSPC", err)
	}
	if err := c.Trim(1<<20, 4096); !errors.Is(err, EINVAL) {
		t.Errorf("trim past end: %v, want EINVAL", err)
	}
	// Reads past the end follow io.ReaderAt.
	if n, err := c.ReadAt(buf, 1<<20); n != 0 || err != io.EOF {
		t.Errorf("read at end = %d, %v; want 0, io.EOF", n, err)
	}
	big := make([]byte, 8192)
	if n, err := c.ReadAt(big, 1<<20-4096); n != 4096 || err != io.EOF {
		t.Errorf("read across end = %d, %v; want 4096, io.EOF", n, err)
	}
	// The connection survives errors.
	if _, err := c.WriteAt(buf, 0); err != nil {
		t.Errorf("write after errors: %v", err)
	}
	if w, _, _, _ := vol.counts(); w != 1 {
		t.Errorf("volume saw %d writes, want 1", w)
	}
	vol.requireNoViolations(t)
}

func TestDialErrors(t *testing.T) {
	ts := startServer(t, newExports("disk1", newMemVolume(1<<20, 512)))
	ctx := context.Background()
	if _, err := Dial(ctx, "unix", ts.sock, "nope"); !errors.Is(err, ErrUnknownExport) {
		t.Errorf("Dial of unknown export: %v, want ErrUnknownExport", err)
	}

	// Something that is not an NBD server.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		nc.Write([]byte("SSH-2.0-OpenSSH_9.2\r\n"))
		nc.Close()
	}()
	if _, err := Dial(ctx, "tcp", l.Addr().String(), "disk1"); err == nil {
		t.Errorf("Dial of a non-NBD server succeeded")
	}

	// A server that never answers: the context bounds the handshake.
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	cctx, cancel := context.WithCancel(ctx)
	accepted := make(chan net.Conn, 1)
	go func() {
		nc, err := l2.Accept()
		if err == nil {
			accepted <- nc
			cancel()
		}
	}()
	if _, err := Dial(cctx, "tcp", l2.Addr().String(), "disk1"); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial with cancelled context: %v, want context.Canceled", err)
	}
	(<-accepted).Close()
}

// TestClientServerGone checks that requests in flight fail, not hang, when the server goes.
func TestClientServerGone(t *testing.T) {
	vol := newMemVolume(1<<20, 512)
	ts := startServer(t, newExports("disk1", vol))
	c := dialTest(t, "unix", ts.sock, "disk1")
	release := make(chan struct{})
	done := readHeldInServer(c, vol, release)
	// Close the server's side while the read is being served; the reply is still sent
	// because shutdown lets requests in flight finish.
	go ts.Close()
	close(release)
	if err := <-done; err != nil {
		t.Errorf("read in flight during server Close: %v, want success", err)
	}
	// Once the server is gone, new requests fail.
	for {
		_, err := c.ReadAt(make([]byte, 512), 0)
		if err != nil {
			break
		}
	}
}

// TestInFlightLimit checks that one connection serves exactly maxInFlight requests at once.
func TestInFlightLimit(t *testing.T) {
	vol := newMemVolume(1<<20, 512)
	ts := startServer(t, newExports("disk1", vol))
	c := dialTest(t, "unix", ts.sock, "disk1")
	got := runConcurrentReads(t, c, vol, 2*maxInFlight, 4096, maxInFlight)
	if got != maxInFlight {
		t.Errorf("at most %d reads ran at once, want %d", got, maxInFlight)
	}
}

// TestInFlightBytesLimit checks that payload memory in flight per connection is bounded.
func TestInFlightBytesLimit(t *testing.T) {
	const readSize = 8 << 20
	vol := newMemVolume(readSize, 512)
	ts := startServer(t, newExports("disk1", vol))
	c := dialTest(t, "unix", ts.sock, "disk1")
	want := connInFlightBytes / readSize
	got := runConcurrentReads(t, c, vol, 3*want, readSize, want)
	if got != want {
		t.Errorf("at most %d reads of %d bytes ran at once, want %d", got, readSize, want)
	}
}

// runConcurrentReads issues n concurrent reads whose volume calls block until `barrier` of
// them are inside the volume at once, and returns the largest number seen inside at once.
func runConcurrentReads(t *testing.T, c *Client, vol *memVolume, n, size, barrier int) int {
	t.Helper()
	var inside, maxInside atomic.Int64
	release := make(chan struct{})
	var once sync.Once
	vol.setOnRead(func(int64, int) {
		cur := inside.Add(1)
		for {
			m := maxInside.Load()
			if cur <= m || maxInside.CompareAndSwap(m, cur) {
				break
			}
		}
		if cur >= int64(barrier) {
			once.Do(func() { close(release) })
		}
		select {
		case <-release:
		case <-time.After(time.Minute):
			// Liveness guard only: the server never let `barrier` requests run together.
		}
		inside.Add(-1)
	})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			if _, err := c.ReadAt(buf, 0); err != nil {
				t.Errorf("ReadAt: %v", err)
			}
		}()
	}
	wg.Wait()
	select {
	case <-release:
	default:
		t.Fatalf("only %d requests ran at once, never %d", maxInside.Load(), barrier)
	}
	return int(maxInside.Load())
}

func TestDisconnect(t *testing.T) {
	v1, v2 := newMemVolume(1<<20, 512), newMemVolume(1<<20, 512)
	exp := newExports("disk1", v1, "disk2", v2)
	ts := startServer(t, exp)
	c1 := dialTest(t, "unix", ts.sock, "disk1")
	c1b := dialTest(t, "tcp", ts.tcpAddr, "disk1")
	c2 := dialTest(t, "unix", ts.sock, "disk2")
	idle := dialRaw(t, ts.sock) // still negotiating: not an export's connection
	idle.greet(3)
	buf := make([]byte, 512)
	for _, c := range []*Client{c1, c1b, c2} {
		if _, err := c.WriteAt(buf, 0); err != nil {
			t.Fatalf("WriteAt before Disconnect: %v", err)
		}
	}
	if n := ts.connCount(); n != 4 {
		t.Fatalf("server holds %d connections, want 4", n)
	}

	exp.remove("disk1")
	ts.Disconnect("disk1")
	if n := ts.connCount(); n != 2 {
		t.Fatalf("after Disconnect the server holds %d connections, want 2", n)
	}
	w1, _, _, _ := v1.counts()
	for _, c := range []*Client{c1, c1b} {
		if _, err := c.WriteAt(buf, 0); err == nil {
			t.Errorf("WriteAt on a disconnected export succeeded")
		}
	}
	if w, _, _, _ := v1.counts(); w != w1 {
		t.Errorf("writes reached a disconnected export's volume")
	}
	if _, err := c2.WriteAt(buf, 0); err != nil {
		t.Errorf("other export broken by Disconnect: %v", err)
	}
	idle.option(tOptList, nil)
	rep := idle.expectOptReply(tOptList, tRepServer)
	if !bytes.Contains(rep.data, []byte("disk2")) {
		t.Errorf("list after Disconnect: %q", rep.data)
	}
	idle.expectOptReply(tOptList, tRepAck)
}

func TestServerClose(t *testing.T) {
	vol := newMemVolume(1<<20, 512)
	ts := startServer(t, newExports("disk1", vol))
	c := dialTest(t, "unix", ts.sock, "disk1")
	idle := dialRaw(t, ts.sock)
	idle.greet(3)
	if _, err := c.WriteAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	if err := ts.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := ts.connCount(); n != 0 {
		t.Errorf("%d connections left after Close", n)
	}
	idle.expectClosed()
	if _, err := c.ReadAt(make([]byte, 512), 0); err == nil {
		t.Errorf("ReadAt after server Close succeeded")
	}
	if err := ts.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Close = %v, want ErrServerClosed", err)
	}
	if _, err := net.Dial("tcp", l.Addr().String()); err == nil {
		t.Errorf("Serve after Close left its listener open")
	}
}

// TestClientAbort: a request the server never answers fails at once on Abort, and Close after
// Abort returns.
func TestClientAbort(t *testing.T) {
	vol := newMemVolume(1<<20, 512)
	ts := startServer(t, newExports("disk1", vol))
	c := dialTest(t, "unix", ts.sock, "disk1")
	release := make(chan struct{})
	defer close(release)
	done := readHeldInServer(c, vol, release)
	c.Abort()
	if err := <-done; err == nil {
		t.Fatal("read in flight during Abort succeeded")
	}
	if _, err := c.ReadAt(make([]byte, 512), 0); err == nil {
		t.Fatal("read after Abort succeeded")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close after Abort: %v", err)
	}
}

// readHeldInServer reads through c in the background and returns once the read has reached
// vol, where it waits until release is closed; the read's error arrives on the channel.
func readHeldInServer(c *Client, vol *memVolume, release <-chan struct{}) <-chan error {
	entered := make(chan struct{})
	var once sync.Once
	vol.setOnRead(func(int64, int) {
		once.Do(func() { close(entered) })
		<-release
	})
	done := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, 512), 0)
		done <- err
	}()
	<-entered
	return done
}
