package inspect

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/strata-mq/strata/ds"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
)

// An Inspector is the read-only inspection of an embedded data directory or of a replicated
// site's replica stores (replica.go). ds.Open cannot serve operators' tools: it starts every
// shard's writer, whose maintenance rotates and drops generations by the clock, and it creates
// what is missing. An Inspector opens Pebble read-only over a filesystem that refuses every
// write, loads each shard's state with package shard's own loader (shard.LoadStored), and
// starts nothing. It decodes no byte itself: shard and layout judge their own keys (Check).

// Inspector is a read-only view of a store's data: an embedded data directory (the kind Open
// creates; see Open), or the per-shard replica stores of a replicated site (see
// OpenReplicas). It never writes to them: Pebble is opened read-only (the WAL is replayed
// in memory) over a filesystem that refuses writes. It takes each Pebble's directory lock, so
// it cannot be opened while a DB (or a site) holds one (ErrInUse), and a DB cannot be opened
// while it is.
//
// A shard whose generation table or learned layout does not decode is still listed: its
// error is returned by the calls that need its state and reported by Check. An Inspector is
// not safe for concurrent use.
type Inspector struct {
	manifest   ds.Manifest
	replicated bool // the stores are shard replicas (OpenReplicas)
	pebbles    []*pebble.DB
	paths      []string
	shards     []*inspectShard
}

type inspectShard struct {
	id     ds.ShardID
	db     *pebble.DB // nil when no store holds the shard (err says so)
	path   string     // of its Pebble instance
	prefix []byte
	shard.Stored
	err error // the shard's state does not load

	// Replicated stores only (see replica.go).
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

// Open opens the embedded data directory dir (one ds.Open created) read-only.
func Open(dir string) (*Inspector, error) {
	if st, err := os.Stat(dir); err != nil {
		return nil, err
	} else if !st.IsDir() {
		return nil, fmt.Errorf("%s: not a directory", dir)
	}
	m, err := ds.ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	var plan inspectPlan
	index := map[string]int{}
	for _, st := range m.Stores(dir) {
		i, ok := index[st.Path]
		if !ok {
			i = len(plan.paths)
			index[st.Path] = i
			plan.paths = append(plan.paths, st.Path)
		}
		plan.shards = append(plan.shards, inspectShardPlan{store: i, prefix: st.Prefix})
	}
	return openInspector(m, false, plan)
}

// openInspector opens the Pebble instances of plan read-only and loads every shard's state.
func openInspector(m ds.Manifest, replicated bool, plan inspectPlan) (*Inspector, error) {
	in := &Inspector{manifest: m, replicated: replicated}
	if err := in.open(plan); err != nil {
		in.Close()
		return nil, err
	}
	return in, nil
}

func (in *Inspector) open(plan inspectPlan) error {
	o := ds.DefaultOptions()
	n := max(len(plan.paths), 1)
	cache := pebble.NewCache(16 << 20)
	defer cache.Unref()
	for _, path := range plan.paths {
		po := pebbleopts.New(pebbleopts.Config{FS: readOnlyFS{vfs.Default}, Cache: cache,
			MemTableBytes: o.Expert.MemTableBytes / n, Logger: pebbleopts.SlogLogger{L: slog.New(slog.DiscardHandler)}})
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
				return fmt.Errorf("%w: open %s read-only: %w", ds.ErrCorruption, path, err)
			}
			return fmt.Errorf("strata: open %s read-only: %w", path, err)
		}
		in.pebbles = append(in.pebbles, p)
		in.paths = append(in.paths, path)
	}
	for i, sp := range plan.shards {
		s := &inspectShard{id: ds.ShardID(i), replica: in.replicated}
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
		*err = fmt.Errorf("%w: %s: panic while reading (damaged files?): %v", ds.ErrCorruption, what, r)
	}
}

// load reads the shard's state (and a replica's applied index).
func (s *inspectShard) load() (err error) {
	defer recoverRead(fmt.Sprintf("shard %d", s.id), &err)
	if s.replica {
		// Not the shard's state: its messages stay readable without it.
		s.appliedErr = s.loadApplied()
		s.appliedRead = s.appliedErr == nil
	}
	s.Stored, err = shard.LoadStored(s.db, s.id, s.prefix)
	return err
}

// loadApplied reads a replica's applied index, with a panic of a damaged store (recoverRead)
// kept as its own error: the shard's messages stay readable.
func (s *inspectShard) loadApplied() (err error) {
	defer recoverRead(fmt.Sprintf("shard %d applied index", s.id), &err)
	if s.applied, err = shard.LoadAppliedIndex(s.db, s.prefix); err != nil {
		return fmt.Errorf("shard %d: %w", s.id, err)
	}
	return nil
}

