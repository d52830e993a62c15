package bench

import (
	"testing"

	"github.com/strata-mq/strata/ds"
)

// TestScenariosRun runs every scenario on a small workload and checks what each one counted:
// a replay must find exactly the messages its filter selects.
func TestScenariosRun(t *testing.T) {
	for _, perShard := range []bool{false, true} {
		c := Config{N: 4000, Publishers: 40, Payload: 100, Shards: 4, Durability: ds.NoSync,
			PerShard: perShard, Layout: ds.LayoutLTS, Dir: t.TempDir(), Replay: true}
		rs, err := RunStrata(c)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int{
			"ingest":               c.N,
			"replay all":           c.N,
			"replay wildcard":      c.N / 8,            // one region of 8
			"replay one publisher": c.N / c.Publishers, // one publisher's share
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
	c := Config{N: 16000, Publishers: 40, Payload: 100, Shards: 4, Durability: ds.NoSync}
	rs, err := RunRawPebble(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Msgs == 0 || r.Elapsed <= 0 {
			t.Errorf("%s: %d messages in %v", r.Name, r.Msgs, r.Elapsed)
		}
	}
}
