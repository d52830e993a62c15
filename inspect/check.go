package inspect

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/strata-mq/strata/ds"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
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
	// stores (OpenReplicas); always 0 for an embedded directory.
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
// holds (OpenReplicas) is a problem. maxProblems bounds the problems kept (<= 0: 100);
// the count of keys goes on.
func (in *Inspector) Check(maxProblems int) *CheckReport {
	if maxProblems <= 0 {
		maxProblems = 100
	}
	r := &CheckReport{}
	add := func(p CheckProblem) {
		if pebble.IsCorruptionError(p.Err) && !errors.Is(p.Err, ds.ErrCorruption) {
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
		_, last := layout.ShardSpan(layout.ShardPrefix(ds.ShardID(in.manifest.NShards - 1)))
		for _, b := range [][2][]byte{{nil, first}, {last, nil}} {
			in.walk(in.pebbles[0], b[0], b[1], r, func(k, _ []byte) error {
				return fmt.Errorf("%w: key outside every shard's key range", ds.ErrCorruption)
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
func (e pebbleCorruption) Is(target error) bool { return target == ds.ErrCorruption }

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
			report(slices.Clone(prev), fmt.Errorf("%w: iteration stopped after this key: panic while reading (damaged files?): %v", ds.ErrCorruption, r))
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
			report(slices.Clone(k), fmt.Errorf("%w: key not after the previous key %x", ds.ErrCorruption, prev))
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
	gen ds.GenerationID
	key uint64
}

// checkShard walks one shard's keys. Package shard judges the meta keys (shard.MetaCheck) and
// package layout a generation's keys (layout.Verify); this function adds what needs the whole
// shard: timestamps inside their generation, message counts and index keys against the
// messages found.
func (in *Inspector) checkShard(s *inspectShard, r *CheckReport, add func(CheckProblem)) {
	lo, hi := layout.ShardSpan(s.prefix)
	counts := map[genStream]*streamCount{}
	// Messages found per generation, and the counts stored with the generations.
	found, stored := map[ds.GenerationID]uint64{}, map[ds.GenerationID]uint64{}
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ds.ErrCorruption, fmt.Sprintf(format, args...))
	}
	mc := shard.MetaCheck{Replica: s.replica, Applied: s.applied, AppliedKnown: s.appliedRead}
	if s.err == nil {
		mc.Stored = &s.Stored
	}
	// The records come before the last record version in key order: read it first. A value
	// that does not decode is reported at its key by the walk.
	if v, err := s.lastRecordVersion(); err == nil {
		mc.LastVersion, mc.LastVersionKnown = v, true
	}
	visit := func(k, v []byte) error {
		rest := k[len(s.prefix):]
		if len(rest) > 0 && rest[0] == layout.KeyspaceMeta {
			mk, err := mc.Check(rest, v)
			switch {
			case err != nil:
				return err
			case mk.Kind == shard.MetaRecord:
				r.Records++
			case mk.Kind == shard.MetaApplied, mk.Kind == shard.MetaProposer:
				r.ReplicaRecords++
			case mk.Kind == shard.MetaCount:
				stored[mk.Gen] = mk.Count
			}
			return nil
		}
		if s.err != nil {
			return nil // reported once for the shard; the keys cannot be judged without its state
		}
		gen, err := layout.KeyGeneration(rest)
		switch {
		case err != nil:
			return fmt.Errorf("%w: %w", ds.ErrCorruption, err)
		case !s.Found:
			return corrupt("key in a shard without a generation table")
		}
		g, ok := s.Table.Get(gen)
		if !ok {
			return corrupt("key of generation %d, which the table does not hold", gen)
		}
		ki, verr := layout.Verify(s.Layouts[gen], rest, v)
		if verr != nil {
			verr = fmt.Errorf("%w: %w", ds.ErrCorruption, verr)
			if !ki.Decoded {
				return verr
			}
			// The key decoded: count what it is (a damaged message is not a missing one),
			// then report the damage.
		}
		if ki.Kind == layout.KeyTrie {
			r.TrieRecords++ // decoded when the layout was loaded
			return verr
		}
		// Count the key before judging its timestamp: a message out of its generation's range
		// is still a message (the stored count holds), and an index key still indexes.
		var tsErr error
		if ts := ki.TS; verr == nil && (ts < g.Since || !g.Current() && ts >= g.Until || ts > s.LastTS) {
			tsErr = corrupt("timestamp %s outside generation %d [%s, %s), last %s", generation.FormatTS(ts), gen,
				generation.FormatTS(g.Since), generation.FormatTS(g.Until), generation.FormatTS(s.LastTS))
		}
		c := counts[genStream{gen, ki.Stream}]
		if c == nil {
			c = &streamCount{}
			counts[genStream{gen, ki.Stream}] = c
		}
		err = cmp.Or(verr, tsErr)
		if ki.Kind == layout.KeyIndex {
			c.gotIndex++
			if err == nil {
				r.IndexKeys++
			}
			return err
		}
		found[gen]++
		c.wantIndex += uint64(ki.IndexKeys)
		if err == nil {
			r.Messages++
		}
		return err
	}
	complete := in.walk(s.db, lo, hi, r, visit, func(k []byte, err error) {
		add(CheckProblem{Shard: int(s.id), Path: s.path, Key: k, Err: err})
	})
	if complete && s.Found && s.err == nil {
		for _, g := range s.Table.Gens {
			if n, ok := stored[g.ID]; ok && found[g.ID] != n {
				add(CheckProblem{Shard: int(s.id), Path: s.path, Err: fmt.Errorf(
					"%w: generation %d holds %d messages, its stored count says %d",
					ds.ErrCorruption, g.ID, found[g.ID], n)})
			}
		}
	}
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b genStream) int {
		if a.gen != b.gen {
			return cmp.Compare(uint64(a.gen), uint64(b.gen))
		}
		return cmp.Compare(a.key, b.key)
	})
	for _, k := range keys {
		if c := counts[k]; c.wantIndex != c.gotIndex {
			add(CheckProblem{Shard: int(s.id), Path: s.path, Err: fmt.Errorf(
				"%w: generation %d stream %d: its messages need %d index keys, found %d",
				ds.ErrCorruption, k.gen, k.key, c.wantIndex, c.gotIndex)})
		}
	}
}

// lastRecordVersion reads the shard's last record version (shard.LoadLastRecordVersion),
// with a panic of a damaged store turned into an error.
func (s *inspectShard) lastRecordVersion() (v uint64, err error) {
	defer recoverRead(fmt.Sprintf("shard %d last record version", s.id), &err)
	return shard.LoadLastRecordVersion(s.db, s.prefix)
}
