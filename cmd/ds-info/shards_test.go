package main

import (
	"testing"
)

// TestShardsGolden: shards on the test DB (one row per shard: generation count, current
// generation, oldest start, streams), as a table and as JSON; -url on an embedded node prints
// the same bytes (it has no /v1/cluster, so no Raft columns).
func TestShardsGolden(t *testing.T) {
	dir := buildDB(t, false)
	dirOut := map[string]string{}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"shards", []string{"shards", "-dir", dir}},
		{"shards_json", []string{"shards", "-dir", dir, "-json"}},
	} {
		code, out, errs := runCmd(t, tc.args...)
		if code != 0 || errs != "" {
			t.Fatalf("%v: exit %d, stderr:\n%s", tc.args, code, errs)
		}
		golden(t, tc.name, normalize(out, dir))
		dirOut[tc.name] = out
	}
	_, u := serveDB(t, dir)
	for name, args := range map[string][]string{
		"shards":      {"shards", "-url", u},
		"shards_json": {"shards", "-url", u, "-json"},
	} {
		code, out, errs := runCmd(t, args...)
		if code != 0 || errs != "" {
			t.Fatalf("%v: exit %d, stderr:\n%s", args, code, errs)
		}
		if normalize(out, dir) != normalize(dirOut[name], dir) {
			t.Errorf("%v printed\n%s\n-dir printed\n%s", args, out, dirOut[name])
		}
	}
}
