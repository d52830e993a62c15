package main

import (
	"testing"

	"github.com/stretchr/testify/require"
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
		require.Equal(t, 0, code, "%v: exit %d, stderr:\n%s", tc.args, code, errs)
		require.Empty(t, errs, "%v: exit %d, stderr:\n%s", tc.args, code, errs)
		golden(t, tc.name, normalize(out, dir))
		dirOut[tc.name] = out
	}
	_, u := serveDB(t, dir)
	for name, args := range map[string][]string{
		"shards":      {"shards", "-url", u},
		"shards_json": {"shards", "-url", u, "-json"},
	} {
		code, out, errs := runCmd(t, args...)
		require.Equal(t, 0, code, "%v: exit %d, stderr:\n%s", args, code, errs)
		require.Empty(t, errs, "%v: exit %d, stderr:\n%s", args, code, errs)
		require.Equal(t, normalize(dirOut[name], dir), normalize(out, dir), "%v printed\n%s\n-dir printed\n%s", args, out, dirOut[name])
	}
}
