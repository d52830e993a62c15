package session

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/topic"
)

// Limits of the MQTT protocol that bound what a Store accepts.
const (
	maxExpiry         = time.Duration(1<<32-1) * time.Second // MQTT 5: u32 seconds
	maxSubscriptionID = 1<<28 - 1                            // MQTT 5: variable byte integer
	maxReceive        = 65535
)

// Options configure a Store. Zero fields mean their defaults.
type Options struct {
	// Owner names this broker (or site) in the session records; List shows it. Sessions
	// recorded as connected to this Owner but not open in this Store (the process restarted)
	// are treated as disconnected since the Store opened, so they expire. Give each broker
	// a stable Owner of its own: two Stores open at once with the same Owner would expire
	// each other's connected sessions. Default: a random name, so that sessions connected
	// when a broker without an Owner stops never expire until resumed or deleted.
	Owner string
	// CheckpointInterval is how often a session's acknowledgements are written (its
	// subscription positions). After a crash a session receives again, marked DUP, the QoS 1
	// messages acknowledged since its last checkpoint; never fewer. QoS 2 state is written
	// before the broker acts on it, whatever the interval. Default 1s.
	CheckpointInterval time.Duration
	// ExpiryInterval is how often disconnected sessions are checked for expiry. Default 1s.
	ExpiryInterval time.Duration
	// MaxSubscriptions bounds a session's subscriptions. Default 100.
	MaxSubscriptions int
	// ReadBuffer is the ds.SubscribeOptions.ReadBuffer of a session's subscriptions: how many
	// messages one catching up reads ahead per shard. Default 1024.
	ReadBuffer int
	// Now is the clock (expiry, disconnect times). Default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

func (o *Options) withDefaults() (Options, error) {
	var c Options
	if o != nil {
		c = *o
	}
	if c.CheckpointInterval < 0 || c.ExpiryInterval < 0 || c.MaxSubscriptions < 0 || c.ReadBuffer < 0 {
		return c, fmt.Errorf("%w: negative option: %+v", ErrInvalidArgument, c)
	}
	if c.Owner == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		c.Owner = "store-" + hex.EncodeToString(b[:])
	}
	if c.CheckpointInterval == 0 {
		c.CheckpointInterval = time.Second
	}
	if c.ExpiryInterval == 0 {
		c.ExpiryInterval = time.Second
	}
	if c.MaxSubscriptions == 0 {
		c.MaxSubscriptions = 100
	}
	if c.ReadBuffer == 0 {
		c.ReadBuffer = 1024
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Store keeps the durable sessions of a broker in a ds.DB: embedded (ds.Open) or a
// replicated site (ds.OpenBackend over raftgroup). Every Store over the same data sees the
// same sessions: a session's record lives in the shard of its client ID, beside the messages
// its client publishes, and every record write reaches every Store through the DB's record
// watch (on a replicated site, as its replica applies it).
//
// It also knows the filters of every durable session (Wanted), so that a broker stores only
// the messages some durable session wants.
type Store struct {
	db     *ds.DB
	opts   Options
	opened time.Time

	mu struct {
		sync.Mutex
		known map[string]*known   // every session of the DB, by client ID
		local map[string]*Session // sessions open in this Store
		// connecting counts the Connects in progress per client ID (Expire leaves them).
		connecting map[string]int
		filters    map[string]int // durable filter → subscriptions with it
		index      topic.Index[bool]
		closed     bool
	}
	metrics storeMetrics
	watch   *ds.RecordWatch
	done    chan struct{}
	wg      sync.WaitGroup
}

// known is what a Store knows of a session from its record.
type known struct {
	shard        ds.ShardID
	version      uint64
	epoch        uint64
	owner        string
	expiry       time.Duration
	disconnected uint64
	filters      []string
	inflight     int
}

type storeMetrics struct {
	stateWrites, checkpoints, deliveries, expired, fenced, lost atomic.Uint64
}

// Open opens the sessions kept in db and starts the Store's checkpoint and expiry work.
// Close it before closing db.
func Open(ctx context.Context, db *ds.DB, opts *Options) (*Store, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	st := &Store{db: db, opts: o, opened: o.Now(), done: make(chan struct{})}
	st.mu.known = map[string]*known{}
	st.mu.local = map[string]*Session{}
	st.mu.connecting = map[string]int{}
	st.mu.filters = map[string]int{}
	// Watch first, then scan: a write between the two is seen twice, which the version
	// check in learn makes harmless; none is missed.
	if st.watch, err = db.WatchRecords(st.onRecords); err != nil {
		return nil, err
	}
	for sh := range db.NShards() {
		if err := st.scan(ctx, ds.ShardID(sh)); err != nil {
			st.watch.Close()
			return nil, err
		}
	}
	st.wg.Add(2)
	go st.every(st.opts.CheckpointInterval, func() { st.checkpointAll(st.localSessions()) })
	go st.every(st.opts.ExpiryInterval, st.expireDue)
	return st, nil
}

// Close disconnects the sessions open in the Store (each writes its state) and stops it.
func (st *Store) Close() error {
	st.mu.Lock()
	if st.mu.closed {
		st.mu.Unlock()
		return nil
	}
	st.mu.closed = true
	st.mu.Unlock()
	local := st.localSessions()
	close(st.done)
	st.wg.Wait()
	var errs []error
	for _, s := range local {
		if err := s.Disconnect(context.Background()); err != nil && !errors.Is(err, ErrSessionClosed) && !errors.Is(err, ErrTakenOver) {
			errs = append(errs, err)
		}
	}
	st.watch.Close()
	return errors.Join(errs...)
}

// scan learns the sessions recorded in shard sh, and forgets those of sh it knew that are
// not there any more.
func (st *Store) scan(ctx context.Context, sh ds.ShardID) error {
	// The sessions known before the scan, with their versions: one not found by the scan is
	// forgotten only if no write of it was learned meanwhile (the watch runs concurrently,
	// and a session written after the scan passed its key is not in the scan).
	before := map[string]uint64{}
	st.mu.Lock()
	for id, k := range st.mu.known {
		if k.shard == sh {
			before[id] = k.version
		}
	}
	st.mu.Unlock()
	var derr error
	seen := map[string]bool{}
	err := st.db.ScanRecords(ctx, sh, []byte{keySession}, func(key, value []byte, version uint64) bool {
		s, err := decodeState(value)
		if err != nil {
			derr = fmt.Errorf("session %q: %w", key[1:], err)
			return false
		}
		seen[string(key[1:])] = true
		st.learn(sh, string(key[1:]), version, s)
		return true
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return err
	}
	for id, v := range before {
		if seen[id] {
			continue
		}
		st.mu.Lock()
		k := st.mu.known[id]
		same := k != nil && k.version == v
		st.mu.Unlock()
		if same {
			st.forget(id)
		}
	}
	return nil
}

// rescan reads shard sh's sessions again after its replica's state was replaced.
func (st *Store) rescan(sh ds.ShardID) {
	defer st.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		select {
		case <-st.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := st.scan(ctx, sh); err != nil && ctx.Err() == nil {
		st.opts.Logger.Error("reading the sessions of a shard again failed", "shard", sh, "err", err)
	}
}

// onRecords keeps known and the filter index current with every session record written,
// and fences a local session that another connection took over.
func (st *Store) onRecords(sh ds.ShardID, writes []ds.RecordWrite, reset bool) {
	if reset {
		st.mu.Lock()
		defer st.mu.Unlock()
		if !st.mu.closed {
			st.wg.Add(1)
			go st.rescan(sh) // it reads: not in the committing goroutine
		}
		return
	}
	for _, w := range writes {
		if len(w.Key) == 0 || w.Key[0] != keySession {
			continue
		}
		id := string(w.Key[1:])
		if w.Delete {
			st.forget(id)
			continue
		}
		// A write of a session open here (its checkpoints, mostly) is known without decoding:
		// the session says what it wrote. This runs in the shard's committing goroutine.
		st.mu.Lock()
		local := st.mu.local[id]
		st.mu.Unlock()
		if local != nil {
			if ow := local.writing.Load(); ow != nil && bytes.Equal(ow.value, w.Value) {
				k := ow.k
				st.learnKnown(sh, id, w.Version, &k)
				continue
			}
		}
		s, err := decodeState(w.Value)
		if err != nil {
			st.opts.Logger.Error("undecodable session record", "client", id, "err", err)
			continue
		}
		st.learn(sh, id, w.Version, s)
	}
}

// learn records a session's state at version, unless a newer one is known.
func (st *Store) learn(sh ds.ShardID, id string, version uint64, s *state) {
	st.learnKnown(sh, id, version, knownOf(s))
}

// knownOf returns what a Store keeps of a session's state.
func knownOf(s *state) *known {
	k := &known{epoch: s.Epoch, owner: s.Owner, expiry: s.Expiry, disconnected: s.Disconnected, inflight: len(s.Window)}
	for _, sb := range s.Subs {
		if !sb.Retired {
			k.filters = append(k.filters, sb.Filter)
		}
	}
	return k
}

// learnKnown records k as the state of session id at version, unless a newer one is known.
func (st *Store) learnKnown(sh ds.ShardID, id string, version uint64, k *known) {
	k.shard, k.version = sh, version
	st.mu.Lock()
	old := st.mu.known[id]
	if old != nil && old.version >= version {
		st.mu.Unlock()
		return
	}
	st.mu.known[id] = k
	if old == nil || !slices.Equal(old.filters, k.filters) {
		var of []string
		if old != nil {
			of = old.filters
		}
		st.refilterLocked(of, k.filters)
	}
	local := st.mu.local[id]
	st.mu.Unlock()
	if local != nil {
		local.fenceIfNewer(version, k.epoch)
	}
}

func (st *Store) forget(id string) {
	st.mu.Lock()
	k := st.mu.known[id]
	if k != nil {
		delete(st.mu.known, id)
		st.refilterLocked(k.filters, nil)
	}
	local := st.mu.local[id]
	st.mu.Unlock()
	if local != nil {
		local.fenceIfGone()
	}
}

// refilterLocked moves the filter index from a session's old filters to its new ones.
func (st *Store) refilterLocked(old, new []string) {
	for _, f := range new {
		if st.mu.filters[f]++; st.mu.filters[f] == 1 {
			st.mu.index.Set(f, true)
		}
	}
	for _, f := range old {
		if st.mu.filters[f]--; st.mu.filters[f] <= 0 {
			delete(st.mu.filters, f)
			st.mu.index.Delete(f)
		}
	}
}

// Wanted reports whether a message published to topic matches a subscription of some durable
// session (of any Store over the DB). A broker stores only wanted messages: one no durable
// session wants costs nothing. A subscription made on another site is known here once this
// site's replica applied it.
func (st *Store) Wanted(topicName string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	var buf [1]bool
	return len(st.mu.index.Match(topicName, buf[:0])) > 0
}

// Info describes one session (List).
type Info struct {
	ClientID      string
	Shard         ds.ShardID
	Owner         string // the Options.Owner of the Store it last connected through
	Connected     bool
	Disconnected  time.Time // zero while connected
	Expiry        time.Duration
	Subscriptions []string
	// InflightQoS2 counts QoS 2 deliveries awaiting their PUBREC or PUBCOMP.
	InflightQoS2 int
}

// List returns every session of the DB, by client ID.
func (st *Store) List() []Info {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make([]Info, 0, len(st.mu.known))
	for id, k := range st.mu.known {
		in := Info{ClientID: id, Shard: k.shard, Owner: k.owner, Connected: k.disconnected == 0, Expiry: k.expiry,
			Subscriptions: slices.Clone(k.filters), InflightQoS2: k.inflight}
		if k.disconnected != 0 {
			in.Disconnected = time.UnixMicro(int64(k.disconnected))
		}
		out = append(out, in)
	}
	slices.SortFunc(out, func(a, b Info) int { return cmpString(a.ClientID, b.ClientID) })
	return out
}

func cmpString(a, b string) int { return bytes.Compare([]byte(a), []byte(b)) }

// Metrics are a Store's counters.
type Metrics struct {
	Sessions, Connected, Open int // known, connected anywhere, open in this Store
	DurableFilters            int // distinct filters of every durable subscription
	Deliveries                uint64
	// StateWrites counts session record writes (checkpoints, subscribes, QoS 2 steps, ...);
	// Checkpoints those made by the checkpoint interval.
	StateWrites, Checkpoints uint64
	Expired                  uint64 // sessions deleted by expiry
	Fenced                   uint64 // sessions of this Store taken over
	Lost                     uint64 // messages dropped by retention before a session read them
}

// Metrics returns the Store's counters.
func (st *Store) Metrics() Metrics {
	st.mu.Lock()
	m := Metrics{Sessions: len(st.mu.known), Open: len(st.mu.local), DurableFilters: len(st.mu.filters)}
	for _, k := range st.mu.known {
		if k.disconnected == 0 {
			m.Connected++
		}
	}
	st.mu.Unlock()
	m.Deliveries = st.metrics.deliveries.Load()
	m.StateWrites = st.metrics.stateWrites.Load()
	m.Checkpoints = st.metrics.checkpoints.Load()
	m.Expired = st.metrics.expired.Load()
	m.Fenced = st.metrics.fenced.Load()
	m.Lost = st.metrics.lost.Load()
	return m
}

// MaxClientID bounds a client ID (bytes): it is part of record keys (shard.MaxRecordKey).
const MaxClientID = 1000

func validClientID(id string) error {
	if id == "" || len(id) > MaxClientID || !utf8.ValidString(id) || bytes.IndexByte([]byte(id), 0) >= 0 {
		return fmt.Errorf("%w: client ID %q", ErrInvalidArgument, id)
	}
	return nil
}

// StoreQoS2 stores an inbound QoS 2 PUBLISH (packet ID pid, from m.ClientID) exactly once
// across its re-sends: the packet ID is recorded with the message, in one atomic command of
// the publisher's shard, and kept until ReleaseQoS2 (its PUBREL). stored is false for a
// re-send of a message already stored; the broker answers PUBREC either way.
func (st *Store) StoreQoS2(ctx context.Context, m ds.Message, pid uint16) (stored bool, err error) {
	if err := validClientID(m.ClientID); err != nil {
		return false, err
	}
	if pid == 0 {
		return false, fmt.Errorf("%w: packet ID 0", ErrInvalidArgument)
	}
	sh := ds.ShardOf(m.ClientID, st.db.NShards())
	key := inboundKey(m.ClientID, pid)
	_, err = st.db.Update(ctx, sh, &ds.Txn{Conds: []ds.Cond{{Key: key}}, Writes: []ds.RecordWrite{{Key: key}}, Messages: []ds.Message{m}})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ds.ErrConditionFailed):
		return false, nil
	case errors.Is(err, ds.ErrOutcomeUnknown):
		// The packet ID is recorded iff the message was stored (one command): look.
		if _, v, rerr := st.db.Record(ctx, sh, key); rerr == nil && v != 0 {
			return false, nil
		}
	}
	return false, err
}

// ReleaseQoS2 forgets an inbound QoS 2 packet ID (the broker received its PUBREL and answers
// PUBCOMP). ErrUnknownPacketID if it is not recorded (the broker answers PUBCOMP with reason
// "packet identifier not found").
func (st *Store) ReleaseQoS2(ctx context.Context, clientID string, pid uint16) error {
	if err := validClientID(clientID); err != nil {
		return err
	}
	if pid == 0 {
		return fmt.Errorf("%w: packet ID 0", ErrInvalidArgument)
	}
	sh := ds.ShardOf(clientID, st.db.NShards())
	key := inboundKey(clientID, pid)
	_, v, err := st.db.Record(ctx, sh, key)
	if err != nil {
		return err
	}
	if v == 0 {
		return fmt.Errorf("%w: inbound %d of %q", ErrUnknownPacketID, pid, clientID)
	}
	_, err = st.db.Update(ctx, sh, &ds.Txn{Conds: []ds.Cond{{Key: key, Version: v}}, Writes: []ds.RecordWrite{{Key: key, Delete: true}}})
	if errors.Is(err, ds.ErrConditionFailed) {
		return fmt.Errorf("%w: inbound %d of %q", ErrUnknownPacketID, pid, clientID)
	}
	return err
}

// inboundDeletes returns the deletes of a client's inbound QoS 2 packet IDs.
func (st *Store) inboundDeletes(ctx context.Context, sh ds.ShardID, clientID string) ([]ds.RecordWrite, error) {
	var out []ds.RecordWrite
	err := st.db.ScanRecords(ctx, sh, inboundPrefix(clientID), func(key, _ []byte, _ uint64) bool {
		out = append(out, ds.RecordWrite{Key: bytes.Clone(key), Delete: true})
		return true
	})
	return out, err
}

// Delete removes a session that is not open in this Store, with its inbound QoS 2 state
// (an operator's action, or a broker's for a client that connects with a clean start
// elsewhere). Deleting a session connected through another Store fences that one off.
func (st *Store) Delete(ctx context.Context, clientID string) error {
	if err := validClientID(clientID); err != nil {
		return err
	}
	sh := ds.ShardOf(clientID, st.db.NShards())
	key := sessionKey(clientID)
	for {
		_, v, err := st.db.Record(ctx, sh, key)
		if err != nil {
			return err
		}
		dels, err := st.inboundDeletes(ctx, sh, clientID)
		if err != nil {
			return err
		}
		if v != 0 {
			dels = append(dels, ds.RecordWrite{Key: key, Delete: true})
		}
		if len(dels) == 0 {
			return nil
		}
		_, err = st.db.Update(ctx, sh, &ds.Txn{Conds: []ds.Cond{{Key: key, Version: v}}, Writes: dels})
		if !errors.Is(err, ds.ErrConditionFailed) {
			return err
		}
	}
}

// every calls f every interval until the Store closes.
func (st *Store) every(interval time.Duration, f func()) {
	defer st.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-st.done:
			return
		case <-t.C:
			f()
		}
	}
}

