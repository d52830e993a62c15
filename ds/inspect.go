package ds

import (
	"cmp"
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
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
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
	// Records: their keys and values are package shard's (RecordKeyPrefix, LastVersionKey).
	inspectMetaRecord      = shard.RecordKeyPrefix()
	inspectMetaLastVersion = shard.LastVersionKey()
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
	return Manifest(m), nil
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
			plan.paths = append(plan.paths, filepath.Join(dir, shardPebbleDir(i)))
			plan.shards = append(plan.shards, inspectShardPlan{store: i})
		} else {
			plan.shards = append(plan.shards, inspectShardPlan{store: 0, prefix: layout.ShardPrefix(ShardID(i))})
		}
	}
	if !m.PebblePerShard {
		plan.paths = []string{filepath.Join(dir, sharedPebbleDir)}
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
			slices.SortFunc(genMsgs, func(a, b Message) int { return cmp.Compare(a.Timestamp, b.Timestamp) })
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
