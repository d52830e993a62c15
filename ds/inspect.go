package ds

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// This file is the read-only inspection of an embedded data directory, for operators' tools
// (cmd/ds-info); inspect_replica.go extends it to the replica stores of a replicated site. Open cannot serve them: it starts every shard's writer, whose maintenance
// rotates and drops generations by the clock, and it creates what is missing. An Inspector
// opens Pebble read-only over a filesystem that refuses every write, loads each shard's
// generation table and learned layouts with the library's own decoders, and starts nothing.
//
// The shard's meta keys are package shard's (unexported there); they are part of the on-disk
// format, so they are repeated here, and the tests check the Inspector against a DB.

// Meta keys of a shard (package shard, format version 1).
var (
	inspectMetaTable = []byte{layout.KeyspaceMeta, 'g'}
	inspectMetaLast  = []byte{layout.KeyspaceMeta, 'l'}
)

// Manifest is what the STRATA file of an embedded data directory records.
type Manifest struct {
	Format         int    // on-disk format version
	NShards        int    // fixed at creation
	PebblePerShard bool   // one Pebble instance per shard (else one shared, shard-prefixed)
	Created        string // RFC 3339, UTC
}

// ReadManifest reads the STRATA manifest of an embedded data directory without changing
// anything. A directory without one gives an error wrapping os.ErrNotExist.
func ReadManifest(dir string) (Manifest, error) {
	m, found, err := readManifest(vfs.Default, dir)
	if err != nil {
		return Manifest{}, err
	}
	if !found {
		return Manifest{}, fmt.Errorf("%s: no %s manifest, not a Strata data directory: %w", dir, manifestName, os.ErrNotExist)
	}
	return Manifest{Format: m.Format, NShards: m.NShards, PebblePerShard: m.PebblePerShard, Created: m.Created}, nil
}

// Inspector is a read-only view of a store's data: an embedded data directory (the kind Open
// creates; see Inspect), or the per-shard replica stores of a replicated site (see
// InspectReplicas). It never writes to them: Pebble is opened read-only (the WAL is replayed
// in memory) over a filesystem that refuses writes. It takes each Pebble's directory lock, so
// it cannot be opened while a DB (or a site) holds one (ErrInUse), and a DB cannot be opened
// while it is.
//
// A shard whose generation table or learned layout does not decode is still listed: its
// error is returned by the calls that need its state and reported by Check. An Inspector is
// not safe for concurrent use.
type Inspector struct {
	manifest   Manifest
	replicated bool // the stores are shard replicas (InspectReplicas)
	pebbles    []*pebble.DB
	paths      []string
	shards     []*inspectShard
}

type inspectShard struct {
	id      ShardID
	db      *pebble.DB // nil when no store holds the shard (err says so)
	path    string     // of its Pebble instance
	prefix  []byte
	found   bool // a generation table exists
	table   generation.Table
	lastTS  uint64
	layouts map[GenerationID]layout.Generation
	err     error // the shard's state does not load

	// Replicated stores only (see inspect_replica.go).
	replica     bool
	applied     uint64 // the last Raft log index applied
	appliedRead bool   // applied was read (or found absent: 0) without error
	appliedErr  error  // why it was not
}

// inspectPlan is what an Inspector opens: Pebble directories, and for each shard the one that
// holds it and its key prefix there.
type inspectPlan struct {
	paths  []string
	shards []inspectShardPlan // by shard ID
}

type inspectShardPlan struct {
	store  int    // index into paths; -1 when no store holds the shard
	prefix []byte // nil when the store holds this shard only
	err    error  // why no store holds the shard (store -1)
}

// Inspect opens the embedded data directory dir read-only.
func Inspect(dir string) (*Inspector, error) {
	if st, err := os.Stat(dir); err != nil {
		return nil, err
	} else if !st.IsDir() {
		return nil, fmt.Errorf("%s: not a directory", dir)
	}
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	var plan inspectPlan
	for i := 0; i < m.NShards; i++ {
		if m.PebblePerShard {
			plan.paths = append(plan.paths, filepath.Join(dir, fmt.Sprintf("shard-%04d", i)))
			plan.shards = append(plan.shards, inspectShardPlan{store: i})
		} else {
			plan.shards = append(plan.shards, inspectShardPlan{store: 0, prefix: layout.ShardPrefix(ShardID(i))})
		}
	}
	if !m.PebblePerShard {
		plan.paths = []string{filepath.Join(dir, "pebble")}
	}
	return openInspector(m, false, plan)
}

