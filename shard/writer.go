package shard

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/stream"
)

// Config configures one shard. Package ds fills it from its Options; every field must be set.
type Config struct {
	ID     stream.ShardID
	DB     *pebble.DB
	Prefix []byte        // key prefix; empty when the shard owns DB
	Layout layout.Params // for new generations

	Sync             bool          // fsync every commit
	FlushInterval    time.Duration // group-commit window after the first waiting message
	MaxBatchMessages int
	MaxBatchBytes    int
	QueueLength      int // requests waiting for the writer before Store blocks

	GenerationSpan      time.Duration // 0: no automatic rotation
	Retention           time.Duration // <= 0: keep everything
	MaintenanceInterval time.Duration // how often rotation and retention are checked

	Now           func() time.Time
	QuotaExceeded func() bool // may be nil
	OnChange      func()      // called after new streams or generations became visible; may be nil
	// OnDurable is called by the syncer after each commit became readable, before its Store
	// calls are woken; it must return quickly (it delays them). May be nil.
	OnDurable func(Durable)
	Logger    *slog.Logger

	// commit and syncWait are a group commit's calls to Pebble (see pebbleCommit); tests set
	// them to inject blocking and failures, Open defaults them.
	commit, syncWait func(*pebble.Batch) error
}

type requestKind uint8

const (
	reqStore requestKind = iota
	reqAddGeneration
	reqDrop
)

// messages is the number of messages r stores (its own and its Txns').
func (r *request) messages() int {
	n := len(r.msgs)
	for _, t := range r.txns {
		n += len(t.Messages)
	}
	return n
}

type request struct {
	kind     requestKind
	msgs     []*message.Message
	txns     []*Txn // a reqStore with Txns instead of msgs
	bytes    int
	gen      stream.GenerationID
	enqueued time.Time

	err    error
	done   chan struct{} // closed when finished (Store, Submit); nil: not waited on
	notify Notifier      // told when finished (SubmitNotify); nil: none
}

// finish reports the request's outcome to whoever waits for it.
func (r *request) finish(err error) {
	r.err = err
	if r.done != nil {
		close(r.done)
	}
	if r.notify != nil {
		r.notify.Notify(err)
	}
}

// inflight is a batch committed to Pebble and waiting for its WAL sync, or requests that
// failed before a commit (err set, batch nil), which pass through the syncer all the same so
// that a shard's requests are finished in the order they were queued. (One exception: over the
// quota, the requests a batch refuses are finished before the record-only Txns it keeps; the
// messages' outcomes keep their order.)
type inflight struct {
	batch *pebble.Batch
	reqs  []*request
	err   error // set when the requests failed before a commit
	pub   *publication
	news  bool
	// When the batch was started, applied and committed, and its messages' summed wait in
	// the queue (Metrics.StageNanos).
	start, applied, committed time.Time
	queued                    time.Duration
	msgs                      int
	bytes                     int
	spans                     [][2][]byte
	touch                     []StreamTouch
	txnMsgs                   []*message.Message
	records                   []RecordWrite
}

// Shard is one shard: a core plus its writer and syncer goroutines.
type Shard struct {
	*core // reads (Streams, Read, Generations, Layout) are promoted from it
	cfg   Config

	q       chan *request
	synced  chan *inflight
	closing chan struct{}
	wg      sync.WaitGroup
	mu      struct {
		sync.RWMutex
		closed bool
	}
	failed  error // set by the syncer; read by the writer under failMu
	failMu  sync.Mutex
	Metrics Metrics

	compactCtx    context.Context
	cancelCompact context.CancelFunc
}

// Open opens (or creates) the shard described by cfg and starts its writer.
func Open(cfg Config) (*Shard, error) {
	c := newCore(cfg.ID, cfg.DB, cfg.Prefix, cfg.Layout)
	found, err := c.load()
	if err != nil {
		return nil, err
	}
	if !found {
		if err := c.create(uint64(max(cfg.Now().UnixMicro(), 1)), cfg.Sync); err != nil {
			return nil, fmt.Errorf("shard %d: create: %w", cfg.ID, err)
		}
	}
	if cfg.commit == nil {
		cfg.commit = pebbleCommit(cfg.DB, cfg.Sync)
	}
	if cfg.syncWait == nil {
		cfg.syncWait = pebbleSyncWait(cfg.Sync)
	}
	s := &Shard{
		cfg:     cfg,
		core:    c,
		q:       make(chan *request, cfg.QueueLength),
		synced:  make(chan *inflight, 4),
		closing: make(chan struct{}),
	}
	s.compactCtx, s.cancelCompact = context.WithCancel(context.Background())
	s.wg.Add(2)
	go s.runWriter()
	go s.runSyncer()
	return s, nil
}

