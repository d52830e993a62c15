package main

import (
	"testing"

	"github.com/strata-mq/strata/ds"
)

// TestScenariosRun runs every scenario on a small workload and checks what each one counted:
// a replay must find exactly the messages its filter selects.
func TestScenariosRun(t *testing.T) {
	for _, perShard := range []bool{false, true} {
		c := config{n: 4000, publishers: 40, payload: 100, shards: 4, durability: ds.NoSync,
			perShard: perShard, layout: ds.LayoutLTS, dir: t.TempDir(), replay: true}
		rs, err := runStrata(c)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int{
			"ingest":               c.n,
			"replay all":           c.n,
			"replay wildcard":      c.n / 8,            // one region of 8
			"replay one publisher": c.n / c.publishers, // one publisher's share
		}
		if len(rs) != len(want) {
			t.Fatalf("got %d results, want %d", len(rs), len(want))
		}
		for _, r := range rs {
			for prefix, n := range want {
				if len(r.Name) >= len(prefix) && r.Name[:len(prefix)] == prefix && r.Msgs != n {
					t.Errorf("%s: %d messages, want %d", r.Name, r.Msgs, n)
				}
			}
		}
	}
}

func TestRawPebbleRuns(t *testing.T) {
	c := config{n: 16000, publishers: 40, payload: 100, shards: 4, durability: ds.NoSync}
	rs, err := runRawPebble(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Msgs == 0 || r.Elapsed <= 0 {
			t.Errorf("%s: %d messages in %v", r.Name, r.Msgs, r.Elapsed)
		}
	}
}
