package config

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

type tokKind int

const (
	tEOF tokKind = iota
	tLBrace
	tRBrace
	tNum     // [0-9]+
	tStr     // a word of HAST's word characters that is neither a keyword nor a number
	tKeyword // a word equal to one of keywords
)

type token struct {
	kind      tokKind
	text      string
	line, col int
}

// keywords are the reserved words of token.l. A word equal to one of them is always the
// keyword, so none of them can be a resource, node or host name.
var keywords = map[string]bool{
	"control": true, "pidfile": true, "listen": true, "replication": true, "checksum": true,
	"compression": true, "timeout": true, "exec": true, "metaflush": true, "resource": true,
	"name": true, "local": true, "remote": true, "source": true, "on": true, "off": true,
	"fullsync": true, "memsync": true, "async": true, "none": true, "crc32": true,
	"sha256": true, "hole": true, "lzf": true,
	// Our extension (link security); reserving them takes four names HAST allowed.
	"tls-psk": true, "tls-cert": true, "tls-key": true, "tls-ca": true,
}

// isWordByte reports whether c belongs to token.l's STR class [a-zA-Z0-9.\-_/:\[\]].
func isWordByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '.', '-', '_', '/', ':', '[', ']':
		return true
	}
	return false
}

// lexer splits hast.conf into tokens the way token.l does. Keywords, numbers and strings are
// all runs of word characters; flex picks the longest match and prefers a keyword or number
// on a tie, which is the same as scanning the whole run and then classifying it.
type lexer struct {
	file      string
	src       []byte
	off       int
	line      int
	lineStart int
}

func newLexer(file string, src []byte) *lexer {
	return &lexer{file: file, src: src, line: 1}
}

func (l *lexer) errorf(line, col int, format string, args ...any) error {
	return &ParseError{File: l.file, Line: line, Col: col, Msg: fmt.Sprintf(format, args...)}
}

func (l *lexer) next() (token, error) {
	for l.off < len(l.src) {
		c := l.src[l.off]
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			l.off++
		case c == '\n':
			l.off++
			l.line++
			l.lineStart = l.off
		case c == '#':
			// A comment runs to the end of the line; the newline itself still counts.
			for l.off < len(l.src) && l.src[l.off] != '\n' {
				l.off++
			}
		default:
			return l.token()
		}
	}
	return token{kind: tEOF, line: l.line, col: l.off - l.lineStart + 1}, nil
}

func (l *lexer) token() (token, error) {
	start := l.off
	t := token{line: l.line, col: start - l.lineStart + 1}
	c := l.src[start]
	switch {
	case c == '{':
		l.off++
		t.kind, t.text = tLBrace, "{"
		return t, nil
	case c == '}':
		l.off++
		t.kind, t.text = tRBrace, "}"
		return t, nil
	case isWordByte(c):
		for l.off < len(l.src) && isWordByte(l.src[l.off]) {
			l.off++
		}
		t.text = string(l.src[start:l.off])
		switch {
		case keywords[t.text]:
			t.kind = tKeyword
		case allDigits(t.text):
			t.kind = tNum
		default:
			t.kind = tStr
		}
		return t, nil
	}
	return t, l.errorf(t.line, t.col, "unexpected character %s; words may contain only letters, digits and . - _ / : [ ] (there is no quoting)", describeChar(l.src[start:]))
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// describeChar names the character at the start of b for an error message.
func describeChar(b []byte) string {
	r, size := utf8.DecodeRune(b)
	if r == utf8.RuneError && size <= 1 {
		return fmt.Sprintf("byte 0x%02X", b[0])
	}
	return strconv.QuoteRune(r)
}