// openInspector opens the Pebble instances of plan read-only and loads every shard's state.
func openInspector(m Manifest, replicated bool, plan inspectPlan) (*Inspector, error) {
	in := &Inspector{manifest: m, replicated: replicated}
	if err := in.open(plan); err != nil {
		in.Close()
		return nil, err
	}
	return in, nil
}

func (in *Inspector) open(plan inspectPlan) error {
	o := DefaultOptions()
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	o.Expert.FS = readOnlyFS{vfs.Default}
	n := max(len(plan.paths), 1)
	cache := pebble.NewCache(16 << 20)
	defer cache.Unref()
	for _, path := range plan.paths {
		po := pebbleOptions(o, n, cache)
		po.ReadOnly = true
		// Pebble's default reaction to a damaged block is Logger.Fatalf (a panic with
		// Strata's logger). The read that found it returns the error, naming the file: that
		// is what an inspection wants.
		el := *po.EventListener
		el.DataCorruption = func(pebble.DataCorruptionInfo) {}
		po.EventListener = &el
		p, err := openPebble(path, po)
		if err != nil {
			// Pebble checks at open that every sstable has the size its MANIFEST records,
			// without marking the error as a corruption.
			if pebble.IsCorruptionError(err) || strings.Contains(err.Error(), "object size mismatch") {
				return fmt.Errorf("%w: open %s read-only: %w", ErrCorruption, path, err)
			}
			return fmt.Errorf("strata: open %s read-only: %w", path, err)
		}
		in.pebbles = append(in.pebbles, p)
		in.paths = append(in.paths, path)
	}
	for i, sp := range plan.shards {
		s := &inspectShard{id: ShardID(i), layouts: map[GenerationID]layout.Generation{}, replica: in.replicated}
		if sp.store < 0 {
			s.err = sp.err
		} else {
			s.db, s.path, s.prefix = in.pebbles[sp.store], in.paths[sp.store], sp.prefix
			s.err = s.load()
		}
		in.shards = append(in.shards, s)
	}
	return nil
}

// recoverRead turns a panic while reading damaged files into an error wrapping
// ErrCorruption in *err. Pebble v2.1.7 panics on some damaged files instead of returning an
// error (a truncated blob file: "unknown metadata type" in DB.reportCorruption), and a
// read-only inspection of a damaged directory must report, not crash.
func recoverRead(what string, err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: %s: panic while reading (damaged files?): %v", ErrCorruption, what, r)
	}
}

// load reads the shard's generation table, last timestamp and layouts.
func (s *inspectShard) load() (err error) {
	defer recoverRead(fmt.Sprintf("shard %d", s.id), &err)
	if s.replica {
		// Not the shard's state: its messages stay readable without it.
		s.appliedErr = s.loadApplied()
	}
	key := append(slices.Clone(s.prefix), inspectMetaTable...)
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("shard %d: generation table: %w", s.id, err)
	}
	table, err := generation.Decode(v)
	closer.Close()
	if err != nil {
		return fmt.Errorf("%w: shard %d: generation table: %w", ErrCorruption, s.id, err)
	}
	if len(table.Gens) == 0 {
		return fmt.Errorf("%w: shard %d: empty generation table", ErrCorruption, s.id)
	}
	s.found, s.table = true, table
	key = append(slices.Clone(s.prefix), inspectMetaLast...)
	v, closer, err = s.db.Get(key)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		s.lastTS = table.Current().Since - 1
	case err != nil:
		return fmt.Errorf("shard %d: last timestamp: %w", s.id, err)
	default:
		n := len(v)
		if n == 8 {
			s.lastTS = binary.BigEndian.Uint64(v)
		}
		closer.Close()
		if n != 8 {
			return fmt.Errorf("%w: shard %d: last timestamp of %d bytes", ErrCorruption, s.id, n)
		}
	}
	for _, g := range table.Gens {
		l, err := layout.Load(s.db, g.Layout, s.prefix, g.ID)
		if err != nil {
			if errors.Is(err, layout.ErrCorrupt) {
				return fmt.Errorf("%w: shard %d: %w", ErrCorruption, s.id, err)
			}
			return fmt.Errorf("shard %d: %w", s.id, err)
		}
		s.layouts[g.ID] = l
	}
	return nil
}