// localSessions returns the sessions open in the Store.
func (st *Store) localSessions() []*Session {
	st.mu.Lock()
	defer st.mu.Unlock()
	local := make([]*Session, 0, len(st.mu.local))
	for _, s := range st.mu.local {
		local = append(local, s)
	}
	return local
}

// maxCheckpointTxns bounds the session records of one checkpoint command.
const maxCheckpointTxns = 512

// checkpointAll writes the state of every dirty session of local: one command per shard
// (ds.UpdateAll) for all of its sessions, the shards in parallel. A session busy writing
// (it holds its write lock) is skipped: it is written again next time if still dirty.
func (st *Store) checkpointAll(local []*Session) {
	type item struct {
		s   *Session
		txn *ds.Txn
	}
	groups := map[ds.ShardID][]item{}
	for _, s := range local {
		if !s.dirty() || !s.writeMu.TryLock() {
			continue
		}
		txn, err := s.prepareLocked(nil)
		if err != nil {
			s.writeMu.Unlock()
			continue
		}
		groups[s.shard] = append(groups[s.shard], item{s, txn})
	}
	var wg sync.WaitGroup
	for sh, items := range groups {
		for len(items) > 0 {
			chunk := items[:min(len(items), maxCheckpointTxns)]
			items = items[len(chunk):]
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*st.opts.CheckpointInterval)
				defer cancel()
				txns := make([]*ds.Txn, len(chunk))
				for i, it := range chunk {
					txns[i] = it.txn
				}
				res, errs, err := st.db.UpdateAll(ctx, sh, txns)
				for i, it := range chunk {
					var r ds.TxnResult
					e := err
					if e == nil {
						r, e = res[i], errs[i]
					}
					if e = it.s.finishLocked(ctx, it.txn, r, e); e == nil {
						st.metrics.checkpoints.Add(1)
					} else if !errors.Is(e, ErrSessionClosed) && !errors.Is(e, ErrTakenOver) {
						st.opts.Logger.Warn("session checkpoint failed", "client", it.s.id, "err", e)
					}
					it.s.writeMu.Unlock()
				}
			})
		}
	}
	wg.Wait()
}

