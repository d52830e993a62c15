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
