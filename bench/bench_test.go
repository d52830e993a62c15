package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/raftgroup"
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

func TestFanOutAndRetentionRun(t *testing.T) {
	c := Config{N: 4000, Publishers: 40, Payload: 100, Shards: 4, Durability: ds.NoSync, Layout: ds.LayoutLTS}
	r, err := RunFanOut(c, 500, 8)
	if err != nil {
		t.Fatal(err)
	}
	if r.Msgs != 500*8 {
		t.Errorf("fan-out delivered %d, want %d", r.Msgs, 500*8)
	}
	r, err = RunRetentionUnderLoad(c, 5*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Msgs != c.N || r.Note == "" {
		t.Errorf("retention: %+v", r)
	}
}

// BenchmarkScenarios runs the scenarios under go test -bench, b.N messages each (1 KiB,
// 100 publishers, NoSync so that the machine's fsync rate does not dominate; use cmd/ds-bench
// for the durable figures).
func BenchmarkScenarios(b *testing.B) {
	c := Config{Publishers: 100, Payload: 1024, Shards: 4, Durability: ds.NoSync, Layout: ds.LayoutLTS}
	b.Run("ingest+replays", func(b *testing.B) {
		c := c
		c.N = max(b.N, c.Publishers)
		c.Replay = true
		rs, err := RunStrata(c)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range rs {
			words := strings.Fields(strings.SplitN(r.Name, " (", 2)[0])
			b.ReportMetric(r.MsgsPerSec(), strings.Join(words[:min(2, len(words))], "-")+"-msgs/s")
		}
	})
	b.Run("fanout", func(b *testing.B) {
		r, err := RunFanOut(c, max(b.N/10, 10), 10)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(r.MsgsPerSec(), "msgs/s")
	})
}

// TestWriteHTML: the report holds the table, escapes names, and draws one pair of charts per
// publisher run.
func TestWriteHTML(t *testing.T) {
	r := Result{Name: "ingest <x>", Msgs: 10, Elapsed: time.Second, Note: "a&b"}
	r.setRun([]time.Duration{time.Millisecond, 2 * time.Millisecond, time.Second}, []float64{5, 10, 7})
	var b strings.Builder
	if err := WriteHTML(&b, "t", []Result{r, {Name: "replay", Msgs: 1, Elapsed: time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"ingest &lt;x&gt;", "a&amp;b", "<polyline", "<rect", "replay"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if n := strings.Count(out, "<svg"); n != 2 {
		t.Errorf("%d charts, want 2", n)
	}
}

// TestReplicatedRuns: the replicated scenario starts three sites, ingests through all of them
// and reports a latency distribution.
func TestReplicatedRuns(t *testing.T) {
	c := Config{N: 3000, Publishers: 30, Payload: 100, Shards: 2, Layout: ds.LayoutLTS, Dir: t.TempDir()}
	r, err := RunReplicated(c, 3, raftgroup.LogDBPebble)
	if err != nil {
		t.Fatal(err)
	}
	if r.Msgs != c.N || r.Elapsed <= 0 || r.P50 <= 0 || r.MsgsPerCommit < 1 {
		t.Fatalf("%+v", r)
	}
}
