package config

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"

	"hast/internal/linksec"
)

// linkState collects the link security statements of one level (the top level or one
// resource). A value is set when its token has a line.
type linkState struct {
	first              token // the first such statement at this level
	psk, cert, key, ca value
}

func (l *linkState) any() bool { return l.first.line != 0 }

func (v value) set() bool { return v.tok.line != 0 }

// setLink records a tls-* statement kw with argument v at the level ls. A level uses either a
// pre-shared key or certificates: mixing them is refused where it happens, because which of
// the two the writer meant cannot be guessed.
func (p *parser) setLink(ls *linkState, kw token, v value) error {
	isPSK := kw.text == "tls-psk"
	if ls.any() && isPSK != (ls.first.text == "tls-psk") {
		return p.errorf(kw, "%q cannot be combined with %q (line %d); link security uses either a pre-shared key (tls-psk) or certificates (tls-cert, tls-key, tls-ca)",
			kw.text, ls.first.text, ls.first.line)
	}
	if !ls.any() {
		ls.first = kw
	}
	switch kw.text {
	case "tls-psk":
		ls.psk = v
	case "tls-cert":
		ls.cert = v
	case "tls-key":
		ls.key = v
	case "tls-ca":
		ls.ca = v
	}
	return nil
}

// resolveLink checks the statements of one level and the files they name, now, so a missing
// or bad key is reported at load with the place that names it rather than at the first
// connection. where names the level for messages.
func (p *parser) resolveLink(ls *linkState, where string) (LinkSecurity, error) {
	var out LinkSecurity
	if !ls.any() {
		return out, nil
	}
	d := sha256.New()
	if ls.psk.set() {
		if ls.psk.str == "none" {
			return out, nil
		}
		data, err := p.readLinkFile(d, "tls-psk", ls.psk)
		if err != nil {
			return out, err
		}
		if _, err := linksec.ParsePSK(data); err != nil {
			return out, p.errorf(ls.psk.tok, "tls-psk file %s: %v", ls.psk.str, err)
		}
		out.PSK = ls.psk.str
		d.Sum(out.Digest[:0])
		return out, nil
	}
	for _, m := range []struct {
		v    value
		name string
	}{{ls.cert, "tls-cert"}, {ls.key, "tls-key"}, {ls.ca, "tls-ca"}} {
		if !m.v.set() {
			return out, p.errorf(ls.first, "tls-cert, tls-key and tls-ca go together, but %s is missing %s", m.name, where)
		}
	}
	certPEM, err := p.readLinkFile(d, "tls-cert", ls.cert)
	if err != nil {
		return out, err
	}
	keyPEM, err := p.readLinkFile(d, "tls-key", ls.key)
	if err != nil {
		return out, err
	}
	caPEM, err := p.readLinkFile(d, "tls-ca", ls.ca)
	if err != nil {
		return out, err
	}
	// A pair that does not fit is reported where the pair is complete.
	at := ls.key.tok
	if ls.cert.tok.line > at.line || ls.cert.tok.line == at.line && ls.cert.tok.col > at.col {
		at = ls.cert.tok
	}
	if _, err := linksec.ParseKeyPair(certPEM, keyPEM); err != nil {
		return out, p.errorf(at, "tls-cert %s and tls-key %s: %v", ls.cert.str, ls.key.str, err)
	}
	if _, err := linksec.ParseCA(caPEM); err != nil {
		return out, p.errorf(ls.ca.tok, "tls-ca file %s: %v", ls.ca.str, err)
	}
	out.Cert, out.Key, out.CA = ls.cert.str, ls.key.str, ls.ca.str
	d.Sum(out.Digest[:0])
	return out, nil
}

// readLinkFile reads the file v names (the argument of statement kw) and adds its contents
// to the digest.
func (p *parser) readLinkFile(d hash.Hash, kw string, v value) ([]byte, error) {
	data, err := p.id.h.readFile(v.str)
	if err != nil {
		return nil, p.errorf(v.tok, "cannot read the %s file: %v", kw, err)
	}
	d.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(data))))
	d.Write(data)
	return data, nil
}
