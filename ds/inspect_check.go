package ds

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// Check: the full verification of a data directory (every checksum, key order, record, index
// key and message count), for ds-info check.

// CheckProblem is one finding of Check.
type CheckProblem struct {
	Shard int    // -1 when the problem belongs to no shard (a Pebble instance, a stray key)
	Path  string // the Pebble instance's directory ("" for a shard that no store holds)
	Key   []byte // the key concerned, or nil
	Err   error  // wraps ErrCorruption for damage: bytes that do not decode, a checksum that fails
}

func (p CheckProblem) String() string {
	var b strings.Builder
	if p.Shard >= 0 {
		fmt.Fprintf(&b, "shard %d: ", p.Shard)
	}
	if p.Path != "" {
		fmt.Fprintf(&b, "%s: ", p.Path)
	}
	if p.Key != nil {
		fmt.Fprintf(&b, "key %x: ", p.Key)
	}
	b.WriteString(p.Err.Error())
	return b.String()
}

// CheckReport is the outcome of Check.
type CheckReport struct {
	Keys        uint64 // keys read, with their values
	Messages    uint64 // data keys whose key and message record decoded
	IndexKeys   uint64 // LTS level index keys
	TrieRecords uint64 // LTS trie records (decoded when the shard loaded)
	// ReplicaRecords counts the applied-index and de-duplication records of replicated
	// stores (InspectReplicas); always 0 for an embedded directory.
	ReplicaRecords uint64
	// Records counts the shards' records (package shard's keyed values; package session
	// keeps its durable sessions in them) whose version checked.
	Records  uint64
	Problems []CheckProblem
}

// OK reports whether Check found nothing wrong.
func (r *CheckReport) OK() bool { return len(r.Problems) == 0 }

// Check reads every key and value of every Pebble instance (so that Pebble verifies the block
// checksums of every sstable and blob file it holds), runs Pebble's CheckLevels, and decodes
// every key of every shard with the library's decoders: the generation table and learned
// layouts (at load), each data key and its message record, each index key's shape, and
// checks that keys are strictly increasing, belong to a known shard and generation, carry a
// timestamp within their generation, and that every stream has one index key per varying
// level of each of its messages. In replicated stores it also decodes the applied index and
// every de-duplication record, and checks them against each other and the shard (see
// checkReplicaMeta); in an embedded directory those keys are problems. Records (the keyed
// values of package shard, record.go) must have a value of at least 8 bytes whose version is
// not 0 and not after the shard's last record version, itself 8 bytes. A shard that no store
// holds (InspectReplicas) is a problem. maxProblems bounds the problems kept (<= 0: 100);
// the count of keys goes on.
func (in *Inspector) Check(maxProblems int) *CheckReport {
	if maxProblems <= 0 {
		maxProblems = 100
	}
	r := &CheckReport{}
	add := func(p CheckProblem) {
		if pebble.IsCorruptionError(p.Err) && !errors.Is(p.Err, ErrCorruption) {
			p.Err = pebbleCorruption{p.Err}
		}
		if len(r.Problems) < maxProblems {
			r.Problems = append(r.Problems, p)
		}
	}
	for i, p := range in.pebbles {
		if err := checkLevels(p); err != nil {
			add(CheckProblem{Shard: -1, Path: in.paths[i], Err: fmt.Errorf("pebble level check: %w", err)})
		}
	}
	for _, s := range in.shards {
		if s.err != nil {
			add(CheckProblem{Shard: -1, Path: s.path, Err: s.err}) // the error names the shard
		}
		if s.db != nil {
			in.checkShard(s, r, add)
		}
	}
	if !in.manifest.PebblePerShard {
		// Keys outside every shard's span.
		first, _ := layout.ShardSpan(layout.ShardPrefix(0))
		_, last := layout.ShardSpan(layout.ShardPrefix(ShardID(in.manifest.NShards - 1)))
		for _, b := range [][2][]byte{{nil, first}, {last, nil}} {
			in.walk(in.pebbles[0], b[0], b[1], r, func(k, _ []byte) error {
				return fmt.Errorf("%w: key outside every shard's key range", ErrCorruption)
			}, func(k []byte, err error) {
				add(CheckProblem{Shard: -1, Path: in.paths[0], Key: k, Err: err})
			})
		}
	}
	return r
}

