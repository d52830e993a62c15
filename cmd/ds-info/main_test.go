package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
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

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/shard"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

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
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	store := func(m ds.Message) {
		t.Helper()
		if _, err := db.Store(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	clk.Set(t0.Add(time.Second))
	for room := 1; room <= 5; room++ {
		store(ds.Message{ClientID: fmt.Sprintf("sensor-%d", room), QoS: 1,
			Topic: fmt.Sprintf("building/1/room/%d/temp", room), Payload: []byte(fmt.Sprintf("%d°C", 18+room))})
	}
	store(ds.Message{ClientID: "broker", Topic: "$SYS/broker/uptime", Payload: []byte("42"), Retain: true})
	store(ds.Message{ClientID: "cam-1", QoS: 2, Topic: "camera/1/frame", Payload: []byte{0, 1, 2, 0xff, '\n', '\t', 'A', '\\'}})

	clk.Set(t0.Add(time.Minute))
	if err := db.AddGeneration(ctx); err != nil {
		t.Fatal(err)
	}
	clk.Set(t0.Add(time.Minute + time.Second))
	long := bytes.Repeat([]byte("0123456789"), 30) // 300 bytes: a blob value once flushed
	store(ds.Message{ClientID: "cam-1", QoS: 1, Topic: "camera/1/frame", Payload: long})
	for room := 2; room <= 7; room++ {
		store(ds.Message{ClientID: fmt.Sprintf("sensor-%d", room), QoS: 0,
			Topic: fmt.Sprintf("building/1/room/%d/temp", room), Payload: bytes.Repeat([]byte{'x'}, 260+room)})
	}
	store(ds.Message{ClientID: "sensor-1", Topic: "building/2/hall", Payload: []byte("ctl\x1b[31m")})
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if flush {
		path := filepath.Join(dir, "pebble")
		p, err := pebble.Open(path, pebbleopts.New(quietPebble))
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
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
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", name, path, got, want)
	}
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
	if err != nil {
		t.Fatal(err)
	}
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
			if code != 0 || errs != "" {
				t.Fatalf("exit %d, stderr:\n%s", code, errs)
			}
			golden(t, tc.name, normalize(out, dir))
		})
	}
	if after := snapshot(t, dir); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("the data directory changed:\nbefore %v\nafter  %v", before, after)
	}
	// The directory is still a good DB afterwards.
	db, err := ds.Open(dir, &ds.Options{Durability: ds.NoSync, Expert: ds.ExpertOptions{Now: func() time.Time { return t0.Add(2 * time.Minute) }}})
	if err != nil {
		t.Fatal(err)
	}
	gens, err := db.Generations()
	if err != nil || len(gens) != 6 {
		t.Errorf("after ds-info: %d generations, %v", len(gens), err)
	}
	db.Close()
}

// TestFlushedCheck runs check and messages over a DB whose data lives in sstables and blob
// files, the files the corruption tests damage.
func TestFlushedCheck(t *testing.T) {
	dir := buildDB(t, true)
	if code, out, errs := runCmd(t, "check", "-dir", dir); code != 0 {
		t.Fatalf("check: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs := runCmd(t, "messages", "-dir", dir, "-limit", "0")
	if code != 0 || strings.Count(out, "\n") != 1+14 {
		t.Fatalf("messages: exit %d, %d lines\n%s\n%s", code, strings.Count(out, "\n"), out, errs)
	}
	// Flushed, the generations that hold messages take bytes on disk.
	code, out, errs = runCmd(t, "generations", "-dir", dir, "-json")
	var gens []ds.GenerationView
	if err := json.Unmarshal([]byte(out), &gens); code != 0 || err != nil {
		t.Fatalf("generations: exit %d, %v\n%s", code, err, errs)
	}
	var msgs uint64
	for _, g := range gens {
		msgs += g.Messages
		if g.Messages > 0 && g.DiskBytes == 0 {
			t.Errorf("shard %d generation %d: %d messages, 0 bytes on disk", g.Shard, g.Generation, g.Messages)
		}
	}
	if msgs != 15 { // the 14 above and one on a $SYS topic, which # does not match
		t.Errorf("generations count %d messages, want 15", msgs)
	}
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
		if code != 2 || errs == "" {
			t.Errorf("%q: exit %d, stderr %q; want 2 and a message", args, code, errs)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "missing")); err == nil {
		t.Errorf("ds-info created a directory")
	}
}

// TestInUse: a directory a DB holds is refused with a clear reason and exit 2.
func TestInUse(t *testing.T) {
	dir := buildDB(t, false)
	db, err := ds.Open(dir, &ds.Options{Durability: ds.NoSync, Expert: ds.ExpertOptions{Now: func() time.Time { return t0.Add(2 * time.Minute) }}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	code, _, errs := runCmd(t, "info", "-dir", dir)
	if code != 2 || !strings.Contains(errs, "in use by another process (lock held)") {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
}

// pebbleFiles returns the files of the shared Pebble instance with the given extension.
func pebbleFiles(t *testing.T, dir, ext string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "pebble", "*"+ext))
	if err != nil || len(m) == 0 {
		t.Fatalf("no %s files in %s (%v)", ext, dir, err)
	}
	return m
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

func truncateHalf(t *testing.T, path string) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, st.Size()/2); err != nil {
		t.Fatal(err)
	}
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
				if code != 1 {
					t.Errorf("exit %d, want 1", code)
				}
				if strings.Contains(errs, "internal error") {
					t.Errorf("panicked")
				}
				fileNum := strings.TrimSuffix(file, filepath.Ext(file))
				if !strings.Contains(errs, "shard ") && !strings.Contains(errs, fileNum) {
					t.Errorf("stderr names neither a shard nor %s", file)
				}
			}
			// The other commands fail cleanly too, without a panic.
			for _, cmd := range []string{"info", "generations", "streams", "messages"} {
				code, _, errs := runCmd(t, cmd, "-dir", dir, "-limit=0")
				if cmd != "messages" {
					code, _, errs = runCmd(t, cmd, "-dir", dir)
				}
				if strings.Contains(errs, "internal error") {
					t.Errorf("%s panicked: %s", cmd, errs)
				}
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
	if code != 1 || !strings.Contains(errs, "shard 1:") || !strings.Contains(errs, fmt.Sprintf("%x", victim)) {
		t.Fatalf("exit %d\n%s\n%s", code, out, errs)
	}
	if strings.Contains(errs, "stored count") { // the key is there: the count holds
		t.Errorf("an undecodable record reported as a missing message too:\n%s", errs)
	}
	if code, _, errs := runCmd(t, "messages", "-dir", dir); code != 1 || !strings.Contains(errs, "corruption") {
		t.Errorf("messages: exit %d, %s", code, errs)
	}
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
		if got := escape([]byte(in)); got != want {
			t.Errorf("escape(%q) = %q, want %q", in, got, want)
		}
	}
	long := bytes.Repeat([]byte("a"), 100)
	if got := payloadText(long); got != strings.Repeat("a", 64)+"... (100 bytes)" {
		t.Errorf("payloadText: %q", got)
	}
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
	if code != 1 || !strings.Contains(errs, "shard 2") || !strings.Contains(errs, "generation 1 holds 1 messages, its stored count says 2") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errs)
	}
}

