package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/inspect"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/stretchr/testify/require"
)

// t0 is the fixed clock of the test DBs.
var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// clock is a settable clock for ds.Options.Expert.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// buildDB creates a DB with known content in a new temp dir: 3 shards, messages in two
// generations (one rotation), a '+' learned at the room level, a '$' topic, a binary and a
// long payload. With flush, the memtable is flushed so the data lives in sstables and blob
// files rather than only in the WAL.
func buildDB(t *testing.T, flush bool) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "db")
	clk := &clock{now: t0}
	db, err := ds.Open(dir, &ds.Options{
		NShards:            3,
		Durability:         ds.NoSync,
		WildcardThresholds: []int{100, 3},
		Expert:             ds.ExpertOptions{Now: clk.Now, MemTableBytes: 8 << 20, CacheBytes: 1 << 20},
	})
	require.NoError(t, err)
	ctx := context.Background()
	store := func(m ds.Message) {
		t.Helper()
		_, err := db.Store(ctx, m)
		require.NoError(t, err)
	}
	clk.Set(t0.Add(time.Second))
	for room := 1; room <= 5; room++ {
		store(ds.Message{ClientID: fmt.Sprintf("sensor-%d", room), QoS: 1,
			Topic: fmt.Sprintf("building/1/room/%d/temp", room), Payload: []byte(fmt.Sprintf("%d°C", 18+room))})
	}
	store(ds.Message{ClientID: "broker", Topic: "$SYS/broker/uptime", Payload: []byte("42"), Retain: true})
	store(ds.Message{ClientID: "cam-1", QoS: 2, Topic: "camera/1/frame", Payload: []byte{0, 1, 2, 0xff, '\n', '\t', 'A', '\\'}})

	clk.Set(t0.Add(time.Minute))
	require.NoError(t, db.AddGeneration(ctx))
	clk.Set(t0.Add(time.Minute + time.Second))
	long := bytes.Repeat([]byte("0123456789"), 30) // 300 bytes: a blob value once flushed
	store(ds.Message{ClientID: "cam-1", QoS: 1, Topic: "camera/1/frame", Payload: long})
	for room := 2; room <= 7; room++ {
		store(ds.Message{ClientID: fmt.Sprintf("sensor-%d", room), QoS: 0,
			Topic: fmt.Sprintf("building/1/room/%d/temp", room), Payload: bytes.Repeat([]byte{'x'}, 260+room)})
	}
	store(ds.Message{ClientID: "sensor-1", Topic: "building/2/hall", Payload: []byte("ctl\x1b[31m")})
	require.NoError(t, db.Close())
	if flush {
		path := filepath.Join(dir, "pebble")
		p, err := pebble.Open(path, pebbleopts.New(quietPebble))
		require.NoError(t, err)
		require.NoError(t, p.Flush())
		require.NoError(t, p.Close())
	}
	return dir
}

// quietPebble are Strata's Pebble options with the logs discarded, for the tests' own edits.
var quietPebble = pebbleopts.Config{MemTableBytes: 8 << 20, Logger: pebbleopts.SlogLogger{L: slog.New(slog.DiscardHandler)}}

// runCmd runs ds-info in-process.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

var diskBytes = regexp.MustCompile(`(disk bytes\s+|"disk_bytes": )\d+`)

// normalize replaces what differs between runs: the temp directory and the size of Pebble's
// files.
func normalize(s, dir string) string {
	s = strings.ReplaceAll(s, dir, "DIR")
	s = diskBytes.ReplaceAllString(s, "${1}N")
	// Tables whose last column is DISK BYTES (generations, shards): Pebble's estimate depends
	// on what was flushed, and a DB opened over the directory (-url) flushes its WAL.
	lines := strings.Split(s, "\n")
	inTable := false
	for i, l := range lines {
		switch {
		case strings.HasSuffix(l, "DISK BYTES"):
			inTable = true
		case l == "":
			inTable = false
		case inTable:
			lines[i] = trailingNumber.ReplaceAllString(l, "${1}N")
		}
	}
	return strings.Join(lines, "\n")
}

