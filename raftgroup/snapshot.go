package raftgroup

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/klauspost/compress/zstd"
	sm "github.com/lni/dragonboat/v4/statemachine"
	"github.com/strata-mq/strata/internal/fsutil"
)

// Snapshot stream: the files of a Pebble checkpoint, zstd-compressed (with zstd's own content
// checksum).
//
//	"STRATA-SNAP" 0x01 | file* | uvarint(0)
//	file: uvarint(len(name)) | name (slash-separated, relative) | uvarint(size) | size bytes
//
// A receiver writes the files under a fresh directory, never outside it, and fsyncs them.

var snapshotMagic = []byte("STRATA-SNAP\x01")

// snapshotMaxWindow bounds the zstd window a received stream may declare: the decoder allocates
// the window (up to 512 MiB by default) on the strength of the frame header alone. writeSnapshot
// (SpeedFastest) uses 4 MiB; twice that leaves room for other encoder settings.
const snapshotMaxWindow = 8 << 20

// errBadSnapshot is wrapped by every error about a snapshot stream that does not decode.
var errBadSnapshot = errors.New("strata: bad snapshot stream")

// writeSnapshot streams the files under dir to w.
func writeSnapshot(dir string, w io.Writer, stopc <-chan struct{}) error {
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return err
	}
	if _, err := zw.Write(snapshotMagic); err != nil {
		return err
	}
	var hdr []byte
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		select {
		case <-stopc:
			return sm.ErrSnapshotStopped
		default:
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		hdr = binary.AppendUvarint(hdr[:0], uint64(len(name)))
		hdr = append(hdr, name...)
		hdr = binary.AppendUvarint(hdr, uint64(st.Size()))
		if _, err := zw.Write(hdr); err != nil {
			return err
		}
		n, err := io.Copy(zw, io.LimitReader(f, st.Size()))
		if err == nil && n != st.Size() {
			err = fmt.Errorf("%s: size changed while streaming", path)
		}
		return err
	})
	if err != nil {
		zw.Close()
		return err
	}
	if _, err := zw.Write(binary.AppendUvarint(nil, 0)); err != nil {
		return err
	}
	return zw.Close()
}

// readSnapshot writes the files of a snapshot stream under dir (which must not exist) and
// fsyncs them and every directory.
func readSnapshot(r io.Reader, dir string, stopc <-chan struct{}) error {
	zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(snapshotMaxWindow))
	if err != nil {
		return err
	}
	defer zr.Close()
	br := bufio.NewReaderSize(zr, 1<<16)
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != string(snapshotMagic) {
		return fmt.Errorf("%w: header (%v)", errBadSnapshot, err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	dirs := map[string]bool{filepath.Clean(dir): true} // keys are clean, as filepath.Dir returns
	for {
		select {
		case <-stopc:
			return sm.ErrSnapshotStopped
		default:
		}
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return fmt.Errorf("%w: name length: %v", errBadSnapshot, err)
		}
		if n == 0 {
			break
		}
		if n > 4096 {
			return fmt.Errorf("%w: name of %d bytes", errBadSnapshot, n)
		}
		name := make([]byte, n)
		if _, err := io.ReadFull(br, name); err != nil {
			return fmt.Errorf("%w: name: %v", errBadSnapshot, err)
		}
		clean := filepath.Clean(filepath.FromSlash(string(name)))
		if !filepath.IsLocal(clean) || clean == "." || strings.ContainsRune(string(name), 0) {
			return fmt.Errorf("%w: file name %q", errBadSnapshot, name)
		}
		size, err := binary.ReadUvarint(br)
		if err != nil {
			return fmt.Errorf("%w: size of %s: %v", errBadSnapshot, clean, err)
		}
		path := filepath.Join(dir, clean)
		parent := filepath.Dir(path)
		if !dirs[parent] {
			if err := os.MkdirAll(parent, 0o755); err != nil {
				return err
			}
			// MkdirAll may have made parent's ancestors too: each is synced. (clean is local
			// and not ".", so this stops at dir at the latest.)
			for d := parent; !dirs[d]; d = filepath.Dir(d) {
				dirs[d] = true
			}
		}
		if err := receiveFile(path, io.LimitReader(br, int64(size)), int64(size)); err != nil {
			return err
		}
	}
	// The stream must end here; zstd verifies its checksum at EOF.
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: trailing data (%v)", errBadSnapshot, err)
	}
	for d := range dirs {
		if err := fsutil.SyncDir(vfs.Default, d); err != nil {
			return err
		}
	}
	return nil
}

func receiveFile(path string, r io.Reader, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, r)
	if err == nil && n != size {
		err = fmt.Errorf("%w: %s truncated at %d of %d bytes", errBadSnapshot, filepath.Base(path), n, size)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
