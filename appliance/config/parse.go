package config

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Limits of hastd's buffers; a value must be shorter than its limit.
const (
	maxNameLen = 255  // NAME_MAX: resource and provider names
	maxPathLen = 4096 // PATH_MAX: local, exec, pidfile
	maxAddrLen = 1024 // HAST_ADDRSIZE: control, listen, remote, source
)

// scope is where a statement stands: hastd's lexer depth, with depth 1 split in two.
type scope int

const (
	scopeTop     scope = 1 << iota // depth 0
	scopeNode                      // "on" at top level (depth 1)
	scopeRes                       // "resource" (depth 1)
	scopeResNode                   // "on" inside a resource (depth 2)
)

// stmtScopes is parse.y's grammar: where each statement keyword may appear.
var stmtScopes = map[string]scope{
	"control":     scopeTop | scopeNode,
	"pidfile":     scopeTop | scopeNode,
	"listen":      scopeTop | scopeNode,
	"replication": scopeTop | scopeRes,
	"checksum":    scopeTop | scopeRes,
	"compression": scopeTop | scopeRes,
	"timeout":     scopeTop | scopeRes,
	"exec":        scopeTop | scopeRes,
	"metaflush":   scopeTop | scopeRes | scopeResNode,
	"name":        scopeRes | scopeResNode,
	"local":       scopeRes | scopeResNode,
	"remote":      scopeResNode,
	"source":      scopeResNode,
	"on":          scopeTop | scopeRes,
	"resource":    scopeTop,
	// Link security, our extension: a resource's own statements replace the top level's.
	"tls-psk":  scopeTop | scopeRes,
	"tls-cert": scopeTop | scopeRes,
	"tls-key":  scopeTop | scopeRes,
	"tls-ca":   scopeTop | scopeRes,
}

// valueKind is the kind of argument a statement takes.
type valueKind int

const (
	vAddr valueKind = iota
	vRemote
	vPath
	vName
	vTimeout
	vReplication
	vChecksum
	vCompression
	vBool
)

type stmtArg struct {
	kind   valueKind
	what   string // what is expected, for messages
	maxLen int    // for strings: the value must be shorter
	port   int    // for addresses: default port
	none   bool   // the keyword "none" is a value too
}

var stmtArgs = map[string]stmtArg{
	"control":     {kind: vAddr, what: "an address", maxLen: maxAddrLen, port: DefaultPort},
	"listen":      {kind: vAddr, what: "an address", maxLen: maxAddrLen, port: DefaultPort},
	"remote":      {kind: vRemote, what: `an address or "none"`, maxLen: maxAddrLen, port: DefaultPort, none: true},
	"source":      {kind: vAddr, what: "an address", maxLen: maxAddrLen, port: 0},
	"pidfile":     {kind: vPath, what: "a path", maxLen: maxPathLen},
	"local":       {kind: vPath, what: "a path", maxLen: maxPathLen},
	"exec":        {kind: vPath, what: "a path", maxLen: maxPathLen},
	"name":        {kind: vName, what: "a provider name", maxLen: maxNameLen},
	"resource":    {kind: vName, what: "a resource name", maxLen: maxNameLen},
	"on":          {kind: vName, what: "a node name"},
	"timeout":     {kind: vTimeout, what: "a timeout in seconds"},
	"replication": {kind: vReplication, what: "fullsync, memsync or async"},
	"checksum":    {kind: vChecksum, what: "none, crc32 or sha256"},
	"compression": {kind: vCompression, what: "none, hole or lzf"},
	"metaflush":   {kind: vBool, what: "on or off"},
	"tls-psk":     {kind: vPath, what: `a key file or "none"`, maxLen: maxPathLen, none: true},
	"tls-cert":    {kind: vPath, what: "a certificate file", maxLen: maxPathLen},
	"tls-key":     {kind: vPath, what: "a key file", maxLen: maxPathLen},
	"tls-ca":      {kind: vPath, what: "a CA certificate file", maxLen: maxPathLen},
}

var (
	replicationValues = map[string]Replication{"fullsync": ReplFullsync, "memsync": ReplMemsync, "async": ReplAsync}
	checksumValues    = map[string]Checksum{"none": ChecksumNone, "crc32": ChecksumCRC32, "sha256": ChecksumSHA256}
	compressionValues = map[string]Compression{"none": CompressionNone, "hole": CompressionHole, "lzf": CompressionLZF}
)

