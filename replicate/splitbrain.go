package replicate

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"hast/blockdev"
)

// SplitBrainReport says what diverged when both nodes were primary: the extents each side
// changed since the nodes were last in sync (from their activemaps). HAST only says
// "Split-brain condition!"; an operator needs to know what choosing a side throws away.
type SplitBrainReport struct {
	Resource    string    `json:"resource"`
	Detected    time.Time `json:"detected"`
	ExtentSize  uint32    `json:"extentsize"`
	DataSize    int64     `json:"datasize"`
	Local       []int     `json:"local_extents"`
	Remote      []int     `json:"remote_extents"`
	RemoteKnown bool      `json:"remote_known"` // false when the peer did not send its map (a HAST peer)
	SavedTo     string    `json:"saved_to,omitempty"`
}

// Both returns the extents changed on both sides.
func (r *SplitBrainReport) Both() []int {
	in := map[int]bool{}
	for _, e := range r.Local {
		in[e] = true
	}
	var both []int
	for _, e := range r.Remote {
		if in[e] {
			both = append(both, e)
		}
	}
	return both
}

// Bytes returns how many bytes the extents cover (the last extent may be short).
func (r *SplitBrainReport) Bytes(extents []int) int64 {
	var n int64
	for _, e := range extents {
		off := int64(e) * int64(r.ExtentSize)
		n += min(int64(r.ExtentSize), r.DataSize-off)
	}
	return n
}

// SplitBrainError is returned when a connection is refused because of split-brain.
type SplitBrainError struct{ Report SplitBrainReport }

func (e *SplitBrainError) Error() string { return SplitBrainMsg }
func (e *SplitBrainError) Unwrap() error { return ErrSplitBrain }

// bitmapExtents lists the set bits of an activemap bitmap below n.
func bitmapExtents(bm []byte, n int) []int {
	var out []int
	for e := 0; e < n && e>>3 < len(bm); e++ {
		if bm[e>>3]&(1<<(e&7)) != 0 {
			out = append(out, e)
		}
	}
	return out
}

func orBitmaps(a, b []byte) []byte {
	out := make([]byte, max(len(a), len(b)))
	copy(out, a)
	for i, v := range b {
		out[i] |= v
	}
	return out
}

// saveExtents copies the listed extents of this node's data into a sparse file the size of the
// data area, at their own offsets, so the discarded side of a split-brain can be inspected (or
// loop-mounted) later. It returns the file's path.
func saveExtents(dir, resource string, dev blockdev.Device, md *blockdev.Metadata, extents []int) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("split-brain save directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, fmt.Sprintf("%s-splitbrain-%s.img", resource, time.Now().UTC().Format("20060102T150405Z")))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("save divergent extents: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(int64(md.DataSize)); err != nil {
		return "", fmt.Errorf("save divergent extents to %s: %w", path, err)
	}
	buf := make([]byte, md.ExtentSize)
	for _, e := range extents {
		off := int64(e) * int64(md.ExtentSize)
		n := min(int64(md.ExtentSize), int64(md.DataSize)-off)
		if _, err := dev.ReadAt(buf[:n], int64(md.LocalOff)+off); err != nil {
			return "", fmt.Errorf("save divergent extent %d: %w", e, err)
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return "", fmt.Errorf("save divergent extent %d to %s: %w", e, path, err)
		}
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("save divergent extents to %s: %w", path, err)
	}
	return path, nil
}
