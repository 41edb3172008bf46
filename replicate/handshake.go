package replicate

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"hast/internal/nv"
	"hast/replicate/proto"
)

// ErrPeerPrimary means the peer is primary for the resource too (HAST's "wait" answer).
var ErrPeerPrimary = errors.New("replicate: remote node acts as primary")

// handshakeMaxData bounds the bitmap a peer may send (1 bit per extent: 32 MiB covers 256 TiB at
// 1 MiB extents).
const handshakeMaxData = 32 << 20

func (p *Primary) guard() {
	defer p.wg.Done()
	if p.cfg.Remote == "" {
		p.log.Info().Msg("remote is none; running without a peer")
		<-p.ctx.Done()
		return
	}
	lastErr := ""
	for {
		if p.lnk.Load() == nil {
			err := p.connect()
			if p.cfg.OnConnect != nil {
				p.cfg.OnConnect(err)
			}
			if err != nil {
				if err.Error() != lastErr {
					p.log.Warn().Err(err).Str("remote", p.cfg.Remote).Msg("unable to connect to the peer; will retry")
					lastErr = err.Error()
				}
			} else {
				lastErr = ""
			}
		}
		select {
		case <-p.ctx.Done():
			return
		case <-p.linkChg:
		case <-time.After(p.cfg.Reconnect):
		}
	}
}

func newResUID() (uint64, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("generate resuid: %w", err)
		}
		if v := binary.LittleEndian.Uint64(b[:]); v != 0 {
			return v, nil
		}
	}
}

func readReply(rd *proto.Reader, what string) (*nv.List, []byte, uint8, error) {
	ver, l, data, err := rd.Next()
	if err != nil {
		return nil, nil, 0, fmt.Errorf("%s: %w", what, err)
	}
	return l, data, ver, nil
}