// section is an open "{ ... }" block.
type section struct {
	scope  scope
	opener token // the "on" or "resource" keyword
	name   string
	parent *section
	mine   bool // an "on" section that matches this node
	res    *resState
}

func (s *section) String() string {
	switch s.scope {
	case scopeNode:
		return fmt.Sprintf("section \"on %s\"", s.name)
	case scopeRes:
		return fmt.Sprintf("resource %q", s.name)
	case scopeResNode:
		return fmt.Sprintf("section \"on %s\" of resource %q", s.name, s.parent.name)
	}
	return "top level"
}

// where names the position of a statement in s, for messages.
func where(s *section) string {
	if s == nil {
		return "at top level"
	}
	return "in " + s.String()
}

// value is a parsed statement argument.
type value struct {
	tok token
	str string
	num int
}

// resState collects one resource while it is parsed; which level set a value matters for
// precedence, so values are kept per level until the resource is closed.
type resState struct {
	opener token
	name   string

	replication *Replication
	checksum    *Checksum
	compression *Compression
	timeout     *int
	exec        string
	metaflush   *bool // resource level
	provname    string
	local       string

	link linkState

	hadMyNode     bool
	nodeProvname  string
	nodeLocal     string
	nodeRemote    string
	nodeSource    string
	nodeMetaflush *bool
}

type parser struct {
	lx  *lexer
	opt Options
	id  identity

	// Top level and this node's top-level sections.
	control, pidfile         string
	nodeControl, nodePidfile string
	listen                   []string
	replication              Replication
	checksum                 Checksum
	compression              Compression
	timeout                  int
	exec                     string
	metaflush                bool
	link                     linkState

	matched   string // first "on" name that matched
	resources []*Resource
	pending   []*resState // resources[i] still needs top-level values from pending[i]
}

func parse(name string, src []byte, opt Options, h host) (*Config, error) {
	p := &parser{
		lx:          newLexer(name, src),
		opt:         opt,
		id:          identity{h: h},
		control:     DefaultControl,
		pidfile:     DefaultPidfile,
		replication: ReplMemsync,
		checksum:    ChecksumNone,
		compression: CompressionHole,
		timeout:     DefaultTimeout,
		metaflush:   true,
	}
	if err := p.body(nil); err != nil {
		return nil, err
	}
	return p.finish(name)
}

func (p *parser) errorf(t token, format string, args ...any) error {
	return p.lx.errorf(t.line, t.col, format, args...)
}

// body parses statements up to the "}" closing sec, or to the end of the file when sec is nil.
func (p *parser) body(sec *section) error {
	sc := scopeTop
	if sec != nil {
		sc = sec.scope
	}
	for {
		t, err := p.lx.next()
		if err != nil {
			return err
		}
		switch {
		case t.kind == tEOF && sec == nil:
			return nil
		case t.kind == tEOF:
			return p.errorf(sec.opener, "%s is not closed: expected \"}\" before end of file", sec)
		case t.kind == tRBrace && sec != nil:
			return nil
		case t.kind == tKeyword && stmtScopes[t.text]&sc != 0:
			if err := p.statement(sec, t); err != nil {
				return err
			}
		default:
			return p.badStatement(sec, sc, t)
		}
	}
}

// statement parses the statement that kw starts; kw is allowed in sec.
func (p *parser) statement(sec *section, kw token) error {
	v, err := p.arg(kw)
	if err != nil {
		return err
	}
	switch kw.text {
	case "on":
		return p.onSection(sec, kw, v)
	case "resource":
		return p.resource(kw, v)
	case "tls-psk", "tls-cert", "tls-key", "tls-ca":
		ls := &p.link
		if sec != nil {
			ls = &sec.res.link
		}
		return p.setLink(ls, kw, v)
	}
	if sec == nil {
		p.setTop(kw.text, v)
		return nil
	}
	switch sec.scope {
	case scopeNode:
		if sec.mine {
			p.setNode(kw.text, v)
		}
	case scopeRes:
		sec.res.set(kw.text, v)
	case scopeResNode:
		if sec.mine {
			sec.res.setNode(kw.text, v)
		}
	}
	return nil
}

