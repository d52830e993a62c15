package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/inspect"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// goldenCases are the TestGolden cases that -url serves too (not check, and info's table
// names the URL instead of the directory).
var urlCases = []struct {
	name string
	args []string
}{
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
}

// serveDB opens the DB of dir and serves its admin handler under /strata/. The DB is closed
// when the test ends (or earlier by the caller).
func serveDB(t *testing.T, dir string) (*ds.DB, string) {
	t.Helper()
	db, err := ds.Open(dir, &ds.Options{Durability: ds.NoSync, Expert: ds.ExpertOptions{Now: func() time.Time { return t0.Add(2 * time.Minute) }}})
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	mux := http.NewServeMux()
	mux.Handle("/strata/", http.StripPrefix("/strata", inspect.Handler(db, inspect.WithDataDir(dir), inspect.WithPayloads(nil))))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return db, srv.URL + "/strata"
}

// TestURLGolden: ds-info -url against a node prints what ds-info -dir prints for the same
// data directory, byte for byte: the same golden files (info's table has its own, as it
// names the URL).
func TestURLGolden(t *testing.T) {
	dir := buildDB(t, false)
	// -dir first (the directory is free), then -url with the DB open over it.
	dirOut := map[string]string{}
	for _, tc := range urlCases {
		args := append(append([]string(nil), tc.args[0], "-dir", dir), tc.args[1:]...)
		code, out, errs := runCmd(t, args...)
		require.Equal(t, 0, code, "%s -dir: exit %d, stderr:\n%s", tc.name, code, errs)
		require.Empty(t, errs, "%s -dir: exit %d, stderr:\n%s", tc.name, code, errs)
		dirOut[tc.name] = normalize(out, dir)
	}
	_, u := serveDB(t, dir)
	for _, tc := range urlCases {
		t.Run(tc.name, func(t *testing.T) {
			for _, args := range [][]string{
				append(append([]string(nil), tc.args[0], "-url", u), tc.args[1:]...),
				append([]string{"-url", u}, tc.args...), // -url before the command
			} {
				code, out, errs := runCmd(t, args...)
				require.Equal(t, 0, code, "%q: exit %d, stderr:\n%s", args, code, errs)
				require.Empty(t, errs, "%q: exit %d, stderr:\n%s", args, code, errs)
				got := normalize(out, dir)
				golden(t, tc.name, got)
				require.Equal(t, dirOut[tc.name], got, "%q differs from -dir:\n--- url\n%s\n--- dir\n%s", args, got, dirOut[tc.name])
			}
		})
	}
	code, out, errs := runCmd(t, "info", "-url", u)
	require.Equal(t, 0, code, "info -url: exit %d, stderr:\n%s", code, errs)
	require.Empty(t, errs, "info -url: exit %d, stderr:\n%s", code, errs)
	golden(t, "url_info", normalize(strings.ReplaceAll(out, u, "URL"), dir))
}

func TestURLErrors(t *testing.T) {
	dir := buildDB(t, false)
	db, u := serveDB(t, dir)
	for _, args := range [][]string{
		{"streams", "-url", u, "-filter", "a/#/b"},
		{"messages", "-url", u, "-filter", "a/+b"},
		{"trie", "-url", u, "-shard", "7", "-gen", "1"},
		{"trie", "-url", u, "-shard", "0", "-gen", "99"},
		{"trie", "-url", u},
		{"messages", "-url", u, "-since", "yesterday"},
		{"check", "-url", u},
		{"-url", u, "check"},
		{"info", "-url", u, "-dir", dir},
		{"info", "-url", "not a url"},
		{"info", "-url", "http://127.0.0.1:1/strata"}, // nothing listens
		{"info", "-url", u + "/nope"},
	} {
		code, out, errs := runCmd(t, args...)
		require.Equal(t, exitUsage, code, "%q: exit %d, stdout %q, stderr %q; want 2, a message and no output", args, code, out, errs)
		require.NotZero(t, errs, "%q: exit %d, stdout %q, stderr %q; want 2, a message and no output", args, code, out, errs)
		require.Empty(t, out, "%q: exit %d, stdout %q, stderr %q; want 2, a message and no output", args, code, out, errs)
	}
	code, _, errs := runCmd(t, "check", "-url", u)
	require.Contains(t, errs, "only with -dir", "check -url: exit %d, stderr %q", code, errs)
	// A closed DB: 503, exit 1.
	db.Close()
	for _, cmd := range []string{"info", "generations", "streams", "messages"} {
		code, out, errs := runCmd(t, cmd, "-url", u)
		require.Equal(t, exitFailed, code, "%s on a closed DB: exit %d, stdout %q, stderr %q", cmd, code, out, errs)
		require.Contains(t, errs, "HTTP 503", "%s on a closed DB: exit %d, stdout %q, stderr %q", cmd, code, out, errs)
		require.Empty(t, out, "%s on a closed DB: exit %d, stdout %q, stderr %q", cmd, code, out, errs)
	}
}