// connect runs HAST's two-connection handshake (hast-reference §7.2) as the primary.
func (p *Primary) connect() (err error) {
	cfg := &p.cfg
	ctx, cancel := context.WithTimeout(p.ctx, cfg.Timeout)
	defer cancel()
	c1, err := cfg.Dial(ctx, cfg.Network, cfg.Source, cfg.Remote)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", cfg.Remote, err)
	}
	var c2 net.Conn
	defer func() {
		if err != nil {
			c1.Close()
			if c2 != nil {
				c2.Close()
			}
		}
	}()
	deadline := time.Now().Add(cfg.Timeout)
	c1.SetDeadline(deadline)

	var out nv.List
	out.AddString("resource", cfg.Name)
	out.AddUint8("version", proto.Version)
	// The first message carries frame version 1 so a protocol-1 peer accepts it.
	if err := proto.WriteFrame(c1, 1, &out, nil); err != nil {
		return fmt.Errorf("send handshake: %w", err)
	}
	rd1 := proto.NewReader(c1, handshakeMaxData)
	in, _, _, err := readReply(rd1, "handshake reply")
	if err != nil {
		return err
	}
	if msg, ok := in.String("errmsg"); ok {
		if _, wait := in.Uint8("wait"); wait {
			return fmt.Errorf("%w: %s", ErrPeerPrimary, msg)
		}
		return fmt.Errorf("peer refused the connection: %s", msg)
	}
	version, ok := in.Uint8("version")
	if !ok || version == 0 {
		version = 1
	}
	if version > proto.Version {
		return fmt.Errorf("peer speaks protocol version %d, newer than ours (%d)", version, proto.Version)
	}
	token, ok := in.Uint8Array("token")
	if !ok || len(token) != 16 {
		return errors.New("handshake reply has no valid token")
	}
	token = append([]byte(nil), token...)
	features, _ := in.Uint32("x_features")

	virgin := false
	p.mu.Lock()
	if p.md.ResUID == 0 {
		p.mu.Unlock()
		uid, err := newResUID()
		if err != nil {
			return err
		}
		p.mu.Lock()
		p.md.ResUID = uid
		virgin = true
		p.mu.Unlock()
		if err := p.writeMetadata(); err != nil {
			return err
		}
		p.mu.Lock()
	}
	md := p.md
	p.mu.Unlock()

	c2, err = cfg.Dial(ctx, cfg.Network, cfg.Source, cfg.Remote)
	if err != nil {
		return fmt.Errorf("connect second connection to %s: %w", cfg.Remote, err)
	}
	c2.SetDeadline(deadline)
	out.Reset()
	out.AddString("resource", cfg.Name)
	out.AddUint8Array("token", token)
	if virgin {
		out.AddInt8("virgin", 1)
	}
	out.AddUint64("resuid", md.ResUID)
	out.AddUint64("localcnt", md.LocalCnt)
	out.AddUint64("remotecnt", md.RemoteCnt)
	var ownMap []byte
	winner := false
	p.mu.Lock()
	mapFits := p.am.MapSize() <= proto.MaxNVSize/2
	p.mu.Unlock()
	if features&FeatSplitBrainMaps != 0 && mapFits {
		// Our extension: what we changed since the nodes were last in sync, so a split-brain can
		// be reported on both sides; and whether the operator chose us as the winner of one.
		p.mu.Lock()
		ownMap = p.am.SyncBitmap()
		p.mu.Unlock()
		if p.resolveWinner.Load() {
			out.AddUint8("x_winner", 1)
			winner = true
		}
		out.AddUint8Array("x_primary_map", ownMap)
	}
	if features&FeatStale != 0 {
		// The stale extents the peer recorded for us in this run: we know not to have
		// written them without it.
		p.mu.Lock()
		known := p.staleRecordedBitmap()
		p.mu.Unlock()
		if known != nil && len(known) <= maxPullMap {
			out.AddUint8Array("x_stale_known", known)
		}
	}
	if err := proto.WriteFrame(c2, version, &out, nil); err != nil {
		return fmt.Errorf("send second handshake: %w", err)
	}
	in, data, _, err := readReply(rd1, "handshake result")
	if err != nil {
		return err
	}
	if msg, ok := in.String("errmsg"); ok {
		if msg == SplitBrainMsg {
			n := p.am.Extents()
			rep := &SplitBrainReport{Resource: cfg.Name, Detected: time.Now().UTC(), ExtentSize: p.ext, DataSize: p.size,
				Local: bitmapExtents(ownMap, n)}
			if _, ok := in.Uint32("x_mapsize"); ok {
				if peer, err := proto.DecodeDataLimit(in, data, nil, handshakeMaxData); err == nil {
					rep.Remote, rep.RemoteKnown = bitmapExtents(peer, n), true
				}
			}
			p.mu.Lock()
			p.splitBrain = true
			p.sbReport = rep
			p.mu.Unlock()
			p.log.Error().Msg("split-brain detected by the peer; refusing to synchronise (resolve it manually)")
			p.cfg.OnEvent(EventSplitBrain)
			return fmt.Errorf("%w", ErrSplitBrain)
		}
		return fmt.Errorf("peer refused the connection: %s", msg)
	}
	dsize, ok1 := in.Int64("datasize")
	esize, ok2 := in.Int32("extentsize")
	slc, ok3 := in.Uint64("localcnt")
	src, ok4 := in.Uint64("remotecnt")
	ssrc, ok5 := in.Uint8("syncsrc")
	if !(ok1 && ok2 && ok3 && ok4 && ok5) {
		return errors.New("handshake result lacks datasize, extentsize, localcnt, remotecnt or syncsrc")
	}
	if dsize != p.size {
		return fmt.Errorf("Data size differs between nodes (local=%d, remote=%d).", p.size, dsize)
	}
	if uint32(esize) != p.ext {
		return fmt.Errorf("Extent size differs between nodes (local=%d, remote=%d).", p.ext, esize)
	}
	if ssrc != uint8(SyncSrcPrimary) && ssrc != uint8(SyncSrcSecondary) {
		return fmt.Errorf("handshake result has invalid syncsrc %d", ssrc)
	}
	var bm []byte
	if ms, ok := in.Uint32("mapsize"); ok && ms > 0 {
		bm, err = proto.DecodeDataLimit(in, data, nil, handshakeMaxData)
		if err != nil {
			return fmt.Errorf("handshake bitmap: %w", err)
		}
	}
	_, peerVirgin := in.Int8("virgin")
	if pull, ok := in.Uint8Array("x_pull_map"); ok {
		p.adoptPullMap(pull)
	}

	p.mu.Lock()
	p.md.PeerRemoteCnt = src
	if SyncSource(ssrc) == SyncSrcSecondary {
		// Until this sync finishes, our own copy is the stale one.
		p.md.Inconsistent = true
	}
	if peerVirgin && p.md.LocalCnt == 0 {
		p.md.LocalCnt = 1
	}
	must := false
	if bm != nil {
		must, err = p.am.Merge(bm)
	}
	p.syncSrc = SyncSource(ssrc)
	p.peerCnt = Counters{ResUID: md.ResUID, LocalCnt: slc, RemoteCnt: src}
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("merge peer bitmap: %w", err)
	}
	if err := p.writeMetadata(); err != nil {
		return err
	}
	if must {
		if err := p.pers.now(); err != nil {
			return err
		}
	}
	c1.SetDeadline(time.Time{})
	c2.SetDeadline(time.Time{})
	if version < 2 && cfg.Mode == ModeMemsync {
		p.log.Warn().Msg("peer speaks protocol 1: memsync falls back to fullsync")
	}
	l := newLink(c1, c2, version, cfg, p.log, p.linkDown)
	l.features = features
	l.maxIO = MaxIO
	if features&FeatLargeIO != 0 {
		l.maxIO = MaxRecvIO
	}
	p.mu.Lock()
	p.splitBrain = false
	p.sbReport = nil
	p.mu.Unlock()
	if winner {
		p.resolveWinner.Store(false)
		p.log.Warn().Msg("split-brain resolved in favour of this node; the peer's divergent extents are being replaced")
	}
	p.lnk.Store(l)
	p.log.Info().Str("remote", cfg.Remote).Str("syncsrc", SyncSource(ssrc).String()).Msg("connected to the peer")
	cfg.OnEvent(EventConnect)
	p.startSync(l)
	return nil
}

