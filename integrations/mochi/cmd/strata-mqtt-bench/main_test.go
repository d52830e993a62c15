package main

import (
	"bytes"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every scenario at a tiny size: the results must be consistent, and mochi on Strata must
// deliver everything, once, in order — also after a restart.
func TestBenchTiny(t *testing.T) {
	const (
		ingest = 400
		drain  = 500
		anchor = 300
	)
	var stderr bytes.Buffer
	cfg, err := parseFlags([]string{
		"-runs", "1", "-publishers", "20,3", "-ingest-messages", "400", "-drain-messages", "500",
		"-anchor-messages", "300", "-idle", "500ms", "-limit", "20s", "-dir", t.TempDir(),
	}, &stderr)
	require.NoError(t, err)
	cfg.Progress = io.Discard
	res, err := bench(cfg)
	require.NoError(t, err, "stderr:\n%s", stderr.String())

	consistent := func(what string, published int64, c counts, missing int64) {
		t.Helper()
		require.Equal(t, c.Unique+c.Dups, c.Received, "%s: inconsistent counts %+v, missing %d, of %d published", what, c, missing, published)
		require.Equal(t, int64(0), c.Malformed, "%s: inconsistent counts %+v, missing %d, of %d published", what, c, missing, published)
		require.LessOrEqual(t, c.Unique, published, "%s: inconsistent counts %+v, missing %d, of %d published", what, c, missing, published)
		require.Equal(t, published-c.Unique, missing, "%s: inconsistent counts %+v, missing %d, of %d published", what, c, missing, published)
	}
	allOnce := func(what string, published int64, c counts) {
		t.Helper()
		msg := []any{"%s: %d distinct of %d, %d duplicates, %d out of order; want all, once, in order",
			what, c.Unique, published, c.Dups, c.OutOfOrder}
		require.Equal(t, published, c.Unique, msg...)
		require.Zero(t, c.Dups, msg...)
		require.Zero(t, c.OutOfOrder, msg...)
	}

	require.Len(t, res.Ingest, 4, "%d ingest results, want 4", len(res.Ingest))
	for _, r := range res.Ingest {
		what := "ingest " + r.Variant
		require.Equal(t, int64(ingest), r.Sent, "%s, %d publishers: %+v", what, r.Publishers, r)
		require.Equal(t, int64(0), r.Failed, "%s, %d publishers: %+v", what, r.Publishers, r)
		require.Positive(t, r.Rate, "%s, %d publishers: %+v", what, r.Publishers, r)
		require.Positive(t, r.P50, "%s, %d publishers: %+v", what, r.Publishers, r)
		require.GreaterOrEqual(t, r.P99, r.P50, "%s, %d publishers: %+v", what, r.Publishers, r)
		consistent(what, r.Sent, r.Got, r.Missing)
		if r.Variant == onStrata {
			allOnce(what, r.Sent, r.Got)
		}
	}

	require.Len(t, res.Drain, 2, "%d drain results, want 2", len(res.Drain))
	for _, r := range res.Drain {
		what := "drain " + r.Variant
		consistent(what, drain, r.Got, r.Missing)
		require.True(t, r.Present, "%s: session not present on reconnect", what)
		if r.Variant == onStrata {
			allOnce(what, drain, r.Got)
			require.Positive(t, r.Rate, "%s: rate %v in %v", what, r.Rate, r.DrainTime)
			require.Positive(t, r.DrainTime, "%s: rate %v in %v", what, r.Rate, r.DrainTime)
		}
	}

	require.Len(t, res.Anchor, 4, "%d anchor results, want 4", len(res.Anchor))
	for _, r := range res.Anchor {
		what := "anchor " + r.Variant
		if r.Restart {
			what += " after restart"
		}
		consistent(what, anchor, r.Got, r.Missing)
		switch {
		case r.Variant == onStrata:
			allOnce(what, anchor, r.Got)
			require.True(t, r.Present, "%s: session not present", what)
		case r.Restart: // mochi alone forgets everything
			require.Equal(t, int64(0), r.Got.Received, "%s: received %d, present %v; want nothing", what, r.Got.Received, r.Present)
			require.False(t, r.Present, "%s: received %d, present %v; want nothing", what, r.Got.Received, r.Present)
		default:
			// Fewer than mochi's 8192 inflight limit, so mochi alone usually delivers them
			// all, but not always (one of 300 was missing in a CI run): mochi's behaviour is
			// what the benchmark reports, not what this test checks.
			require.LessOrEqual(t, r.Got.Unique, int64(anchor), "%s: %d distinct of %d", what, r.Got.Unique, anchor)
			if r.Got.Unique < anchor {
				t.Logf("%s: mochi alone delivered %d distinct of %d", what, r.Got.Unique, anchor)
			}
		}
	}

	var out bytes.Buffer
	res.print(cfg, &out)
	for _, want := range []string{"## ingest", "## drain", "## anchor", "after broker restart", "mochi+strata"} {
		require.Contains(t, out.String(), want, "output lacks %q:\n%s", want, out.String())
	}
	if testing.Verbose() {
		t.Log("\n" + out.String())
	}
}

func TestParseFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-scenarios", "nope"}, {"-publishers", "0"}, {"-payload", "4"}, {"-runs", "0"}, {"extra"},
	} {
		_, err := parseFlags(args, io.Discard)
		require.Error(t, err, "%q: no error", args)
	}
	cfg, err := parseFlags(nil, io.Discard)
	require.NoError(t, err)
	require.Len(t, cfg.Scenarios, 3, "defaults: %+v", cfg)
	require.Len(t, cfg.Publishers, 2, "defaults: %+v", cfg)
	require.Equal(t, 1000, cfg.Publishers[0], "defaults: %+v", cfg)
	require.Equal(t, 100_000, cfg.DrainMessages, "defaults: %+v", cfg)
}
