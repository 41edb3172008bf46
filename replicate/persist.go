package replicate

import (
	"fmt"
	"sync"
	"time"
)

// persister writes the activemap to disk. Writers that dirtied a new extent call now() and wait
// for a write that started after their change (group commit: one bitmap write serves every
// writer waiting at that moment). Clean-ups are written lazily by later().
//
// With metaflush a bit is cleared on disk only after the extent's data has been flushed:
// otherwise a crash could keep the new map but lose the extent's last writes, and the extent
// would never be resynchronised. That flush is the cleaner's (cleanLoop), off the writers'
// path: it flushes the data behind the extents that were idle when it began, and the bitmap
// writes clear only extents a finished flush covers (ActiveMap.FlushedImage). Before, a
// bitmap write that cleared bits flushed the data itself, every 20 ms under a stream of new
// extents, and every writer waiting for a new bit waited for that flush too (milliseconds
// with page-cache components: the QD1 p99).
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
	// kick wakes the loop out of a lazy round's batching delay when a writer needs a write now.
	kick chan struct{}
	// cleanKick asks the cleaner for a cleaning round; stopped ends it.
	cleanKick chan struct{}
	stopped   chan struct{}
	cleanMu   sync.Mutex // one cleaning round at a time (the cleaner, settle)
}

// lazyDelay batches lazy clean-ups, and spaces out the cleaner's data flushes.
const lazyDelay = 20 * time.Millisecond

func newPersister(p *Primary, durable []byte) *persister {
	ps := &persister{p: p, durable: append([]byte(nil), durable...), kick: make(chan struct{}, 1),
		next: make(chan struct{}), cleanKick: make(chan struct{}, 1), stopped: make(chan struct{})}
	ps.cond.L = &ps.mu
	go ps.loop()
	if p.cfg.MetaFlush {
		go ps.cleanLoop()
	}
	return ps
}

// askClean asks the cleaner for a round, without waiting.
func (ps *persister) askClean() {
	select {
	case ps.cleanKick <- struct{}{}:
	default:
	}
}

// cleanLoop runs cleaning rounds when asked, at most one per lazyDelay.
func (ps *persister) cleanLoop() {
	for {
		select {
		case <-ps.cleanKick:
		case <-ps.stopped:
			return
		}
		select {
		case <-time.After(lazyDelay):
		case <-ps.stopped:
			return
		}
		ps.clean()
	}
}

// clean runs one cleaning round: flush the data behind the extents idle now, then let the
// next bitmap write clear them (a lazy round is asked for). When the flush fails the bits
// stay set: after a crash those extents are resynchronised, which is the safe side, and the
// next round tries again.
func (ps *persister) clean() {
	if err := ps.cleanRound(); err != nil {
		ps.p.log.Warn().Err(err).Msg("activemap: cannot clear bits")
	}
}

func (ps *persister) cleanRound() error {
	ps.cleanMu.Lock()
	defer ps.cleanMu.Unlock()
	p := ps.p
	p.mu.Lock()
	if !p.am.CleanPending() {
		p.mu.Unlock()
		return nil
	}
	cand := p.am.StartClean()
	p.mu.Unlock()
	if err := p.dev.Flush(); err != nil {
		p.st.flushErr.Add(1)
		return fmt.Errorf("flush data before clearing activemap bits: %w", err)
	}
	p.mu.Lock()
	p.am.FinishClean(cand)
	p.mu.Unlock()
	ps.later()
	return nil
}

// settle writes the map with every idle extent cleared: a cleaning round (with metaflush),
// then a bitmap write the caller waits for. For the end of a synchronisation and Close.
func (ps *persister) settle() error {
	if ps.p.cfg.MetaFlush {
		ps.clean()
	}
	return ps.now()
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
	if !ps.stop {
		ps.stop = true
		close(ps.stopped)
	}
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
		ps.lazy = false
		// Writers that asked up to gen wait on this round's channel; later ones on the next.
		served := ps.next
		ps.next = make(chan struct{})
		ps.mu.Unlock()

		err := ps.writeOnce()

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
// extent this image clears must wait for the next round. With metaflush the image clears only
// extents whose data a cleaning round has flushed; the others wait for the cleaner.
func (ps *persister) writeOnce() error {
	p := ps.p
	p.mu.Lock()
	var img []byte
	if p.cfg.MetaFlush {
		img = p.am.FlushedImage(nil)
	} else {
		img = p.am.Image(nil)
	}
	inter := make([]byte, len(img))
	for i := range img {
		inter[i] = img[i] & ps.durable[i]
	}
	p.am.MarkDurable(inter)
	p.mu.Unlock()

	if err := p.writeBitmap(img); err != nil {
		return err
	}
	p.mu.Lock()
	p.am.MarkDurable(img)
	pending := p.cfg.MetaFlush && p.am.CleanPending()
	p.mu.Unlock()
	ps.durable = img
	if pending {
		ps.askClean()
	}
	return nil
}