// pebbleCorruption marks a corruption that Pebble found (a checksum mismatch, a block that
// does not decode) as ErrCorruption too, so that every damage Check reports is
// errors.Is(p.Err, ErrCorruption); its message stays Pebble's, which names the file.
type pebbleCorruption struct{ err error }

func (e pebbleCorruption) Error() string        { return e.err.Error() }
func (e pebbleCorruption) Unwrap() error        { return e.err }
func (e pebbleCorruption) Is(target error) bool { return target == ErrCorruption }

func checkLevels(p *pebble.DB) (err error) {
	defer recoverRead("level check", &err)
	return p.CheckLevels(nil)
}

// walk iterates [lo, hi) of p reading every value, checks that keys increase, and calls visit
// for each key; errors from visit or from Pebble go to report. The iteration stops at the
// first iterator error (Pebble cannot step past a block it cannot read).
func (in *Inspector) walk(p *pebble.DB, lo, hi []byte, r *CheckReport, visit func(k, v []byte) error, report func(k []byte, err error)) (complete bool) {
	var prev []byte
	defer func() {
		if r := recover(); r != nil {
			report(slices.Clone(prev), fmt.Errorf("%w: iteration stopped after this key: panic while reading (damaged files?): %v", ErrCorruption, r))
			complete = false
		}
	}()
	it, err := p.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		report(nil, err)
		return false
	}
	defer func() {
		// Close repeats the iterator's error, reported below.
		if err := it.Close(); err != nil && it.Error() == nil {
			report(nil, err)
			complete = false
		}
	}()
	complete = true
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		r.Keys++
		if prev != nil && bytes.Compare(prev, k) >= 0 {
			report(slices.Clone(k), fmt.Errorf("%w: key not after the previous key %x", ErrCorruption, prev))
		}
		prev = append(prev[:0], k...)
		v, err := it.ValueAndErr()
		if err != nil {
			report(slices.Clone(k), fmt.Errorf("reading the value: %w", err))
			complete = false // a key not visited
			continue
		}
		if err := visit(k, v); err != nil {
			report(slices.Clone(k), err)
		}
	}
	if err := it.Error(); err != nil {
		report(slices.Clone(prev), fmt.Errorf("iteration stopped after this key: %w", err))
		complete = false
	}
	return complete
}

// streamCount counts a stream's data and index keys, to check the one against the other.
type streamCount struct {
	wantIndex, gotIndex uint64
}

type genStream struct {
	gen GenerationID
	key uint64
}

