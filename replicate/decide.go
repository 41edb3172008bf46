package replicate

import (
	"errors"
	"fmt"
)

// SyncSource says which node's data wins for the dirty extents of a synchronisation. The values
// are HAST's wire values of the handshake field `syncsrc`.
type SyncSource uint8

const (
	SyncSrcUndef     SyncSource = 0
	SyncSrcPrimary   SyncSource = 1
	SyncSrcSecondary SyncSource = 2
)

func (s SyncSource) String() string {
	switch s {
	case SyncSrcPrimary:
		return "primary"
	case SyncSrcSecondary:
		return "secondary"
	}
	return "undef"
}

// MapKind says which bitmap the secondary sends back in the handshake.
type MapKind int

const (
	// MapNone: nothing needs syncing beyond the primary's own dirty extents.
	MapNone MapKind = iota
	// MapLocal: the secondary's on-disk activemap (regular sync = union of both maps).
	MapLocal
	// MapAll: every bit set (full sync).
	MapAll
)

func (m MapKind) String() string {
	switch m {
	case MapNone:
		return "none"
	case MapLocal:
		return "local"
	case MapAll:
		return "all"
	}
	return fmt.Sprintf("MapKind(%d)", int(m))
}

// Counters is one node's view of a resource's generation: the random resource id and the two
// modification counters HAST keeps in the metadata block.
type Counters struct {
	ResUID    uint64
	LocalCnt  uint64
	RemoteCnt uint64
}

// Errors returned in a Decision. Their text is what HAST sends as `errmsg` (SplitBrainMsg is matched
// by a HAST primary literally).
var (
	ErrSplitBrain     = errors.New(SplitBrainMsg)
	ErrResUIDMismatch = errors.New("resource unique ID mismatch")
)

// SplitBrainMsg is the exact errmsg a HAST secondary sends on split-brain.
const SplitBrainMsg = "Split-brain condition!"

// Decision is the outcome of the secondary's handshake evaluation (hast-reference §11.2).
type Decision struct {
	Rule        string // "1", "2", "3a", "3b", "3c", "4", "5" — the row of the table that matched
	AdoptResUID bool   // the secondary takes the primary's resuid and writes its metadata
	Virgin      bool   // the secondary replies `virgin`
	Source      SyncSource
	Map         MapKind
	Err         error // ErrResUIDMismatch or ErrSplitBrain: refuse the connection
}

// Decide evaluates HAST's sync-direction table on the secondary. sec are the secondary's stored
// counters, pri the counters the primary sent; first matching row wins.
//
// One deliberate difference from HAST, in row 1: a freshly created secondary always gets a full
// sync (MapAll), even when the primary is fresh too and sent `virgin`. HAST skips the copy in that
// case, leaving whatever the two disks held before `create` different on each node; we want the
// two copies byte-identical from the start, as DRBD's initial sync makes them. The answer is still
// one a HAST primary understands (it simply syncs every extent).
func Decide(sec, pri Counters, priVirgin bool) Decision {
	switch {
	case sec.ResUID == 0:
		return Decision{Rule: "1", AdoptResUID: true, Virgin: true, Source: SyncSrcPrimary, Map: MapAll}
	case sec.ResUID != pri.ResUID:
		return Decision{Rule: "2", Err: fmt.Errorf("%w (primary=%d, secondary=%d)", ErrResUIDMismatch, pri.ResUID, sec.ResUID)}
	}
	sl, sr, pl, pr := sec.LocalCnt, sec.RemoteCnt, pri.LocalCnt, pri.RemoteCnt
	switch {
	case sl > pr && sr == pl:
		return Decision{Rule: "3a", Source: SyncSrcSecondary, Map: MapLocal}
	case sl == pr && sr == pl:
		return Decision{Rule: "3b", Source: SyncSrcPrimary, Map: MapLocal}
	case sl == pr && sr < pl:
		return Decision{Rule: "3c", Source: SyncSrcPrimary, Map: MapLocal}
	case sl > pr && pl > sr:
		return Decision{Rule: "4", Err: ErrSplitBrain}
	}
	src := SyncSrcPrimary
	if sl > pr {
		src = SyncSrcSecondary
	}
	return Decision{Rule: "5", Source: src, Map: MapAll}
}
