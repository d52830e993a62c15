package session

import (
	"context"
	"errors"
	"slices"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/message"
)

func (s *Session) dirty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isDirty && s.err == nil
}

// checkpoint writes the session's acknowledgements.
func (s *Session) checkpoint(ctx context.Context) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.writeLocked(ctx, nil)
}

// Checkpoint writes the session's state now (the Store does so every CheckpointInterval).
func (s *Session) Checkpoint(ctx context.Context) error { return s.checkpoint(ctx) }

// stateLocked builds the record of the session's current state.
func (s *Session) stateLocked() *state {
	s.dropRetiredLocked()
	st := &state{Epoch: s.epoch, Expiry: s.expiry, NextSeq: s.nextSeq, Owner: s.st.opts.Owner}
	idx := map[*sub]int{}
	for i, sb := range s.subs {
		idx[sb] = i + 1
		ss := subState{Filter: sb.Filter, QoS: sb.QoS, NoLocal: sb.NoLocal, RetainAsPub: sb.RetainAsPublished,
			SubscriptionID: sb.SubscriptionID, Position: sb.ds.Position()}
		for k := range s.completed {
			if k.sub != sb {
				continue
			}
			if sh := k.ref.Shard; int(sh) < ss.Position.NShards() && k.ref.Timestamp < ss.Position.Shard(sh) {
				delete(s.completed, k) // the position passed it
				continue
			}
			st.Done = append(st.Done, doneEntry{Sub: i + 1, Ref: k.ref})
		}
		sent := make([]uint64, ss.Position.NShards())
		for j := range sent {
			// What was (maybe) sent before this connection stays so: a resumed session that
			// disconnects before resending it must still mark it DUP next time.
			sent[j] = max64(ss.Position.Shard(ds.ShardID(j)), sb.sent[ds.ShardID(j)])
			if j < sb.dupBefore.NShards() {
				sent[j] = max64(sent[j], sb.dupBefore.Shard(ds.ShardID(j)))
			}
		}
		ss.Sent = ds.NewPosition(sent...)
		if sb.retired {
			ss.Retired, ss.Until = true, sb.until
			pos := make([]uint64, ss.Position.NShards())
			for j := range pos {
				pos[j] = ss.Position.Shard(ds.ShardID(j))
				if j < sb.until.NShards() {
					pos[j] = min(pos[j], sb.until.Shard(ds.ShardID(j)))
				}
			}
			ss.Position = ds.NewPosition(pos...)
		}
		st.Subs = append(st.Subs, ss)
	}
	for _, e := range s.window {
		if e.qos != 2 {
			continue
		}
		st.Window = append(st.Window, qos2Entry{Seq: e.seq, Ref: e.ref, Sub: idx[e.sub], Received: e.received, Msg: e.msg})
	}
	for k := range s.completed {
		if idx[k.sub] == 0 {
			delete(s.completed, k) // unsubscribed: never read again
		}
	}
	slices.SortFunc(st.Window, func(a, b qos2Entry) int { return cmpU64(a.Seq, b.Seq) })
	slices.SortFunc(st.Done, compareDone)
	// Keep the sent messages while they fit; beyond, their references only (state 3).
	kept := 0
	for i := range st.Window {
		if m := st.Window[i].Msg; m != nil {
			if size := message.Size(m); kept+size <= maxKeptBytes {
				kept += size
			} else {
				st.Window[i].Msg = nil
			}
		}
	}
	return st
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// writeLocked writes the session's state, fenced by its record version. edit, if not nil,
// changes the state before it is written. The caller holds writeMu.
func (s *Session) writeLocked(ctx context.Context, edit func(*state)) error {
	txn, err := s.prepareLocked(edit)
	if err != nil {
		return err
	}
	res, err := s.st.db.Update(ctx, s.shard, txn)
	return s.finishLocked(ctx, txn, res, err)
}

// prepareLocked builds the write of the session's current state (edited by edit, if not
// nil), conditional on the record version the session wrote last. The caller holds writeMu
// until finishLocked.
func (s *Session) prepareLocked(edit func(*state)) (*ds.Txn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	st := s.stateLocked()
	if edit != nil {
		edit(st)
	}
	s.isDirty = false
	value := appendState(nil, st)
	s.writing.Store(&ownWrite{value: value, k: *knownOf(st)})
	return &ds.Txn{Conds: []ds.Cond{{Key: s.key, Version: s.version}},
		Writes: []ds.RecordWrite{{Key: s.key, Value: value}}}, nil
}

// ownWrite is a record value a session writes, and the Store's summary of it.
type ownWrite struct {
	value []byte
	k     known
}

// finishLocked takes the outcome of txn (prepareLocked's). A condition that failed or an
// unknown outcome is resolved by reading the record: written by another connection (the
// session is fenced: ErrTakenOver), or by this one (the write is made again on top).
func (s *Session) finishLocked(ctx context.Context, txn *ds.Txn, res ds.TxnResult, err error) error {
	for attempt := 0; ; attempt++ {
		if err == nil {
			s.st.metrics.stateWrites.Add(1)
			s.mu.Lock()
			s.version = res.Versions[0]
			s.mu.Unlock()
			return nil
		}
		if !errors.Is(err, ds.ErrConditionFailed) && !errors.Is(err, ds.ErrOutcomeUnknown) || attempt > 0 {
			s.mu.Lock()
			s.isDirty = true
			s.mu.Unlock()
			return err
		}
		cur, v, rerr := s.st.db.Record(ctx, s.shard, s.key)
		if rerr != nil {
			return rerr
		}
		if v == 0 {
			s.end(ErrTakenOver)
			return ErrTakenOver
		}
		other, derr := decodeState(cur)
		if derr != nil {
			return derr
		}
		if other.Epoch != s.epoch {
			s.end(ErrTakenOver)
			return ErrTakenOver
		}
		s.mu.Lock()
		s.version = v
		s.mu.Unlock()
		txn.Conds[0].Version = v
		res, err = s.st.db.Update(ctx, s.shard, txn)
	}
}

// dropRetiredLocked forgets the retired subscriptions that have nothing left to deliver: no
// delivery in flight, and (resumed) read up to where they had sent.
func (s *Session) dropRetiredLocked() {
	for _, sb := range slices.Clone(s.subs) {
		if !sb.retired || s.inflightOfLocked(sb) {
			continue
		}
		pos := sb.ds.Position()
		done := true
		for j := range sb.until.NShards() {
			if j < pos.NShards() && pos.Shard(ds.ShardID(j)) < sb.until.Shard(ds.ShardID(j)) {
				done = false
			}
		}
		if done {
			s.closeSubLocked(sb)
		}
	}
}