// checkShard walks one shard's keys.
func (in *Inspector) checkShard(s *inspectShard, r *CheckReport, add func(CheckProblem)) {
	lo, hi := layout.ShardSpan(s.prefix)
	counts := map[genStream]*streamCount{}
	// Messages found per generation, and the counts stored with the generations.
	found, stored := map[GenerationID]uint64{}, map[GenerationID]uint64{}
	countKey := shard.CountKeyPrefix()
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrCorruption, fmt.Sprintf(format, args...))
	}
	var m message.Message
	var varying []string
	// The last record version sorts after every record: read it first.
	lastVersion, lastVersionErr := s.recordLastVersion()
	if lastVersionErr != nil {
		add(CheckProblem{Shard: int(s.id), Path: s.path, Key: append(slices.Clone(s.prefix), inspectMetaLastVersion...), Err: lastVersionErr})
	}
	visit := func(k, v []byte) error {
		rest := k[len(s.prefix):]
		if len(rest) == 0 {
			return corrupt("empty key in the shard's range")
		}
		if rest[0] == layout.KeyspaceMeta {
			switch {
			case bytes.Equal(rest, inspectMetaTable):
				if !s.found && s.err == nil {
					return corrupt("generation table not loaded")
				}
			case bytes.Equal(rest, inspectMetaLast):
				if len(v) != 8 {
					return corrupt("meta value of %d bytes, want 8", len(v))
				}
			case isReplicaMetaKey(rest):
				return s.checkReplicaMeta(rest, v, r)
			case bytes.Equal(rest, inspectMetaLastVersion):
				return nil // read and reported before the walk
			case bytes.HasPrefix(rest, inspectMetaRecord):
				if len(rest) == len(inspectMetaRecord) {
					return corrupt("record with an empty key")
				}
				ver, _, err := shard.DecodeRecordValue(v)
				switch {
				case err != nil:
					return corrupt("%v", err)
				case lastVersionErr == nil && ver > lastVersion:
					return corrupt("record of version %d, after the shard's last record version %d", ver, lastVersion)
				}
				r.Records++
			case bytes.HasPrefix(rest, countKey):
				if len(rest) != len(countKey)+4 || len(v) != 8 {
					return corrupt("message count key of %d bytes, value of %d", len(rest), len(v))
				}
				gen := GenerationID(binary.BigEndian.Uint32(rest[len(countKey):]))
				if _, ok := s.table.Get(gen); s.found && !ok {
					return corrupt("message count of generation %d, which the table does not hold", gen)
				}
				stored[gen] = binary.BigEndian.Uint64(v)
			default:
				return corrupt("unknown meta key")
			}
			return nil
		}
		if s.err != nil {
			return nil // reported once for the shard; the keys cannot be judged without its state
		}
		if !s.found {
			return corrupt("key in a shard without a generation table")
		}
		if len(rest) < 5 || rest[0] != 'd' && rest[0] != 't' {
			return corrupt("unknown keyspace %q", rest[0])
		}
		gen := GenerationID(binary.BigEndian.Uint32(rest[1:5]))
		g, ok := s.table.Get(gen)
		if !ok {
			return corrupt("key of generation %d, which the table does not hold", gen)
		}
		l := s.layouts[gen]
		if rest[0] == 't' {
			if len(rest) != 9 {
				return corrupt("trie key of %d bytes", len(k))
			}
			r.TrieRecords++
			return nil // decoded when the layout was loaded
		}
		inGen := func(ts uint64) error {
			if ts < g.Since || !g.Current() && ts >= g.Until || ts > s.lastTS {
				return corrupt("timestamp %s outside generation %d [%s, %s), last %s", generation.FormatTS(ts), gen,
					generation.FormatTS(g.Since), generation.FormatTS(g.Until), generation.FormatTS(s.lastTS))
			}
			return nil
		}
		body := rest[5:]
		if g.Layout.Kind == stream.LayoutReference {
			if len(body) != 8 {
				return corrupt("reference data key of %d bytes", len(k))
			}
			found[gen]++
			ts := binary.BigEndian.Uint64(body)
			if err := inGen(ts); err != nil {
				return err
			}
			n, w := binary.Uvarint(v)
			if w <= 0 || n > uint64(len(v)-w) {
				return corrupt("reference value: topic length")
			}
			name := string(v[w : w+int(n)])
			if err := topic.ValidateName(name); err != nil {
				return corrupt("reference value: topic: %v", err)
			}
			m = message.Message{}
			if err := message.DecodeRecord(v[w+int(n):], &m); err != nil {
				return fmt.Errorf("%w: message record: %w", ErrCorruption, err)
			}
			r.Messages++
			return nil
		}
		if len(body) < 8+2+8 {
			return corrupt("LTS key of %d bytes", len(k))
		}
		static := binary.BigEndian.Uint64(body)
		level := binary.BigEndian.Uint16(body[8:])
		if level == 0 {
			// A data key: one message, whether or not it decodes below (the count check
			// compares keys, not decodable records).
			found[gen]++
		}
		si, ok := l.Stream(static)
		if !ok {
			return corrupt("stream %d of generation %d is not in the learned trie", static, gen)
		}
		pattern := topic.Split(si.Pattern)
		c := counts[genStream{gen, static}]
		if c == nil {
			c = &streamCount{}
			counts[genStream{gen, static}] = c
		}
		if level != 0 {
			if len(body) != 8+2+8+8 {
				return corrupt("index key of %d bytes", len(k))
			}
			if int(level) > len(pattern) || pattern[level-1] != "+" {
				return corrupt("index key for level %d, which does not vary in pattern %q", level, si.Pattern)
			}
			c.gotIndex++
			r.IndexKeys++
			return inGen(binary.BigEndian.Uint64(body[18:]))
		}
		nVarying := 0
		for _, p := range pattern {
			if p == "+" {
				nVarying++
			}
		}
		ts, vals, err := decodeLTSDataSuffix(body[10:], nVarying, varying[:0])
		varying = vals
		if err != nil {
			return err
		}
		if err := inGen(ts); err != nil {
			return err
		}
		levels := make([]string, len(pattern))
		vi := 0
		for i, p := range pattern {
			if p == "+" {
				levels[i] = vals[vi]
				vi++
			} else {
				levels[i] = p
			}
		}
		if err := topic.ValidateName(strings.Join(levels, "/")); err != nil {
			return corrupt("topic: %v", err)
		}
		m = message.Message{}
		if err := message.DecodeRecord(v, &m); err != nil {
			return fmt.Errorf("%w: message record: %w", ErrCorruption, err)
		}
		c.wantIndex += uint64(nVarying)
		r.Messages++
		return nil
	}
	complete := in.walk(s.db, lo, hi, r, visit, func(k []byte, err error) {
		add(CheckProblem{Shard: int(s.id), Path: s.path, Key: k, Err: err})
	})
	// A walk that stopped early (or could not read a value) found too few messages: the
	// problem is reported already, a count mismatch would only repeat it.
	if complete && s.found && s.err == nil {
		for _, g := range s.table.Gens {
			// A generation without a count was created before counts existed.
			if n, ok := stored[g.ID]; ok && found[g.ID] != n {
				add(CheckProblem{Shard: int(s.id), Path: s.path, Err: fmt.Errorf(
					"%w: generation %d holds %d messages, its stored count says %d",
					ErrCorruption, g.ID, found[g.ID], n)})
			}
		}
	}
	keys := make([]genStream, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b genStream) int {
		if a.gen != b.gen {
			return cmp.Compare(uint64(a.gen), uint64(b.gen))
		}
		return cmp.Compare(a.key, b.key)
	})
	for _, k := range keys {
		if c := counts[k]; c.wantIndex != c.gotIndex {
			add(CheckProblem{Shard: int(s.id), Path: s.path, Err: fmt.Errorf(
				"%w: generation %d stream %d: its messages need %d index keys, found %d",
				ErrCorruption, k.gen, k.key, c.wantIndex, c.gotIndex)})
		}
	}
}