// Close releases the Pebble instances and the directory lock.
func (in *Inspector) Close() error {
	var errs []error
	for _, p := range in.pebbles {
		errs = append(errs, p.Close())
	}
	in.pebbles = nil
	return errors.Join(errs...)
}

// Manifest returns the directory's manifest (for replica stores, the one InspectReplicas
// synthesized).
func (in *Inspector) Manifest() Manifest { return in.manifest }

// NShards returns the number of shards.
func (in *Inspector) NShards() int { return in.manifest.NShards }

// DiskBytes returns the size of the Pebble files, as Metrics.DiskBytes does for a DB.
func (in *Inspector) DiskBytes() (n uint64) {
	defer func() {
		if recover() != nil {
			n = 0
		}
	}()
	for _, p := range in.pebbles {
		n += p.Metrics().DiskSpaceUsage()
	}
	return n
}

// ShardErrors returns the errors of the shards whose state did not load, joined; nil when
// every shard loaded.
func (in *Inspector) ShardErrors() error {
	var errs []error
	for _, s := range in.shards {
		if s.err != nil {
			errs = append(errs, s.err)
		}
	}
	return errors.Join(errs...)
}

// Generations returns the generations of every shard whose state loaded, by shard then ID,
// as DB.Generations does; the error joins those of the shards that did not load.
func (in *Inspector) Generations() ([]GenerationInfo, error) {
	var out []GenerationInfo
	for _, s := range in.shards {
		if s.err != nil {
			continue
		}
		for _, g := range s.table.Gens {
			out = append(out, GenerationInfo{Shard: s.id, Info: g})
		}
	}
	return out, in.ShardErrors()
}

// StreamCount returns the number of streams of one shard-generation.
func (in *Inspector) StreamCount(sh ShardID, gen GenerationID) (int, error) {
	l, err := in.layout(sh, gen)
	if err != nil {
		return 0, err
	}
	return l.StreamCount(), nil
}

func (in *Inspector) layout(sh ShardID, gen GenerationID) (layout.Generation, error) {
	if int(sh) >= len(in.shards) {
		return nil, fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, sh, len(in.shards))
	}
	s := in.shards[sh]
	if s.err != nil {
		return nil, s.err
	}
	l, ok := s.layouts[gen]
	if !ok {
		return nil, fmt.Errorf("%w: shard %d generation %d", ErrGenerationNotFound, sh, gen)
	}
	return l, nil
}

// GenerationUsage returns what one shard-generation holds, as DB.GenerationUsage: its
// message count as stored with it, and Pebble's estimate of its bytes on disk.
func (in *Inspector) GenerationUsage(sh ShardID, gen GenerationID) (u GenerationUsage, err error) {
	if _, err := in.layout(sh, gen); err != nil {
		return u, err
	}
	s := in.shards[sh]
	defer recoverRead(fmt.Sprintf("shard %d generation %d", sh, gen), &err)
	key := binary.BigEndian.AppendUint32(append(append([]byte(nil), s.prefix...), shard.CountKeyPrefix()...), uint32(gen))
	v, closer, err := s.db.Get(key)
	switch {
	case errors.Is(err, pebble.ErrNotFound): // created before counts existed: not counted
	case err != nil:
		return u, fmt.Errorf("shard %d generation %d: message count: %w", sh, gen, err)
	default:
		ok := len(v) == 8
		if ok {
			u.Messages, u.Counted = binary.BigEndian.Uint64(v), true
		}
		closer.Close()
		if !ok {
			return u, fmt.Errorf("%w: shard %d generation %d: message count of %d bytes (%s)", ErrCorruption, sh, gen, len(v), s.path)
		}
	}
	for _, sp := range layout.GenerationSpans(s.prefix, gen) {
		n, err := s.db.EstimateDiskUsage(sp[0], sp[1])
		if err != nil {
			return u, err
		}
		u.DiskBytes += n
	}
	return u, nil
}