var trailingNumber = regexp.MustCompile(`(\s)\d+$`)

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if testutil.Rewriting() {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test -rewrite to create it")
	require.Equal(t, string(want), got, "%s differs from %s (go test -rewrite rewrites it):\n--- got\n%s\n--- want\n%s", name, path, got, want)
}

// snapshot returns every file of dir with a hash of its content, except Pebble's LOCK file,
// whose content is empty but whose timestamps the lock itself may touch.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		files[rel] = fmt.Sprintf("%x", sha256.Sum256(b))
		return nil
	})
	require.NoError(t, err)
	return files
}

func TestGolden(t *testing.T) {
	dir := buildDB(t, false)
	before := snapshot(t, dir)
	cases := []struct {
		name string
		args []string
	}{
		{"info", []string{"info"}},
		{"info_json", []string{"info", "--json"}},
		{"generations", []string{"generations"}},
		{"generations_json", []string{"generations", "-json"}},
		{"streams", []string{"streams"}},
		{"streams_filter", []string{"streams", "-filter", "building/+/room/3/#"}},
		{"streams_json", []string{"streams", "-json", "-filter", "$SYS/#"}},
		{"trie_1_1", []string{"trie", "-shard", "1", "-gen", "1"}},
		{"trie_1_2", []string{"trie", "-shard", "1", "-gen", "2"}},
		{"trie_json", []string{"trie", "-shard", "2", "-gen", "1", "-json"}},
		{"messages", []string{"messages"}},
		{"messages_filter", []string{"messages", "-filter", "building/1/room/+/temp", "-since", "2025-01-02T03:05:06Z", "-limit", "4"}},
		{"messages_sys", []string{"messages", "-filter", "$SYS/#"}},
		{"messages_json", []string{"messages", "-json", "-filter", "camera/#"}},
		{"check", []string{"check"}},
		{"check_json", []string{"check", "-json"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string(nil), tc.args[0], "-dir", dir), tc.args[1:]...)
			code, out, errs := runCmd(t, args...)
			require.Equal(t, 0, code, "exit %d, stderr:\n%s", code, errs)
			require.Empty(t, errs, "exit %d, stderr:\n%s", code, errs)
			golden(t, tc.name, normalize(out, dir))
		})
	}
	after := snapshot(t, dir)
	require.Equal(t, fmt.Sprint(before), fmt.Sprint(after), "the data directory changed:\nbefore %v\nafter  %v", before, after)
	// The directory is still a good DB afterwards.
	db, err := ds.Open(dir, &ds.Options{Durability: ds.NoSync, Expert: ds.ExpertOptions{Now: func() time.Time { return t0.Add(2 * time.Minute) }}})
	require.NoError(t, err)
	gens, err := db.Generations()
	require.NoError(t, err, "after ds-info: %d generations, %v", len(gens), err)
	require.Len(t, gens, 6, "after ds-info: %d generations, %v", len(gens), err)
	db.Close()
}

