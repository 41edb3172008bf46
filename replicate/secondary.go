package replicate

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"hast/blockdev"
	"hast/internal/nv"
	"hast/replicate/proto"
)

// secondaryWorkers is how many requests the secondary applies at once. Requests that overlap an
// earlier one still in progress wait for it, so overlapping writes land in the order sent.
const secondaryWorkers = 32

type sreq struct {
	cmd     uint8
	seq     uint64
	off, n  int64
	data    []byte // pooled
	memsync bool
}

type sreply struct {
	seq      uint64
	received bool
	errno    syscall.Errno
	data     []byte // READ result (pooled), nil otherwise
	digest   *[sha256.Size]byte
}

// secondary is one connected session of a resource on the node where it is secondary.
type secondary struct {
	cfg  Config
	log  zerolog.Logger
	dev  blockdev.Device
	mdMu sync.Mutex // serialises changes of md and of the on-disk bitmap after the handshake
	md   blockdev.Metadata
	base int64
	size int64
	sect int

	c1, c2  net.Conn
	version uint8

	// in-flight tracking for ordering
	tmu    sync.Mutex
	tcond  sync.Cond
	active []sreq // ranges being applied (cmd, off, n only)
	nact   int

	rmu     sync.Mutex
	replies []sreply
	rkick   chan struct{}
	// sendMu is held by whoever writes to c2: the reply loop, or queueReply sending its reply
	// itself when nothing is queued and the loop is idle. It guards renc.
	sendMu  sync.Mutex
	renc    batchEncoder
	done    chan struct{}
	failErr error
	once    sync.Once
}