func (p *parser) setTop(kw string, v value) {
	switch kw {
	case "control":
		p.control = v.str
	case "pidfile":
		p.pidfile = v.str
	case "listen":
		p.listen = append(p.listen, v.str)
	case "replication":
		p.replication = Replication(v.num)
	case "checksum":
		p.checksum = Checksum(v.num)
	case "compression":
		p.compression = Compression(v.num)
	case "timeout":
		p.timeout = v.num
	case "exec":
		p.exec = v.str
	case "metaflush":
		p.metaflush = v.num != 0
	}
}

func (p *parser) setNode(kw string, v value) {
	switch kw {
	case "control":
		p.nodeControl = v.str
	case "pidfile":
		p.nodePidfile = v.str
	case "listen":
		// hastd keeps one list, so top-level and node entries stay in file order.
		p.listen = append(p.listen, v.str)
	}
}

func (r *resState) set(kw string, v value) {
	switch kw {
	case "replication":
		x := Replication(v.num)
		r.replication = &x
	case "checksum":
		x := Checksum(v.num)
		r.checksum = &x
	case "compression":
		x := Compression(v.num)
		r.compression = &x
	case "timeout":
		x := v.num
		r.timeout = &x
	case "exec":
		r.exec = v.str
	case "metaflush":
		x := v.num != 0
		r.metaflush = &x
	case "name":
		r.provname = v.str
	case "local":
		r.local = v.str
	}
}

func (r *resState) setNode(kw string, v value) {
	switch kw {
	case "name":
		r.nodeProvname = v.str
	case "local":
		r.nodeLocal = v.str
	case "remote":
		r.nodeRemote = v.str
	case "source":
		r.nodeSource = v.str
	case "metaflush":
		x := v.num != 0
		r.nodeMetaflush = &x
	}
}

// arg reads and checks the argument of the statement kw starts.
func (p *parser) arg(kw token) (value, error) {
	a := stmtArgs[kw.text]
	t, err := p.lx.next()
	if err != nil {
		return value{}, err
	}
	v := value{tok: t, str: t.text}
	switch a.kind {
	case vReplication, vChecksum, vCompression, vBool:
		n, ok := enumValue(a.kind, t)
		if !ok {
			return v, p.expected(kw, a.what, t)
		}
		v.num = n
		return v, nil
	case vTimeout:
		// hastd's grammar cannot even express "-5" (it is a word, not a number), but its
		// message for the check fits what the writer meant.
		if t.kind == tStr && len(t.text) > 1 && t.text[0] == '-' && allDigits(t.text[1:]) {
			return v, p.errorf(t, "Negative or zero timeout.")
		}
		if t.kind != tNum {
			return v, p.expected(kw, a.what, t)
		}
		n, err := strconv.Atoi(t.text)
		if err != nil || n > math.MaxInt32 {
			return v, p.errorf(t, "timeout %s is too large (the limit is %d)", t.text, math.MaxInt32)
		}
		if n <= 0 {
			return v, p.errorf(t, "Negative or zero timeout.")
		}
		v.num = n
		return v, nil
	}
	// The rest take a string; "remote" and "tls-psk" also take the keyword "none".
	if !(t.kind == tStr || a.none && t.kind == tKeyword && t.text == "none") {
		return v, p.expectedString(kw, a.what, t)
	}
	if a.maxLen > 0 && len(t.text) >= a.maxLen {
		what := kw.text + " argument"
		if kw.text == "resource" {
			what = "resource name"
		}
		return v, p.errorf(t, "%s is too long (%d bytes; the limit is %d)", what, len(t.text), a.maxLen-1)
	}
	if (a.kind == vAddr || a.kind == vRemote) && t.text != "none" {
		if _, err := parseAddr(t.text, a.port); err != nil {
			return v, p.errorf(t, "invalid %s address %q: %v", kw.text, t.text, err)
		}
	}
	return v, nil
}

func enumValue(k valueKind, t token) (int, bool) {
	if t.kind != tKeyword {
		return 0, false
	}
	var n int
	var ok bool
	switch k {
	case vReplication:
		var x Replication
		x, ok = replicationValues[t.text]
		n = int(x)
	case vChecksum:
		var x Checksum
		x, ok = checksumValues[t.text]
		n = int(x)
	case vCompression:
		var x Compression
		x, ok = compressionValues[t.text]
		n = int(x)
	case vBool:
		switch t.text {
		case "on":
			n, ok = 1, true
		case "off":
			n, ok = 0, true
		}
	}
	return n, ok
}

