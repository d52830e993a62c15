package pebbleopts

import "github.com/cockroachdb/pebble/v2"

// Usage returns what a Pebble instance holds and did: the size of its files, the bytes it
// wrote since it was opened (WAL, flushes and compactions: write amplification is that over
// the bytes stored) and Pebble's own report.
func Usage(p *pebble.DB) (diskBytes, bytesWritten uint64, report string) {
	m := p.Metrics()
	bytesWritten = m.WAL.BytesWritten
	for _, l := range m.Levels {
		bytesWritten += l.TableBytesFlushed + l.TableBytesCompacted + l.BlobBytesFlushed + l.BlobBytesCompacted
	}
	return m.DiskSpaceUsage(), bytesWritten, m.String()
}

// QuotaUsage is the disk usage that counts against a storage quota: sstables and blob files
// (live, obsolete and zombie), compactions in progress, and the live data in the WAL. Not the
// WAL files' physical size: Pebble recycles WAL files, so a WAL holding a few bytes can occupy
// a whole old file, and a quota near the memtable size would then stay exceeded forever,
// whatever is dropped.
func QuotaUsage(m *pebble.Metrics) uint64 {
	t, b := m.Table.Local, m.BlobFiles.Local
	return t.LiveSize + t.ObsoleteSize + t.ZombieSize + b.LiveSize + b.ObsoleteSize + b.ZombieSize +
		uint64(max(m.Compact.InProgressBytes, 0)) + m.WAL.Size
}