// TestFlushedCheck runs check and messages over a DB whose data lives in sstables and blob
// files, the files the corruption tests damage.
func TestFlushedCheck(t *testing.T) {
	dir := buildDB(t, true)
	code, out, errs := runCmd(t, "check", "-dir", dir)
	require.Equal(t, 0, code, "check: exit %d\n%s\n%s", code, out, errs)
	code, out, errs = runCmd(t, "messages", "-dir", dir, "-limit", "0")
	require.Equal(t, 0, code, "messages: exit %d, %d lines\n%s\n%s", code, strings.Count(out, "\n"), out, errs)
	require.Equal(t, 1+14, strings.Count(out, "\n"), "messages: exit %d, %d lines\n%s\n%s", code, strings.Count(out, "\n"), out, errs)
	// Flushed, the generations that hold messages take bytes on disk.
	code, out, errs = runCmd(t, "generations", "-dir", dir, "-json")
	var gens []inspect.GenerationView
	err := json.Unmarshal([]byte(out), &gens)
	require.Equal(t, 0, code, "generations: exit %d, %v\n%s", code, err, errs)
	require.NoError(t, err, "generations: exit %d, %v\n%s", code, err, errs)
	var msgs uint64
	for _, g := range gens {
		msgs += g.Messages
		require.False(t, g.Messages > 0 && g.DiskBytes == 0, "shard %d generation %d: %d messages, 0 bytes on disk", g.Shard, g.Generation, g.Messages)
	}
	// The 14 above and one on a $SYS topic, which # does not match.
	require.Equal(t, uint64(15), msgs, "generations count %d messages, want 15", msgs)
}

func TestUsage(t *testing.T) {
	dir := buildDB(t, false)
	for _, args := range [][]string{
		{},
		{"nope"},
		{"info"},
		{"info", "-dir", dir, "extra"},
		{"trie", "-dir", dir},
		{"trie", "-dir", dir, "-shard", "7", "-gen", "1"},
		{"trie", "-dir", dir, "-shard", "0", "-gen", "99"},
		{"streams", "-dir", dir, "-filter", "a/#/b"},
		{"messages", "-dir", dir, "-since", "yesterday"},
		{"messages", "-dir", dir, "-limit", "-1"},
		{"info", "-dir", filepath.Join(dir, "missing")},
		{"info", "-dir", t.TempDir()},
	} {
		code, _, errs := runCmd(t, args...)
		require.Equal(t, 2, code, "%q: exit %d, stderr %q; want 2 and a message", args, code, errs)
		require.NotZero(t, errs, "%q: exit %d, stderr %q; want 2 and a message", args, code, errs)
	}
	_, err := os.Stat(filepath.Join(dir, "missing"))
	require.Error(t, err, "ds-info created a directory")
}

// TestInUse: a directory a DB holds is refused with a clear reason and exit 2.
func TestInUse(t *testing.T) {
	dir := buildDB(t, false)
	db, err := ds.Open(dir, &ds.Options{Durability: ds.NoSync, Expert: ds.ExpertOptions{Now: func() time.Time { return t0.Add(2 * time.Minute) }}})
	require.NoError(t, err)
	defer db.Close()
	code, _, errs := runCmd(t, "info", "-dir", dir)
	require.Equal(t, 2, code, "exit %d, stderr %q", code, errs)
	require.Contains(t, errs, "in use by another process (lock held)", "exit %d, stderr %q", code, errs)
}

// pebbleFiles returns the files of the shared Pebble instance with the given extension.
func pebbleFiles(t *testing.T, dir, ext string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "pebble", "*"+ext))
	require.NoError(t, err, "no %s files in %s (%v)", ext, dir, err)
	require.NotEmpty(t, m, "no %s files in %s (%v)", ext, dir, err)
	return m
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

func truncateHalf(t *testing.T, path string) {
	t.Helper()
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(path, st.Size()/2))
}

