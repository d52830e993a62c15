package raftgroup

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/lni/dragonboat/v4"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// proposer turns one site's writes to one shard into Raft proposals: it group-commits the
// queued Stores into one command (up to MaxBatchMessages/MaxBatchBytes), keeps up to
// MaxInFlight proposals in flight, and retries each with backoff while the group has no
// leader, is busy or lost an attempt to a leader change — until the callers' ctxs end or
// ProposalTimeout passes. Every proposal carries (proposer ID, sequence, floor), so the
// replicas apply a retried proposal once (see shard.Replica).
type proposer struct {
	site  *Site
	id    stream.ShardID
	group uint64
	pid   shard.ProposerID

	q     chan *request
	slots chan struct{}
	done  chan struct{}
	wg    sync.WaitGroup

	mu struct {
		sync.Mutex
		next       uint64              // next sequence number
		unresolved map[uint64]struct{} // sequences whose outcome the proposer still waits for
	}
	closeMu struct {
		sync.RWMutex // held for reading by submit, for writing by close
		closed       bool
	}
	metrics shard.Metrics
}

// request is one Store (msgs) or one admin command (cmd) waiting for its outcome.
type request struct {
	ctx       context.Context
	msgs      []*message.Message
	txns      []*shard.Txn // conditional writes (records and messages), instead of msgs
	bytes     int
	cmd       *shard.Command // admin: add or drop generations
	ifCurrent stream.GenerationID
	noDedup   bool // maintenance: idempotent by its condition
	// here: propose through this site's replica, never forward (a batch another site
	// forwarded: forwarding it again could loop).
	here     bool
	enqueued time.Time

	err  error
	done chan struct{}
}

func newProposer(s *Site, id stream.ShardID) *proposer {
	p := &proposer{site: s, id: id, group: shardGroup(id),
		q:     make(chan *request, s.cfg.DB.QueueLength),
		slots: make(chan struct{}, s.cfg.MaxInFlight),
		done:  make(chan struct{}),
	}
	copy(p.pid[:8], s.file.ID[:])
	copy(p.pid[8:], s.incarnation[:])
	p.mu.next = 1
	p.mu.unresolved = map[uint64]struct{}{}
	p.wg.Add(1)
	go p.run()
	return p
}

// submit queues r; ctx bounds the wait for room.
func (p *proposer) submit(ctx context.Context, r *request) error {
	// Held across the send, so that close cannot drain the queue before a request lands in
	// it (a request would then never complete). The run loop drains the queue until close
	// takes the lock, so the send cannot block close forever.
	p.closeMu.RLock()
	defer p.closeMu.RUnlock()
	if p.closeMu.closed {
		return shard.ErrClosed
	}
	r.ctx, r.enqueued, r.done = ctx, time.Now(), make(chan struct{})
	select {
	case p.q <- r:
		p.metrics.QueueDepth.Add(1)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-p.done:
		return shard.ErrClosed
	}
}

// wait returns r's outcome. It does not return early when r's ctx ends: the proposer may
// still be encoding the messages, which belong to the caller again once wait returns. The
// proposer gives up within one attempt timeout of the last waiting ctx's end.
func (r *request) wait() error {
	<-r.done
	return r.err
}

func (p *proposer) close() {
	p.closeMu.Lock()
	p.closeMu.closed = true
	p.closeMu.Unlock()
	close(p.done)
	p.wg.Wait()
	// Fail what is still queued.
	for {
		select {
		case r := <-p.q:
			r.err = shard.ErrClosed
			close(r.done)
		default:
			return
		}
	}
}

func (p *proposer) run() {
	defer p.wg.Done()
	max, maxBytes := p.site.cfg.DB.MaxBatchMessages, p.site.cfg.DB.MaxBatchBytes
	var carry *request
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-p.q:
				p.metrics.QueueDepth.Add(-1)
			case <-p.done:
				return
			}
		}
		// Wait for a free slot first (MaxInFlight proposals in flight is the pipeline's
		// depth), then take everything queued meanwhile: while the pipeline is full, the
		// queue fills, and the next proposal carries all of it.
		select {
		case p.slots <- struct{}{}:
		case <-p.done:
			first.err = shard.ErrClosed
			close(first.done)
			return
		}
		batch := []*request{first}
		if first.cmd == nil {
			n, bytes := len(first.msgs), first.bytes
		collect:
			for n < max && bytes < maxBytes {
				select {
				case r := <-p.q:
					p.metrics.QueueDepth.Add(-1)
					if r.cmd != nil || n+len(r.msgs) > max || bytes+r.bytes > maxBytes {
						carry = r
						break collect
					}
					batch = append(batch, r)
					n += len(r.msgs)
					bytes += r.bytes
				default:
					break collect
				}
			}
		}
		p.mu.Lock()
		seq := p.mu.next
		p.mu.next++
		p.mu.unresolved[seq] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.propose(seq, batch)
			p.mu.Lock()
			delete(p.mu.unresolved, seq)
			p.mu.Unlock()
			<-p.slots
		}()
	}
}

