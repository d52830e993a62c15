package raftgroup

import (
	"bytes"
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
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
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
// site is refused with ds.ErrInUse. A flipped byte in a replica's sstable is an
// ErrCorruption naming the file, not a panic.
func TestInspectSiteDirectory(t *testing.T) {
	const nShards = 2
	c := newTestCluster(t, 3, nShards, nil)
	ctx := context.Background()
	n := len(storeN(t, c.db(0), "a", 30))
	if err := c.db(1).AddGeneration(ctx); err != nil {
		t.Fatal(err)
	}
	n += len(storeN(t, c.db(2), "b", 30))
	c.waitConverged(nShards, 20*time.Second)

	dir := c.sites[0].cfg.Dir
	if _, err := Inspect(dir); !errors.Is(err, ds.ErrInUse) {
		t.Fatalf("Inspect of a running site: %v, want ds.ErrInUse", err)
	}
	db := c.db(0)
	wantGens, err := db.Generations()
	if err != nil {
		t.Fatal(err)
	}
	wantStreams, err := db.Streams("#", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	wantMsgs, err := db.Messages("#", time.Time{}, 0)
	if err != nil || len(wantMsgs) != n {
		t.Fatalf("the DB serves %d messages (%v), %d stored", len(wantMsgs), err, n)
	}
	id := c.sites[0].ID()
	c.closeAll()

	before := testutil.FileHashes(t, dir)
	si, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	if si.Site != id || si.NShards() != nShards || !si.Replicated() || len(si.Replicas) != nShards {
		t.Fatalf("site %s, %d shards, replicated %v, replicas %+v", si.Site, si.NShards(), si.Replicated(), si.Replicas)
	}
	for sh, r := range si.Replicas {
		if r.Shard != ds.ShardID(sh) || r.ReplicaID == 0 || r.Applied == 0 || len(r.Ignored) != 0 ||
			!strings.HasPrefix(r.Dir, strings.TrimSuffix(replicaDir(dir, ds.ShardID(sh), 1), "1")) || !strings.HasPrefix(r.Store, "db-") {
			t.Errorf("shard %d read from %+v", sh, r)
		}
	}
	gotGens, err := si.Generations()
	if err != nil || len(gotGens) != len(wantGens) || len(gotGens) != 2*nShards {
		t.Fatalf("Generations %v %v, want %v", gotGens, err, wantGens)
	}
	for i := range wantGens {
		if gotGens[i].Shard != wantGens[i].Shard || gotGens[i].Info.String() != wantGens[i].Info.String() {
			t.Errorf("generation %d: %v, want %v", i, gotGens[i], wantGens[i])
		}
	}
	gotStreams, err := si.Streams("#", time.Time{})
	if err != nil || fmt.Sprint(gotStreams) != fmt.Sprint(wantStreams) {
		t.Errorf("Streams %v %v, want %v", gotStreams, err, wantStreams)
	}
	gotMsgs, err := si.Messages("#", time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := messageKeys(gotMsgs), messageKeys(wantMsgs); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Messages:\n%q\nwant\n%q", got, want)
	}
	r := si.Check(0)
	if !r.OK() || r.Messages != uint64(n) || r.ReplicaRecords < 2*nShards {
		t.Errorf("Check: %+v", r)
	}
	if err := si.Close(); err != nil {
		t.Fatal(err)
	}
	if after := testutil.FileHashes(t, dir); after != before {
		t.Fatalf("inspection changed the site's directory:\n%s\nwant\n%s", after, before)
	}

	// Damage shard 1's replica: its data into an sstable (a flush, as Pebble does in time),
	// then bytes flipped in the middle of it.
	store := filepath.Join(si.Replicas[1].Dir, si.Replicas[1].Store)
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
	si, err = Inspect(dir)
	if err != nil {
		// Pebble may find the damage at open already; then the open says so.
		if !errors.Is(err, ds.ErrCorruption) || !strings.Contains(err.Error(), file) {
			t.Fatalf("Inspect of a damaged replica: %v, want ErrCorruption naming %s", err, file)
		}
		return
	}
	defer si.Close()
	r = si.Check(0)
	if r.OK() {
		t.Fatalf("Check of a damaged replica passed: %+v", r)
	}
	found := false
	for _, p := range r.Problems {
		t.Log(p)
		if errors.Is(p.Err, ds.ErrCorruption) && strings.Contains(p.String(), file) && strings.HasPrefix(p.Path, store) {
			found = true
		}
	}
	if !found {
		t.Errorf("no problem is an ErrCorruption naming %s in %s", file, store)
	}
}

func flipMiddle(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b)/2 - 8; i < len(b)/2+8; i++ {
		b[i] ^= 0x5a
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
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
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f := siteFile{ID: SiteID{1, 2, 3, 4, 5, 6, 7, 8}, DeploymentID: 1, RaftAddress: "127.0.0.1:1", MetaReplica: 1}
	if err := writeSiteFile(dir, f); err != nil {
		t.Fatal(err)
	}
	return &fakeSite{t, dir}
}

// replica creates replicas/shard-XXXX-rN with a store that applied entries 1..applied (one
// message each) and a CURRENT naming it; current overrides what CURRENT says ("-" for none).
func (s *fakeSite) replica(sh stream.ShardID, id uint64, applied int, current string) string {
	t := s.t
	t.Helper()
	dir := replicaDir(s.dir, ds.ShardID(sh), id)
	p, err := pebble.Open(filepath.Join(dir, "db-000001"), pebbleopts.New(quietPebble))
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := shard.OpenReplica(shard.ReplicaConfig{ID: sh, DB: p, Logger: discardLogger(), Layout: layout.Params{Kind: stream.LayoutLTS}})
	if err != nil {
		t.Fatal(err)
	}
	var pid shard.ProposerID
	copy(pid[:], "fake-proposer-01")
	var es []shard.Entry
	for i := 1; i <= applied; i++ {
		cmd := &shard.Command{Time: uint64(1_700_000_000_000_000 + i), Messages: []*message.Message{
			{ClientID: "c", Topic: fmt.Sprintf("r%d/t", id), Payload: []byte(fmt.Sprint(i))}}}
		es = append(es, shard.Entry{Index: uint64(i), Proposer: pid, Seq: uint64(i), Cmd: cmd})
	}
	if err := r.ApplyEntries(es); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if current == "" {
		current = "db-000001\n"
	}
	if current != "-" {
		if err := os.WriteFile(filepath.Join(dir, "CURRENT"), []byte(current), 0o644); err != nil {
			t.Fatal(err)
		}
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
	if err := os.Mkdir(filepath.Join(broken, "db-000002"), 0o755); err != nil {
		t.Fatal(err)
	}
	before := testutil.FileHashes(t, s.dir)

	si, err := Inspect(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer si.Close()
	if si.NShards() != 5 || si.Site.String() != "0102030405060708" {
		t.Fatalf("%d shards, site %s", si.NShards(), si.Site)
	}
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
		if got != w {
			t.Errorf("shard %d: read %+v, want %+v (%+v)", sh, got, w, r)
		}
	}
	if ig := si.Replicas[2].Ignored[0]; !errors.Is(ig.Err, ds.ErrCorruption) {
		t.Errorf("the damaged directory: %+v", ig)
	}
	msgs, err := si.Messages("#", time.Time{}, 0)
	if !errors.Is(err, ds.ErrShardNotFound) || len(msgs) != 5+2+1+1 {
		t.Errorf("Messages: %d, %v", len(msgs), err)
	}
	for _, m := range msgs {
		if m.Shard == 1 && m.Topic != "r6/t" {
			t.Errorf("shard 1 message %q read from another replica than r6", m.Topic)
		}
	}
	r := si.Check(0)
	var problems []string
	for _, p := range r.Problems {
		problems = append(problems, p.String())
	}
	if len(r.Problems) != 3 || !strings.Contains(problems[0], "shard 3") ||
		r.Problems[1].Path != damaged || !errors.Is(r.Problems[1].Err, ds.ErrCorruption) || r.Problems[2].Path != broken {
		t.Errorf("Check problems:\n%s", strings.Join(problems, "\n"))
	}
	si.Close()
	if after := testutil.FileHashes(t, s.dir); after != before {
		t.Errorf("inspection changed the directory")
	}
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
		if !errors.Is(err, target) || !strings.Contains(err.Error(), text) {
			t.Errorf("%s: %v, want %v and %q", name, err, target, text)
		}
		if after := testutil.FileHashes(t, filepath.Dir(dir)); after != before {
			t.Errorf("%s: the directory changed", name)
		}
	}
	check("no directory", filepath.Join(t.TempDir(), "nope"), os.ErrNotExist, "no SITE file")
	check("no SITE", t.TempDir(), os.ErrNotExist, "not a replicated site's directory")

	s := newFakeSite(t)
	if err := os.WriteFile(filepath.Join(s.dir, siteFileName), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	check("bad SITE", s.dir, ds.ErrCorruption, "SITE")

	s = newFakeSite(t)
	check("no replicas", s.dir, os.ErrNotExist, "holds no shard replica")
	if IsSiteDir(filepath.Dir(s.dir)) || !IsSiteDir(s.dir) {
		t.Errorf("IsSiteDir")
	}

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
		if err := os.Remove(m); err != nil {
			t.Fatal(err)
		}
	}
	si, err := Inspect(s.dir)
	if err == nil {
		si.Close()
		t.Errorf("a store without its MANIFEST opened")
	} else if bytes.Contains([]byte(err.Error()), []byte("internal error")) {
		t.Errorf("%v", err)
	}
}

// TestInspectSiteRecordedShards: a site records the cluster's NShards in its SITE file once it
// knows the schema; Inspect then lists every shard, also those without a replica directory
// (not loaded), and refuses a replica directory beyond them.
func TestInspectSiteRecordedShards(t *testing.T) {
	s := newFakeSite(t)
	f, err := readSiteFile(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	f.NShards = 4
	if err := writeSiteFile(s.dir, f); err != nil {
		t.Fatal(err)
	}
	s.replica(0, 1, 2, "")
	s.replica(1, 2, 1, "")
	si, err := Inspect(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	if si.NShards() != 4 || len(si.Replicas) != 4 || si.Replicas[3].ReplicaID != 0 {
		t.Errorf("%d shards, replicas %+v", si.NShards(), si.Replicas)
	}
	if _, err := si.StreamCount(3, 1); !errors.Is(err, ds.ErrShardNotFound) {
		t.Errorf("shard 3 without a replica: %v", err)
	}
	si.Close()
	s.replica(4, 3, 1, "")
	if si, err := Inspect(s.dir); !errors.Is(err, ds.ErrCorruption) {
		if err == nil {
			si.Close()
		}
		t.Errorf("a replica of shard 4 in a 4-shard cluster: %v", err)
	}
}