func TestCheckCorruption(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string) string // returns the damaged file's base name
	}{
		{"flip sst", func(t *testing.T, dir string) string {
			f := pebbleFiles(t, dir, ".sst")[0]
			flipMiddle(t, f)
			return filepath.Base(f)
		}},
		{"flip blob", func(t *testing.T, dir string) string {
			f := pebbleFiles(t, dir, ".blob")[0]
			flipMiddle(t, f)
			return filepath.Base(f)
		}},
		{"truncate sst", func(t *testing.T, dir string) string {
			f := pebbleFiles(t, dir, ".sst")[0]
			truncateHalf(t, f)
			return filepath.Base(f)
		}},
		{"truncate blob", func(t *testing.T, dir string) string {
			f := pebbleFiles(t, dir, ".blob")[0]
			truncateHalf(t, f)
			return filepath.Base(f)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := buildDB(t, true)
			file := tc.damage(t, dir)
			for _, args := range [][]string{{"check", "-dir", dir}, {"check", "-json", "-dir", dir}} {
				code, out, errs := runCmd(t, args...)
				t.Logf("%q: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out, errs)
				require.Equal(t, 1, code, "exit %d, want 1", code)
				require.NotContains(t, errs, "internal error", "panicked")
				fileNum := strings.TrimSuffix(file, filepath.Ext(file))
				require.False(t, !strings.Contains(errs, "shard ") && !strings.Contains(errs, fileNum), "stderr names neither a shard nor %s", file)
			}
			// The other commands fail cleanly too, without a panic.
			for _, cmd := range []string{"info", "generations", "streams", "messages"} {
				code, _, errs := runCmd(t, cmd, "-dir", dir, "-limit=0")
				if cmd != "messages" {
					code, _, errs = runCmd(t, cmd, "-dir", dir)
				}
				require.NotContains(t, errs, "internal error", "%s panicked: %s", cmd, errs)
				t.Logf("%s: exit %d %s", cmd, code, errs)
			}
		})
	}
}

// TestCheckDecodeCorruption damages a value that Pebble stores intact (valid checksums):
// check must find it with the library's decoders.
func TestCheckDecodeCorruption(t *testing.T) {
	dir := buildDB(t, false)
	// Rewrite one message record: shard 1's first LTS data key, s|0x0001|'d'|gen|static|0x0000|...
	victim := changeFirstKey(t, dir, func(k []byte) bool {
		return len(k) > 3+1+4+8+2+8 && k[0] == 's' && k[2] == 1 && k[3] == 'd' && k[16] == 0 && k[17] == 0
	}, func(p *pebble.DB, k []byte) error { return p.Set(k, []byte{9, 9, 9}, pebble.Sync) })
	code, out, errs := runCmd(t, "check", "-dir", dir)
	require.Equal(t, 1, code, "exit %d\n%s\n%s", code, out, errs)
	require.Contains(t, errs, "shard 1:", "exit %d\n%s\n%s", code, out, errs)
	require.Contains(t, errs, fmt.Sprintf("%x", victim), "exit %d\n%s\n%s", code, out, errs)
	// The key is there: the count holds.
	require.NotContains(t, errs, "stored count", "an undecodable record reported as a missing message too:\n%s", errs)
	code, _, errs = runCmd(t, "messages", "-dir", dir)
	require.Equal(t, 1, code, "messages: exit %d, %s", code, errs)
	require.Contains(t, errs, "corruption", "messages: exit %d, %s", code, errs)
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"21°C":           "21°C",
		"a\tb\n":         `a\x09b\x0a`,
		"\xff\x00ok":     `\xff\x00ok`,
		`back\slash`:     `back\\slash`,
		"\x1b[31mred":    `\x1b[31mred`,
		"\u200bzero-wid": `\xe2\x80\x8bzero-wid`,
	} {
		got := escape([]byte(in))
		require.Equal(t, want, got, "escape(%q) = %q, want %q", in, got, want)
	}
	long := bytes.Repeat([]byte("a"), 100)
	got := payloadText(long)
	require.Equal(t, strings.Repeat("a", 64)+"... (100 bytes)", got, "payloadText: %q", got)
}

// TestCheckLostMessage: a message key deleted behind Strata's back (a bad restore, a bug in a
// range deletion) decodes fine everywhere else; check finds it missing against the message
// count stored with its generation.
func TestCheckLostMessage(t *testing.T) {
	dir := buildDB(t, false)
	// Delete shard 2's first key of generation 1's data: s|0x0002|'d'|0x00000001|...
	changeFirstKey(t, dir, func(k []byte) bool {
		return len(k) > 3+1+4 && k[0] == 's' && k[2] == 2 && k[3] == 'd' && k[7] == 1
	}, func(p *pebble.DB, k []byte) error { return p.Delete(k, pebble.Sync) })
	code, out, errs := runCmd(t, "check", "-dir", dir)
	require.Equal(t, 1, code, "exit %d\n%s\n%s", code, out, errs)
	require.Contains(t, errs, "shard 2", "exit %d\n%s\n%s", code, out, errs)
	require.Contains(t, errs, "generation 1 holds 1 messages, its stored count says 2", "exit %d\n%s\n%s", code, out, errs)
}

