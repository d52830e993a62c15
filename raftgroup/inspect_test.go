package raftgroup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/inspect"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

var quietPebble = pebbleopts.Config{Logger: pebbleopts.SlogLogger{L: slog.New(slog.DiscardHandler)}}

func messageKeys(msgs []ds.Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, fmt.Sprintf("%d %d %s %d %v %s %q", m.Shard, m.Timestamp, m.ClientID, m.QoS, m.Retain, m.Topic, m.Payload))
	}
	return out
}

// TestInspectSiteDirectory: a three-site cluster stores messages in two generations; once
// the sites are closed, one site's directory inspected read-only shows the generations,
// streams and messages that site's DB served, Check passes (the replicas' applied indexes
// and de-duplication records included), and nothing in the directory changed. A running
// site is refused with inspect.ErrInUse. A flipped byte in a replica's sstable is an
// ErrCorruption naming the file, not a panic.
func TestInspectSiteDirectory(t *testing.T) {
	const nShards = 2
	c := newTestCluster(t, 3, nShards, nil)
	ctx := context.Background()
	n := len(storeN(t, c.db(0), "a", 30))
	require.NoError(t, c.db(1).AddGeneration(ctx))
	n += len(storeN(t, c.db(2), "b", 30))
	c.waitConverged(nShards, 20*time.Second)

	dir := c.sites[0].cfg.Dir
	_, err := Inspect(dir)
	require.ErrorIs(t, err, inspect.ErrInUse, "Inspect of a running site: %v, want inspect.ErrInUse", err)
	db := c.db(0)
	wantGens, err := db.Generations()
	require.NoError(t, err)
	wantStreams, err := db.Streams("#", time.Time{})
	require.NoError(t, err)
	wantMsgs, err := db.Messages("#", time.Time{}, 0)
	require.NoError(t, err, "the DB serves %d messages (%v), %d stored", len(wantMsgs), err, n)
	require.Len(t, wantMsgs, n, "the DB serves %d messages (%v), %d stored", len(wantMsgs), err, n)
	id := c.sites[0].ID()
	c.closeAll()

	before := testutil.FileHashes(t, dir)
	si, err := Inspect(dir)
	require.NoError(t, err)
	require.Equal(t, id, si.Site, "site %s, %d shards, replicated %v, replicas %+v", si.Site, si.NShards(), si.Replicated(), si.Replicas)
	require.Equal(t, nShards, si.NShards(), "site %s, %d shards, replicated %v, replicas %+v", si.Site, si.NShards(), si.Replicated(), si.Replicas)
	require.True(t, si.Replicated(), "site %s, %d shards, replicated %v, replicas %+v", si.Site, si.NShards(), si.Replicated(), si.Replicas)
	require.Len(t, si.Replicas, nShards, "site %s, %d shards, replicated %v, replicas %+v", si.Site, si.NShards(), si.Replicated(), si.Replicas)
	for sh, r := range si.Replicas {
		require.Equal(t, ds.ShardID(sh), r.Shard, "shard %d read from %+v", sh, r)
		require.NotZero(t, r.ReplicaID, "shard %d read from %+v", sh, r)
		require.NotZero(t, r.Applied, "shard %d read from %+v", sh, r)
		require.Empty(t, r.Ignored, "shard %d read from %+v", sh, r)
		require.True(t, strings.HasPrefix(r.Dir, strings.TrimSuffix(replicaDir(dir, ds.ShardID(sh), 1), "1")), "shard %d read from %+v", sh, r)
		require.True(t, strings.HasPrefix(r.Store, "db-"), "shard %d read from %+v", sh, r)
	}
	gotGens, err := si.Generations()
	require.NoError(t, err, "Generations %v %v, want %v", gotGens, err, wantGens)
	require.Len(t, gotGens, len(wantGens), "Generations %v %v, want %v", gotGens, err, wantGens)
	require.Len(t, gotGens, 2*nShards, "Generations %v %v, want %v", gotGens, err, wantGens)
	for i := range wantGens {
		require.Equal(t, wantGens[i].Shard, gotGens[i].Shard, "generation %d: %v, want %v", i, gotGens[i], wantGens[i])
		require.Equal(t, wantGens[i].Info.String(), gotGens[i].Info.String(), "generation %d: %v, want %v", i, gotGens[i], wantGens[i])
	}
	gotStreams, err := si.Streams("#", time.Time{})
	require.NoError(t, err, "Streams %v %v, want %v", gotStreams, err, wantStreams)
	require.Equal(t, fmt.Sprint(wantStreams), fmt.Sprint(gotStreams), "Streams %v %v, want %v", gotStreams, err, wantStreams)
	gotMsgs, err := si.Messages("#", time.Time{}, 0)
	require.NoError(t, err)
	got, want := messageKeys(gotMsgs), messageKeys(wantMsgs)
	require.Equal(t, fmt.Sprint(want), fmt.Sprint(got), "Messages:\n%q\nwant\n%q", got, want)
	r := si.Check(0)
	require.True(t, r.OK(), "Check: %+v", r)
	require.Equal(t, uint64(n), r.Messages, "Check: %+v", r)
	require.GreaterOrEqual(t, r.ReplicaRecords, uint64(2*nShards), "Check: %+v", r)
	require.NoError(t, si.Close())
	after := testutil.FileHashes(t, dir)
	require.Equal(t, before, after, "inspection changed the site's directory:\n%s\nwant\n%s", after, before)

	// Damage shard 1's replica: its data into an sstable (a flush, as Pebble does in time),
	// then bytes flipped in the middle of it.
	store := filepath.Join(si.Replicas[1].Dir, si.Replicas[1].Store)
	p, err := pebble.Open(store, pebbleopts.New(quietPebble))
	require.NoError(t, err)
	require.NoError(t, p.Flush())
	require.NoError(t, p.Close())
	ssts, _ := filepath.Glob(filepath.Join(store, "*.sst"))
	require.NotEmpty(t, ssts, "no sstable in %s", store)
	flipMiddle(t, ssts[0])
	file := strings.TrimSuffix(filepath.Base(ssts[0]), ".sst")
	si, err = Inspect(dir)
	if err != nil {
		// Pebble may find the damage at open already; then the open says so.
		require.ErrorIs(t, err, ds.ErrCorruption, "Inspect of a damaged replica: %v, want ErrCorruption naming %s", err, file)
		require.Contains(t, err.Error(), file, "Inspect of a damaged replica: %v, want ErrCorruption naming %s", err, file)
		return
	}
	defer si.Close()
	r = si.Check(0)
	require.False(t, r.OK(), "Check of a damaged replica passed: %+v", r)
	found := false
	for _, p := range r.Problems {
		t.Log(p)
		if errors.Is(p.Err, ds.ErrCorruption) && strings.Contains(p.String(), file) && strings.HasPrefix(p.Path, store) {
			found = true
		}
	}
	require.True(t, found, "no problem is an ErrCorruption naming %s in %s", file, store)
}

