// Package config reads hast.conf, the configuration file of HAST, and resolves it for one node.
//
// The grammar, keyword placement, defaults and precedence are those of FreeBSD's hastd
// (token.l and parse.y), so a file written for FreeBSD parses unchanged and means the same
// thing; the same file is meant to be installed on both nodes. In short:
//
//	listen tcp://0.0.0.0                 # top level: control pidfile listen and the resource defaults
//	on hasta { listen tcp://[2001:db8::1] }
//	resource shared {                    # resource: replication checksum compression timeout exec
//	        local /dev/sdb               #           metaflush name local
//	        on hasta { remote 10.0.0.2 } # its "on" sections: name local remote source metaflush
//	        on hastb { remote 10.0.0.1 }
//	}
//
// Parse and Load return a Config holding only what applies to this node: sections for other
// nodes are checked for syntax (and addresses for their form) and then ignored. Which node we
// are is decided as in hastd (full hostname, short hostname, machine id, "hostid<N>") unless
// Options.Node names it, which lets two nodes run on one machine.
//
// Every problem is reported as a *ParseError whose text is "file:line:column: message"; the
// message says what was expected and what was found. Lines and columns count from 1 and
// columns count bytes. Where hastd has a message of its own for a check (a duplicate resource,
// no section for this node, missing remote or local, a zero timeout) the message uses hastd's
// words.
//
// Where this parser differs from hastd, it is on purpose:
//   - a carriage return is white space (hastd's scanner copies it to stdout and goes on), so
//     files edited on Windows work;
//   - a character outside HAST's word set (a quote, a semicolon), which hastd's scanner also
//     drops silently, is an error;
//   - addresses are checked for their form (not resolved) and lengths are checked in every
//     section, including those for other nodes, so a mistake is found on both nodes at once;
//     a bracketed IPv6 address without a port is accepted, which hastd's tcp_addr rejects;
//   - a timeout above 2^31-1, which overflows hastd's atoi, is an error.
//
// # Extensions
//
// Link security (authenticated, encrypted replication, package hast/internal/linksec) is
// configured with statements HAST does not have, allowed at the top level and in a resource:
//
//	tls-psk /etc/hast/psk          # a pre-shared secret, the same file on both nodes
//	resource shared {
//	        tls-cert /etc/hast/node.crt   # or certificates: this node's, its key,
//	        tls-key /etc/hast/node.key    # and the CA the peer's must chain to
//	        tls-ca /etc/hast/ca.crt
//	        ...
//	}
//
// A level uses either tls-psk or all three of tls-cert, tls-key and tls-ca; mixing them is an
// error. A resource with any tls-* statement uses only its own and ignores the top level's;
// "tls-psk none" in a resource turns a top-level default off. The files are read and checked
// when the file is parsed (readable regular files, a secret of at least 16 bytes after trailing
// white space, a certificate that matches its key, a CA file of certificates), so a mistake
// is reported with the position of the statement, and Resource.TLS carries a digest of their
// contents. The four words are reserved like HAST's keywords, so they cannot name a resource
// or a node.
package config