// TestUncountedGeneration: a generation written before message counts existed has no count
// key. It is no corruption: check passes, generations shows its messages as unknown, and a DB
// opened over it keeps working (and counts the generations it creates).
func TestUncountedGeneration(t *testing.T) {
	dir := buildDB(t, false)
	// Shard 1, generation 1: s|0x0001|'m' 'c'|0x00000001.
	key := []byte{'s', 0, 1, 'm', 'c', 0, 0, 0, 1}
	changeFirstKey(t, dir, func(k []byte) bool { return bytes.Equal(k, key) },
		func(p *pebble.DB, k []byte) error { return p.Delete(k, pebble.Sync) })
	code, out, errs := runCmd(t, "check", "-dir", dir)
	require.Equal(t, 0, code, "check: exit %d\n%s\n%s", code, out, errs)
	code, out, errs = runCmd(t, "generations", "-dir", dir, "-json")
	var gens []inspect.GenerationView
	err := json.Unmarshal([]byte(out), &gens)
	require.Equal(t, 0, code, "generations: exit %d, %v\n%s", code, err, errs)
	require.NoError(t, err, "generations: exit %d, %v\n%s", code, err, errs)
	for _, g := range gens {
		uncounted := g.Shard == 1 && g.Generation == 1
		require.Equal(t, uncounted, g.Uncounted, "shard %d generation %d: uncounted %v", g.Shard, g.Generation, g.Uncounted)
	}
	_, out, _ = runCmd(t, "shards", "-dir", dir)
	require.Contains(t, out, "6+?", "shards does not mark shard 1's count partial:\n%s", out)
	db, err := ds.Open(dir, &ds.Options{Durability: ds.NoSync, Expert: ds.ExpertOptions{Now: func() time.Time { return t0.Add(2 * time.Minute) }}})
	require.NoError(t, err)
	defer db.Close()
	u, err := db.GenerationUsage(1, 1)
	require.NoError(t, err, "shard 1 generation 1 reopened: %+v, %v", u, err)
	require.False(t, u.Counted, "shard 1 generation 1 reopened: %+v, %v", u, err)
	u, err = db.GenerationUsage(1, 2)
	require.NoError(t, err, "shard 1 generation 2 reopened: %+v, %v", u, err)
	require.True(t, u.Counted, "shard 1 generation 2 reopened: %+v, %v", u, err)
	require.Equal(t, uint64(6), u.Messages, "shard 1 generation 2 reopened: %+v, %v", u, err)
}

// changeFirstKey opens the test DB's Pebble directly, as a bug or a bad restore would, applies
// change to the first key that match accepts, and returns that key.
func changeFirstKey(t *testing.T, dir string, match func(k []byte) bool, change func(p *pebble.DB, k []byte) error) []byte {
	t.Helper()
	p, err := pebble.Open(filepath.Join(dir, "pebble"), pebbleopts.New(quietPebble))
	require.NoError(t, err)
	it, err := p.NewIter(nil)
	require.NoError(t, err)
	var victim []byte
	for ok := it.First(); ok; ok = it.Next() {
		if match(it.Key()) {
			victim = append([]byte(nil), it.Key()...)
			break
		}
	}
	require.NoError(t, it.Close())
	require.NotNil(t, victim, "no key matches")
	require.NoError(t, change(p, victim))
	require.NoError(t, p.Close())
	return victim
}