// recordLastVersion reads the shard's last record version (0 when absent: no record was
// ever written).
func (s *inspectShard) recordLastVersion() (v uint64, err error) {
	defer recoverRead(fmt.Sprintf("shard %d last record version", s.id), &err)
	b, closer, err := s.db.Get(append(slices.Clone(s.prefix), inspectMetaLastVersion...))
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("last record version: %w", err)
	}
	v, err = shard.DecodeLastVersion(b)
	closer.Close()
	return v, err
}

// decodeLTSDataSuffix decodes what follows base|0x0000 in an LTS data key: ts(u64) then, per
// varying level, uvarint(len) | bytes, canonical (layout/doc.go; package layout's reader
// applies the same rules).
func decodeLTSDataSuffix(suffix []byte, n int, varying []string) (uint64, []string, error) {
	if len(suffix) < 8 {
		return 0, varying, fmt.Errorf("%w: data key suffix of %d bytes", ErrCorruption, len(suffix))
	}
	ts := binary.BigEndian.Uint64(suffix)
	rest := suffix[8:]
	for i := 0; i < n; i++ {
		l, w := binary.Uvarint(rest)
		if w <= 0 || w > 1 && rest[w-1] == 0 || l > uint64(len(rest)-w) {
			return 0, varying, fmt.Errorf("%w: varying level %d of data key at ts %d", ErrCorruption, i, ts)
		}
		varying = append(varying, string(rest[w:w+int(l)]))
		rest = rest[w+int(l):]
	}
	if len(rest) != 0 {
		return 0, varying, fmt.Errorf("%w: %d trailing bytes in data key at ts %d", ErrCorruption, len(rest), ts)
	}
	return ts, varying, nil
}
