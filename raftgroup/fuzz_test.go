package raftgroup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// Fuzz targets for what a site decodes from its peers: Raft entries (proposals), their results,
// and snapshot streams. Run one at a time, e.g.
//
//	go test ./raftgroup -run '^$' -fuzz '^FuzzDecodeProposal$' -fuzztime 60s
//
// FuzzReadSnapshot writes files and fsyncs them: TMPDIR=/dev/shm makes it much faster.

func fuzzCommand(rng *rand.Rand) *shard.Command {
	c := &shard.Command{Time: rng.Uint64(), AddGeneration: rng.IntN(2) == 0}
	for range rng.IntN(3) {
		c.Drop = append(c.Drop, stream.GenerationID(1+rng.IntN(100)))
	}
	for i := range rng.IntN(5) {
		m := &message.Message{
			ClientID: fmt.Sprintf("c%d", rng.IntN(10)), Topic: fmt.Sprintf("a/%d/b", i),
			Payload: bytes.Repeat([]byte{byte(i)}, rng.IntN(400)), QoS: byte(rng.IntN(3)), Retain: rng.IntN(2) == 0,
		}
		if rng.IntN(2) == 0 {
			m.Properties = message.Properties{ContentType: "json", HasMessageExpiry: true, MessageExpiry: 60,
				User: []message.UserProperty{{Key: "k", Value: "v"}}}
		}
		c.Messages = append(c.Messages, m)
	}
	return c
}

// proposalBody returns the command bytes of an encoded proposal (decompressed if need be), or
// false if its header does not parse: the test's own reading of the format.
func proposalBody(b []byte) ([]byte, bool) {
	if len(b) < 19 {
		return nil, false
	}
	r := b[19:]
	for range 3 {
		_, n := binary.Uvarint(r)
		if n <= 0 {
			return nil, false
		}
		r = r[n:]
	}
	if b[2]&flagS2 == 0 {
		return r, true
	}
	d, err := s2.Decode(nil, r)
	return d, err == nil
}

func sameEntry(t *testing.T, got, want shard.Entry) {
	t.Helper()
	header := []any{"entry header %d %v seq %d floor %d if %d, want %d %v seq %d floor %d if %d",
		got.Index, got.Proposer, got.Seq, got.Floor, got.IfCurrent, want.Index, want.Proposer, want.Seq, want.Floor, want.IfCurrent}
	require.Equal(t, want.Index, got.Index, header...)
	require.Equal(t, want.Proposer, got.Proposer, header...)
	require.Equal(t, want.Seq, got.Seq, header...)
	require.Equal(t, want.Floor, got.Floor, header...)
	require.Equal(t, want.IfCurrent, got.IfCurrent, header...)
	require.Equal(t, want.Cmd == nil, got.Cmd == nil, "command %v, want %v", got.Cmd, want.Cmd)
	require.False(t, got.Cmd != nil && !bytes.Equal(got.Cmd.AppendBinary(nil), want.Cmd.AppendBinary(nil)), "command %+v, want %+v", got.Cmd, want.Cmd)
}

// FuzzDecodeProposal: a Raft entry from a peer never panics the replica. It is refused with an
// error wrapping errInvalidProposal (keeping its index), or decodes to a well-formed entry
// (a command whose topics are valid, the command being what the entry carries) that re-encodes
// through newProposal to an entry decoding the same.
func FuzzDecodeProposal(f *testing.F) {
	rng := rand.New(rand.NewPCG(11, 12))
	var pid shard.ProposerID
	copy(pid[:], "fuzz-proposer-01")
	for i := range 12 {
		cmd := fuzzCommand(rng)
		if i%3 == 0 { // compressible: sent s2-compressed
			cmd.Messages = append(cmd.Messages, &message.Message{Topic: "big", Payload: make([]byte, 4096)})
		}
		p := newProposal(pid, rng.Uint64N(1000), stream.GenerationID(rng.IntN(3)), cmd.AppendBinary(nil))
		p.floor = p.seq / 2
		f.Add(p.appendBinary(nil))
	}
	f.Add([]byte("S\x01\x00"))
	f.Add(append([]byte("S\x01\x01fuzz-proposer-01\x01\x00\x00"), 0xff, 0xff, 0xff, 0xff, 0x0f)) // s2 bomb claim
	f.Add(append([]byte("S\x01\x00fuzz-proposer-01\x01\x00\x80\x80\x80\x80\x10"), 'C'))          // generation > 32 bits
	invalid := &shard.Command{Messages: []*message.Message{{Topic: "a/+"}}}
	f.Add(newProposal(pid, 1, 0, invalid.AppendBinary(nil)).appendBinary(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		const index = 1234
		e, err := decodeProposal(index, b)
		require.Equal(t, b, orig, "decodeProposal modified its input")
		require.Equal(t, uint64(index), e.Index, "index %d, want %d", e.Index, index)
		if err != nil {
			require.ErrorIs(t, err, errInvalidProposal, "error %v does not wrap errInvalidProposal", err)
			return
		}
		require.NotNil(t, e.Cmd, "accepted entry without a command: %+v", e)
		require.NoError(t, e.RejectReason, "accepted entry without a command: %+v", e)
		for i, m := range e.Cmd.Messages {
			require.NoError(t, topic.ValidateName(m.Topic), "message %d: accepted invalid topic", i)
		}
		body, ok := proposalBody(b)
		require.True(t, ok, "accepted %x whose header does not parse", b)
		enc := e.Cmd.AppendBinary(nil)
		require.Equal(t, body, enc, "command re-encodes as %x, entry carries %x", enc, body)
		p := newProposal(e.Proposer, e.Seq, e.IfCurrent, e.Cmd.AppendBinary(nil))
		p.floor = e.Floor
		again, err := decodeProposal(index, p.appendBinary(nil))
		require.NoError(t, err, "re-encoded entry")
		sameEntry(t, again, e)
	})
}