// ID returns the shard's ID.
func (s *Shard) ID() stream.ShardID { return s.cfg.ID }

// Close stops the writer after it has committed every accepted request, and waits for it.
// Reads must have finished.
func (s *Shard) Close() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil
	}
	s.mu.closed = true
	s.mu.Unlock()
	close(s.closing)
	s.cancelCompact()
	s.wg.Wait()
	return nil
}

// Store stores msgs as one batch and returns once they are durable (per Config.Sync), with
// their timestamps set. ctx bounds the wait for room in the queue only: once accepted, a
// request is committed or failed, and Store reports which, so the caller never has to guess
// whether a message was stored.
//
// REQUIRES: every message's topic is valid.
func (s *Shard) Store(ctx context.Context, msgs []*message.Message, bytes int) error {
	w, err := s.Submit(ctx, msgs, bytes)
	if err != nil {
		return err
	}
	return w.Wait()
}

// Submit is Store in two halves: it returns once msgs are queued, and the Waiter's Wait
// returns Store's result. A caller storing to several shards submits to all, then waits.
func (s *Shard) Submit(ctx context.Context, msgs []*message.Message, bytes int) (Waiter, error) {
	r := &request{kind: reqStore, msgs: msgs, bytes: bytes, done: make(chan struct{})}
	if err := s.enqueue(ctx, r); err != nil {
		return Waiter{}, err
	}
	return Waiter{r}, nil
}

// SubmitNotify is Submit with a callback instead of a Waiter: it returns once msgs are queued
// (or an error, and then done is never told), and done.Notify is called exactly once with
// Store's result, by the shard's syncer goroutine. The requests of a shard are finished in the
// order they were queued, so the Notify calls of messages submitted one after another come in
// that order, failures included. Notify must return quickly and must not call the shard (the
// next commits wait for it).
func (s *Shard) SubmitNotify(ctx context.Context, msgs []*message.Message, bytes int, done Notifier) error {
	return s.enqueue(ctx, &request{kind: reqStore, msgs: msgs, bytes: bytes, notify: done})
}

// Notifier is told the outcome of a request queued by SubmitNotify. It is an interface, not a
// func, so that a caller's own per-message struct can be it without a closure allocated per
// message.
type Notifier interface{ Notify(err error) }

// SubmitTxns queues txns, to be applied in order in one command, like Submit queues
// messages. Once Wait returned nil, each Txn's Result says whether it applied (Txn.Err), and
// its writes' versions and its messages' timestamps are set.
//
// REQUIRES: every message's topic is valid.
func (s *Shard) SubmitTxns(ctx context.Context, txns []*Txn, bytes int) (Waiter, error) {
	for _, t := range txns {
		if err := t.validate(); err != nil {
			return Waiter{}, err
		}
	}
	r := &request{kind: reqStore, txns: txns, bytes: bytes, done: make(chan struct{})}
	if err := s.enqueue(ctx, r); err != nil {
		return Waiter{}, err
	}
	return Waiter{r}, nil
}

// Waiter waits for a submitted request.
type Waiter struct{ r *request }

// Wait returns once the request is durable or failed.
func (w Waiter) Wait() error {
	<-w.r.done
	return w.r.err
}

// AddGeneration seals the current generation and opens a new one.
func (s *Shard) AddGeneration(ctx context.Context) error {
	return s.do(ctx, &request{kind: reqAddGeneration, done: make(chan struct{})})
}

// DropGeneration drops a sealed generation by range deletion.
func (s *Shard) DropGeneration(ctx context.Context, gen stream.GenerationID) error {
	return s.do(ctx, &request{kind: reqDrop, gen: gen, done: make(chan struct{})})
}

func (s *Shard) do(ctx context.Context, r *request) error {
	if err := s.enqueue(ctx, r); err != nil {
		return err
	}
	<-r.done
	return r.err
}

func (s *Shard) enqueue(ctx context.Context, r *request) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return ErrClosed
	}
	r.enqueued = time.Now()
	select {
	case s.q <- r:
		s.Metrics.QueueDepth.Add(1)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closing:
		return ErrClosed
	}
}

func (s *Shard) now() uint64 { return uint64(max(s.cfg.Now().UnixMicro(), 0)) }

func (s *Shard) failure() error {
	s.failMu.Lock()
	defer s.failMu.Unlock()
	return s.failed
}

func (s *Shard) fail(err error) {
	s.failMu.Lock()
	defer s.failMu.Unlock()
	if s.failed == nil {
		s.failed = fmt.Errorf("%w: shard %d: %w", ErrFailed, s.cfg.ID, err)
		s.cfg.Logger.Error("shard failed; reopen the DB", "shard", s.cfg.ID, "err", err)
	}
}

