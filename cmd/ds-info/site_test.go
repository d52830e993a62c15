package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/internal/testutil"
)

// TestSiteDir: ds-info -dir on a stopped replicated site's directory. A three-site cluster
// stores messages; while it runs, -dir is refused (in use). Once the sites are closed, info
// names the site and the replica each shard was read from, generations, streams and messages
// give the rows the site's DB served (JSON compared with the views of the running DB), check
// passes, and nothing in the directory changed. A damaged sstable makes check exit 1 naming
// the file.
func TestSiteDir(t *testing.T) {
	const nShards = 2
	root := t.TempDir()
	sites := openSites(t, root, 3, &ds.Options{NShards: nShards, Retention: ds.RetainForever, GenerationSpan: time.Hour,
		Expert: ds.ExpertOptions{MemTableBytes: 4 << 20}})
	closeAll := func() {
		for i, s := range sites {
			if s != nil {
				s.Close()
				sites[i] = nil
			}
		}
	}
	t.Cleanup(closeAll)
	db := func(i int) *ds.DB {
		t.Helper()
		d, err := sites[i].DB()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	const n = 24
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := db(i%3).Store(ctx, ds.Message{ClientID: fmt.Sprintf("c%d", i%3), QoS: 1,
			Topic: fmt.Sprintf("site/%d/room/%d", i%3, i%4), Payload: []byte(fmt.Sprintf("m%d", i))})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range sites {
		testutil.Eventually(t, 20*time.Second, fmt.Sprintf("site %d applied every message", i), func() error {
			msgs, err := db(i).Messages("#", time.Time{}, 0)
			if err != nil || len(msgs) != n {
				return fmt.Errorf("%d messages, %v", len(msgs), err)
			}
			return nil
		})
	}
	dir := filepath.Join(root, "0")
	if code, _, errs := runCmd(t, "info", "-dir", dir); code != exitUsage || !strings.Contains(errs, "in use by another process (lock held)") {
		t.Fatalf("info on a running site: exit %d, stderr %q", code, errs)
	}
	asJSON := func(v any, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		return string(b) + "\n"
	}
	want := map[string]string{
		"generations": asJSON(ds.GenerationsOf(db(0))),
		"streams":     asJSON(ds.StreamsOf(db(0), "#")),
		"messages":    asJSON(ds.MessagesOf(db(0), "#", time.Time{}, 0)),
	}
	siteID := sites[0].ID().String()
	closeAll()

	before := snapshot(t, dir)
	code, out, errs := runCmd(t, "info", "-dir", dir)
	if code != exitOK || errs != "" {
		t.Fatalf("info: exit %d\n%s", code, errs)
	}
	t.Logf("info:\n%s", out)
	for _, s := range []string{"site            " + siteID, "storage         replicated site", "shards          2",
		"SHARD  REPLICA  APPLIED  READ FROM", "replicas/shard-0000-r", "replicas/shard-0001-r"} {
		if !strings.Contains(out, s) {
			t.Errorf("info lacks %q", s)
		}
	}
	code, out, errs = runCmd(t, "info", "-json", "-dir", dir)
	var info infoView
	if code != exitOK || json.Unmarshal([]byte(out), &info) != nil {
		t.Fatalf("info -json: exit %d\n%s\n%s", code, out, errs)
	}
	if info.Site == nil || info.Site.ID != siteID || info.NShards != nShards || info.Storage != "replicated site" ||
		len(info.Site.Replicas) != nShards || info.Streams == 0 || info.Generations != nShards {
		t.Errorf("info -json:\n%s", out)
	}
	for sh, r := range info.Site.Replicas {
		if r.Shard != sh || r.ReplicaID == 0 || r.AppliedIndex == 0 || !strings.HasPrefix(r.Store, filepath.Join("replicas", fmt.Sprintf("shard-%04d-r", sh))) {
			t.Errorf("shard %d read from %+v", sh, r)
		}
	}
	for cmd, w := range want {
		code, got, errs := runCmd(t, cmd, "-json", "-limit", "0", "-dir", dir)
		if cmd != "messages" {
			code, got, errs = runCmd(t, cmd, "-json", "-dir", dir)
		}
		if code != exitOK || got != w {
			t.Errorf("%s -json: exit %d %s\n%s\nwant (the running DB's)\n%s", cmd, code, errs, got, w)
		}
	}
	code, out, errs = runCmd(t, "messages", "-dir", dir, "-filter", "site/1/#")
	if code != exitOK || strings.Count(out, "\n") != 1+n/3 {
		t.Errorf("messages -filter: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs = runCmd(t, "check", "-dir", dir)
	if code != exitOK || !strings.Contains(out, "OK") || !strings.Contains(out, "replica records") {
		t.Errorf("check: exit %d\n%s\n%s", code, out, errs)
	}
	if after := snapshot(t, dir); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("the site's directory changed")
	}

	// Replica directories left aside: one whose creation was interrupted (no CURRENT), one
	// whose CURRENT is damaged. info lists them; check reports the damaged one.
	replicas := filepath.Join(dir, "replicas")
	for _, d := range []string{"shard-0001-r98", "shard-0001-r99"} {
		if err := os.Mkdir(filepath.Join(replicas, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(replicas, "shard-0001-r98", "CURRENT"), []byte("bogus\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs = runCmd(t, "info", "-dir", dir)
	t.Logf("info with leftovers:\n%s", out)
	if code != exitOK || !strings.Contains(out, "shard 1: not read: replicas/shard-0001-r98: damaged CURRENT file") ||
		!strings.Contains(out, "shard 1: not read: replicas/shard-0001-r99: no CURRENT file") {
		t.Errorf("info with leftover replica directories: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs = runCmd(t, "check", "-dir", dir)
	if code != exitFailed || !strings.Contains(errs, "shard-0001-r98") {
		t.Errorf("check with a damaged replica directory: exit %d\n%s\n%s", code, out, errs)
	}
	for _, d := range []string{"shard-0001-r98", "shard-0001-r99"} {
		if err := os.RemoveAll(filepath.Join(replicas, d)); err != nil {
			t.Fatal(err)
		}
	}

	// Damage shard 0's replica on this site: its data flushed into an sstable, then flipped.
	store := filepath.Join(dir, info.Site.Replicas[0].Store)
	p, err := pebble.Open(store, pebbleopts.New(quietPebble))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	ssts, _ := filepath.Glob(filepath.Join(store, "*.sst"))
	if len(ssts) == 0 {
		t.Fatalf("no sstable in %s", store)
	}
	flipMiddle(t, ssts[0])
	file := strings.TrimSuffix(filepath.Base(ssts[0]), ".sst")
	for _, args := range [][]string{{"check", "-dir", dir}, {"check", "-json", "-dir", dir}} {
		code, out, errs := runCmd(t, args...)
		if code != exitFailed || strings.Contains(errs, "internal error") || !strings.Contains(errs, file) {
			t.Errorf("%q on a damaged replica: exit %d, want 1 naming %s\n%s\n%s", args, code, file, out, errs)
		}
	}
}