// floor returns the highest sequence below every unresolved one: the proposer never retries
// a sequence at or below it again.
func (p *proposer) floor() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.mu.next - 1
	for s := range p.mu.unresolved {
		f = min(f, s-1)
	}
	return f
}

// propose proposes one batch until it is committed or given up, and completes its requests.
func (p *proposer) propose(seq uint64, batch []*request) {
	start := time.Now()
	// Requests whose callers gave up while queued are not proposed: nothing of them is stored.
	live := batch[:0:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.err = fmt.Errorf("%w: %w (not proposed: nothing stored)", shard.ErrUnavailable, err)
			close(r.done)
			continue
		}
		live = append(live, r)
	}
	if batch = live; len(batch) == 0 {
		return
	}
	cmd := batch[0].cmd
	if cmd == nil {
		cmd = &shard.Command{}
		for _, r := range batch {
			cmd.Messages = append(cmd.Messages, r.msgs...)
			cmd.Txns = append(cmd.Txns, r.txns...)
		}
	}
	cmd.Time = uint64(max(p.site.cfg.DB.Expert.Now().UnixMicro(), 1))
	body := cmd.AppendBinary(nil)
	built := time.Now()
	pid := p.pid
	if batch[0].noDedup {
		pid, seq = shard.ProposerID{}, 0
	}
	var firstTS uint64
	var txns []shard.TxnResult
	var err error
	forwarded := false
	// A batch another site forwarded here is never forwarded again (it could loop); admin
	// commands are proposed where they are made.
	forwardable := batch[0].cmd == nil && !slices.ContainsFunc(batch, func(r *request) bool { return r.here })
	if forwardable {
		// Leader-side batching: a batch goes to the site that leads the shard (or, from a
		// site without a replica, to one that holds it), whose proposer puts it in its
		// next entry with everything else queued there.
		firstTS, txns, forwarded, err = p.site.fwd.submitBatch(p, batch, body, start.Add(p.site.cfg.ProposalTimeout))
	}
	if !forwarded {
		prop := newProposal(pid, seq, batch[0].ifCurrent, body)
		firstTS, txns, err = p.commit(prop, batch, start)
		if errors.Is(err, errLocalGone) && forwardable {
			var fwdTS uint64
			var fwdTxns []shard.TxnResult
			var fwdErr error
			if fwdTS, fwdTxns, forwarded, fwdErr = p.site.fwd.submitBatch(p, batch, body, start.Add(p.site.cfg.ProposalTimeout)); forwarded {
				firstTS, txns, err = fwdTS, fwdTxns, fwdErr
			}
		}
		if errors.Is(err, errLocalGone) {
			err = fmt.Errorf("%w: shard %d: %w (nothing stored)", shard.ErrUnavailable, p.id, err)
		}
	}
	committed := time.Now()
	var txnErr error // the Txns' requests only: the Stores batched with them know their outcome
	if err == nil && len(cmd.Txns) > 0 {
		if len(txns) != len(cmd.Txns) {
			// A duplicate: the replicas keep no Txn outcomes.
			txnErr = fmt.Errorf("%w: %w: a retried proposal was committed before", shard.ErrUnavailable, shard.ErrOutcomeUnknown)
		} else {
			for i, t := range cmd.Txns {
				t.Result = txns[i]
				t.SetResults(uint16(p.id))
			}
		}
	}
	if err == nil && len(cmd.Messages) > 0 {
		if firstTS == 0 {
			// Cannot happen while the floor stays below every sequence being waited for.
			err = fmt.Errorf("%w: stored by an earlier attempt whose timestamps are no longer known", shard.ErrUnavailable)
		} else {
			for i, m := range cmd.Messages {
				m.Timestamp, m.Shard = firstTS+uint64(i), uint16(p.id)
			}
		}
	}
	if err == nil && len(cmd.Messages) > 0 && forwarded {
		// Stored, and counted in Messages, by the called site's proposer, in its entry.
		p.metrics.ForwardedMessages.Add(uint64(len(cmd.Messages)))
		p.metrics.ForwardedBatches.Add(1)
	}
	if err == nil && len(cmd.Messages) > 0 && !forwarded {
		bytes := 0
		for _, r := range batch {
			bytes += r.bytes
		}
		p.metrics.ObserveCommit(time.Since(start), len(cmd.Messages), bytes)
		// Where the batch's time went (shard.Stage*): queued behind earlier proposals, building
		// the entry (apply), the Raft round to a committed and applied entry (commit; its log
		// fsyncs included, so sync stays 0), and this bookkeeping (wake).
		var queued time.Duration
		for _, r := range batch {
			queued += start.Sub(r.enqueued) * time.Duration(len(r.msgs))
		}
		p.metrics.ObserveStages(len(cmd.Messages), [shard.NumStages]time.Duration{
			shard.StageQueue: queued, shard.StageApply: built.Sub(start), shard.StageCommit: committed.Sub(built),
			shard.StageWake: time.Since(committed),
		})
	}
	for _, r := range batch {
		r.err = err
		if err == nil && len(r.txns) > 0 {
			r.err = txnErr
		}
		close(r.done)
	}
}

