// Package fsutil holds the few crash-safe file operations Strata does outside Pebble: writing
// a small file atomically, and creating directories whose existence survives a crash.
package fsutil

import (
	"errors"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// WriteFileAtomic writes path through a temporary file, fsyncs it, renames it into place and
// fsyncs the directory, so that a crash leaves either the old or the new content.
func WriteFileAtomic(fs vfs.FS, path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := fs.Create(tmp, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fs.Rename(tmp, path); err != nil {
		return err
	}
	return SyncDir(fs, fs.PathDir(path))
}

// SyncDir fsyncs a directory, making the creation, renaming or removal of its entries durable.
func SyncDir(fs vfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// MkdirAllSynced creates dir and any missing parents, fsyncing each parent whose entries
// changed, so that a crash cannot take back a directory that acknowledged writes live in.
// (Pebble syncs the parents only of directories it creates itself.)
func MkdirAllSynced(fs vfs.FS, dir string) error {
	var missing []string
	for d := filepath.Clean(dir); ; d = fs.PathDir(d) {
		if _, err := fs.Stat(d); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		missing = append(missing, d)
		if parent := fs.PathDir(d); parent == d {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := fs.MkdirAll(missing[i], 0o755); err != nil {
			return err
		}
		if err := SyncDir(fs, fs.PathDir(missing[i])); err != nil {
			return err
		}
	}
	return nil
}
