package appliance

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"hast/blockdev"
)

// Every (from, to, force) triple: the guards, and the actions of leaving and entering.
func TestPlanRole(t *testing.T) {
	var (
		promoteGuards = []roleGuard{guardNoSplitBrain, guardConsistent}
		leavePrimary  = []roleAction{actUnexport, actClosePrimary, actCloseDevice}
		leaveSecond   = []roleAction{actStopSecondary, actCloseDevice}
		enterPrimary  = []roleAction{actOpenPrimary}
		enterSecond   = []roleAction{actOpenSecondary}
	)
	type want struct {
		guards       []roleGuard
		leave, enter []roleAction
	}
	table := map[[2]Role]want{
		{RoleInit, RoleInit}:           {},
		{RoleInit, RolePrimary}:        {promoteGuards, nil, enterPrimary},
		{RoleInit, RoleSecondary}:      {nil, nil, enterSecond},
		{RolePrimary, RoleInit}:        {nil, leavePrimary, nil},
		{RolePrimary, RolePrimary}:     {},
		{RolePrimary, RoleSecondary}:   {nil, leavePrimary, enterSecond},
		{RoleSecondary, RoleInit}:      {nil, leaveSecond, nil},
		{RoleSecondary, RolePrimary}:   {promoteGuards, leaveSecond, enterPrimary},
		{RoleSecondary, RoleSecondary}: {},
	}
	roles := []Role{RoleInit, RolePrimary, RoleSecondary}
	for _, from := range roles {
		for _, to := range roles {
			for _, force := range []bool{false, true} {
				w, ok := table[[2]Role{from, to}]
				if !ok {
					t.Fatalf("no row for %s → %s", from, to)
				}
				if force {
					w.guards = nil // forcing skips the checks, never an action
				}
				got := planRole(from, to, force)
				if !reflect.DeepEqual(got.guards, w.guards) || !reflect.DeepEqual(got.leave, w.leave) || !reflect.DeepEqual(got.enter, w.enter) {
					t.Errorf("%s → %s (force %v): got %+v, want %+v", from, to, force, got, rolePlan(w))
				}
			}
		}
	}
}

// A promotion that cannot open the primary engine leaves the secondary a secondary, still
// serving its primary, instead of init.
func TestFailedPromotionStaysSecondary(t *testing.T) {
	c, out := newTestCluster(t, ClusterOptions{Replication: "fullsync"})
	if err := c.Pair(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := c.WaitComplete(c.Nodes[0], time.Minute); err != nil {
		t.Fatal(err)
	}
	h2 := c.Nodes[1]
	// hast2's on-disk activemap gets a bit past its last extent: the checks before a promotion
	// read only the metadata and pass, the engine refuses the map when it opens.
	f, err := os.OpenFile(filepath.Join(h2.Dir, "disk1.img"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{0xff}, blockdev.MetadataSize+100); err != nil {
		t.Fatal(err)
	}
	if err := c.Role(h2, "primary", "disk1"); err == nil {
		t.Fatal("promotion with a malformed activemap succeeded")
	}
	if !strings.Contains(out.String(), "stays secondary") {
		t.Fatalf("the refusal does not say the role is unchanged:\n%s", out)
	}
	cl, err := c.Client(h2)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cl.Status("disk1")
	if err != nil || len(st) != 1 || st[0].Role != "secondary" {
		t.Fatalf("hast2 after the failed promotion: %+v, %v", st, err)
	}
	// Repaired, it serves hast1 again as its secondary (hast1 refuses the malformed map in the
	// handshake until then).
	if _, err := f.WriteAt([]byte{0}, blockdev.MetadataSize+100); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitComplete(c.Nodes[0], time.Minute); err != nil {
		t.Fatal(err)
	}
}
