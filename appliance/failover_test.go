package appliance

import "testing"

func TestParseNotifyArgs(t *testing.T) {
	good := []struct {
		args []string
		want vrrpState
	}{
		{[]string{"MASTER"}, vrrpMaster},
		{[]string{"backup"}, vrrpBackup},
		{[]string{"INSTANCE", "VI_1", "FAULT", "100"}, vrrpFault},
		{[]string{"GROUP", "G1", "STOP"}, vrrpStop},
	}
	for _, g := range good {
		got, err := parseNotifyArgs(g.args)
		if err != nil || got != g.want {
			t.Errorf("%q: got %q, %v; want %q", g.args, got, err, g.want)
		}
	}
	for _, bad := range [][]string{nil, {"PRIMARY"}, {"INSTANCE", "VI_1"}, {"VI_1", "x", "MASTER", "1"}, {"MASTER", "BACKUP"}} {
		if got, err := parseNotifyArgs(bad); err == nil {
			t.Errorf("%q: accepted as %q", bad, got)
		}
	}
}

func TestPromotionBlocker(t *testing.T) {
	st := func(role string, f func(*statusEntry)) statusEntry {
		s := statusEntry{ResourceStatus: ResourceStatus{Name: "disk1", Role: role}}
		if f != nil {
			f(&s)
		}
		return s
	}
	cases := []struct {
		name  string
		s     statusEntry
		mdInc bool
		ok    bool
	}{
		{"clean secondary", st("secondary", nil), false, true},
		{"clean init", st("init", nil), false, true},
		{"primary stays", st("primary", func(s *statusEntry) { s.Status = "degraded" }), false, true},
		{"split-brain", st("secondary", func(s *statusEntry) { s.SplitBrain = true }), false, false},
		{"split-brain in init", st("init", func(s *statusEntry) { s.SplitBrain = true }), false, false},
		{"half-synced secondary", st("secondary", func(s *statusEntry) { s.Inconsistent = true }), false, false},
		{"half-synced init (metadata)", st("init", nil), true, false},
		{"unknown resource", st("", func(s *statusEntry) { s.Error = "no such resource" }), false, false},
	}
	for _, c := range cases {
		why := promotionBlocker(c.s, c.mdInc)
		if (why == "") != c.ok {
			t.Errorf("%s: blocker %q, want ok=%v", c.name, why, c.ok)
		}
	}
}
