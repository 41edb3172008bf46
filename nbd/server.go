package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"hast/replicate"
)

// Exports is how the daemon tells the server what is exported right now (only resources for
// which this node is primary). Both methods are called concurrently from many connections.
type Exports interface {
	// Lookup returns the volume exported under name.
	Lookup(name string) (replicate.Volume, bool)
	// Names lists the exported names (for NBD_OPT_LIST).
	Names() []string
}

// ErrServerClosed is returned by Serve when it is called after Close.
var ErrServerClosed = errors.New("nbd: server closed")

// shutdownGrace is how long a connection being shut down may take to send the replies of
// requests already in flight before its socket is closed under it. It only matters for a
// client that stopped reading.
const shutdownGrace = 5 * time.Second

// replyTimeout is how long the replies of one batch (or one write payload) may take to cross
// the socket. A client that stops reading its replies for that long is disconnected: otherwise
// it would keep its share of the server's payload budget for ever. Kernel and qemu clients
// read replies as they come; Linux's own nbd client gives up on a request after 30 s.
const replyTimeout = 60 * time.Second

// stallTimeout is how long replies (or a write payload) may make no progress at all while
// another connection waits for the payload budget, before the client is disconnected to give
// its share back. A client reading its replies moves some bytes in that time however slow its
// link.
const stallTimeout = 3 * time.Second

// Server serves NBD clients on any number of listeners. It is safe for concurrent use.
type Server struct {
	exp Exports
	log zerolog.Logger

	// budget bounds the payload bytes of all connections together; each may hold connBytes
	// of it (see budget.go).
	budget    *serverBudget
	connBytes int64

	replyTimeout time.Duration // replyTimeout; tests shorten it
	stallTimeout time.Duration // stallTimeout; tests shorten it

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	locks     map[string]*rangeLock // by export name; see rmw.go
	wg        sync.WaitGroup        // connection goroutines
}

// NewServer returns a server for the volumes exp exports.
func NewServer(exp Exports, log zerolog.Logger) *Server {
	return &Server{
		exp:       exp,
		log:       log,
		budget:    newServerBudget(MaxInFlightBytes, reserveBytes),
		connBytes: connInFlightBytes,

		replyTimeout: replyTimeout,
		stallTimeout: stallTimeout,
		listeners:    make(map[net.Listener]struct{}),
		conns:        make(map[*conn]struct{}),
		locks:        make(map[string]*rangeLock),
	}
}

// Serve accepts connections on l until l is closed (by the caller or by Close), and returns
// nil then. It may be called for several listeners at once (a unix socket and TCP, say).
func (s *Server) Serve(l net.Listener) error {
	return s.ServePolicy(l, Policy{})
}

// ServePolicy is Serve with clients admitted by p.
func (s *Server) ServePolicy(l net.Listener, p Policy) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Running out of file descriptors and similar conditions pass; retrying at once
			// would only spin.
			if isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn().Err(err).Dur("retry_in", backoff).Msg("nbd: accept")
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		if !p.allows(nc.RemoteAddr()) {
			s.log.Warn().Stringer("remote", nc.RemoteAddr()).Msg("nbd: connection refused: address not allowed")
			nc.Close()
			continue
		}
		s.startConn(nc, &p)
	}
}

func isTemporary(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EINTR)
}

// startConn registers nc and serves it on its own goroutine.
func (s *Server) startConn(nc net.Conn, p *Policy) {
	c := newConn(s, nc, p)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		c.serve()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		close(c.done)
	}()
}

// Disconnect closes every connection to the export name (on demotion) and returns once they
// are gone, so that no request of theirs reaches the volume afterwards. Requests already being
// served complete first and their replies are sent if the client still reads.
func (s *Server) Disconnect(name string) {
	var victims []*conn
	s.mu.Lock()
	for c := range s.conns {
		if c.exportedAs(name) {
			victims = append(victims, c)
		}
	}
	s.mu.Unlock()
	for _, c := range victims {
		c.shutdown()
	}
	for _, c := range victims {
		<-c.done
	}
}

// Close closes every listener and every connection, and waits for the connections'
// goroutines to finish. Serve calls return nil. Close is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	var errs []error
	for l := range s.listeners {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("nbd: close listener %s: %w", l.Addr(), err))
		}
	}
	for c := range s.conns {
		c.shutdown()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return errors.Join(errs...)
}

// errHandshake marks a handshake ended on purpose (abort, protocol violation) rather than by
// an I/O error.
var errHandshake = errors.New("handshake ended")