// runWriter is the writer goroutine: it drains the queue into group commits and runs the
// shard's maintenance (rotation, retention).
func (s *Shard) runWriter() {
	defer s.wg.Done()
	defer close(s.synced)
	tick := time.NewTicker(s.cfg.MaintenanceInterval)
	defer tick.Stop()
	var timer *time.Timer
	var carry *request // taken from the queue but left for the next batch
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-s.q:
				s.Metrics.QueueDepth.Add(-1)
			case <-tick.C:
				s.maintain()
				continue
			case <-s.closing:
				// Commit what was accepted before Close; enqueue refuses new requests now.
				for {
					select {
					case r := <-s.q:
						s.Metrics.QueueDepth.Add(-1)
						s.handle([]*request{r})
					default:
						return
					}
				}
			}
		}
		if first.kind != reqStore {
			s.handle([]*request{first})
			continue
		}
		batch := []*request{first}
		n, bytes := len(first.msgs), first.bytes
		deadline := first.enqueued.Add(s.cfg.FlushInterval)
	collect:
		for n < s.cfg.MaxBatchMessages && bytes < s.cfg.MaxBatchBytes {
			var r *request
			select {
			case r = <-s.q:
			default:
				wait := time.Until(deadline)
				if wait <= 0 {
					break collect
				}
				if timer == nil {
					timer = time.NewTimer(wait)
				} else {
					timer.Reset(wait)
				}
				select {
				case r = <-s.q:
					timer.Stop()
				case <-timer.C:
					break collect
				case <-s.closing:
					timer.Stop()
					break collect
				}
			}
			s.Metrics.QueueDepth.Add(-1)
			// A request joins only if the batch stays within its bounds (a single request
			// larger than them still commits alone, as one batch); an admin request ends the
			// batch. Either way the request that does not join starts the next round.
			if r.kind != reqStore || n+len(r.msgs) > s.cfg.MaxBatchMessages || bytes+r.bytes > s.cfg.MaxBatchBytes {
				carry = r
				break
			}
			batch = append(batch, r)
			n += len(r.msgs)
			bytes += r.bytes
		}
		s.handle(batch)
	}
}

// maintain rotates and drops generations as the configuration asks.
func (s *Shard) maintain() {
	now := s.now()
	t := s.core.st.table
	if t.RotationDue(now, s.cfg.GenerationSpan) {
		s.handle([]*request{{kind: reqAddGeneration}})
	}
	for _, id := range t.Expired(now, s.cfg.Retention) {
		s.handle([]*request{{kind: reqDrop, gen: id}})
	}
}

// handle applies one command built from reqs (all stores, or one admin request) and hands it to
// the syncer. Requests nobody waits for (no done channel, no notify) are internal (maintenance).
func (s *Shard) handle(reqs []*request) {
	// Failed requests are finished by the syncer too, after the batches committed before them.
	finish := func(err error) { s.synced <- &inflight{reqs: reqs, err: err} }
	if err := s.failure(); err != nil {
		finish(err)
		return
	}
	cmd := &Command{Time: s.now()}
	switch reqs[0].kind {
	case reqAddGeneration:
		cmd.AddGeneration = true
	case reqDrop:
		cmd.Drop = []stream.GenerationID{reqs[0].gen}
	case reqStore:
		if s.cfg.QuotaExceeded != nil && s.cfg.QuotaExceeded() {
			// Messages are refused; record-only Txns (a session's acknowledgements) still
			// pass: they are small, and refusing them would not free anything.
			quota := fmt.Errorf("%w (shard %d)", ErrQuotaExceeded, s.cfg.ID)
			var keep, refused []*request
			for _, r := range reqs {
				if len(r.msgs) > 0 || len(r.txns) == 0 || txnMessages(r.txns) {
					refused = append(refused, r)
				} else {
					keep = append(keep, r)
				}
			}
			if len(refused) > 0 {
				s.synced <- &inflight{reqs: refused, err: quota}
			}
			if reqs = keep; len(reqs) == 0 {
				return
			}
		}
		for _, r := range reqs {
			cmd.Txns = append(cmd.Txns, r.txns...)
			cmd.Messages = append(cmd.Messages, r.msgs...)
		}
	}
	start := time.Now()
	var queued time.Duration // summed over the messages
	for _, r := range reqs {
		if r.kind == reqStore {
			queued += start.Sub(r.enqueued) * time.Duration(r.messages())
		}
	}
	b := s.cfg.DB.NewBatch()
	a, err := s.core.apply(b, cmd)
	if err != nil {
		b.Close()
		finish(err)
		if reqs[0].done == nil && reqs[0].notify == nil {
			s.cfg.Logger.Warn("shard maintenance failed", "shard", s.cfg.ID, "err", err)
		}
		return
	}
	applied := time.Now()
	if err2 := s.cfg.commit(b); err2 != nil {
		a.Abort()
		finish(err2)
		return
	}
	pub := a.Commit()
	f := &inflight{batch: b, reqs: reqs, pub: pub, news: a.NewStreams, msgs: len(a.Timestamps), spans: a.Spans, touch: a.Touched,
		txnMsgs: a.TxnMessages, records: a.Records,
		start: start, queued: queued, applied: applied, committed: time.Now()}
	for _, r := range reqs {
		f.bytes += r.bytes
	}
	if a.Added != nil {
		s.cfg.Logger.Info("generation added", "shard", s.cfg.ID, "gen", a.Added.ID, "since", generation.FormatTS(a.Added.Since))
	}
	for _, id := range a.Dropped {
		s.cfg.Logger.Info("generation dropped", "shard", s.cfg.ID, "gen", id)
	}
	s.synced <- f
}

