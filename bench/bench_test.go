package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/raftgroup"
	"github.com/stretchr/testify/require"
)

// TestScenariosRun runs every scenario on a small workload and checks what each one counted:
// a replay must find exactly the messages its filter selects.
func TestScenariosRun(t *testing.T) {
	for _, perShard := range []bool{false, true} {
		c := Config{N: 4000, Publishers: 40, Payload: 100, Shards: 4, Durability: ds.NoSync,
			PerShard: perShard, Layout: ds.LayoutLTS, Dir: t.TempDir(), Replay: true, SubCatchUp: true, Window: 4}
		rs, err := RunStrata(c)
		require.NoError(t, err)
		want := map[string]int{
			"ingest":               c.N,
			"ingest StoreAsync":    c.N,
			"replay all":           c.N,
			"replay wildcard":      c.N / 8,            // one region of 8
			"replay one publisher": c.N / c.Publishers, // one publisher's share
			"replay # (1 reader)":  c.N,
			"subscribe catch-up #": c.N,
		}
		require.Len(t, rs, len(want))
		for _, r := range rs {
			for prefix, n := range want {
				if len(r.Name) >= len(prefix) && r.Name[:len(prefix)] == prefix {
					require.Equal(t, n, r.Msgs, "%s: messages", r.Name)
				}
			}
		}
	}
}

func TestRawPebbleRuns(t *testing.T) {
	c := Config{N: 16000, Publishers: 40, Payload: 100, Shards: 4, Durability: ds.NoSync}
	rs, err := RunRawPebble(c)
	require.NoError(t, err)
	for _, r := range rs {
		require.True(t, r.Msgs != 0 && r.Elapsed > 0, "%s: %d messages in %v", r.Name, r.Msgs, r.Elapsed)
	}
}

func TestFanOutAndRetentionRun(t *testing.T) {
	c := Config{N: 4000, Publishers: 40, Payload: 100, Shards: 4, Durability: ds.NoSync, Layout: ds.LayoutLTS}
	r, err := RunFanOut(c, 500, 8)
	require.NoError(t, err)
	require.Equal(t, 500*8, r.Msgs, "fan-out delivered")
	r, err = RunRetentionUnderLoad(c, 5*time.Millisecond)
	require.NoError(t, err)
	require.True(t, r.Msgs == c.N && r.Note != "", "retention: %+v", r)
}

// TestSubscribeScenariosRun runs the subscription scenarios on tiny sizes and checks what
// each one delivered (the scenarios themselves fail on a lost, duplicated or foreign message).
func TestSubscribeScenariosRun(t *testing.T) {
	c := Config{Publishers: 20, Payload: 100, Shards: 4, Durability: ds.NoSync, Layout: ds.LayoutLTS, Dir: t.TempDir()}
	sc := SubConfig{FanOutSubs: 50, FanOutN: 200, DisjointSubs: 20, DisjointN: 410, Publishers: 10,
		LatencySubs: 3, LatencyN: 1000, CatchUpN: 3000, Timeout: time.Minute}
	rs, err := RunSubscribe(c, sc)
	require.NoError(t, err)
	want := []struct {
		prefix string
		msgs   int
	}{
		{"subscribe fan-out: 50 subscriptions on fan/#", 50 * 200},
		{"subscribe fan-out: 20 subscriptions on fan/<i>/#", 410},
		{"subscribe latency (embedded)", 3 * 1000},
		{"replay t/# (parallel readers)", 3000},
		{"replay t/# (1 reader)", 3000},
		{"subscribe catch-up t/#", 3000},
	}
	require.Len(t, rs, len(want), "results: %+v", rs)
	for i, w := range want {
		r := rs[i]
		require.True(t, strings.HasPrefix(r.Name, w.prefix) && r.Msgs == w.msgs && r.Elapsed > 0 && r.Note != "",
			"result %d: %q, %d messages in %v, want %q, %d", i, r.Name, r.Msgs, r.Elapsed, w.prefix, w.msgs)
	}
	r := rs[2]
	require.True(t, r.P50 >= 0 && r.P99 >= r.P50 && r.P999 >= r.P99, "latency percentiles: %+v", r)
}