// SecondarySlot holds at most one secondary session (RunSecondary) of a [Target]: starting
// one ends the one running first, since a primary that reconnects supersedes its old session.
// The zero value is ready; it is safe for concurrent use.
type SecondarySlot struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// Start ends the running session and waits for it, then runs RunSecondary on the new
// connections in a goroutine; onEnd, if not nil, gets the session's error when it ends.
func (s *SecondarySlot) Start(cfg Config, dev blockdev.Device, c1, c2 net.Conn, version uint8, hello *nv.List, log zerolog.Logger, onEnd func(error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.cancel, s.done = cancel, done
	go func() {
		defer close(done)
		err := RunSecondary(ctx, cfg, dev, c1, c2, version, hello, log)
		if onEnd != nil {
			onEnd(err)
		}
	}()
}

// Stop ends the running session, if any; when it returns the session does no more I/O.
func (s *SecondarySlot) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

func (s *SecondarySlot) stopLocked() {
	if s.cancel != nil {
		s.cancel()
		<-s.done
		s.cancel, s.done = nil, nil
	}
}

// RunSecondary serves one connection from the primary until it ends: it evaluates the handshake
// (the sync decision of §11.2), answers it on c1, then applies requests from c1 and replies on
// c2. hello is the primary's second handshake message (from c2). The returned error says why
// the session ended; ErrSplitBrain and ErrResUIDMismatch mean it was refused.
func RunSecondary(ctx context.Context, cfg Config, dev blockdev.Device, c1, c2 net.Conn, version uint8, hello *nv.List, log zerolog.Logger) error {
	cfg = cfg.withDefaults()
	s := &secondary{
		cfg: cfg, log: log.With().Str("resource", cfg.Name).Str("role", "secondary").Logger(),
		dev: dev, c1: c1, c2: c2, version: version,
		rkick: make(chan struct{}, 1), done: make(chan struct{}),
	}
	s.tcond.L = &s.tmu
	defer c1.Close()
	defer c2.Close()
	if err := s.handshake(hello); err != nil {
		return err
	}
	s.log.Info().Msg("connected to the primary")
	cfg.OnEvent(EventConnect)
	stop := context.AfterFunc(ctx, func() { s.fail(errors.New("secondary stopped")) })
	defer stop()
	err := s.serve()
	s.log.Warn().Err(err).Msg("disconnected from the primary")
	cfg.OnEvent(EventDisconnect)
	return err
}

func (s *secondary) sendErr(msg string) {
	var l nv.List
	l.AddString("errmsg", msg)
	s.c1.SetWriteDeadline(time.Now().Add(s.cfg.Timeout))
	proto.WriteFrame(s.c1, s.version, &l, nil)
}

func (s *secondary) handshake(hello *nv.List) error {
	md, err := blockdev.ReadMetadata(s.dev, s.cfg.Name)
	if err != nil {
		s.sendErr("Unable to read metadata.")
		return err
	}
	pri := Counters{}
	var ok1, ok2, ok3 bool
	pri.ResUID, ok1 = hello.Uint64("resuid")
	pri.LocalCnt, ok2 = hello.Uint64("localcnt")
	pri.RemoteCnt, ok3 = hello.Uint64("remotecnt")
	if !(ok1 && ok2 && ok3) {
		s.sendErr("Handshake lacks resuid, localcnt or remotecnt.")
		return errors.New("handshake from the primary lacks resuid, localcnt or remotecnt")
	}
	_, virgin := hello.Int8("virgin")
	sec := Counters{ResUID: md.ResUID, LocalCnt: md.LocalCnt, RemoteCnt: md.RemoteCnt}
	d := Decide(sec, pri, virgin)
	s.log.Info().Str("rule", d.Rule).Uint64("S.l", sec.LocalCnt).Uint64("S.r", sec.RemoteCnt).
		Uint64("P.l", pri.LocalCnt).Uint64("P.r", pri.RemoteCnt).Str("syncsrc", d.Source.String()).Msg("handshake decision")
	pull, d, err := s.pullMap(md, d, pri, sec, hello)
	if err != nil {
		s.sendErr("Unable to read activemap.")
		return err
	}
	var custom []byte // bitmap to send instead of the decision's
	if errors.Is(d.Err, ErrSplitBrain) {
		var err error
		if custom, err = s.splitBrain(hello, md); err != nil {
			return err
		}
		d = Decision{Rule: "split-brain resolved", Source: SyncSrcPrimary, Map: MapLocal}
		md.PrimaryStale, pull = false, nil // the primary's data wins, ours is saved
	}
	if d.Err != nil {
		s.sendErr(fmt.Sprintf("Resource unique ID mismatch (primary=%d, secondary=%d).", pri.ResUID, sec.ResUID))
		return d.Err
	}
	if d.AdoptResUID {
		md.ResUID = pri.ResUID
	}
	// Our extension: after this pairing the primary's remotecnt will be our localcnt; remember it
	// so that if we are promoted, our first write without the peer bumps localcnt.
	md.PeerRemoteCnt = md.LocalCnt
	md.PrevRole = "secondary"
	if _, ours := hello.Uint8Array("x_primary_map"); ours && d.Source == SyncSrcPrimary {
		// Our primary will say when the copy is whole again (CmdSyncDone).
		md.Inconsistent = true
	}
	if err := blockdev.SyncMetadata(s.dev, md); err != nil {
		s.sendErr("Unable to write metadata.")
		return err
	}
	s.md = *md
	s.base, s.size, s.sect = int64(md.LocalOff), int64(md.DataSize), s.dev.SectorSize()

	var bm []byte
	switch d.Map {
	case MapLocal:
		if bm, err = blockdev.ReadBitmap(s.dev, md); err != nil {
			s.sendErr("Unable to read activemap.")
			return err
		}
	case MapAll:
		bm = fullBitmap(int64(md.DataSize), md.ExtentSize, int(md.MapSize()))
	}
	if custom != nil {
		bm = custom
	}
	var out nv.List
	out.AddInt64("datasize", int64(md.DataSize))
	out.AddInt32("extentsize", int32(md.ExtentSize))
	out.AddUint64("localcnt", md.LocalCnt)
	out.AddUint64("remotecnt", md.RemoteCnt)
	if d.Virgin {
		out.AddInt8("virgin", 1)
	}
	out.AddUint8("syncsrc", uint8(d.Source))
	if pull != nil {
		out.AddUint8Array("x_pull_map", pull)
	}
	out.AddUint32("mapsize", uint32(len(bm)))
	var payload []byte
	if len(bm) > 0 {
		payload, err = proto.EncodeData(&out, bm, s.cfg.Compression, s.cfg.Checksum, nil)
		if err != nil {
			return fmt.Errorf("encode bitmap: %w", err)
		}
	}
	s.c1.SetWriteDeadline(time.Now().Add(s.cfg.Timeout))
	if err := proto.WriteFrame(s.c1, s.version, &out, payload); err != nil {
		return fmt.Errorf("send handshake result: %w", err)
	}
	s.c1.SetWriteDeadline(time.Time{})
	return nil
}

// splitBrain handles a split-brain found in the handshake. Unless this session was told to
// resolve it (DiscardOnSplitBrain, or the primary says it is the chosen winner), it refuses
// the connection, sending our activemap along so the primary can report both sides, and
// returns a *SplitBrainError carrying the report. When resolving, it saves this node's data of
// every divergent extent to a file first and returns the bitmap to synchronise (both sides'
// divergent extents, or every extent if the primary did not send its map).
func (s *secondary) splitBrain(hello *nv.List, md *blockdev.Metadata) ([]byte, error) {
	own, err := blockdev.ReadBitmap(s.dev, md)
	if err != nil {
		s.sendErr("Unable to read activemap.")
		return nil, err
	}
	n := int((md.DataSize + uint64(md.ExtentSize) - 1) / uint64(md.ExtentSize))
	pmap, known := hello.Uint8Array("x_primary_map")
	rep := SplitBrainReport{
		Resource: s.cfg.Name, Detected: time.Now().UTC(), ExtentSize: md.ExtentSize, DataSize: int64(md.DataSize),
		Local: bitmapExtents(own, n), Remote: bitmapExtents(pmap, n), RemoteKnown: known,
	}
	_, winner := hello.Uint8("x_winner")
	if !s.cfg.DiscardOnSplitBrain && !winner {
		var out nv.List
		out.AddString("errmsg", SplitBrainMsg)
		var payload []byte
		if known {
			out.AddUint32("x_mapsize", uint32(len(own)))
			payload, _ = proto.EncodeData(&out, own, s.cfg.Compression, s.cfg.Checksum, nil)
		}
		s.c1.SetWriteDeadline(time.Now().Add(s.cfg.Timeout))
		proto.WriteFrame(s.c1, s.version, &out, payload)
		s.log.Error().Int("local_extents", len(rep.Local)).Int("remote_extents", len(rep.Remote)).
			Msg("split-brain: both nodes were primary and both wrote; refusing to synchronise (see hast split-brain)")
		s.cfg.OnEvent(EventSplitBrain)
		return nil, &SplitBrainError{Report: rep}
	}
	sync := fullBitmap(int64(md.DataSize), md.ExtentSize, int(md.MapSize()))
	if known {
		sync = orBitmaps(own, pmap)
	}
	path, err := saveExtents(s.cfg.SplitBrainDir, s.cfg.Name, s.dev, md, bitmapExtents(sync, n))
	if err != nil {
		s.sendErr("Unable to save the discarded data.")
		return nil, err
	}
	if s.cfg.OnDiscardSaved != nil {
		s.cfg.OnDiscardSaved(path)
	}
	s.log.Warn().Str("saved_to", path).Int("extents", len(bitmapExtents(sync, n))).
		Msg("split-brain resolved: this node's divergent extents were saved and will be replaced by the primary's")
	return sync, nil
}

// maxPullMap bounds the records of stale extents sent in the handshake (x_pull_map).
const maxPullMap = proto.MaxNVSize / 4

// pullMap returns our records of the primary's stale extents, to send as x_pull_map, and the
// decision as they amend it. A primary that wrote without us since the last synchronisation
// (P.l > S.r) may have written into extents it does not know are stale (it restarted since):
// neither copy is whole there, a split-brain. Records too large for the handshake turn a
// synchronisation from the primary into one from us, where the primary has nothing of its own.
func (s *secondary) pullMap(md *blockdev.Metadata, d Decision, pri, sec Counters, hello *nv.List) ([]byte, Decision, error) {
	if !md.PrimaryStale || d.Err != nil {
		return nil, d, nil
	}
	pull, err := blockdev.ReadBitmap(s.dev, md)
	if err != nil {
		return nil, d, err
	}
	if d.Source != SyncSrcPrimary {
		return pull, d, nil
	}
	known, _ := hello.Uint8Array("x_stale_known")
	switch {
	case pri.LocalCnt > sec.RemoteCnt && !bitmapCovers(known, pull):
		s.log.Error().Msg("the primary wrote without us and may not know which of its extents are stale; only this copy has them right")
		return nil, Decision{Rule: d.Rule + "/stale", Err: ErrSplitBrain}, nil
	case len(pull) > maxPullMap:
		s.log.Warn().Msg("too many stale extents of the primary's to list: synchronising from this copy")
		return nil, Decision{Rule: d.Rule + "/stale", Source: SyncSrcSecondary, Map: MapLocal}, nil
	}
	return pull, d, nil
}

// bitmapCovers reports whether every bit set in b is set in a.
func bitmapCovers(a, b []byte) bool {
	for i, v := range b {
		var have byte
		if i < len(a) {
			have = a[i]
		}
		if v&^have != 0 {
			return false
		}
	}
	return true
}

// fullBitmap has one bit set for every extent of the data area.
func fullBitmap(dataSize int64, extentSize uint32, mapSize int) []byte {
	n := int((dataSize + int64(extentSize) - 1) / int64(extentSize))
	bm := make([]byte, mapSize)
	for e := 0; e < n; e++ {
		bm[e>>3] |= 1 << (e & 7)
	}
	return bm
}

func (s *secondary) fail(err error) {
	s.once.Do(func() {
		s.failErr = err
		close(s.done)
		s.c1.Close()
		s.c2.Close()
		s.tmu.Lock()
		s.tcond.Broadcast()
		s.tmu.Unlock()
	})
}

func (s *secondary) serve() error {
	work := make(chan sreq, secondaryWorkers)
	var wg sync.WaitGroup
	for range secondaryWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range work {
				s.apply(r)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.replyLoop()
	}()
	err := s.readLoop(work)
	s.fail(err)
	close(work)
	wg.Wait()
	return s.failErr
}

func (s *secondary) readLoop(work chan<- sreq) error {
	br := bufio.NewReaderSize(s.c1, recvBufferSize)
	rd := proto.NewReader(br, MaxRecvIO+4096)
	var spare []sreply // the reader's half of the reply queue's buffers (see flushReplies)
	held := false      // early acks queued by holdReply and maybe not sent yet
	idle := max(s.cfg.Timeout, 2*s.cfg.Keepalive)
	first := true
	for {
		// Before waiting for more bytes, send the early acks of the frames already read.
		if held && br.Buffered() == 0 {
			if err := s.flushReplies(&spare); err != nil {
				return err
			}
			held = false
		}
		s.c1.SetReadDeadline(time.Now().Add(idle))
		_, msg, payload, err := rd.Next()
		if err != nil {
			select {
			case <-s.done:
				return s.failErr
			default:
			}
			return fmt.Errorf("receive request: %w", err)
		}
		cmd, ok := msg.Uint8("cmd")
		if !ok {
			return errors.New("request without cmd")
		}
		if cmd == proto.CmdKeepalive {
			continue
		}
		seq, ok := msg.Uint64("seq")
		if !ok || seq == 0 {
			return fmt.Errorf("request (cmd %d) without a sequence number", cmd)
		}
		r, errno := s.validate(cmd, seq, msg, payload)
		if errno != 0 {
			s.log.Warn().Uint8("cmd", cmd).Uint64("seq", seq).Msg("invalid request refused")
			s.queueReply(sreply{seq: seq, errno: errno})
			continue
		}
		if first {
			first = false
			s.clearMergedMap()
		}
		if r.memsync {
			// Early acks of the frames that arrived together leave in one write. Queued
			// before the request goes to a worker, each precedes its final reply.
			s.holdReply(sreply{seq: seq, received: true})
			held = true
		}
		if !s.track(r) {
			s.finishAcked(r)
			return s.failErr
		}
		select {
		case work <- r:
		case <-s.done:
			s.untrack(r.seq)
			s.finishAcked(r)
			return s.failErr
		}
	}
}

// finishAcked runs when the session ends with r read but not handed to a worker. A memsync
// write was already acknowledged as received: the primary may have completed it to its
// application, so it must reach the disk even though the session is over — after every
// request still in progress, so overlapping writes keep their order.
func (s *secondary) finishAcked(r sreq) {
	if r.data == nil {
		return
	}
	if r.memsync {
		s.tmu.Lock()
		for s.nact > 0 {
			s.tcond.Wait()
		}
		s.tmu.Unlock()
		if _, err := s.dev.WriteAt(r.data, s.base+r.off); err != nil {
			s.log.Error().Err(err).Int64("offset", r.off).Msg("unable to apply a write acknowledged as received")
			if err := s.markInconsistent(); err != nil {
				s.log.Error().Err(err).Msg("unable to record that this copy misses a write")
			}
		}
	}
	putBuf(r.data)
}

// validate applies §7.3's checks; a failed check is answered with EINVAL and touches nothing.
func (s *secondary) validate(cmd uint8, seq uint64, msg *nv.List, payload []byte) (sreq, syscall.Errno) {
	r := sreq{cmd: cmd, seq: seq}
	switch cmd {
	case proto.CmdFlush, CmdSyncDone:
		return r, 0
	case proto.CmdRead, proto.CmdWrite, proto.CmdDelete, CmdDigest, CmdStale, CmdStaleClear:
	default:
		return r, syscall.EINVAL
	}
	off, ok1 := msg.Uint64("offset")
	n, ok2 := msg.Uint64("length")
	if !ok1 || !ok2 || n == 0 || off%uint64(s.sect) != 0 || n%uint64(s.sect) != 0 ||
		off > uint64(s.size) || n > uint64(s.size)-off ||
		(cmd == CmdDigest && n > maxDigestLen) || (n > MaxRecvIO && !unboundedLength(cmd)) {
		return r, syscall.EINVAL
	}
	r.off, r.n = int64(off), int64(n)
	if cmd == proto.CmdWrite {
		buf := getBuf(int(n))
		dec, err := proto.DecodeData(msg, payload, buf[:0])
		if err != nil || len(dec) != int(n) {
			putBuf(buf)
			return r, syscall.EINVAL
		}
		if &dec[0] != &buf[:1][0] {
			copy(buf, dec)
		}
		r.data = buf[:n]
		_, r.memsync = msg.Uint8("memsync")
	}
	return r, 0
}

func overlaps(a, b sreq) bool {
	return a.off < b.off+b.n && b.off < a.off+a.n
}

// track waits until r may start: a FLUSH waits for everything before it, other requests for
// earlier overlapping ones (and an earlier flush).
func (s *secondary) track(r sreq) bool {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	for {
		select {
		case <-s.done:
			return false
		default:
		}
		busy := false
		if r.cmd == proto.CmdFlush || r.cmd == CmdSyncDone {
			busy = s.nact > 0
		} else {
			for _, a := range s.active[:s.nact] {
				if a.cmd == proto.CmdFlush || a.cmd == CmdSyncDone || overlaps(a, r) {
					busy = true
					break
				}
			}
		}
		if !busy && s.nact < MaxInflight {
			break
		}
		s.tcond.Wait()
	}
	key := sreq{cmd: r.cmd, seq: r.seq, off: r.off, n: r.n}
	if s.nact < len(s.active) {
		s.active[s.nact] = key
	} else {
		s.active = append(s.active, key)
	}
	s.nact++
	return true
}

func (s *secondary) untrack(seq uint64) {
	s.tmu.Lock()
	for i := 0; i < s.nact; i++ {
		if s.active[i].seq == seq {
			s.nact--
			s.active[i] = s.active[s.nact]
			break
		}
	}
	s.tcond.Broadcast()
	s.tmu.Unlock()
}

func (s *secondary) apply(r sreq) {
	rep := sreply{seq: r.seq}
	var err error
	switch r.cmd {
	case proto.CmdWrite:
		_, err = s.dev.WriteAt(r.data, s.base+r.off)
		putBuf(r.data)
	case proto.CmdRead:
		buf := getBuf(int(r.n))
		if _, err = s.dev.ReadAt(buf, s.base+r.off); err != nil {
			putBuf(buf)
		} else {
			rep.data = buf
		}
	case CmdDigest:
		buf := getBuf(int(r.n))
		if _, err = s.dev.ReadAt(buf, s.base+r.off); err == nil {
			d := sha256.Sum256(buf)
			rep.digest = &d
		}
		putBuf(buf)
	case proto.CmdDelete:
		err = s.dev.Discard(s.base+r.off, r.n)
	case proto.CmdFlush:
		err = s.dev.Flush()
	case CmdSyncDone:
		err = s.syncDone()
	case CmdStale:
		err = s.recordPrimaryStale(r.off, r.n)
	case CmdStaleClear:
		err = s.clearPrimaryStale(r.off, r.n)
	}
	if err != nil {
		rep.errno = errnoOf(err)
		s.log.Error().Err(err).Uint8("cmd", r.cmd).Int64("offset", r.off).Int64("length", r.n).Msg("request failed")
		if r.cmd == proto.CmdWrite || r.cmd == proto.CmdDelete {
			// Recorded before the error goes back: the primary may acknowledge the write
			// without us, and we must not be promoted before it is resynchronised.
			if merr := s.markInconsistent(); merr != nil {
				s.fail(fmt.Errorf("unable to record that this copy misses a write: %w", merr))
			}
		}
	}
	s.untrack(r.seq)
	s.queueReply(rep)
}

// unboundedLength: requests whose length is not a payload, so MaxRecvIO does not bound it.
func unboundedLength(cmd uint8) bool {
	return cmd == proto.CmdDelete || cmd == CmdDigest || cmd == CmdStale || cmd == CmdStaleClear
}

// clearMergedMap empties our on-disk bitmap once the session runs: the primary has merged and
// persisted it by then (§7.2 step 8). Records of the primary's stale extents stay until it
// has pulled them.
func (s *secondary) clearMergedMap() {
	s.mdMu.Lock()
	defer s.mdMu.Unlock()
	if s.md.PrimaryStale {
		return
	}
	if err := blockdev.WriteBitmap(s.dev, &s.md, make([]byte, s.md.MapSize())); err != nil {
		s.log.Error().Err(err).Msg("unable to clear activemap")
	}
}

// syncDone applies CmdSyncDone: everything before it is applied (it waited for them); make
// it durable, then clear the inconsistent mark.
func (s *secondary) syncDone() error {
	if err := s.dev.Flush(); err != nil {
		return err
	}
	s.mdMu.Lock()
	defer s.mdMu.Unlock()
	if !s.md.Inconsistent {
		return nil
	}
	s.md.Inconsistent = false
	if err := blockdev.SyncMetadata(s.dev, &s.md); err != nil {
		return err
	}
	if err := os.Remove(InconsistentMarkFile(s.cfg.SplitBrainDir, s.cfg.Name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	s.log.Info().Msg("synchronisation complete: this copy is consistent")
	return nil
}

func (s *secondary) queueReply(r sreply) {
	s.rmu.Lock()
	// Nothing queued and nobody sending: every earlier reply is on the wire, so sending this
	// one here keeps the order and saves a thread wake-up per request at queue depth 1.
	if len(s.replies) == 0 && s.sendMu.TryLock() {
		s.rmu.Unlock()
		one := [1]sreply{r}
		err := s.sendReplies(one[:])
		s.sendMu.Unlock()
		if err != nil {
			s.fail(err)
		}
		return
	}
	s.replies = append(s.replies, r)
	s.rmu.Unlock()
	select {
	case s.rkick <- struct{}{}:
	default:
	}
}

// holdReply queues r without sending it; flushReplies, or the next reply queued, sends it.
func (s *secondary) holdReply(r sreply) {
	s.rmu.Lock()
	s.replies = append(s.replies, r)
	s.rmu.Unlock()
}

// flushReplies sends every queued reply: itself in one writev when nobody is sending, else by
// waking replyLoop. spare is the caller's buffer for swapping with the queue.
func (s *secondary) flushReplies(spare *[]sreply) error {
	if !s.sendMu.TryLock() {
		select {
		case s.rkick <- struct{}{}:
		default:
		}
		return nil
	}
	err := s.sendQueuedLocked(spare)
	s.sendMu.Unlock()
	if err != nil {
		s.fail(err)
	}
	return err
}

// sendQueuedLocked takes the reply queue, swapping in *spare, and sends it in one writev;
// sendMu is held, which orders the batch after replies sent directly before and before those
// sent directly after. The sent batch, emptied, becomes *spare.
func (s *secondary) sendQueuedLocked(spare *[]sreply) error {
	s.rmu.Lock()
	batch := s.replies
	s.replies = (*spare)[:0]
	s.rmu.Unlock()
	var err error
	if len(batch) > 0 {
		err = s.sendReplies(batch)
	}
	clear(batch) // drop the references to read buffers already returned to the pool
	*spare = batch
	return err
}

// replyLoop sends queued replies on c2, all that are waiting in one writev.
func (s *secondary) replyLoop() {
	var spare []sreply
	for {
		select {
		case <-s.done:
			return
		case <-s.rkick:
		}
		s.sendMu.Lock()
		err := s.sendQueuedLocked(&spare)
		s.sendMu.Unlock()
		if err != nil {
			s.fail(err)
			return
		}
	}
}

// sendReplies encodes batch and writes it in one writev, then returns the read buffers to the
// pool; sendMu is held.
func (s *secondary) sendReplies(batch []sreply) error {
	e := &s.renc
	e.reset()
	defer func() {
		for _, r := range batch {
			if r.data != nil {
				putBuf(r.data)
			}
		}
		e.release()
	}()
	for _, r := range batch {
		e.nvl.Reset()
		e.nvl.AddUint64("seq", r.seq)
		var payload []byte
		switch {
		case r.received:
			e.nvl.AddInt8("received", 1)
		case r.errno != 0:
			e.nvl.AddInt16("error", int16(r.errno))
		case r.digest != nil:
			e.nvl.AddUint8Array("digest", r.digest[:])
		case r.data != nil:
			var err error
			// Replies to reads go through the pipeline with our own settings (as HAST does).
			payload, err = proto.EncodeData(&e.nvl, r.data, s.cfg.Compression, s.cfg.Checksum, nil)
			if err != nil {
				return fmt.Errorf("encode read reply: %w", err)
			}
		}
		e.add(s.version, payload)
	}
	s.c2.SetWriteDeadline(time.Now().Add(s.cfg.Timeout))
	bufs := e.buffers()
	if _, err := bufs.WriteTo(s.c2); err != nil {
		return fmt.Errorf("send replies: %w", err)
	}
	return nil
}