// FuzzProposalRoundTrip: whatever a proposer encodes (compressed or not) decodes to the same
// proposer, sequence, floor, condition and command; a command with an invalid topic is refused.
func FuzzProposalRoundTrip(f *testing.F) {
	f.Add([]byte("fuzz-proposer-01"), uint64(7), uint64(6), uint32(0), uint64(1), false, []byte{}, "a/b", "client", []byte("payload"), uint8(1))
	f.Add([]byte{}, uint64(0), uint64(0), uint32(1<<32-1), uint64(1<<63), true, []byte{1, 2, 3}, "", "", []byte{}, uint8(0))
	f.Add([]byte("p"), uint64(1<<64-1), uint64(1<<64-1), uint32(3), uint64(99), false, []byte{9}, "t", "c", bytes.Repeat([]byte("abc"), 100), uint8(20))
	f.Add([]byte("p"), uint64(5), uint64(4), uint32(3), uint64(99), false, []byte{}, "a/#", "c", []byte("x"), uint8(2))
	f.Fuzz(func(t *testing.T, pidBytes []byte, seq, floor uint64, ifCurrent uint32, ts uint64, add bool, drops []byte,
		topicName, clientID string, payload []byte, copies uint8) {
		var pid shard.ProposerID
		copy(pid[:], pidBytes)
		cmd := &shard.Command{Time: ts, AddGeneration: add}
		for _, d := range drops {
			if d != 0 {
				cmd.Drop = append(cmd.Drop, stream.GenerationID(d))
			}
		}
		for i := range int(copies % 32) {
			cmd.Messages = append(cmd.Messages, &message.Message{ClientID: clientID, Topic: topicName, Payload: payload, QoS: byte(i % 3)})
		}
		body := cmd.AppendBinary(nil)
		p := newProposal(pid, seq, stream.GenerationID(ifCurrent), body)
		p.floor = floor
		require.False(t, p.flags == 0 && !bytes.Equal(p.body, body), "proposal body %x flags %d of command %x", p.body, p.flags, body)
		require.False(t, p.flags == flagS2 && len(body) <= compressAbove, "proposal body %x flags %d of command %x", p.body, p.flags, body)
		e, err := decodeProposal(9, p.appendBinary(nil))
		if len(cmd.Messages) > 0 && topic.ValidateName(topicName) != nil {
			require.ErrorIs(t, err, errInvalidProposal, "topic %q: error %v, want invalid proposal and topic", topicName, err)
			require.ErrorIs(t, err, topic.ErrInvalidTopic, "topic %q: error %v, want invalid proposal and topic", topicName, err)
			return
		}
		require.NoError(t, err)
		sameEntry(t, e, shard.Entry{Index: 9, Proposer: pid, Seq: seq, Floor: floor, IfCurrent: stream.GenerationID(ifCurrent), Cmd: cmd})
		enc := e.Cmd.AppendBinary(nil)
		require.Equal(t, body, enc, "command %x, want %x", enc, body)
	})
}