// DumpLayout renders the learned topic structure of one shard-generation, as DB.DumpLayout.
func (in *Inspector) DumpLayout(sh ShardID, gen GenerationID) (string, error) {
	l, err := in.layout(sh, gen)
	if err != nil {
		return "", err
	}
	return l.Dump(), nil
}

// Streams returns the streams whose pattern can match filter, of every generation that is
// current or ends after since, by shard, generation and key, as DB.Streams does. Shards that
// did not load are skipped and their errors returned with the streams of the others.
func (in *Inspector) Streams(filter string, since time.Time) ([]Stream, error) {
	if err := topic.ValidateFilter(filter); err != nil {
		return nil, err
	}
	levels := topic.Split(filter)
	var out []Stream
	for _, s := range in.shards {
		if s.err != nil {
			continue
		}
		for _, g := range s.table.Gens {
			if !g.Current() && g.Until <= Micros(since) {
				continue
			}
			for _, si := range s.layouts[g.ID].Streams(levels) {
				out = append(out, Stream{Shard: s.id, Generation: g.ID, Layout: g.Layout.Kind, Key: si.Key, Pattern: si.Pattern})
			}
		}
	}
	return out, in.ShardErrors()
}

// Messages returns up to limit messages that match filter with a timestamp at or after since,
// ordered by shard, then timestamp (limit <= 0: no limit). Shards that did not load are
// skipped and their errors returned with the messages of the others; a message that does not
// decode ends its shard's listing with an error wrapping ErrCorruption.
func (in *Inspector) Messages(filter string, since time.Time, limit int) (out []Message, err error) {
	defer recoverRead("messages", &err)
	if err := topic.ValidateFilter(filter); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = int(^uint(0) >> 1)
	}
	levels := topic.Split(filter)
	from := Micros(since)
	var errs []error
	for _, s := range in.shards {
		if len(out) >= limit {
			break
		}
		if s.err != nil {
			errs = append(errs, s.err)
			continue
		}
		var shardMsgs []Message
		var serr error
	gens:
		for _, g := range s.table.Gens {
			until := g.Until
			if g.Current() {
				until = s.lastTS + 1
			}
			if until <= from {
				continue
			}
			l := s.layouts[g.ID]
			var genMsgs []Message
			for _, si := range l.Streams(levels) {
				msgs, _, err := l.Read(s.db, layout.ReadRequest{
					Key: si.Key, Filter: levels, From: max(from, g.Since), Until: until, Max: limit - len(out),
				}, nil)
				genMsgs = append(genMsgs, msgs...)
				if err != nil {
					if errors.Is(err, layout.ErrCorrupt) {
						err = fmt.Errorf("%w: %w", ErrCorruption, err)
					}
					serr = fmt.Errorf("shard %d generation %d stream %d: %w", s.id, g.ID, si.Key, err)
					break
				}
			}
			slices.SortFunc(genMsgs, func(a, b Message) int { return compareU64(a.Timestamp, b.Timestamp) })
			for i := range genMsgs {
				genMsgs[i].Shard = uint16(s.id)
			}
			shardMsgs = append(shardMsgs, genMsgs...)
			if serr != nil || len(out)+len(shardMsgs) >= limit {
				break gens
			}
		}
		out = append(out, shardMsgs[:min(len(shardMsgs), limit-len(out))]...)
		if serr != nil {
			errs = append(errs, serr)
		}
	}
	return out, errors.Join(errs...)
}

func compareU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

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
	Problems       []CheckProblem
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
// checkReplicaMeta); in an embedded directory those keys are problems. A shard that no store
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
			return compareU64(uint64(a.gen), uint64(b.gen))
		}
		return compareU64(a.key, b.key)
	})
	for _, k := range keys {
		if c := counts[k]; c.wantIndex != c.gotIndex {
			add(CheckProblem{Shard: int(s.id), Path: s.path, Err: fmt.Errorf(
				"%w: generation %d stream %d: its messages need %d index keys, found %d",
				ErrCorruption, k.gen, k.key, c.wantIndex, c.gotIndex)})
		}
	}
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