// handshake runs the fixed newstyle negotiation. It returns the chosen export when the client
// enters transmission, or an error when the connection should be closed.
func (c *conn) handshake() (*export, error) {
	var greet [18]byte
	binary.BigEndian.PutUint64(greet[0:], magicNBD)
	binary.BigEndian.PutUint64(greet[8:], magicOpt)
	binary.BigEndian.PutUint16(greet[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(greet[:]); err != nil {
		return nil, fmt.Errorf("send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return nil, fmt.Errorf("read client flags: %w", err)
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return nil, fmt.Errorf("%w: unknown client flags %#x", errHandshake, clientFlags)
	}
	if clientFlags&flagCFixedNewstyle == 0 {
		return nil, fmt.Errorf("%w: client does not speak fixed newstyle", errHandshake)
	}
	noZeroes := clientFlags&flagCNoZeroes != 0

	w := bufio.NewWriterSize(c.nc, 4096)
	var hdr [optHeaderSize]byte
	for n := 0; n < maxOptions; n++ {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return nil, fmt.Errorf("read option header: %w", err)
		}
		if m := binary.BigEndian.Uint64(hdr[0:]); m != magicOpt {
			return nil, fmt.Errorf("%w: bad option magic %#x", errHandshake, m)
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		length := binary.BigEndian.Uint32(hdr[12:])
		if length > maxOptionLen {
			return nil, fmt.Errorf("%w: option %s with %d bytes of data (limit %d)",
				errHandshake, optName(opt), length, maxOptionLen)
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return nil, fmt.Errorf("read option %s data: %w", optName(opt), err)
		}
		var ex *export
		var err error
		switch {
		case opt == optStartTLS:
			var upgraded bool
			if upgraded, err = c.startTLS(w, data); upgraded {
				w = bufio.NewWriterSize(c.nc, 4096)
			}
		case c.policy.TLS != nil && !c.secured && opt == optExportName:
			// This option has no way to report an error but closing the connection.
			return nil, fmt.Errorf("%w: export-name before NBD_OPT_STARTTLS on a listener that requires TLS", errHandshake)
		case c.policy.TLS != nil && !c.secured && opt != optAbort:
			err = writeOptError(w, opt, repErrTLSReqd, "TLS is required: send NBD_OPT_STARTTLS first")
		default:
			ex, err = c.option(w, opt, data, noZeroes)
		}
		if err == nil {
			err = w.Flush()
		}
		if err != nil || ex != nil {
			return ex, err
		}
	}
	return nil, fmt.Errorf("%w: more than %d options", errHandshake, maxOptions)
}

// export is the export a connection entered transmission with.
type export struct {
	name   string
	vol    replicate.Volume
	size   int64
	sector int64
	locks  *rangeLock // the export's, shared by all its connections (see rmw.go)
	// anyAlign: the client was not told of block sizes, so requests at any byte offset and of
	// any length are served (see rmw.go).
	anyAlign bool
}

// lookup finds name and checks that its geometry can be described to a client.
func (c *conn) lookup(name string) (*export, uint32, string) {
	vol, ok := c.srv.exp.Lookup(name)
	if !ok {
		return nil, repErrUnknown, fmt.Sprintf("export %q is not available on this node", name)
	}
	sector := vol.SectorSize()
	size := vol.Size()
	// The minimum block size must be a power of two no larger than 64 KiB.
	if sector <= 0 || sector > 64<<10 || bits.OnesCount(uint(sector)) != 1 || size < 0 {
		return nil, repErrPlatform, fmt.Sprintf("export %q has unsupported geometry (size %d, sector %d)",
			name, size, sector)
	}
	ex := &export{name: name, vol: vol, size: size, sector: int64(sector), locks: c.srv.rangeLock(name)}
	return ex, 0, ""
}

// rangeLock returns the range lock of export name.
func (s *Server) rangeLock(name string) *rangeLock {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.locks[name]
	if !ok {
		l = newRangeLock()
		s.locks[name] = l
	}
	return l
}

// option answers one option. It returns a non-nil export when transmission starts.
func (c *conn) option(w *bufio.Writer, opt uint32, data []byte, noZeroes bool) (*export, error) {
	switch opt {
	case optExportName:
		name := string(data)
		ex, rep, msg := c.lookup(name)
		if rep != 0 {
			// This option has no way to report an error but closing the connection.
			return nil, fmt.Errorf("%w: export-name: %s", errHandshake, msg)
		}
		ex.anyAlign = true
		var b [10 + 124]byte
		binary.BigEndian.PutUint64(b[0:], uint64(ex.size))
		binary.BigEndian.PutUint16(b[8:], exportFlags)
		out := b[:]
		if noZeroes {
			out = b[:10]
		}
		if _, err := w.Write(out); err != nil {
			return nil, err
		}
		return ex, w.Flush()

	case optAbort:
		// The client may already have gone; the ACK is a courtesy.
		writeOptReply(w, opt, repAck, nil)
		w.Flush()
		return nil, fmt.Errorf("%w: client aborted", errHandshake)

	case optList:
		if len(data) != 0 {
			return nil, writeOptError(w, opt, repErrInvalid, "list takes no data")
		}
		names := slices.Clone(c.srv.exp.Names())
		slices.Sort(names)
		for _, n := range names {
			b := make([]byte, 4+len(n))
			binary.BigEndian.PutUint32(b, uint32(len(n)))
			copy(b[4:], n)
			if err := writeOptReply(w, opt, repServer, b); err != nil {
				return nil, err
			}
		}
		return nil, writeOptReply(w, opt, repAck, nil)

	case optInfo, optGo:
		return c.infoGo(w, opt, data)

	default:
		// Structured replies, TLS, metadata contexts, extended headers and anything newer
		// are not offered; simple replies are always valid.
		return nil, writeOptError(w, opt, repErrUnsup, fmt.Sprintf("option %s is not supported", optName(opt)))
	}
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO.
func (c *conn) infoGo(w *bufio.Writer, opt uint32, data []byte) (*export, error) {
	if len(data) < 6 {
		return nil, writeOptError(w, opt, repErrInvalid, "option data too short")
	}
	nameLen := binary.BigEndian.Uint32(data)
	if uint64(nameLen) > uint64(len(data)-6) {
		return nil, writeOptError(w, opt, repErrInvalid, "export name length exceeds option data")
	}
	if nameLen > maxNameLen {
		return nil, writeOptError(w, opt, repErrInvalid, "export name too long")
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nreq := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		return nil, writeOptError(w, opt, repErrInvalid, "information request count does not match option length")
	}
	var wantName, wantDesc, wantBlock bool
	for i := 0; i < nreq; i++ {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		case infoBlockSize:
			wantBlock = true
		}
	}
	ex, rep, msg := c.lookup(name)
	if rep != 0 {
		return nil, writeOptError(w, opt, rep, msg)
	}
	if opt == optGo && !wantBlock && ex.sector > 512 {
		// Clients that do not ask for block sizes assume 512-byte alignment.
		return nil, writeOptError(w, opt, repErrBlockSizeReqd,
			fmt.Sprintf("export %q needs %d-byte aligned requests; request NBD_INFO_BLOCK_SIZE", name, ex.sector))
	}

	var b [14]byte
	binary.BigEndian.PutUint16(b[0:], infoExport)
	binary.BigEndian.PutUint64(b[2:], uint64(ex.size))
	binary.BigEndian.PutUint16(b[10:], exportFlags)
	if err := writeOptReply(w, opt, repInfo, b[:12]); err != nil {
		return nil, err
	}
	if wantName {
		if err := writeOptReply(w, opt, repInfo, infoString(infoName, name)); err != nil {
			return nil, err
		}
	}
	if wantDesc {
		desc := fmt.Sprintf("%d bytes, %d-byte sectors", ex.size, ex.sector)
		if err := writeOptReply(w, opt, repInfo, infoString(infoDescription, desc)); err != nil {
			return nil, err
		}
	}
	// Block sizes are sent even when not asked for: the spec allows it, and it tells clients
	// that can use it what alignment the volume needs.
	binary.BigEndian.PutUint16(b[0:], infoBlockSize)
	binary.BigEndian.PutUint32(b[2:], uint32(ex.sector))
	binary.BigEndian.PutUint32(b[6:], uint32(max(ex.sector, preferredBlock)))
	binary.BigEndian.PutUint32(b[10:], MaxRequest)
	if err := writeOptReply(w, opt, repInfo, b[:14]); err != nil {
		return nil, err
	}
	if err := writeOptReply(w, opt, repAck, nil); err != nil {
		return nil, err
	}
	if opt == optGo {
		// Block sizes a client did not ask for are not ones it agreed to honour.
		ex.anyAlign = !wantBlock
		return ex, w.Flush()
	}
	return nil, nil
}

func infoString(typ uint16, s string) []byte {
	b := make([]byte, 2+len(s))
	binary.BigEndian.PutUint16(b, typ)
	copy(b[2:], s)
	return b
}

func writeOptReply(w *bufio.Writer, opt, typ uint32, data []byte) error {
	var h [optReplySize]byte
	binary.BigEndian.PutUint64(h[0:], magicOptReply)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	w.Write(h[:])
	_, err := w.Write(data)
	return err
}

func writeOptError(w *bufio.Writer, opt, typ uint32, msg string) error {
	return writeOptReply(w, opt, typ, []byte(msg))
}