// resultSentinels, in the order encodeResult looks for them.
var resultSentinels = []error{shard.ErrCurrentGeneration, shard.ErrGenerationNotFound, topic.ErrInvalidTopic, shard.ErrInvalidCommand}

// sentinelOf returns the first of resultSentinels that err wraps, or nil.
func sentinelOf(err error) error {
	for _, s := range resultSentinels {
		if errors.Is(err, s) {
			return s
		}
	}
	return nil
}

// checkResult: what encodeResult makes of r, decodeResult turns back into r's timestamp,
// skip, or an error wrapping the same sentinel with r's text.
func checkResult(t *testing.T, r shard.EntryResult) {
	t.Helper()
	value, data := encodeResult(r)
	ts, _, skipped, err := decodeResult(value, data)
	switch {
	case r.Err != nil:
		require.Error(t, err, "rejection %v decodes as ts %d skipped %v err %v", r.Err, ts, skipped, err)
		require.False(t, skipped, "rejection %v decodes as ts %d skipped %v err %v", r.Err, ts, skipped, err)
		require.Equal(t, uint64(0), ts, "rejection %v decodes as ts %d skipped %v err %v", r.Err, ts, skipped, err)
		require.Equal(t, sentinelOf(r.Err), sentinelOf(err), "rejection %v decodes as %v: sentinel %v, want %v", r.Err, err, sentinelOf(err), sentinelOf(r.Err))
		require.Contains(t, err.Error(), r.Err.Error(), "rejection %q decodes as %q", r.Err, err)
	case r.Skipped:
		require.NoError(t, err, "skip decodes as ts %d skipped %v err %v", ts, skipped, err)
		require.True(t, skipped, "skip decodes as ts %d skipped %v err %v", ts, skipped, err)
		require.Equal(t, uint64(0), ts, "skip decodes as ts %d skipped %v err %v", ts, skipped, err)
	default:
		require.NoError(t, err, "result %+v decodes as ts %d skipped %v err %v", r, ts, skipped, err)
		require.False(t, skipped, "result %+v decodes as ts %d skipped %v err %v", r, ts, skipped, err)
		require.Equal(t, r.FirstTS, ts, "result %+v decodes as ts %d skipped %v err %v", r, ts, skipped, err)
	}
}

// FuzzEncodeResult: every entry result survives encodeResult and decodeResult.
func FuzzEncodeResult(f *testing.F) {
	for kind := range uint8(4) {
		for wrap := range uint8(len(resultSentinels) + 2) {
			f.Add(kind, uint64(kind)<<40|uint64(wrap), wrap, "generation 3")
		}
	}
	f.Add(uint8(3), uint64(0), uint8(0), "")
	f.Fuzz(func(t *testing.T, kind uint8, ts uint64, wrap uint8, text string) {
		r := shard.EntryResult{FirstTS: ts}
		switch kind % 4 {
		case 1:
			r.Duplicate = true
		case 2:
			r.Skipped, r.FirstTS = true, 0
		case 3:
			r.FirstTS = 0
			switch i := int(wrap) % (len(resultSentinels) + 2); {
			case i < len(resultSentinels):
				r.Err = fmt.Errorf("%w: %s", resultSentinels[i], text)
			case i == len(resultSentinels): // both: the first in encodeResult's order counts
				r.Err = fmt.Errorf("%w: %w: %s", shard.ErrInvalidCommand, topic.ErrInvalidTopic, text)
			default:
				r.Err = errors.New(text)
			}
		}
		checkResult(t, r)
	})
}