// commit proposes prop, retrying, and returns the first timestamp the replicas assigned and
// the outcomes of the command's Txns (none for a duplicate).
func (p *proposer) commit(prop *proposal, batch []*request, start time.Time) (uint64, []shard.TxnResult, error) {
	deadline := start.Add(p.site.cfg.ProposalTimeout)
	backoff := 5 * time.Millisecond
	unknown := false
	var last error
	var noLeaderSince time.Time // the first of the current run of attempts that found no leader
	// failFast is the error of a proposal given up because the shard cannot commit now.
	failFast := func(attempts int, why string) error {
		if unknown {
			return fmt.Errorf("%w: %w: %w: shard %d: %s; an earlier attempt may still commit (%d attempts in %v)",
				shard.ErrUnavailable, shard.ErrOutcomeUnknown, ErrNoQuorum, p.id, why, attempts, time.Since(start).Round(time.Millisecond))
		}
		if attempts == 0 {
			return fmt.Errorf("%w: %w: shard %d: %s (not proposed: nothing stored)", shard.ErrUnavailable, ErrNoQuorum, p.id, why)
		}
		return fmt.Errorf("%w: %w: shard %d: %s (%d attempts in %v, nothing stored)",
			shard.ErrUnavailable, ErrNoQuorum, p.id, why, attempts, time.Since(start).Round(time.Millisecond))
	}
	if why, lost := p.site.quorumLost(p.group); lost {
		return 0, nil, failFast(0, why)
	}
	session := p.site.nh.GetNoOPSession(p.group)
	for attempt := 0; ; attempt++ {
		if prop.seq != 0 {
			prop.floor = p.floor()
		}
		data := prop.appendBinary(nil)
		// An attempt waits about two election timeouts: long enough for a loaded leader to
		// commit, short enough that a proposal handed to a leader that died is retried soon
		// after a new one is elected (the retry is de-duplicated if the first one committed).
		timeout := max(min(p.site.attemptTimeout(), time.Until(deadline)), 50*time.Millisecond)
		rs, err := p.site.nh.Propose(session, data, timeout)
		if err == nil {
			var res dragonboat.RequestResult
			select {
			case res = <-rs.ResultC():
			case <-p.done:
				// The site is closing: the proposal may still commit.
				rs.Release()
				return 0, nil, fmt.Errorf("%w: %w", shard.ErrClosed, shard.ErrOutcomeUnknown)
			}
			rs.Release()
			switch {
			case res.Completed():
				r := res.GetResult()
				ts, txns, skipped, err := decodeResult(r.Value, r.Data)
				if skipped {
					return 0, nil, errSkipped
				}
				return ts, txns, err
			case res.Timeout():
				unknown = true
				last = dragonboat.ErrTimeout
			case res.Terminated():
				// The local replica stopped; the proposal may have reached the leader.
				unknown = true
				last = dragonboat.ErrShardClosed
			case res.Dropped():
				last = dragonboat.ErrShardNotReady
			case res.Aborted():
				last = dragonboat.ErrAborted
			case res.Rejected():
				return 0, nil, fmt.Errorf("%w: proposal rejected", shard.ErrFailed)
			default:
				last = fmt.Errorf("unexpected proposal result")
			}
		} else {
			if errors.Is(err, dragonboat.ErrShardNotFound) && p.site.shardSM(p.id) == nil {
				if !unknown {
					// The replica here was removed (moved to another site) before any attempt
					// reached a leader: nothing was stored, the batch can go to a site holding it.
					return 0, nil, errLocalGone
				}
				// An attempt may have reached the leader before the replica went: the same
				// proposal (identity and sequence) goes through a site that holds the shard;
				// the replicas apply a sequence once, so its answer is the outcome.
				if value, rdata, ferr := p.site.fwd.proposeAgain(p.id, data, deadline); ferr == nil {
					ts, txns, skipped, err := decodeResult(value, rdata)
					if skipped {
						return 0, nil, errSkipped
					}
					return ts, txns, err
				}
			}
			if !retryable(err) {
				if errors.Is(err, dragonboat.ErrClosed) {
					return 0, nil, fmt.Errorf("%w: %w", shard.ErrClosed, err)
				}
				return 0, nil, fmt.Errorf("%w: %w", shard.ErrFailed, err) // e.g. ErrPayloadTooBig: retrying cannot help
			}
			last = err
		}
		// Give up once the site closes, the timeout passed, or no caller waits any more; fail
		// fast once the shard cannot commit (no quorum reachable, or no leader for long).
		if p.closing() {
			return 0, nil, closedErr(unknown)
		}
		if why, lost := p.site.quorumLost(p.group); lost {
			return 0, nil, failFast(attempt+1, why)
		}
		if errors.Is(last, dragonboat.ErrShardNotReady) {
			if noLeaderSince.IsZero() {
				noLeaderSince = time.Now()
			} else if d := time.Since(noLeaderSince); d > p.site.noLeaderAfter() {
				return 0, nil, failFast(attempt+1, fmt.Sprintf("no leader for %v", d.Round(100*time.Millisecond)))
			}
		} else {
			noLeaderSince = time.Time{}
		}
		if time.Now().After(deadline) || allGone(batch) {
			err := fmt.Errorf("%w: %d attempts in %v: %w (nothing stored)", shard.ErrUnavailable, attempt+1,
				time.Since(start).Round(time.Millisecond), last)
			if unknown {
				err = fmt.Errorf("%w: %w: %d attempts in %v: %w", shard.ErrUnavailable, shard.ErrOutcomeUnknown, attempt+1,
					time.Since(start).Round(time.Millisecond), last)
			}
			return 0, nil, err
		}
		sleep := backoff/2 + rand.N(backoff/2+1)
		backoff = min(backoff*2, 200*time.Millisecond)
		select {
		case <-time.After(sleep):
		case <-p.done:
			return 0, nil, closedErr(unknown)
		}
	}
}

