package testutil

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FileHashes lists every file under dir with a SHA-256 of its content, one per line in path
// order, so that a test can check that a read-only operation changed nothing. Pebble's LOCK
// files are left out: they are empty, and taking the lock may touch their timestamps.
func FileHashes(t testing.TB, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "LOCK" {
			return err
		}
		c, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %x\n", path, sha256.Sum256(c))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