// openPebble is pebble.Open with Pebble's panics returned as errors: its fatal log (a storage
// failure: pebbleopts.Fatal) and an error it panics with (an I/O error it cannot go on after)
// as failures to open; a runtime error is a bug and panics on.
func openPebble(path string, po *pebble.Options) (p *pebble.DB, err error) {
	defer func() {
		switch r := recover().(type) {
		case nil:
		case runtime.Error:
			panic(r)
		case pebbleopts.Fatal:
			p, err = nil, fmt.Errorf("%w: open %s read-only: pebble: %s", ds.ErrFailed, path, string(r))
		case error:
			p, err = nil, fmt.Errorf("%w: open %s read-only: %w", ds.ErrFailed, path, r)
		default:
			panic(r)
		}
	}()
	return pebble.Open(path, po)
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

// Manifest returns the directory's manifest (for replica stores, the one OpenReplicas
// synthesized).
func (in *Inspector) Manifest() ds.Manifest { return in.manifest }

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
func (in *Inspector) Generations() ([]ds.GenerationInfo, error) {
	var out []ds.GenerationInfo
	for _, s := range in.shards {
		if s.err != nil {
			continue
		}
		for _, g := range s.Table.Gens {
			out = append(out, ds.GenerationInfo{Shard: s.id, Info: g})
		}
	}
	return out, in.ShardErrors()
}

// StreamCount returns the number of streams of one shard-generation.
func (in *Inspector) StreamCount(sh ds.ShardID, gen ds.GenerationID) (int, error) {
	l, err := in.layout(sh, gen)
	if err != nil {
		return 0, err
	}
	return l.StreamCount(), nil
}

func (in *Inspector) layout(sh ds.ShardID, gen ds.GenerationID) (layout.Generation, error) {
	if int(sh) >= len(in.shards) {
		return nil, fmt.Errorf("%w: shard %d of %d", ds.ErrShardNotFound, sh, len(in.shards))
	}
	s := in.shards[sh]
	if s.err != nil {
		return nil, s.err
	}
	l, ok := s.Layouts[gen]
	if !ok {
		return nil, fmt.Errorf("%w: shard %d generation %d", ds.ErrGenerationNotFound, sh, gen)
	}
	return l, nil
}

// GenerationUsage returns what one shard-generation holds, as DB.GenerationUsage: its
// message count as stored with it, and Pebble's estimate of its bytes on disk.
func (in *Inspector) GenerationUsage(sh ds.ShardID, gen ds.GenerationID) (u ds.GenerationUsage, err error) {
	if _, err := in.layout(sh, gen); err != nil {
		return u, err
	}
	s := in.shards[sh]
	defer recoverRead(fmt.Sprintf("shard %d generation %d", sh, gen), &err)
	if u.Messages, u.Counted, err = shard.LoadMessageCount(s.db, s.prefix, gen); err != nil {
		return u, fmt.Errorf("shard %d: %w (%s)", sh, err, s.path)
	}
	u.DiskBytes, err = shard.GenerationDiskBytes(s.db, s.prefix, gen)
	return u, err
}

// DumpLayout renders the learned topic structure of one shard-generation, as DB.DumpLayout.
func (in *Inspector) DumpLayout(sh ds.ShardID, gen ds.GenerationID) (string, error) {
	l, err := in.layout(sh, gen)
	if err != nil {
		return "", err
	}
	return l.Dump(), nil
}

// Streams returns the streams whose pattern can match filter, of every generation that is
// current or ends after since, by shard, generation and key, as DB.Streams does. Shards that
// did not load are skipped and their errors returned with the streams of the others.
func (in *Inspector) Streams(filter string, since time.Time) ([]ds.Stream, error) {
	if err := topic.ValidateFilter(filter); err != nil {
		return nil, err
	}
	levels := topic.Split(filter)
	var out []ds.Stream
	for _, s := range in.shards {
		if s.err != nil {
			continue
		}
		for _, g := range s.Table.Gens {
			if !g.Current() && g.Until <= ds.Micros(since) {
				continue
			}
			for _, si := range s.Layouts[g.ID].Streams(levels) {
				out = append(out, ds.Stream{Shard: s.id, Generation: g.ID, Layout: g.Layout.Kind, Key: si.Key, Pattern: si.Pattern})
			}
		}
	}
	return out, in.ShardErrors()
}

// Messages returns up to limit messages that match filter with a timestamp at or after since,
// ordered by shard, then timestamp (limit <= 0: no limit). Shards that did not load are
// skipped and their errors returned with the messages of the others; a message that does not
// decode ends its shard's listing with an error wrapping ErrCorruption.
func (in *Inspector) Messages(filter string, since time.Time, limit int) (out []ds.Message, err error) {
	defer recoverRead("messages", &err)
	if err := topic.ValidateFilter(filter); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = int(^uint(0) >> 1)
	}
	levels := topic.Split(filter)
	from := ds.Micros(since)
	var errs []error
	for _, s := range in.shards {
		if len(out) >= limit {
			break
		}
		if s.err != nil {
			errs = append(errs, s.err)
			continue
		}
		var shardMsgs []ds.Message
		var serr error
	gens:
		for _, g := range s.Table.Gens {
			until := g.Until
			if g.Current() {
				until = s.LastTS + 1
			}
			if until <= from {
				continue
			}
			l := s.Layouts[g.ID]
			var genMsgs []ds.Message
			for _, si := range l.Streams(levels) {
				msgs, _, err := l.Read(s.db, layout.ReadRequest{
					Key: si.Key, Filter: levels, From: max(from, g.Since), Until: until, Max: limit - len(out),
				}, nil)
				genMsgs = append(genMsgs, msgs...)
				if err != nil {
					if errors.Is(err, layout.ErrCorrupt) {
						err = fmt.Errorf("%w: %w", ds.ErrCorruption, err)
					}
					serr = fmt.Errorf("shard %d generation %d stream %d: %w", s.id, g.ID, si.Key, err)
					break
				}
			}
			slices.SortFunc(genMsgs, func(a, b ds.Message) int { return cmp.Compare(a.Timestamp, b.Timestamp) })
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