func flipMiddle(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	for i := len(b)/2 - 8; i < len(b)/2+8; i++ {
		b[i] ^= 0x5a
	}
	require.NoError(t, os.WriteFile(path, b, 0o644))
}

// fakeSite is a site directory built without running a site: a SITE file and replica
// directories whose stores shard.Replica writes, for the cases a cluster does not produce on
// demand (leftover and damaged replica directories).
type fakeSite struct {
	t   *testing.T
	dir string
}

func newFakeSite(t *testing.T) *fakeSite {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "site")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	f := siteFile{ID: SiteID{1, 2, 3, 4, 5, 6, 7, 8}, DeploymentID: 1, RaftAddress: "127.0.0.1:1", MetaReplica: 1}
	require.NoError(t, writeSiteFile(dir, f))
	return &fakeSite{t, dir}
}

// replica creates replicas/shard-XXXX-rN with a store that applied entries 1..applied (one
// message each) and a CURRENT naming it; current overrides what CURRENT says ("-" for none).
func (s *fakeSite) replica(sh stream.ShardID, id uint64, applied int, current string) string {
	t := s.t
	t.Helper()
	dir := replicaDir(s.dir, ds.ShardID(sh), id)
	p, err := pebble.Open(filepath.Join(dir, "db-000001"), pebbleopts.New(quietPebble))
	require.NoError(t, err)
	r, _, err := shard.OpenReplica(shard.ReplicaConfig{ID: sh, DB: p, Logger: discardLogger(), Layout: layout.Params{Kind: stream.LayoutLTS}})
	require.NoError(t, err)
	var pid shard.ProposerID
	copy(pid[:], "fake-proposer-01")
	var es []shard.Entry
	for i := 1; i <= applied; i++ {
		cmd := &shard.Command{Time: uint64(1_700_000_000_000_000 + i), Messages: []*message.Message{
			{ClientID: "c", Topic: fmt.Sprintf("r%d/t", id), Payload: []byte(fmt.Sprint(i))}}}
		es = append(es, shard.Entry{Index: uint64(i), Proposer: pid, Seq: uint64(i), Cmd: cmd})
	}
	require.NoError(t, r.ApplyEntries(es))
	r.Close()
	require.NoError(t, p.Close())
	if current == "" {
		current = "db-000001\n"
	}
	if current != "-" {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "CURRENT"), []byte(current), 0o644))
	}
	return dir
}