// pebbleCommit returns the commit of a batch to db. With sync, the WAL fsync completes in the
// syncer (pebbleSyncWait), while the writer builds the next batch; on error the batch is left
// to the garbage collector: Pebble forbids closing a batch given to ApplyNoSyncWait before its
// SyncWait, which may never come. Without, a failed batch is closed.
func pebbleCommit(db *pebble.DB, sync bool) func(*pebble.Batch) error {
	if sync {
		return func(b *pebble.Batch) error { return db.ApplyNoSyncWait(b, pebble.Sync) }
	}
	return func(b *pebble.Batch) error {
		err := b.Commit(pebble.NoSync)
		if err != nil {
			b.Close()
		}
		return err
	}
}

// pebbleSyncWait returns the wait for the WAL sync of a batch pebbleCommit committed.
func pebbleSyncWait(sync bool) func(*pebble.Batch) error {
	if sync {
		return (*pebble.Batch).SyncWait
	}
	return func(*pebble.Batch) error { return nil }
}

// runSyncer waits for each committed batch's WAL sync in commit order, publishes the new view
// and wakes the batch's callers. The writer meanwhile builds the next batch, so a commit round's
// fsync overlaps the next round's work.
func (s *Shard) runSyncer() {
	defer s.wg.Done()
	for f := range s.synced {
		if f.batch == nil {
			for _, r := range f.reqs {
				r.finish(f.err)
			}
			continue
		}
		err := s.cfg.syncWait(f.batch)
		synced := time.Now()
		f.batch.Close()
		if err != nil {
			s.fail(err)
		}
		// Once a sync failed, nothing after it is published: durability is unknown from
		// there on, whatever Pebble reports for later batches.
		if failed := s.failure(); failed != nil {
			err = failed
		} else {
			from := s.core.ReadLimit()
			s.core.publishDurable(f.pub)
			s.Metrics.ObserveCommit(time.Since(f.start), f.msgs, f.bytes)
			if s.cfg.OnDurable != nil {
				d := Durable{Shard: s.cfg.ID, From: from, Until: s.core.ReadLimit(), Streams: f.touch, Records: f.records}
				if len(f.reqs) == 1 && len(f.txnMsgs) == 0 {
					d.Messages = f.reqs[0].msgs // the common case: no copy
				} else if f.msgs > 0 {
					d.Messages = make([]*message.Message, 0, f.msgs)
					for _, r := range f.reqs {
						d.Messages = append(d.Messages, r.msgs...)
					}
					d.Messages = append(d.Messages, f.txnMsgs...)
				}
				s.cfg.OnDurable(d)
			}
		}
		// The stages are recorded before the callers are woken, as the other metrics are: a
		// caller that returned from Store sees its messages counted in both. (Closing the
		// channels is the only part of the wake stage not counted: nanoseconds.)
		if err == nil && f.msgs > 0 {
			s.Metrics.observeStages(f.msgs, f.queued, f.start, f.applied, f.committed, synced, time.Now())
		}
		for _, r := range f.reqs {
			r.finish(err)
		}
		if err == nil && f.news && s.cfg.OnChange != nil {
			s.cfg.OnChange()
		}
		if err == nil && len(f.spans) > 0 {
			s.compactDropped(f.spans)
		}
	}
}

// compactDropped compacts the range-deleted spans of dropped generations in the background, so
// their disk space is returned (and a quota lifted) without waiting for Pebble to get to them.
func (s *Shard) compactDropped(spans [][2][]byte) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for _, sp := range spans {
			if err := s.cfg.DB.Compact(s.compactCtx, sp[0], sp[1], false); err != nil && s.compactCtx.Err() == nil {
				s.cfg.Logger.Warn("compaction of a dropped generation failed", "shard", s.cfg.ID, "err", err)
			}
		}
	}()
}

// txnMessages reports whether some of txns store messages.
func txnMessages(txns []*Txn) bool {
	for _, t := range txns {
		if len(t.Messages) > 0 {
			return true
		}
	}
	return false
}
