package budget

import (
	"fmt"
	"slices"
	"testing"

	"hast/internal/testsupport"
)

func TestBudget(t *testing.T) {
	// Every step runs an operation and then checks which acquirers it let through, what is
	// still waiting (sizes, oldest first) and what is left.
	type step struct {
		op      string // "acquire" (n bytes for id), "release" (what id holds), "cancel" (id's wait)
		id      string
		n       int64
		granted []string
		queue   []int64
		avail   int64
	}
	tests := []struct {
		name  string
		size  int64
		steps []step
	}{
		{"fits at once", 10, []step{
			{op: "acquire", id: "a", n: 4, granted: []string{"a"}, avail: 6},
			{op: "acquire", id: "b", n: 6, granted: []string{"b"}, avail: 0},
			{op: "release", id: "a", avail: 4},
			{op: "release", id: "b", avail: 10},
		}},
		{"a small request that fits waits behind a large one that does not", 10, []step{
			{op: "acquire", id: "a", n: 8, granted: []string{"a"}, avail: 2},
			{op: "acquire", id: "b", n: 5, queue: []int64{5}, avail: 2},
			{op: "acquire", id: "c", n: 1, queue: []int64{5, 1}, avail: 2},
			{op: "release", id: "a", granted: []string{"b", "c"}, avail: 4},
		}},
		{"a request larger than what is left goes through once the others give back", 10, []step{
			{op: "acquire", id: "a", n: 4, granted: []string{"a"}, avail: 6},
			{op: "acquire", id: "b", n: 4, granted: []string{"b"}, avail: 2},
			{op: "acquire", id: "all", n: 10, queue: []int64{10}, avail: 2},
			{op: "acquire", id: "c", n: 1, queue: []int64{10, 1}, avail: 2},
			{op: "release", id: "a", queue: []int64{10, 1}, avail: 6},
			{op: "release", id: "b", granted: []string{"all"}, queue: []int64{1}, avail: 0},
			{op: "release", id: "all", granted: []string{"c"}, avail: 9},
		}},
		{"giving up at the head of the line lets the next one in", 10, []step{
			{op: "acquire", id: "a", n: 8, granted: []string{"a"}, avail: 2},
			{op: "acquire", id: "b", n: 5, queue: []int64{5}, avail: 2},
			{op: "acquire", id: "c", n: 2, queue: []int64{5, 2}, avail: 2},
			{op: "cancel", id: "b", granted: []string{"c"}, avail: 0},
		}},
		{"giving up in the middle keeps the order of the rest", 10, []step{
			{op: "acquire", id: "a", n: 8, granted: []string{"a"}, avail: 2},
			{op: "acquire", id: "b", n: 5, queue: []int64{5}, avail: 2},
			{op: "acquire", id: "c", n: 3, queue: []int64{5, 3}, avail: 2},
			{op: "acquire", id: "d", n: 1, queue: []int64{5, 3, 1}, avail: 2},
			{op: "cancel", id: "c", queue: []int64{5, 1}, avail: 2},
			{op: "release", id: "a", granted: []string{"b", "d"}, avail: 4},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := New(tt.size)
			type acquirer struct {
				n      int64
				cancel chan struct{}
				result chan bool
			}
			acq := map[string]*acquirer{}
			pending := map[string]bool{} // started, not yet returned
			for i, s := range tt.steps {
				switch s.op {
				case "acquire":
					a := &acquirer{n: s.n, cancel: make(chan struct{}), result: make(chan bool, 1)}
					acq[s.id], pending[s.id] = a, true
					go func() { a.result <- b.Acquire(a.n, a.cancel) }()
				case "release":
					b.Release(acq[s.id].n)
				case "cancel":
					close(acq[s.id].cancel)
					if testsupport.Receive(t, s.id+" giving up", acq[s.id].result) {
						t.Fatalf("step %d: %s gave up but acquire returned true", i, s.id)
					}
					delete(pending, s.id)
				}
				for _, id := range s.granted {
					if !testsupport.Receive(t, "acquire of "+id, acq[id].result) {
						t.Fatalf("step %d: acquire of %s returned false", i, id)
					}
					delete(pending, id)
				}
				// Wait for new waiters to queue up, or for one that should wait to return.
				testsupport.WaitUntil(t, fmt.Sprintf("step %d: queue %v", i, s.queue), func() bool {
					for id := range pending {
						if len(acq[id].result) > 0 {
							return true
						}
					}
					_, q := b.State()
					return slices.Equal(q, s.queue)
				})
				for id := range pending {
					select {
					case ok := <-acq[id].result:
						t.Fatalf("step %d: acquire of %s returned %v, want it still waiting", i, id, ok)
					default:
					}
				}
				if avail, q := b.State(); avail != s.avail || !slices.Equal(q, s.queue) {
					t.Fatalf("step %d: %d bytes available and %v waiting, want %d and %v", i, avail, q, s.avail, s.queue)
				}
			}
		})
	}
}

// TestBudgetGiveUpWhileGranted races a release that grants a waiter against the waiter
// giving up: whichever wins, no byte may be lost or counted twice.
func TestBudgetGiveUpWhileGranted(t *testing.T) {
	b := New(1)
	for range 500 {
		if !b.Acquire(1, nil) {
			t.Fatal("acquire of a free budget failed")
		}
		cancel := make(chan struct{})
		got := make(chan bool, 1)
		go func() { got <- b.Acquire(1, cancel) }()
		testsupport.WaitUntil(t, "the second acquire waits", func() bool { _, q := b.State(); return len(q) == 1 })
		go b.Release(1)
		close(cancel)
		if <-got {
			b.Release(1)
		}
		testsupport.WaitUntil(t, "everything is back", func() bool { a, q := b.State(); return a == 1 && len(q) == 0 })
	}
}