func closedErr(unknown bool) error {
	if unknown {
		return fmt.Errorf("%w: %w", shard.ErrClosed, shard.ErrOutcomeUnknown)
	}
	return shard.ErrClosed
}

var errSkipped = errors.New("strata: condition no longer holds")

// errLocalGone: the shard's replica on this site went away (moved) before a proposal through it
// reached a leader; nothing was stored.
var errLocalGone = errors.New("strata: the replica here was removed")

func (p *proposer) closing() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func allGone(batch []*request) bool {
	for _, r := range batch {
		if r.ctx.Err() == nil {
			return false
		}
	}
	return true
}

// retryable reports whether a dragonboat error may clear by itself: busy, no leader yet, a
// replica that is starting, a timed-out attempt.
// proposeAgain proposes an encoded proposal through this site's replica of shard id until it
// has a result or ctx ends. Every attempt is the same proposal, applied once whichever
// commits, so timeouts and leader changes are simply retried.
func (s *Site) proposeAgain(ctx context.Context, id stream.ShardID, data []byte) (uint64, []byte, error) {
	session := s.nh.GetNoOPSession(shardGroup(id))
	for {
		timeout := max(s.attemptTimeout(), 50*time.Millisecond)
		if d, ok := ctx.Deadline(); ok {
			timeout = max(min(timeout, time.Until(d)), 50*time.Millisecond)
		}
		rs, err := s.nh.Propose(session, data, timeout)
		if err == nil {
			res := <-rs.ResultC()
			rs.Release()
			if res.Completed() {
				r := res.GetResult()
				return r.Value, r.Data, nil
			}
			if res.Rejected() {
				return 0, nil, fmt.Errorf("%w: proposal rejected", shard.ErrFailed)
			}
		} else if !retryable(err) {
			return 0, nil, fmt.Errorf("%w: %w", shard.ErrFailed, err)
		}
		select {
		case <-ctx.Done():
			return 0, nil, fmt.Errorf("%w: %w: %w", shard.ErrUnavailable, shard.ErrOutcomeUnknown, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func retryable(err error) bool {
	for _, e := range []error{dragonboat.ErrSystemBusy, dragonboat.ErrShardNotReady, dragonboat.ErrShardNotFound,
		dragonboat.ErrShardNotInitialized, dragonboat.ErrTimeout, dragonboat.ErrAborted, dragonboat.ErrCanceled,
		dragonboat.ErrShardClosed, dragonboat.ErrTimeoutTooSmall, dragonboat.ErrInvalidDeadline, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