// expireDue runs Expire (every ExpiryInterval), logging what fails.
func (st *Store) expireDue() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*st.opts.ExpiryInterval)
	defer cancel()
	if _, err := st.Expire(ctx); err != nil {
		st.opts.Logger.Warn("session expiry failed", "err", err)
	}
}

// Expire deletes every session whose expiry interval after its disconnect has passed (the
// Store does so every ExpiryInterval) and returns how many it deleted. A session recorded as
// connected through this Store's Owner but not open in it counts as disconnected since the
// Store opened (its broker restarted).
func (st *Store) Expire(ctx context.Context) (int, error) {
	now := uint64(st.opts.Now().UnixMicro())
	type victim struct {
		id      string
		shard   ds.ShardID
		version uint64
	}
	var due []victim
	st.mu.Lock()
	for id, k := range st.mu.known {
		since := k.disconnected
		if since == 0 {
			if k.owner != st.opts.Owner || st.mu.local[id] != nil || st.mu.connecting[id] > 0 {
				continue
			}
			since = uint64(st.opened.UnixMicro())
		}
		if since+uint64(k.expiry/time.Microsecond) <= now {
			due = append(due, victim{id, k.shard, k.version})
		}
	}
	st.mu.Unlock()
	n := 0
	var errs []error
	for _, v := range due {
		dels, err := st.inboundDeletes(ctx, v.shard, v.id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		key := sessionKey(v.id)
		_, err = st.db.Update(ctx, v.shard, &ds.Txn{Conds: []ds.Cond{{Key: key, Version: v.version}},
			Writes: append(dels, ds.RecordWrite{Key: key, Delete: true})})
		switch {
		case err == nil:
			n++
			st.metrics.expired.Add(1)
		case errors.Is(err, ds.ErrConditionFailed):
			// Resumed or expired elsewhere meanwhile.
		default:
			errs = append(errs, fmt.Errorf("expire %q: %w", v.id, err))
		}
	}
	return n, errors.Join(errs...)
}
