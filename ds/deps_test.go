package ds_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestNoDragonboatDependency: package ds must build without dragonboat. Package raftgroup
// brings it in and implements ds.Backend; a broker that runs the embedded DB must not link a
// Raft library it never uses, and an import of raftgroup from ds would be a cycle anyway.
func TestNoDragonboatDependency(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH, cannot list the dependencies of ds")
	}
	const pkg = "github.com/strata-mq/strata/ds"
	out, err := exec.CommandContext(t.Context(), goBin, "list", "-deps", pkg).Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		require.NoError(t, err, "go list -deps %s:\n%s", pkg, stderr)
	}
	deps := strings.Fields(string(out))
	// A list without ds's own shard package would mean go list answered something else, and
	// the check below would pass for nothing.
	found := false
	for _, d := range deps {
		if d == "github.com/strata-mq/strata/shard" {
			found = true
		}
		require.NotContains(t, d, "dragonboat", "package ds depends on %s", d)
	}
	require.True(t, found, "go list -deps %s does not list package shard:\n%s", pkg, out)
}
