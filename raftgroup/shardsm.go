package raftgroup

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	sm "github.com/lni/dragonboat/v4/statemachine"
	"github.com/strata-mq/strata/internal/fsutil"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// shardSM is the state machine of one replica of one shard (dragonboat's IOnDiskStateMachine)
// over a shard.Replica in its own Pebble.
//
// Directory of a replica:
//
//	<site>/replicas/shard-0003-r7/CURRENT    names the live Pebble directory ("db-000002")
//	                             db-000002/  the live Pebble
//	                             snap-…/     a checkpoint being streamed to another replica
//	                             db-000003/  a snapshot being received (until CURRENT names it)
//
// Pebble's WAL stays on, written without fsync: the Raft log is the durable record of every
// entry, and after a crash dragonboat replays from the applied index the replica's Pebble
// recovered to (index and data commit in one batch, so they always agree). Turning the WAL off
// would save writing each message a second time, but then Sync — which dragonboat calls
// before it compacts the log — would have to flush the memtable, and a process crash would
// replay the whole memtable's worth of log; with the WAL on, Sync is one fsync and a killed
// process loses nothing from the page cache.
type shardSM struct {
	site      *Site
	shard     stream.ShardID
	replicaID uint64
	dir       string

	mu  sync.RWMutex // write-held only to swap or close cur; reads hold it for reading
	cur *replicaStore
	// caughtUp: the replica is one of its group's first, or it has applied everything
	// committed when it asked (a ReadIndex through the leader) once, as CAUGHT-UP in its
	// directory remembers across restarts. Only then does the site serve the shard from it;
	// until then the shard's calls are forwarded, so that a joining replica never answers
	// "no data" for data it has not received yet.
	caughtUp atomic.Bool
}

type replicaStore struct {
	db   *pebble.DB
	r    *shard.Replica
	name string // directory under shardSM.dir
}

var _ sm.IOnDiskStateMachine = (*shardSM)(nil)

func (s *shardSM) Open(stopc <-chan struct{}) (uint64, error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return 0, err
	}
	name := storeName(firstStore)
	switch b, err := os.ReadFile(filepath.Join(s.dir, currentFile)); {
	case err == nil:
		name = strings.TrimSpace(string(b))
	case errors.Is(err, os.ErrNotExist):
		if err := fsutil.WriteFileAtomic(vfs.Default, filepath.Join(s.dir, currentFile), []byte(name+"\n")); err != nil {
			return 0, err
		}
	default:
		return 0, err
	}
	// Leftovers of an interrupted snapshot transfer or recovery.
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		if e.IsDir() && e.Name() != name {
			if err := os.RemoveAll(filepath.Join(s.dir, e.Name())); err != nil {
				return 0, err
			}
		}
	}
	st, applied, err := s.openStore(name)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	s.cur = st
	s.mu.Unlock()
	return applied, nil
}

func (s *shardSM) openStore(name string) (*replicaStore, uint64, error) {
	o := s.site.cfg.DB
	opts := pebbleopts.New(pebbleopts.Config{
		Cache: s.site.cache, MemTableBytes: o.Expert.MemTableBytes, Logger: pebbleopts.SlogLogger{L: o.Logger},
	})
	// What this store reports does not follow what an earlier one of this site did.
	s.site.tails.reset(s.shard)
	db, err := pebble.Open(filepath.Join(s.dir, name), opts)
	if err != nil {
		return nil, 0, fmt.Errorf("shard %d replica %d: %w", s.shard, s.replicaID, err)
	}
	r, applied, err := shard.OpenReplica(shard.ReplicaConfig{
		ID: s.shard, DB: db, Logger: o.Logger, OnChange: s.site.notifyChanged, OnDurable: s.site.replicaDurable,
		Layout: layout.Params{Kind: s.site.schema.Layout, Thresholds: s.site.schema.WildcardThresholds},
	})
	if err != nil {
		db.Close()
		return nil, 0, fmt.Errorf("shard %d replica %d: %w", s.shard, s.replicaID, err)
	}
	return &replicaStore{db: db, r: r, name: name}, applied, nil
}

func (s *shardSM) Update(entries []sm.Entry) ([]sm.Entry, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.cur == nil {
		return nil, shard.ErrClosed
	}
	es := make([]shard.Entry, len(entries))
	for i, e := range entries {
		var err error
		es[i], err = decodeProposal(e.Index, e.Cmd)
		if err != nil {
			es[i].Cmd, es[i].RejectReason = nil, err
		}
	}
	if err := s.cur.r.ApplyEntries(es); err != nil {
		return nil, err
	}
	for i := range entries {
		entries[i].Result.Value, entries[i].Result.Data = encodeResult(es[i].Result)
	}
	return entries, nil
}