// expected reports a wrong argument t of the statement kw.
func (p *parser) expected(kw token, what string, t token) error {
	return p.errorf(t, "expected %s after %q, found %s", what, kw.text, describe(t))
}

// expectedString reports a wrong argument t where a word was wanted, explaining why a number
// or a keyword cannot be one, which is not obvious.
func (p *parser) expectedString(kw token, what string, t token) error {
	why := ""
	switch t.kind {
	case tNum:
		why = " (a word of digits only is a number)"
	case tKeyword:
		why = " (keywords are reserved and cannot be names or values)"
	}
	return p.errorf(t, "expected %s after %q, found %s%s", what, kw.text, describe(t), why)
}

// describe names a token for messages.
func describe(t token) string {
	switch t.kind {
	case tEOF:
		return "end of file"
	case tNum:
		return "number " + shorten(t.text)
	case tKeyword:
		return fmt.Sprintf("keyword %q", t.text)
	}
	return strconv.Quote(shorten(t.text))
}

// shorten keeps messages about very long words readable.
func shorten(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}

func (p *parser) isMe(t token) (bool, error) {
	if p.opt.Node != "" {
		return t.text == p.opt.Node, nil
	}
	ok, err := p.id.isMe(t.text)
	if err != nil {
		return false, fmt.Errorf("%s:%d:%d: match node %q: %w", p.lx.file, t.line, t.col, t.text, err)
	}
	return ok, nil
}

func (p *parser) openBrace(what string) error {
	t, err := p.lx.next()
	if err != nil {
		return err
	}
	if t.kind != tLBrace {
		return p.errorf(t, "expected \"{\" after %q, found %s", what, describe(t))
	}
	return nil
}

// onSection parses "on NAME { ... }" at top level or in a resource.
func (p *parser) onSection(parent *section, kw token, name value) error {
	if err := p.openBrace("on " + name.str); err != nil {
		return err
	}
	mine, err := p.isMe(name.tok)
	if err != nil {
		return err
	}
	sec := &section{scope: scopeNode, opener: kw, name: name.str, parent: parent, mine: mine}
	if parent != nil {
		sec.scope, sec.res = scopeResNode, parent.res
		if mine {
			parent.res.hadMyNode = true
		}
	}
	if mine && p.matched == "" {
		p.matched = name.str
	}
	return p.body(sec)
}