// TestInspectSiteChoosesReplica: with several replica directories of a shard, the store that
// applied the most is read, the highest replica ID on a tie; directories without a usable
// CURRENT or a store that opens are ignored and listed, damaged ones reported by Check; a shard
// below the highest
// without any directory is listed as not loaded.
func TestInspectSiteChoosesReplica(t *testing.T) {
	s := newFakeSite(t)
	s.replica(0, 1, 5, "")
	s.replica(0, 2, 3, "")
	s.replica(0, 3, 0, "-")
	s.replica(1, 4, 2, "")
	s.replica(1, 6, 2, "")
	s.replica(2, 7, 1, "")
	damaged := s.replica(2, 8, 4, "db-000009\n")
	s.replica(4, 9, 1, "")
	// A leftover whose CURRENT names a directory that holds no store: it does not open.
	broken := s.replica(4, 10, 0, "db-000002\n")
	require.NoError(t, os.Mkdir(filepath.Join(broken, "db-000002"), 0o755))
	before := testutil.FileHashes(t, s.dir)

	si, err := Inspect(s.dir)
	require.NoError(t, err)
	defer si.Close()
	require.Equal(t, 5, si.NShards(), "%d shards, site %s", si.NShards(), si.Site)
	require.Equal(t, "0102030405060708", si.Site.String(), "%d shards, site %s", si.NShards(), si.Site)
	type pick struct {
		replica, applied uint64
		ignored          string
	}
	want := []pick{{1, 5, "2 3"}, {6, 2, "4"}, {7, 1, "8"}, {0, 0, ""}, {9, 1, "10"}}
	for sh, w := range want {
		r := si.Replicas[sh]
		var ig []string
		for _, i := range r.Ignored {
			ig = append(ig, fmt.Sprint(i.ReplicaID))
		}
		got := pick{r.ReplicaID, r.Applied, strings.Join(ig, " ")}
		require.Equal(t, w, got, "shard %d: read %+v, want %+v (%+v)", sh, got, w, r)
	}
	ig := si.Replicas[2].Ignored[0]
	require.ErrorIs(t, ig.Err, ds.ErrCorruption, "the damaged directory: %+v", ig)
	msgs, err := si.Messages("#", time.Time{}, 0)
	require.ErrorIs(t, err, ds.ErrShardNotFound, "Messages: %d, %v", len(msgs), err)
	require.Len(t, msgs, 5+2+1+1, "Messages: %d, %v", len(msgs), err)
	for _, m := range msgs {
		require.False(t, m.Shard == 1 && m.Topic != "r6/t", "shard 1 message %q read from another replica than r6", m.Topic)
	}
	r := si.Check(0)
	var problems []string
	for _, p := range r.Problems {
		problems = append(problems, p.String())
	}
	require.Len(t, r.Problems, 3, "Check problems:\n%s", strings.Join(problems, "\n"))
	require.Contains(t, problems[0], "shard 3", "Check problems:\n%s", strings.Join(problems, "\n"))
	require.Equal(t, damaged, r.Problems[1].Path, "Check problems:\n%s", strings.Join(problems, "\n"))
	require.ErrorIs(t, r.Problems[1].Err, ds.ErrCorruption, "Check problems:\n%s", strings.Join(problems, "\n"))
	require.Equal(t, broken, r.Problems[2].Path, "Check problems:\n%s", strings.Join(problems, "\n"))
	si.Close()
	after := testutil.FileHashes(t, s.dir)
	require.Equal(t, before, after, "inspection changed the directory")
}