// FuzzDecodeResult: any result value and data decode without panicking, to an error for an
// unknown value or malformed data; what decodes re-encodes to a result that decodes the same.
func FuzzDecodeResult(f *testing.F) {
	for _, r := range []shard.EntryResult{
		{FirstTS: 1}, {FirstTS: 1 << 63, Duplicate: true}, {Duplicate: true}, {Skipped: true},
		{Err: fmt.Errorf("%w: generation 2", shard.ErrCurrentGeneration)},
		{Err: fmt.Errorf("%w: x", shard.ErrGenerationNotFound)},
		{Err: fmt.Errorf("%w: x", topic.ErrInvalidTopic)},
		{Err: fmt.Errorf("%w: x", shard.ErrInvalidCommand)},
		{Err: errors.New("other")},
	} {
		v, d := encodeResult(r)
		f.Add(v, d)
	}
	f.Add(uint64(resultRejected), []byte{})
	f.Add(uint64(resultRejected), []byte{200, 'x'})
	f.Add(uint64(resultStored), []byte{1, 2, 3})
	f.Add(uint64(0), []byte(nil))
	f.Add(uint64(1<<64-1), []byte{1})
	f.Fuzz(func(t *testing.T, value uint64, data []byte) {
		orig := bytes.Clone(data)
		ts, _, skipped, err := decodeResult(value, data)
		require.Equal(t, data, orig, "decodeResult modified its input")
		switch value {
		case resultStored, resultDuplicate:
			require.Equal(t, (len(data) == 8), (err == nil), "%d bytes: ts %d skipped %v err %v", len(data), ts, skipped, err)
			require.False(t, skipped, "%d bytes: ts %d skipped %v err %v", len(data), ts, skipped, err)
			if err == nil {
				checkResult(t, shard.EntryResult{FirstTS: ts, Duplicate: value == resultDuplicate})
				v, d := encodeResult(shard.EntryResult{FirstTS: ts, Duplicate: value == resultDuplicate})
				require.Equal(t, value, v, "re-encoded as %d %x, decoded %d %x", v, d, value, data)
				require.Equal(t, data, d, "re-encoded as %d %x, decoded %d %x", v, d, value, data)
			}
		case resultSkipped:
			require.NoError(t, err, "skip: ts %d skipped %v err %v", ts, skipped, err)
			require.True(t, skipped, "skip: ts %d skipped %v err %v", ts, skipped, err)
			require.Equal(t, uint64(0), ts, "skip: ts %d skipped %v err %v", ts, skipped, err)
		case resultRejected:
			require.Error(t, err, "rejection: ts %d skipped %v err %v", ts, skipped, err)
			require.False(t, skipped, "rejection: ts %d skipped %v err %v", ts, skipped, err)
			require.Equal(t, uint64(0), ts, "rejection: ts %d skipped %v err %v", ts, skipped, err)
			if len(data) > 0 {
				want := error(nil)
				if i := int(data[0]) - 1; i >= 0 && i < len(resultSentinels) {
					want = resultSentinels[i] // reasonCurrentGeneration… are 1…
				}
				require.Equal(t, want, sentinelOf(err), "reason %d decodes as %v", data[0], err)
			}
			checkResult(t, shard.EntryResult{Err: err})
		default:
			require.Error(t, err, "unknown result %d accepted", value)
		}
	})
}

// snapEntry is one file of a hand-made snapshot payload (before compression).
type snapEntry struct {
	name string
	size uint64 // of the header; data may be shorter
	data string
}

func snapPayload(entries ...snapEntry) []byte {
	b := bytes.Clone(snapshotMagic)
	for _, e := range entries {
		b = binary.AppendUvarint(b, uint64(len(e.name)))
		b = append(b, e.name...)
		b = binary.AppendUvarint(b, e.size)
		b = append(b, e.data...)
	}
	return binary.AppendUvarint(b, 0)
}

func file(name, data string) snapEntry { return snapEntry{name, uint64(len(data)), data} }

// parseSnapshotPayload is the test's reading of a decompressed snapshot stream: the files it
// holds by cleaned name, and how many entries, or false if the stream is malformed (truncated,
// trailing bytes, a name that is not a local path).
func parseSnapshotPayload(b []byte) (map[string][]byte, int, bool) {
	if !bytes.HasPrefix(b, snapshotMagic) {
		return nil, 0, false
	}
	b = b[len(snapshotMagic):]
	files := map[string][]byte{}
	for n := 0; ; n++ {
		l, w := binary.Uvarint(b)
		if w <= 0 {
			return nil, 0, false
		}
		if b = b[w:]; l == 0 {
			return files, n, len(b) == 0
		}
		if l > 4096 || l > uint64(len(b)) {
			return nil, 0, false
		}
		name := string(b[:l])
		b = b[l:]
		clean := path.Clean(name)
		if !filepath.IsLocal(clean) || clean == "." || strings.ContainsRune(name, 0) {
			return nil, 0, false
		}
		size, w := binary.Uvarint(b)
		if w <= 0 || size > uint64(len(b)-w) {
			return nil, 0, false
		}
		b = b[w:]
		files[clean], b = b[:size], b[size:]
	}
}

// snapshotFiles returns the regular files under dir by slash-separated relative name, failing
// on anything else than files and directories (a symlink), and with complete, on a directory no
// file is in.
func snapshotFiles(t *testing.T, dir string, complete bool) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			if rel != "." {
				dirs = append(dirs, rel+"/")
			}
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			files[rel] = b
		default:
			return fmt.Errorf("%s: not a regular file (%v)", rel, d.Type())
		}
		return nil
	})
	require.NoError(t, err)
	names := slices.Collect(maps.Keys(files))
	for _, d := range dirs {
		require.False(t, complete && !slices.ContainsFunc(names, func(f string) bool { return strings.HasPrefix(f, d) }), "directory %s holds no file", d)
	}
	return files
}