// resource parses "resource NAME { ... }" and resolves it for this node when it is closed, as
// hastd does.
func (p *parser) resource(kw token, name value) error {
	for _, r := range p.resources {
		if r.Name == name.str {
			return p.errorf(kw, "Resource %s configured more than once.", name.str)
		}
	}
	if err := p.openBrace("resource " + name.str); err != nil {
		return err
	}
	rs := &resState{opener: kw, name: name.str}
	sec := &section{scope: scopeRes, opener: kw, name: name.str, res: rs}
	if err := p.body(sec); err != nil {
		return err
	}
	if !rs.hadMyNode {
		names := []string{p.opt.Node}
		if p.opt.Node == "" {
			names = p.id.names()
		}
		return p.errorf(kw, "No resource %s configuration for this node (acceptable node names: %s).", rs.name, strings.Join(names, ", "))
	}
	r := &Resource{
		Name:     rs.name,
		Provname: firstNonEmpty(rs.nodeProvname, rs.provname, rs.name),
		Local:    firstNonEmpty(rs.nodeLocal, rs.local),
		Remote:   rs.nodeRemote,
		Source:   rs.nodeSource,
	}
	if r.Remote == "" {
		return p.errorf(kw, "Remote address not configured for resource %s.", rs.name)
	}
	if r.Local == "" {
		return p.errorf(kw, "Path to local component not configured for resource %s.", rs.name)
	}
	link, err := p.resolveLink(&rs.link, "in resource "+strconv.Quote(rs.name))
	if err != nil {
		return err
	}
	r.TLS = link
	// Top-level values are applied in finish(), because they may come after the resource.
	p.resources = append(p.resources, r)
	p.pending = append(p.pending, rs)
	return nil
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// badStatement explains why t cannot start a statement in sec.
func (p *parser) badStatement(sec *section, sc scope, t token) error {
	allowed := stmtScopes[t.text]
	if t.kind == tKeyword && allowed != 0 {
		msg := fmt.Sprintf("keyword %q is not allowed %s; it belongs %s", t.text, where(sec), placesText(allowed))
		// A section that may only be opened further out usually means a "}" was forgotten;
		// other statements are more often just misplaced.
		for s := sec; s != nil && (t.text == "resource" || t.text == "on"); s = s.parent {
			outer := scopeTop
			if s.parent != nil {
				outer = s.parent.scope
			}
			if allowed&outer != 0 {
				msg += fmt.Sprintf(" (is a \"}\" missing? %s opened at line %d is still open)", sec, sec.opener.line)
				break
			}
		}
		return p.errorf(t, "%s", msg)
	}
	if t.kind == tRBrace {
		return p.errorf(t, "unexpected \"}\": no section is open")
	}
	expect := expectedText(sc)
	switch t.kind {
	case tStr:
		msg := fmt.Sprintf("unknown keyword %q; expected one of: %s", shorten(t.text), expect)
		if s := suggest(t.text, sc); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		return p.errorf(t, "%s", msg)
	case tNum:
		return p.errorf(t, "unexpected number %s; expected one of: %s", shorten(t.text), expect)
	case tKeyword:
		return p.errorf(t, "unexpected keyword %q, which is a value, not a statement; expected one of: %s", t.text, expect)
	}
	return p.errorf(t, "unexpected %q; expected one of: %s", t.text, expect)
}

// allowedIn lists the statement keywords allowed in sc, sorted.
func allowedIn(sc scope) []string {
	var kws []string
	for kw, s := range stmtScopes {
		if s&sc != 0 {
			kws = append(kws, kw)
		}
	}
	sort.Strings(kws)
	return kws
}

func expectedText(sc scope) string {
	s := strings.Join(allowedIn(sc), ", ")
	if sc != scopeTop {
		s += `, "}"`
	}
	return s
}

func placesText(allowed scope) string {
	var places []string
	for _, x := range []struct {
		s    scope
		text string
	}{
		{scopeTop, "at top level"},
		{scopeNode, `in a top-level "on" section`},
		{scopeRes, "in a resource"},
		{scopeResNode, `in an "on" section of a resource`},
	} {
		if allowed&x.s != 0 {
			places = append(places, x.text)
		}
	}
	switch len(places) {
	case 1:
		return "only " + places[0]
	case 2:
		return places[0] + " or " + places[1]
	}
	return strings.Join(places[:len(places)-1], ", ") + " or " + places[len(places)-1]
}

// suggest returns the keyword allowed in sc closest to word, if one is close enough to be a
// likely typo.
func suggest(word string, sc scope) string {
	best, bestDist := "", 3
	for _, kw := range allowedIn(sc) {
		if d := editDistance(strings.ToLower(word), kw); d < bestDist {
			best, bestDist = kw, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance, capped so that long words cost little.
func editDistance(a, b string) int {
	if len(a) > 32 || len(b) > 32 {
		return math.MaxInt
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// finish applies top-level values and defaults, which hastd also does only after the whole
// file is read.
func (p *parser) finish(path string) (*Config, error) {
	topLink, err := p.resolveLink(&p.link, "at top level")
	if err != nil {
		return nil, err
	}
	c := &Config{
		Path:      path,
		Node:      p.opt.Node,
		Control:   firstNonEmpty(p.nodeControl, p.control),
		Pidfile:   firstNonEmpty(p.nodePidfile, p.pidfile),
		Listen:    p.listen,
		Resources: p.resources,
	}
	if c.Node == "" {
		c.Node = p.matched
	}
	if len(c.Listen) == 0 {
		c.Listen = append([]string(nil), DefaultListen...)
	}
	for i, rs := range p.pending {
		r := p.resources[i]
		r.Replication = deref(rs.replication, p.replication)
		r.Checksum = deref(rs.checksum, p.checksum)
		r.Compression = deref(rs.compression, p.compression)
		r.Timeout = deref(rs.timeout, p.timeout)
		r.Exec = firstNonEmpty(rs.exec, p.exec)
		r.MetaFlush = deref(rs.nodeMetaflush, deref(rs.metaflush, p.metaflush))
		if !rs.link.any() {
			r.TLS = topLink
		}
	}
	return c, nil
}

func deref[T any](p *T, def T) T {
	if p != nil {
		return *p
	}
	return def
}
