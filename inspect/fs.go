package inspect

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrInUse is returned by Open and OpenReplicas when another process (or this one) holds the data
// directory open: Pebble's directory lock is taken.
var ErrInUse = errors.New("strata: data directory in use (lock held)")

// errReadOnlyFS is what every mutating call of readOnlyFS returns.
var errReadOnlyFS = errors.New("strata: inspection is read-only: the data directory must not be modified")

// readOnlyFS is the filesystem of an Inspector: it refuses every call that would create,
// change or remove a file, so that a read-only Pebble that tried one anyway fails instead of
// modifying the data directory. Only Lock passes through (Pebble's directory lock, which
// keeps a running node and the inspector apart).
type readOnlyFS struct{ vfs.FS }

func (readOnlyFS) Create(name string, _ vfs.DiskWriteCategory) (vfs.File, error) {
	return nil, fmt.Errorf("create %s: %w", name, errReadOnlyFS)
}

func (readOnlyFS) Link(oldname, newname string) error {
	return fmt.Errorf("link %s: %w", newname, errReadOnlyFS)
}

func (readOnlyFS) OpenReadWrite(name string, _ vfs.DiskWriteCategory, _ ...vfs.OpenOption) (vfs.File, error) {
	return nil, fmt.Errorf("open %s for writing: %w", name, errReadOnlyFS)
}

func (readOnlyFS) Remove(name string) error {
	return fmt.Errorf("remove %s: %w", name, errReadOnlyFS)
}

func (readOnlyFS) RemoveAll(name string) error {
	return fmt.Errorf("remove %s: %w", name, errReadOnlyFS)
}

func (readOnlyFS) Rename(oldname, newname string) error {
	return fmt.Errorf("rename %s: %w", oldname, errReadOnlyFS)
}

func (readOnlyFS) ReuseForWrite(oldname, newname string, _ vfs.DiskWriteCategory) (vfs.File, error) {
	return nil, fmt.Errorf("reuse %s: %w", oldname, errReadOnlyFS)
}

func (readOnlyFS) MkdirAll(dir string, _ os.FileMode) error {
	return fmt.Errorf("mkdir %s: %w", dir, errReadOnlyFS)
}

// Lock takes Pebble's directory lock through the underlying filesystem and reports a lock
// held elsewhere as ErrInUse.
func (fs readOnlyFS) Lock(name string) (io.Closer, error) {
	c, err := fs.FS.Lock(name)
	if err == nil {
		return c, nil
	}
	// Another process: fcntl answers EAGAIN or EACCES. This process: Pebble's own registry
	// of held locks answers with a plain message.
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) ||
		strings.Contains(err.Error(), "lock held by current process") {
		return nil, fmt.Errorf("%w: %s: %v", ErrInUse, name, err)
	}
	return nil, err
}
