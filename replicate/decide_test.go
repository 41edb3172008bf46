package replicate

import (
	"errors"
	"testing"
)

func TestDecideTable(t *testing.T) {
	const uid = 0xfeedface
	c := func(l, r uint64) Counters { return Counters{ResUID: uid, LocalCnt: l, RemoteCnt: r} }
	tests := []struct {
		name     string
		sec, pri Counters
		virgin   bool
		rule     string
		src      SyncSource
		m        MapKind
		adopt    bool
		wantErr  error
	}{
		{"1 fresh secondary, fresh primary", Counters{}, c(0, 0), true, "1", SyncSrcPrimary, MapAll, true, nil},
		{"1 fresh secondary, used primary", Counters{}, c(5, 3), false, "1", SyncSrcPrimary, MapAll, true, nil},
		{"2 resuid mismatch", Counters{ResUID: 7, LocalCnt: 1}, c(1, 1), false, "2", SyncSrcUndef, MapNone, false, ErrResUIDMismatch},
		// Worked example of §11.2: in sync A=(x,y) primary, B=(y,x) secondary.
		{"3b in sync", c(4, 9), c(9, 4), false, "3b", SyncSrcPrimary, MapLocal, false, nil},
		{"3c primary wrote while disconnected", c(4, 9), c(10, 4), false, "3c", SyncSrcPrimary, MapLocal, false, nil},
		{"3a secondary newer (was primary and wrote)", c(5, 9), c(9, 4), false, "3a", SyncSrcSecondary, MapLocal, false, nil},
		{"4 both wrote", c(5, 9), c(10, 4), false, "4", SyncSrcUndef, MapNone, false, ErrSplitBrain},
		{"5 secondary behind primary's view", c(3, 9), c(9, 4), false, "5", SyncSrcPrimary, MapAll, false, nil},
		{"5 primary behind secondary's view", c(4, 10), c(9, 4), false, "5", SyncSrcPrimary, MapAll, false, nil},
		{"5 sl>pr but sr>pl", c(5, 10), c(9, 4), false, "5", SyncSrcSecondary, MapAll, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(tt.sec, tt.pri, tt.virgin)
			if d.Rule != tt.rule {
				t.Fatalf("rule = %s, want %s", d.Rule, tt.rule)
			}
			if tt.wantErr != nil {
				if !errors.Is(d.Err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", d.Err, tt.wantErr)
				}
				return
			}
			if d.Err != nil {
				t.Fatalf("unexpected err %v", d.Err)
			}
			if d.Source != tt.src || d.Map != tt.m || d.AdoptResUID != tt.adopt {
				t.Fatalf("got src=%v map=%v adopt=%v, want src=%v map=%v adopt=%v", d.Source, d.Map, d.AdoptResUID, tt.src, tt.m, tt.adopt)
			}
		})
	}
}

// TestDecideScenarioCounters walks the counter rules of §11.1 through a failover and checks that
// the table then picks the right side, including the case HAST gets wrong (§13 item 6).
func TestDecideScenarioCounters(t *testing.T) {
	a := Counters{ResUID: 1, LocalCnt: 1, RemoteCnt: 0} // primary after first pairing (rule 3 of §11.1)
	b := Counters{ResUID: 1, LocalCnt: 0, RemoteCnt: 1} // secondary adopted the pair
	if d := Decide(b, a, false); d.Rule != "3b" {
		t.Fatalf("fresh pair: rule %s", d.Rule)
	}
	// A dies; B is promoted and, knowing the peer's remotecnt (0 == B.LocalCnt), bumps on its first write.
	bp := Counters{ResUID: 1, LocalCnt: b.LocalCnt + 1, RemoteCnt: b.RemoteCnt}
	// A comes back as secondary: it must receive B's writes.
	if d := Decide(a, bp, false); d.Rule != "3c" || d.Source != SyncSrcPrimary {
		t.Fatalf("failover: rule %s src %v", d.Rule, d.Source)
	}
	// If A had also written as primary while cut off, both bumped: split-brain, never an overwrite.
	ap := Counters{ResUID: 1, LocalCnt: a.LocalCnt + 1, RemoteCnt: a.RemoteCnt}
	if d := Decide(ap, bp, false); !errors.Is(d.Err, ErrSplitBrain) {
		t.Fatalf("both wrote: %+v", d)
	}
}
