package nbd

import (
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/rs/zerolog"
)

// fuzzRequest encodes a transmission request for the seed corpus.
func fuzzRequest(flags, typ uint16, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, 0x25609513)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, 1)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

func fuzzOption(opt uint32, data []byte) []byte {
	b := append([]byte("IHAVEOPT"), be32(opt)...)
	b = append(b, be32(uint32(len(data)))...)
	return append(b, data...)
}

// FuzzServer feeds arbitrary client bytes to a server connection. Whatever arrives, the server
// must not panic or hang, and must never pass the volume a misaligned or out-of-range request.
func FuzzServer(f *testing.F) {
	flags := be32(3)
	goDisk := fuzzOption(tOptGo, goData("disk1", 3))
	ops := [][]byte{
		fuzzRequest(0, tCmdWrite, 512, 1024, make([]byte, 1024)),
		fuzzRequest(tFlagFUA, tCmdWrite, 0, 512, make([]byte, 512)),
		fuzzRequest(0, tCmdRead, 0, 4096, nil),
		fuzzRequest(0, tCmdFlush, 0, 0, nil),
		fuzzRequest(0, tCmdTrim, 4096, 4096, nil),
		fuzzRequest(tFlagNoHole, tCmdWriteZeroes, 8192, 8192, nil),
		fuzzRequest(0, tCmdRead, 64<<10-512, 1024, nil),
		fuzzRequest(0, tCmdWrite, 64<<10, 512, make([]byte, 512)),
		fuzzRequest(0, tCmdDisc, 0, 0, nil),
	}
	var all []byte
	for _, op := range ops {
		all = append(all, op...)
	}
	f.Add(append(append(flags, goDisk...), all...))
	f.Add(append(append(flags, fuzzOption(tOptExportName, []byte("disk1"))...), all...))
	f.Add(append(append(append(flags, fuzzOption(tOptList, nil)...), fuzzOption(tOptInfo, goData("disk1", 1, 2, 3))...),
		fuzzOption(tOptAbort, nil)...))
	f.Add(append(append(flags, goDisk...), fuzzRequest(0, tCmdWrite, 0, 1<<30, nil)...))
	f.Add(flags)
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, in []byte) {
		vol := newMemVolume(64<<10, 512)
		s := NewServer(newExports("disk1", vol), zerolog.Nop())
		cli, srv := net.Pipe()
		s.startConn(srv, &Policy{})
		drained := make(chan struct{})
		go func() {
			io.Copy(io.Discard, cli)
			close(drained)
		}()
		cli.Write(in) // fails early if the server hangs up, which is fine
		cli.Close()
		<-drained
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		vol.requireNoViolations(t)
	})
}
