// Package linksec secures the replication link between two hast nodes with TLS 1.3: the peers
// authenticate each other and everything after the first byte is encrypted. FreeBSD's HAST
// has no such thing (its only check is the peer's source address); this is our extension,
// configured per resource in hast.conf with either a pre-shared key or certificates.
//
// # Pre-shared key
//
// crypto/tls has no external-PSK mode, so a pre-shared key is turned into an identity both
// nodes hold: HKDF-SHA256 of the secret (with the resource name as context) seeds an Ed25519
// key, and a fixed self-signed certificate carries its public key. Each side presents that
// certificate and accepts only a peer whose certificate has exactly that public key; TLS 1.3
// makes the peer prove it holds the private key (CertificateVerify), which it can only have
// derived from the same secret. Anyone without the secret can neither complete a handshake
// nor read the traffic (the session keys come from an ephemeral key exchange, so a secret
// that leaks later does not decrypt recorded traffic either).
//
// # Certificates
//
// With tls-cert, tls-key and tls-ca each node presents its certificate and verifies the
// peer's chain against the CA, both ways. No host name is checked: the CA defines who may
// replicate, so use a CA of its own for the cluster. A node acts as TLS client when it is
// primary and as server when it is secondary, so its certificate must allow both uses
// (extended key usages serverAuth and clientAuth, or no extended key usage at all).
//
// # On the wire
//
// The primary speaks TLS from the first byte of each of HAST's two connections and names
// the resource in the server name indication (ServerName encodes it), because the
// listening side must pick that resource's credentials before HAST's own handshake has told
// it anything. The listening side looks at the first byte without consuming it (Server.Upgrade):
// 0x16, a TLS handshake record, starts a TLS server handshake; anything else is left to be
// read as a plain HAST frame, whose version byte is 1 or 2. What was established is reported
// in an Info so the caller can refuse a plain connection to a resource that requires link
// security, and a secured one whose HAST handshake names another resource than the one it
// authenticated for. There is no fallback in either direction: a node configured for link
// security never accepts or makes a plain connection for that resource.
package linksec
