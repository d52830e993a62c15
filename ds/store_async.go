package ds

import (
	"context"
	"fmt"
	"sync"

	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// StoreAsync queues m to be stored and returns without waiting for it to be durable: done is
// called once it is (with its Ref) or once it is known not to be stored (with Store's errors).
// It is Store for a broker that acknowledges a connection's PUBLISH packets as they become
// durable while it goes on reading the next ones, instead of parking one goroutine per message
// (what JetStream's PublishAsync gives a NATS client).
//
// A nil error means m was queued and done will be called exactly once, also when the DB is
// closed meanwhile (Close commits what was queued). An error (ErrClosed, an invalid message,
// ctx's error while the shard's queue is full) means m was not queued and done is never
// called.
//
// Order: the done calls of one shard come in the order its messages were queued, failures
// included, so a connection that queues its publisher's messages one after another (one
// client ID, so one shard) learns their outcomes in the order it must acknowledge them (MQTT
// sends PUBACKs in the order of the PUBLISHes). done is called from the shard's own goroutine:
// it must return quickly (the shard's next commits wait for it) and must not call the DB.
//
// m's Payload must not change until done is called; the Message value is not retained.
func (db *DB) StoreAsync(ctx context.Context, m Message, done func(Ref, error)) error {
	exit, err := db.enter()
	if err != nil {
		return err
	}
	defer exit()
	if err := ctx.Err(); err != nil {
		return err
	}
	size, err := db.validate(&m)
	if err != nil {
		return err
	}
	a := &asyncStore{m: m, done: done}
	a.msgs[0] = &a.m
	a.shard = ShardOf(m.ClientID, len(db.shards))
	s := db.shards[a.shard]
	if ns, ok := s.(notifySubmitter); ok {
		err = ns.SubmitNotify(ctx, a.msgs[:], size, a)
	} else {
		// ctx bounds the wait for room in the queue only. A backend may keep the ctx it was
		// given and give the message up once the ctx ends (the replicated proposer does, for
		// a Store whose caller left): here the caller returns at once, so the ctx handed on
		// ends only if ctx ends before the message is queued.
		qctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		stop := context.AfterFunc(ctx, cancel)
		var w Waiter
		w, err = s.Submit(qctx, a.msgs[:], size)
		stop()
		if err == nil {
			db.waits[a.shard].add(w, a)
		}
	}
	if err != nil {
		return fmt.Errorf("shard %d: %w", a.shard, err)
	}
	return nil
}

// asyncStore is one StoreAsync: the copy of the message and the slice handed to the shard in
// one allocation, as Store's single-message path does.
type asyncStore struct {
	m     message.Message
	msgs  [1]*message.Message
	shard stream.ShardID
	done  func(Ref, error)
}

// Notify reports the outcome to the caller's done (shard.Notifier: the struct is the callback,
// no closure per message).
func (a *asyncStore) Notify(err error) {
	if err != nil {
		a.done(Ref{}, fmt.Errorf("shard %d: %w", a.shard, err))
		return
	}
	a.done(Ref{Shard: a.shard, Timestamp: a.m.Timestamp}, nil)
}

// notifySubmitter is a ShardBackend that tells a shard.Notifier when a Submit finishes, in
// the order of its Submits (the embedded shard). For the others StoreAsync waits with a
// waitQueue.
type notifySubmitter interface {
	SubmitNotify(ctx context.Context, msgs []*message.Message, bytes int, done shard.Notifier) error
}

// waitQueue finishes one shard's StoreAsync calls, over a backend that only offers Waiters, in
// the order they were submitted: a goroutine, started when the queue goes from empty to not
// empty and ended when it is empty again, waits for the oldest and then calls its function.
// (A replicated shard may finish its proposals out of order; their callers learn the outcomes
// in order.)
type waitQueue struct {
	mu      sync.Mutex
	pending []pendingWait
	running bool
	wg      *sync.WaitGroup // the DB's: Close waits for the goroutines
}

type pendingWait struct {
	w    Waiter
	done shard.Notifier
}

func (q *waitQueue) add(w Waiter, done shard.Notifier) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pending = append(q.pending, pendingWait{w, done})
	if !q.running {
		q.running = true
		q.wg.Add(1)
		go q.run()
	}
}

func (q *waitQueue) run() {
	defer q.wg.Done()
	for {
		q.mu.Lock()
		if len(q.pending) == 0 {
			q.running = false
			q.pending = nil
			q.mu.Unlock()
			return
		}
		p := q.pending[0]
		q.pending[0] = pendingWait{}
		q.pending = q.pending[1:]
		q.mu.Unlock()
		p.done.Notify(p.w.Wait())
	}
}
