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

	"github.com/strata-mq/strata/inspect"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/stretchr/testify/require"
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
		require.NoError(t, err)
		return d
	}
	const n = 24
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := db(i%3).Store(ctx, ds.Message{ClientID: fmt.Sprintf("c%d", i%3), QoS: 1,
			Topic: fmt.Sprintf("site/%d/room/%d", i%3, i%4), Payload: []byte(fmt.Sprintf("m%d", i))})
		cancel()
		require.NoError(t, err)
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
	code, _, errs := runCmd(t, "info", "-dir", dir)
	require.Equal(t, exitUsage, code, "info on a running site: exit %d, stderr %q", code, errs)
	require.Contains(t, errs, "in use by another process (lock held)", "info on a running site: exit %d, stderr %q", code, errs)
	asJSON := func(v any, err error) string {
		t.Helper()
		require.NoError(t, err)
		b, err := json.MarshalIndent(v, "", "  ")
		require.NoError(t, err)
		return string(b) + "\n"
	}
	want := map[string]string{
		"generations": asJSON(inspect.GenerationsOf(db(0))),
		"streams":     asJSON(inspect.StreamsOf(db(0), "#")),
		"messages":    asJSON(inspect.MessagesOf(db(0), "#", time.Time{}, 0)),
	}
	siteID := sites[0].ID().String()
	closeAll()

	before := snapshot(t, dir)
	code, out, errs := runCmd(t, "info", "-dir", dir)
	require.Equal(t, exitOK, code, "info: exit %d\n%s", code, errs)
	require.Empty(t, errs, "info: exit %d\n%s", code, errs)
	t.Logf("info:\n%s", out)
	for _, s := range []string{"site            " + siteID, "storage         replicated site", "shards          2",
		"SHARD  REPLICA  APPLIED  READ FROM", "replicas/shard-0000-r", "replicas/shard-0001-r"} {
		require.Contains(t, out, s, "info lacks %q", s)
	}
	code, out, errs = runCmd(t, "info", "-json", "-dir", dir)
	var info infoView
	require.Equal(t, exitOK, code, "info -json: exit %d\n%s\n%s", code, out, errs)
	require.NoError(t, json.Unmarshal([]byte(out), &info), "info -json: exit %d\n%s\n%s", code, out, errs)
	require.NotNil(t, info.Site, "info -json:\n%s", out)
	require.Equal(t, siteID, info.Site.ID, "info -json:\n%s", out)
	require.Equal(t, nShards, info.NShards, "info -json:\n%s", out)
	require.Equal(t, "replicated site", info.Storage, "info -json:\n%s", out)
	require.Len(t, info.Site.Replicas, nShards, "info -json:\n%s", out)
	require.NotZero(t, info.Streams, "info -json:\n%s", out)
	require.Equal(t, nShards, info.Generations, "info -json:\n%s", out)
	for sh, r := range info.Site.Replicas {
		require.Equal(t, sh, r.Shard, "shard %d read from %+v", sh, r)
		require.NotZero(t, r.ReplicaID, "shard %d read from %+v", sh, r)
		require.NotZero(t, r.AppliedIndex, "shard %d read from %+v", sh, r)
		require.True(t, strings.HasPrefix(r.Store, filepath.Join("replicas", fmt.Sprintf("shard-%04d-r", sh))), "shard %d read from %+v", sh, r)
	}
	for cmd, w := range want {
		code, got, errs := runCmd(t, cmd, "-json", "-limit", "0", "-dir", dir)
		if cmd != "messages" {
			code, got, errs = runCmd(t, cmd, "-json", "-dir", dir)
		}
		require.Equal(t, exitOK, code, "%s -json: exit %d %s\n%s\nwant (the running DB's)\n%s", cmd, code, errs, got, w)
		require.Equal(t, w, got, "%s -json: exit %d %s\n%s\nwant (the running DB's)\n%s", cmd, code, errs, got, w)
	}
	code, out, errs = runCmd(t, "messages", "-dir", dir, "-filter", "site/1/#")
	require.Equal(t, exitOK, code, "messages -filter: exit %d\n%s\n%s", code, out, errs)
	require.Equal(t, 1+n/3, strings.Count(out, "\n"), "messages -filter: exit %d\n%s\n%s", code, out, errs)
	code, out, errs = runCmd(t, "check", "-dir", dir)
	require.Equal(t, exitOK, code, "check: exit %d\n%s\n%s", code, out, errs)
	require.Contains(t, out, "OK", "check: exit %d\n%s\n%s", code, out, errs)
	require.Contains(t, out, "replica records", "check: exit %d\n%s\n%s", code, out, errs)
	after := snapshot(t, dir)
	require.Equal(t, fmt.Sprint(before), fmt.Sprint(after), "the site's directory changed")

	// Replica directories left aside: one whose creation was interrupted (no CURRENT), one
	// whose CURRENT is damaged. info lists them; check reports the damaged one.
	replicas := filepath.Join(dir, "replicas")
	for _, d := range []string{"shard-0001-r98", "shard-0001-r99"} {
		require.NoError(t, os.Mkdir(filepath.Join(replicas, d), 0o755))
	}
	require.NoError(t, os.WriteFile(filepath.Join(replicas, "shard-0001-r98", "CURRENT"), []byte("bogus\n"), 0o644))
	code, out, errs = runCmd(t, "info", "-dir", dir)
	t.Logf("info with leftovers:\n%s", out)
	require.Equal(t, exitOK, code, "info with leftover replica directories: exit %d\n%s\n%s", code, out, errs)
	require.Contains(t, out, "shard 1: not read: replicas/shard-0001-r98: damaged CURRENT file", "info with leftover replica directories: exit %d\n%s\n%s", code, out, errs)
	require.Contains(t, out, "shard 1: not read: replicas/shard-0001-r99: no CURRENT file", "info with leftover replica directories: exit %d\n%s\n%s", code, out, errs)
	code, out, errs = runCmd(t, "check", "-dir", dir)
	require.Equal(t, exitFailed, code, "check with a damaged replica directory: exit %d\n%s\n%s", code, out, errs)
	require.Contains(t, errs, "shard-0001-r98", "check with a damaged replica directory: exit %d\n%s\n%s", code, out, errs)
	for _, d := range []string{"shard-0001-r98", "shard-0001-r99"} {
		require.NoError(t, os.RemoveAll(filepath.Join(replicas, d)))
	}

	// Damage shard 0's replica on this site: its data flushed into an sstable, then flipped.
	store := filepath.Join(dir, info.Site.Replicas[0].Store)
	p, err := pebble.Open(store, pebbleopts.New(quietPebble))
	require.NoError(t, err)
	require.NoError(t, p.Flush())
	require.NoError(t, p.Close())
	ssts, _ := filepath.Glob(filepath.Join(store, "*.sst"))
	require.NotEmpty(t, ssts, "no sstable in %s", store)
	flipMiddle(t, ssts[0])
	file := strings.TrimSuffix(filepath.Base(ssts[0]), ".sst")
	for _, args := range [][]string{{"check", "-dir", dir}, {"check", "-json", "-dir", dir}} {
		code, out, errs := runCmd(t, args...)
		require.Equal(t, exitFailed, code, "%q on a damaged replica: exit %d, want 1 naming %s\n%s\n%s", args, code, file, out, errs)
		require.NotContains(t, errs, "internal error", "%q on a damaged replica: exit %d, want 1 naming %s\n%s\n%s", args, code, file, out, errs)
		require.Contains(t, errs, file, "%q on a damaged replica: exit %d, want 1 naming %s\n%s\n%s", args, code, file, out, errs)
	}
}