// Lookup answers queries of a replica's state; reads of messages go through withReplica.
// Query "digest" returns a digestResult.
func (s *shardSM) Lookup(q any) (any, error) {
	if q == "digest" {
		return s.digest()
	}
	return nil, fmt.Errorf("strata: unknown query %v", q)
}

// digestResult is a replica's applied index and a SHA-256 over every key and value, taken from
// one Pebble snapshot, so that replicas at the same index can be compared.
type digestResult struct {
	Applied uint64
	Sum     [32]byte
	Keys    int
}

func (s *shardSM) digest() (digestResult, error) {
	var d digestResult
	err := s.withReplica(func(st *replicaStore) error {
		snap := st.db.NewSnapshot()
		defer snap.Close()
		it, err := snap.NewIter(nil)
		if err != nil {
			return err
		}
		defer it.Close()
		h := sha256.New()
		var n [4]byte
		for ok := it.First(); ok; ok = it.Next() {
			k := it.Key()
			v, err := it.ValueAndErr()
			if err != nil {
				return err
			}
			if shard.IsAppliedIndexKey(k) {
				d.Applied = binary.BigEndian.Uint64(v)
			}
			h.Write(binary.BigEndian.AppendUint32(n[:0], uint32(len(k))))
			h.Write(k)
			h.Write(binary.BigEndian.AppendUint32(n[:0], uint32(len(v))))
			h.Write(v)
			d.Keys++
		}
		h.Sum(d.Sum[:0])
		return it.Error()
	})
	return d, err
}

// withReplica runs f with the live store, which stays open until f returns.
func (s *shardSM) withReplica(f func(*replicaStore) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.cur == nil {
		return fmt.Errorf("%w: shard %d replica %d is not open", shard.ErrUnavailable, s.shard, s.replicaID)
	}
	return f(s.cur)
}

func (s *shardSM) Sync() error {
	return s.withReplica(func(st *replicaStore) error { return st.r.Sync() })
}

// PrepareSnapshot takes a Pebble checkpoint (hard links, with the WAL flushed) of the state as
// of the last applied entry. dragonboat calls it between Updates; SaveSnapshot then streams it
// while Updates go on.
func (s *shardSM) PrepareSnapshot() (any, error) {
	var dir string
	err := s.withReplica(func(st *replicaStore) error {
		var rnd [6]byte
		rand.Read(rnd[:])
		dir = filepath.Join(s.dir, "snap-"+hex.EncodeToString(rnd[:]))
		return st.db.Checkpoint(dir, pebble.WithFlushedWAL())
	})
	return dir, err
}

func (s *shardSM) SaveSnapshot(ctx any, w io.Writer, stopc <-chan struct{}) error {
	dir := ctx.(string)
	defer os.RemoveAll(dir)
	return writeSnapshot(dir, w, stopc)
}

// RecoverFromSnapshot builds the new state beside the live one, opens it to check it, switches
// CURRENT to it atomically, swaps the store under the lock (readers finish on the old one
// first) and removes the old one. A crash at any point leaves CURRENT naming a complete store.
func (s *shardSM) RecoverFromSnapshot(r io.Reader, stopc <-chan struct{}) error {
	s.mu.RLock()
	old := s.cur
	s.mu.RUnlock()
	if old == nil {
		return shard.ErrClosed
	}
	seq, ok := parseStoreName(old.name)
	if !ok {
		return fmt.Errorf("%w: replica store %q in %s", shard.ErrFailed, old.name, s.dir)
	}
	name := storeName(seq + 1)
	path := filepath.Join(s.dir, name)
	os.RemoveAll(path)
	if err := readSnapshot(r, path, stopc); err != nil {
		os.RemoveAll(path)
		return err
	}
	st, _, err := s.openStore(name)
	if err != nil {
		os.RemoveAll(path)
		return err
	}
	if err := fsutil.WriteFileAtomic(vfs.Default, filepath.Join(s.dir, currentFile), []byte(name+"\n")); err != nil {
		st.r.Close()
		st.db.Close()
		return err
	}
	s.mu.Lock()
	s.cur = st
	s.mu.Unlock()
	old.r.Close()
	old.db.Close()
	os.RemoveAll(filepath.Join(s.dir, old.name))
	s.site.notifyChanged()
	// The messages the snapshot brought were never applied here entry by entry: subscriptions
	// at the tail must read them from the new store, and watchers look again.
	limit, version := st.r.ReadLimit(), st.r.RecordVersion()
	s.site.replicaDurable(shard.Durable{Shard: s.shard, From: limit, Until: limit, FromVersion: version, UntilVersion: version, Reset: true})
	return nil
}

func (s *shardSM) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return nil
	}
	s.cur.r.Close()
	err := s.cur.db.Close()
	s.cur = nil
	s.site.tails.reset(s.shard)
	return err
}