// TestUncountedGeneration: a generation written before message counts existed has no count
// key. It is no corruption: check passes, generations shows its messages as unknown, and a DB
// opened over it keeps working (and counts the generations it creates).
func TestUncountedGeneration(t *testing.T) {
	dir := buildDB(t, false)
	// Shard 1, generation 1: s|0x0001|'m' 'c'|0x00000001.
	key := append([]byte{'s', 0, 1}, append(shard.CountKeyPrefix(), 0, 0, 0, 1)...)
	changeFirstKey(t, dir, func(k []byte) bool { return bytes.Equal(k, key) },
		func(p *pebble.DB, k []byte) error { return p.Delete(k, pebble.Sync) })
	if code, out, errs := runCmd(t, "check", "-dir", dir); code != 0 {
		t.Fatalf("check: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs := runCmd(t, "generations", "-dir", dir, "-json")
	var gens []ds.GenerationView
	if err := json.Unmarshal([]byte(out), &gens); code != 0 || err != nil {
		t.Fatalf("generations: exit %d, %v\n%s", code, err, errs)
	}
	for _, g := range gens {
		if uncounted := g.Shard == 1 && g.Generation == 1; g.Uncounted != uncounted {
			t.Errorf("shard %d generation %d: uncounted %v", g.Shard, g.Generation, g.Uncounted)
		}
	}
	if _, out, _ := runCmd(t, "shards", "-dir", dir); !strings.Contains(out, "6+?") {
		t.Errorf("shards does not mark shard 1's count partial:\n%s", out)
	}
	db, err := ds.Open(dir, &ds.Options{Durability: ds.NoSync, Expert: ds.ExpertOptions{Now: func() time.Time { return t0.Add(2 * time.Minute) }}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if u, err := db.GenerationUsage(1, 1); err != nil || u.Counted {
		t.Errorf("shard 1 generation 1 reopened: %+v, %v", u, err)
	}
	if u, err := db.GenerationUsage(1, 2); err != nil || !u.Counted || u.Messages != 6 {
		t.Errorf("shard 1 generation 2 reopened: %+v, %v", u, err)
	}
}

// changeFirstKey opens the test DB's Pebble directly, as a bug or a bad restore would, applies
// change to the first key that match accepts, and returns that key.
func changeFirstKey(t *testing.T, dir string, match func(k []byte) bool, change func(p *pebble.DB, k []byte) error) []byte {
	t.Helper()
	p, err := pebble.Open(filepath.Join(dir, "pebble"), pebbleopts.New(quietPebble))
	if err != nil {
		t.Fatal(err)
	}
	it, err := p.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	var victim []byte
	for ok := it.First(); ok; ok = it.Next() {
		if match(it.Key()) {
			victim = append([]byte(nil), it.Key()...)
			break
		}
	}
	if err := it.Close(); err != nil {
		t.Fatal(err)
	}
	if victim == nil {
		t.Fatal("no key matches")
	}
	if err := change(p, victim); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	return victim
}