func sameFiles(t *testing.T, got, want map[string][]byte) {
	t.Helper()
	require.Len(t, got, len(want), "%d files, want %d", len(got), len(want))
	for name, b := range want {
		g, ok := got[name]
		require.True(t, ok, "file %s: %d bytes (present %v), want %d", name, len(g), ok, len(b))
		require.Equal(t, b, g, "file %s: %d bytes (present %v), want %d", name, len(g), ok, len(b))
	}
}

// realSnapshot returns writeSnapshot's stream of a small directory.
func realSnapshot(tb testing.TB, dir string) []byte {
	tb.Helper()
	for name, data := range map[string]string{
		"MANIFEST-000001": "manifest", "000002.sst": strings.Repeat("sst block ", 200), "OPTIONS-000003": "",
		"sub/deeper/x": "x", "sub/y": "yy",
	} {
		p := filepath.Join(dir, filepath.FromSlash(name))
		require.NoError(tb, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(tb, os.WriteFile(p, []byte(data), 0o644))
	}
	var buf bytes.Buffer
	require.NoError(tb, writeSnapshot(dir, &buf, nil))
	return buf.Bytes()
}

// unzstd decompresses a trusted stream (the test's own).
func unzstd(b []byte) ([]byte, error) {
	zr, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	return zr.DecodeAll(b, nil)
}

func zstdFrame(tb testing.TB, payload []byte) []byte {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	require.NoError(tb, err)
	defer enc.Close()
	return enc.EncodeAll(payload, nil)
}

// rawFrame is a zstd frame of one raw block, with the given frame header descriptor and
// window descriptor (or frame content size) bytes: any window the header claims.
func rawFrame(fhd byte, desc []byte, payload []byte) []byte {
	b := append([]byte{0x28, 0xb5, 0x2f, 0xfd, fhd}, desc...)
	h := uint32(1) | uint32(len(payload))<<3 // last block, raw
	return append(append(b, byte(h), byte(h>>8), byte(h>>16)), payload...)
}

// maxSnapshotAlloc bounds what readSnapshot may allocate whatever the stream says.
const maxSnapshotAlloc = 32 << 20

// FuzzReadSnapshot: a snapshot stream from a peer never panics the receiver, never makes it
// write outside its directory or create anything else than files and directories, never makes
// it allocate more than maxSnapshotAlloc; a malformed stream is refused; an accepted one left
// exactly its files, which stream again (writeSnapshot) to the same files. raw: data is the
// stream as sent; otherwise data is the decompressed stream, which the test compresses (so that
// the fuzzer explores the file format rather than zstd's).
func FuzzReadSnapshot(f *testing.F) {
	sent := realSnapshot(f, f.TempDir())
	payload, err := unzstd(sent) // trusted: the test's own stream
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sent, true)
	f.Add(payload, false)
	f.Add(sent[:len(sent)-1], true)
	f.Add(payload[:len(payload)-1], false)
	f.Add(append(bytes.Clone(payload), 0), false)
	f.Add(snapPayload(), false)
	for _, name := range []string{"../evil", "../../../../evil", "/tmp/evil", "a/../../evil", ".", "a/..", "", "a\x00b", "a//b/./c", `..\evil`, "sub/../ok"} {
		f.Add(snapPayload(file(name, "data")), false)
	}
	f.Add(snapPayload(file("x", "1"), file("x", "2")), false)           // twice
	f.Add(snapPayload(file("x", "1"), file("x/y", "2")), false)         // file, then under it
	f.Add(snapPayload(file("x/y", "1"), file("x", "2")), false)         // directory, then as a file
	f.Add(snapPayload(snapEntry{"big", 1 << 62, "short"}), false)       // size beyond the stream
	f.Add(snapPayload(snapEntry{"neg", 1<<64 - 1, "short"}), false)     // size beyond int64
	f.Add(snapPayload(file(strings.Repeat("n", 5000), "x")), false)     // name too long
	f.Add(snapPayload(file(strings.Repeat("d/", 300)+"f", "x")), false) // deep
	end := append(bytes.Clone(snapshotMagic), 0)
	f.Add(rawFrame(0x00, []byte{0x98}, end), true)                                   // claims a 512 MiB window
	f.Add(rawFrame(0xe0, binary.LittleEndian.AppendUint64(nil, 500<<20), end), true) // single segment of 500 MiB
	f.Add(rawFrame(0x00, []byte{0x50}, end), true)                                   // 1 MiB window: fine
	f.Add([]byte("STRATA-SNAP\x01\x00"), true)                                       // not compressed
	f.Fuzz(func(t *testing.T, data []byte, raw bool) {
		in := data
		if !raw {
			in = zstdFrame(t, data)
		}
		// dir is a few levels down root, so that an escape by "..", up to root, shows.
		root := t.TempDir()
		nest := filepath.Join(root, "1", "2", "3")
		require.NoError(t, os.MkdirAll(nest, 0o755))
		dir := filepath.Join(nest, "snap")
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		err := readSnapshot(bytes.NewReader(in), dir, nil)
		runtime.ReadMemStats(&m1)
		a := m1.TotalAlloc - m0.TotalAlloc
		require.LessOrEqual(t, a, uint64(maxSnapshotAlloc), "readSnapshot allocated %d MiB (err %v)", a>>20, err)
		made := false
		werr := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			switch {
			case err != nil:
				return err
			case p == dir:
				made = true
				return fs.SkipDir
			case !d.IsDir() || !strings.HasPrefix(nest, p):
				return fmt.Errorf("%s is outside the snapshot directory", p)
			}
			return nil
		})
		require.NoError(t, werr, "%v (readSnapshot: %v)", werr, err)
		if err != nil {
			if made {
				snapshotFiles(t, dir, false) // no symlink even part-way
			}
			return
		}
		got := snapshotFiles(t, dir, true)
		if raw {
			// Decompress as the receiver does (within its bounds) for the test's reading.
			zr, zerr := zstd.NewReader(bytes.NewReader(data), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(snapshotMaxWindow))
			require.NoError(t, zerr)
			data, zerr = io.ReadAll(io.LimitReader(zr, 1<<30))
			zr.Close()
			require.NoError(t, zerr, "accepted a stream that does not decompress")
		}
		files, n, ok := parseSnapshotPayload(data)
		require.True(t, ok, "accepted a malformed stream %q", data)
		require.Equal(t, len(got), n, "accepted %d entries, wrote %d files", n, len(got))
		sameFiles(t, got, files)
		// What was received streams again to the same files.
		var buf bytes.Buffer
		require.NoError(t, writeSnapshot(dir, &buf, nil))
		dir2 := filepath.Join(t.TempDir(), "again")
		require.NoError(t, readSnapshot(&buf, dir2, nil), "re-streamed snapshot")
		sameFiles(t, snapshotFiles(t, dir2, true), files)
	})
}