// TestInspectSiteErrors: what is not an inspectable site's directory fails with a clear,
// classifiable error, and nothing is created.
func TestInspectSiteErrors(t *testing.T) {
	check := func(name, dir string, target error, text string) {
		t.Helper()
		before := testutil.FileHashes(t, filepath.Dir(dir))
		si, err := Inspect(dir)
		if err == nil {
			si.Close()
		}
		require.ErrorIs(t, err, target, "%s: %v, want %v and %q", name, err, target, text)
		require.Contains(t, err.Error(), text, "%s: %v, want %v and %q", name, err, target, text)
		after := testutil.FileHashes(t, filepath.Dir(dir))
		require.Equal(t, before, after, "%s: the directory changed", name)
	}
	check("no directory", filepath.Join(t.TempDir(), "nope"), os.ErrNotExist, "no SITE file")
	check("no SITE", t.TempDir(), os.ErrNotExist, "not a replicated site's directory")

	s := newFakeSite(t)
	require.NoError(t, os.WriteFile(filepath.Join(s.dir, siteFileName), []byte("{not json"), 0o644))
	check("bad SITE", s.dir, ds.ErrCorruption, "SITE")

	s = newFakeSite(t)
	check("no replicas", s.dir, os.ErrNotExist, "holds no shard replica")
	require.False(t, IsSiteDir(filepath.Dir(s.dir)), "IsSiteDir")
	require.True(t, IsSiteDir(s.dir), "IsSiteDir")

	s = newFakeSite(t)
	s.replica(0, 1, 1, "-")
	check("no CURRENT", s.dir, os.ErrNotExist, "has no CURRENT file")

	s = newFakeSite(t)
	s.replica(0, 1, 1, "../../../etc\n")
	check("malformed CURRENT", s.dir, ds.ErrCorruption, "not a store")

	s = newFakeSite(t)
	s.replica(0, 1, 1, "db-000002\n")
	check("dangling CURRENT", s.dir, ds.ErrCorruption, "does not exist")

	// A damaged store: Pebble's MANIFEST pointer names a missing file.
	s = newFakeSite(t)
	dir := s.replica(0, 1, 1, "")
	markers, _ := filepath.Glob(filepath.Join(dir, "db-000001", "MANIFEST-*"))
	for _, m := range markers {
		require.NoError(t, os.Remove(m))
	}
	si, err := Inspect(s.dir)
	if err == nil {
		si.Close()
	}
	require.Error(t, err, "a store without its MANIFEST opened")
	require.NotContains(t, err.Error(), "internal error")
}

// TestInspectSiteRecordedShards: a site records the cluster's NShards in its SITE file once it
// knows the schema; Inspect then lists every shard, also those without a replica directory
// (not loaded), and refuses a replica directory beyond them.
func TestInspectSiteRecordedShards(t *testing.T) {
	s := newFakeSite(t)
	f, err := readSiteFile(s.dir)
	require.NoError(t, err)
	f.NShards = 4
	require.NoError(t, writeSiteFile(s.dir, f))
	s.replica(0, 1, 2, "")
	s.replica(1, 2, 1, "")
	si, err := Inspect(s.dir)
	require.NoError(t, err)
	require.Equal(t, 4, si.NShards(), "%d shards, replicas %+v", si.NShards(), si.Replicas)
	require.Len(t, si.Replicas, 4, "%d shards, replicas %+v", si.NShards(), si.Replicas)
	require.Equal(t, uint64(0), si.Replicas[3].ReplicaID, "%d shards, replicas %+v", si.NShards(), si.Replicas)
	_, err = si.StreamCount(3, 1)
	require.ErrorIs(t, err, ds.ErrShardNotFound, "shard 3 without a replica: %v", err)
	si.Close()
	s.replica(4, 3, 1, "")
	si, err = Inspect(s.dir)
	if err == nil {
		si.Close()
	}
	require.ErrorIs(t, err, ds.ErrCorruption, "a replica of shard 4 in a 4-shard cluster: %v", err)
}
