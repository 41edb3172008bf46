package replicate

import (
	"fmt"
	"sync"
	"time"
)

// persister writes the activemap to disk. Writers that dirtied a new extent call now() and wait
// for a write that started after their change (group commit: one bitmap write serves every
// writer waiting at that moment). Clean-ups are written lazily by later().
type persister struct {
	p *Primary

	mu      sync.Mutex
	cond    sync.Cond
	want    uint64 // highest generation requested
	done    uint64 // highest generation on disk
	err     error
	lazy    bool
	stop    bool
	durable []byte // our copy of the image last marked durable
	updates uint64 // bitmap writes, for statistics
	// next is closed when the bitmap write that will cover the writers waiting now has
	// finished (or failed, or the persister stopped). Each round takes it and puts a new one
	// in its place, so a writer is woken once, by the round that serves it, instead of by
	// every round (with 32 writers waiting that was 3.5 wake-ups per write).
	next       chan struct{}
	nextClosed bool
	// lastClear is when bits were last cleared on disk (loop goroutine only).
	lastClear time.Time
	// kick wakes the loop out of a lazy round's batching delay when a writer needs a write now.
	kick chan struct{}
}

// lazyDelay batches lazy clean-ups, and spaces out the data flushes that clearing bits needs.
const lazyDelay = 20 * time.Millisecond

func newPersister(p *Primary, durable []byte) *persister {
	ps := &persister{p: p, durable: append([]byte(nil), durable...), kick: make(chan struct{}, 1),
		next: make(chan struct{})}
	ps.cond.L = &ps.mu
	go ps.loop()
	return ps
}

// now blocks until the activemap state as of the call is durable.
func (ps *persister) now() error {
	ps.mu.Lock()
	ps.want++
	target := ps.want
	served := ps.next
	ps.cond.Broadcast()
	select {
	case ps.kick <- struct{}{}:
	default:
	}
	ps.mu.Unlock()
	<-served
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.err != nil {
		return ps.err
	}
	if ps.done < target {
		return fmt.Errorf("activemap: %w", ErrNotPrimary)
	}
	return nil
}

// later asks for a write without waiting for it.
func (ps *persister) later() {
	ps.mu.Lock()
	ps.lazy = true
	ps.cond.Broadcast()
	ps.mu.Unlock()
}

func (ps *persister) close() {
	ps.mu.Lock()
	ps.stop = true
	ps.cond.Broadcast()
	ps.mu.Unlock()
}

// releaseAllLocked wakes every writer, present and future: the persister has stopped or
// failed, and now reports which (ps.mu held).
func (ps *persister) releaseAllLocked() {
	if !ps.nextClosed {
		ps.nextClosed = true
		close(ps.next)
	}
}

func (ps *persister) loop() {
	for {
		ps.mu.Lock()
		for ps.want == ps.done && !ps.lazy && !ps.stop {
			ps.cond.Wait()
		}
		if ps.stop && ps.want == ps.done {
			ps.releaseAllLocked()
			ps.mu.Unlock()
			return
		}
		urgent := ps.want != ps.done
		if !urgent {
			// Every request made so far is served: a kick still pending is stale.
			select {
			case <-ps.kick:
			default:
			}
		}
		ps.mu.Unlock()
		if !urgent {
			// Batch lazy clean-ups: a bit that is set too long only costs a resync. A writer
			// waiting for its bit must not wait out the delay.
			select {
			case <-time.After(lazyDelay):
			case <-ps.kick:
			}
		}
		ps.mu.Lock()
		gen := ps.want
		urgent = gen != ps.done
		ps.lazy = false
		// Writers that asked up to gen wait on this round's channel; later ones on the next.
		served := ps.next
		ps.next = make(chan struct{})
		ps.mu.Unlock()

		err := ps.writeOnce(urgent)

		ps.mu.Lock()
		if err != nil {
			ps.err = err
			ps.releaseAllLocked()
		} else {
			ps.done = gen
			ps.updates++
		}
		close(served)
		ps.mu.Unlock()
		if err != nil {
			ps.p.log.Error().Err(err).Msg("unable to write activemap; writes to new extents fail")
			return
		}
	}
}

// writeOnce takes an image and writes it. While it is being written, only bits set both in the
// old durable image and in the new one count as durable: a write that starts meanwhile on an
// extent this image clears must wait for the next round.
//
// With metaflush, a bit is cleared on disk only after a flush of the data: otherwise a crash
// could keep the new map but lose the extent's last writes, and the extent would never be
// resynchronised. When writers wait for new bits (urgent), the clearing is left to a lazy
// round so they do not wait for that flush, unless bits were last cleared more than lazyDelay
// ago: under a steady stream of new extents lazy rounds never come, and the on-disk map would
// fill up.
func (ps *persister) writeOnce(urgent bool) error {
	p := ps.p
	p.mu.Lock()
	img := p.am.Image(nil)
	clears, sets, deferred := false, false, false
	for i := range img {
		clears = clears || ps.durable[i]&^img[i] != 0
		sets = sets || img[i]&^ps.durable[i] != 0
	}
	clears = clears && p.cfg.MetaFlush
	if clears && urgent && sets && time.Since(ps.lastClear) < lazyDelay {
		for i := range img {
			img[i] |= ps.durable[i]
		}
		clears, deferred = false, true
	}
	inter := make([]byte, len(img))
	for i := range img {
		inter[i] = img[i] & ps.durable[i]
	}
	p.am.MarkDurable(inter)
	p.mu.Unlock()

	if clears {
		if err := p.dev.Flush(); err != nil {
			p.st.flushErr.Add(1)
			return fmt.Errorf("flush data before clearing activemap bits: %w", err)
		}
	}
	if err := p.writeBitmap(img); err != nil {
		return err
	}
	p.mu.Lock()
	p.am.MarkDurable(img)
	p.mu.Unlock()
	ps.durable = img
	if clears {
		ps.lastClear = time.Now()
	}
	if deferred {
		ps.mu.Lock()
		ps.lazy = true
		ps.mu.Unlock()
	}
	return nil
}