// TestSubscribeReplicatedRuns: the replicated latency scenario stores through site 0 and
// reports one result per site of subscriptions.
func TestSubscribeReplicatedRuns(t *testing.T) {
	c := Config{Publishers: 20, Payload: 100, Shards: 2, Layout: ds.LayoutLTS, Dir: t.TempDir()}
	sc := SubConfig{LatencySubs: 3, LatencyN: 600, LatencyRate: 2000, Timeout: time.Minute}
	rs, err := RunSubscribeReplicated(c, sc, 3, raftgroup.LogDBSegments)
	require.NoError(t, err)
	require.Len(t, rs, 3)
	for _, r := range rs {
		require.True(t, r.Msgs == 600 && r.P99 >= r.P50, "want 600 messages, p99 >= p50: %+v", r)
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
	require.NoError(t, WriteHTML(&b, "t", []Result{r, {Name: "replay", Msgs: 1, Elapsed: time.Millisecond}}))
	out := b.String()
	for _, want := range []string{"ingest &lt;x&gt;", "a&amp;b", "<polyline", "<rect", "replay"} {
		require.Contains(t, out, want, "report lacks %q", want)
	}
	require.Equal(t, 2, strings.Count(out, "<svg"), "charts")
}

// TestReplicatedRuns: the replicated scenario starts three sites, ingests through all of them
// and reports a latency distribution.
func TestReplicatedRuns(t *testing.T) {
	c := Config{N: 3000, Publishers: 30, Payload: 100, Shards: 2, Layout: ds.LayoutLTS, Dir: t.TempDir()}
	r, err := RunReplicated(c, 3, raftgroup.LogDBSegments)
	require.NoError(t, err)
	require.True(t, r.Msgs == c.N && r.Elapsed > 0 && r.P50 > 0 && r.MsgsPerCommit >= 1,
		"want %d messages, positive elapsed and p50, at least 1 message per commit: %+v", c.N, r)
	// The sites' own Raft logs count their fsyncs, and the row reports them.
	require.Positive(t, r.Figures["log_fsyncs_per_sec_max_site"], "%+v", r.Figures)
	require.GreaterOrEqual(t, r.Figures["msgs_per_log_fsync"], 1.0, "%+v", r.Figures)
	require.Contains(t, r.Note, "Raft log fsyncs per second per site")

	// Through StoreAsync: every message acknowledged, larger proposals.
	c.RaftWindow = 8
	r, err = RunReplicated(c, 3, raftgroup.LogDBSegments)
	require.NoError(t, err)
	require.True(t, r.Msgs == c.N && len(r.LatencyHist) > 0 && r.MsgsPerCommit >= 1, "StoreAsync row: %+v", r)
	require.Contains(t, r.Name, "StoreAsync ×8")
}

// TestSessionsScenarioRuns runs the durable-session scenario on tiny sizes: every message
// reaches its one session, and the resumed session gets every unacknowledged message again.
func TestSessionsScenarioRuns(t *testing.T) {
	c := Config{Publishers: 10, Payload: 100, Shards: 4, Durability: ds.NoSync, Layout: ds.LayoutLTS, Dir: t.TempDir()}
	sc := SessionConfig{Sessions: 30, N: 610, ResumeN: 700, Batch: 64, CheckpointInterval: 20 * time.Millisecond,
		Timeout: time.Minute}
	rs, err := RunSessions(c, sc)
	require.NoError(t, err)
	want := []struct {
		prefix string
		msgs   int
	}{
		{"ingest without sessions", 610},
		{"ingest with 30 sessions", 610},
		{"session deliveries (30 sessions", 610},
		{"ingest with 30 sessions, checkpoints off", 610},
		{"session resume: Connect → first Next", 64},
		{"session resume: redeliver 700", 700},
	}
	require.Len(t, rs, len(want), "results: %+v", rs)
	for i, w := range want {
		r := rs[i]
		ok := r.Msgs == w.msgs || i == 4 && r.Msgs >= 1 && r.Msgs <= w.msgs // the first batch: up to Batch
		require.True(t, strings.HasPrefix(r.Name, w.prefix) && ok && r.Elapsed > 0 && r.Note != "",
			"result %d: %q, %d messages in %v, want %q, %d", i, r.Name, r.Msgs, r.Elapsed, w.prefix, w.msgs)
	}
	f := rs[1].Figures
	require.True(t, f["ratio_to_without"] > 0 && f["deliveries_per_sec"] > 0 && f["state_writes_per_delivery"] > 0,
		"session figures: %v", f)
}
