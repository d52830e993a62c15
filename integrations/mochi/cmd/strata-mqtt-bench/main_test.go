package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
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
	if err != nil {
		t.Fatal(err)
	}
	cfg.Progress = io.Discard
	res, err := bench(cfg)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}

	consistent := func(what string, published int64, c counts, missing int64) {
		t.Helper()
		if c.Received != c.Unique+c.Dups || c.Malformed != 0 || c.Unique > published || missing != published-c.Unique {
			t.Errorf("%s: inconsistent counts %+v, missing %d, of %d published", what, c, missing, published)
		}
	}
	allOnce := func(what string, published int64, c counts) {
		t.Helper()
		if c.Unique != published || c.Dups != 0 || c.OutOfOrder != 0 {
			t.Errorf("%s: %d distinct of %d, %d duplicates, %d out of order; want all, once, in order",
				what, c.Unique, published, c.Dups, c.OutOfOrder)
		}
	}

	if len(res.Ingest) != 4 {
		t.Fatalf("%d ingest results, want 4", len(res.Ingest))
	}
	for _, r := range res.Ingest {
		what := "ingest " + r.Variant
		if r.Sent != ingest || r.Failed != 0 || r.Rate <= 0 || r.P50 <= 0 || r.P99 < r.P50 {
			t.Errorf("%s, %d publishers: %+v", what, r.Publishers, r)
		}
		consistent(what, r.Sent, r.Got, r.Missing)
		if r.Variant == onStrata {
			allOnce(what, r.Sent, r.Got)
		}
	}

	if len(res.Drain) != 2 {
		t.Fatalf("%d drain results, want 2", len(res.Drain))
	}
	for _, r := range res.Drain {
		what := "drain " + r.Variant
		consistent(what, drain, r.Got, r.Missing)
		if !r.Present {
			t.Errorf("%s: session not present on reconnect", what)
		}
		if r.Variant == onStrata {
			allOnce(what, drain, r.Got)
			if r.Rate <= 0 || r.DrainTime <= 0 {
				t.Errorf("%s: rate %v in %v", what, r.Rate, r.DrainTime)
			}
		}
	}

	if len(res.Anchor) != 4 {
		t.Fatalf("%d anchor results, want 4", len(res.Anchor))
	}
	for _, r := range res.Anchor {
		what := "anchor " + r.Variant
		if r.Restart {
			what += " after restart"
		}
		consistent(what, anchor, r.Got, r.Missing)
		switch {
		case r.Variant == onStrata:
			allOnce(what, anchor, r.Got)
			if !r.Present {
				t.Errorf("%s: session not present", what)
			}
		case r.Restart: // mochi alone forgets everything
			if r.Got.Received != 0 || r.Present {
				t.Errorf("%s: received %d, present %v; want nothing", what, r.Got.Received, r.Present)
			}
		default:
			// Fewer than mochi's 8192 inflight limit, so mochi alone usually delivers them
			// all, but not always (one of 300 was missing in a CI run): mochi's behaviour is
			// what the benchmark reports, not what this test checks.
			if r.Got.Unique > anchor {
				t.Errorf("%s: %d distinct of %d", what, r.Got.Unique, anchor)
			} else if r.Got.Unique < anchor {
				t.Logf("%s: mochi alone delivered %d distinct of %d", what, r.Got.Unique, anchor)
			}
		}
	}

	var out bytes.Buffer
	res.print(cfg, &out)
	for _, want := range []string{"## ingest", "## drain", "## anchor", "after broker restart", "mochi+strata"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if testing.Verbose() {
		t.Log("\n" + out.String())
	}
}

func TestParseFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-scenarios", "nope"}, {"-publishers", "0"}, {"-payload", "4"}, {"-runs", "0"}, {"extra"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Scenarios) != 3 || len(cfg.Publishers) != 2 || cfg.Publishers[0] != 1000 || cfg.DrainMessages != 100_000 {
		t.Errorf("defaults: %+v", cfg)
	}
}