// ResolveKeepLocal makes this node the winner of a split-brain: on its next connection it tells
// the peer to save its divergent extents and take ours. It reconnects at once.
func (p *Primary) ResolveKeepLocal() {
	p.resolveWinner.Store(true)
	select {
	case p.linkChg <- struct{}{}:
	default:
	}
}

// SplitBrain returns the report of the last split-brain found, or nil.
func (p *Primary) SplitBrain() *SplitBrainReport {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sbReport == nil {
		return nil
	}
	r := *p.sbReport
	return &r
}

// linkDown runs once when a link fails.
func (p *Primary) linkDown(l *link, err error) {
	if !p.lnk.CompareAndSwap(l, nil) {
		return
	}
	p.mu.Lock()
	// The peer acknowledged these but had not flushed them: if it lost power they are gone there.
	must := false
	for _, e := range p.unflushedIdx {
		p.unflushed[e] = false
		off, n := p.am.ExtentRange(e)
		if p.am.NeedSync(off, n) {
			must = true
		}
	}
	p.unflushedIdx = p.unflushedIdx[:0]
	p.mu.Unlock()
	if must {
		p.pers.later()
	}
	if p.closed.Load() {
		return
	}
	p.log.Warn().Err(err).Msg("disconnected from the peer")
	p.cfg.OnEvent(EventDisconnect)
	select {
	case p.linkChg <- struct{}{}:
	default:
	}
}