// TestReadSnapshotDamaged: every truncation of a real stream is refused; a single-bit flip is
// refused or (in a bit zstd ignores, or a smaller window that still holds the data) changes
// nothing; nothing is ever written outside the snapshot directory.
func TestReadSnapshotDamaged(t *testing.T) {
	sent := realSnapshot(t, t.TempDir())
	payload, err := unzstd(sent)
	require.NoError(t, err)
	want, _, ok := parseSnapshotPayload(payload)
	require.True(t, ok, "own stream does not parse")
	root := t.TempDir()
	try := func(what string, b []byte, mayPass bool) {
		dir := filepath.Join(root, "snap")
		if err := readSnapshot(bytes.NewReader(b), dir, nil); err == nil {
			require.True(t, mayPass, "%s accepted", what)
			sameFiles(t, snapshotFiles(t, dir, true), want)
		}
		ents, _ := os.ReadDir(root)
		require.LessOrEqual(t, len(ents), 1, "%s: wrote outside the snapshot directory: %v", what, ents)
		require.False(t, len(ents) == 1 && ents[0].Name() != "snap", "%s: wrote outside the snapshot directory: %v", what, ents)
		require.NoError(t, os.RemoveAll(dir))
	}
	try("the stream as sent", sent, true)
	for i := range len(sent) {
		try(fmt.Sprintf("truncation to %d of %d bytes", i, len(sent)), sent[:i], false)
	}
	rng := rand.New(rand.NewPCG(5, 5))
	for range 200 {
		b := bytes.Clone(sent)
		i, bit := rng.IntN(len(b)), rng.IntN(8)
		b[i] ^= 1 << bit
		try(fmt.Sprintf("bit %d of byte %d flipped", bit, i), b, true)
	}
}
