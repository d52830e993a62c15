package shard

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// ProposerID identifies one proposer of a replicated shard: the site's ID and a random
// incarnation chosen each time the site starts, so that a restarted site, whose sequence
// numbers start again at 1, is never mistaken for its former self.
type ProposerID [16]byte

func (p ProposerID) String() string { return fmt.Sprintf("%x/%x", p[:8], p[8:]) }

// dedup remembers, per proposer, which sequence numbers were applied, so that a proposal the
// proposer retried after a timeout (and that Raft committed twice) is applied once.
//
// A proposer numbers its proposals 1, 2, 3, … and sends with each the floor: every sequence
// number at or below it is resolved (its outcome known to the proposer, or given up), so the
// proposer never retries it again. A proposal is a duplicate if its number is at or below the
// floor or in the applied set above it. The set holds at most the proposer's in-flight window,
// since the floor follows it; each entry keeps the timestamp of the proposal's first message,
// so a duplicate reports where the original stored its messages.
//
// On disk, one record per proposer, in the same batch as the entries that changed it:
//
//	key:   prefix | meta 'p' | proposer (16 bytes)
//	value: uvarint(floor) | uvarint(last index) | uvarint(n) | n × (uvarint(seq) | uvarint(first ts))
//
// Proposers unseen for dedupExpiry log entries are forgotten (deterministically: by log index),
// so the table does not grow with every restart of every site.
type dedup map[ProposerID]*proposerState

type proposerState struct {
	floor     uint64
	lastIndex uint64
	applied   map[uint64]uint64 // seq → first timestamp (0: the proposal stored no message)
}

// dedupExpiry is how many log entries a proposer may stay silent before it is forgotten. At
// 1,000 entries a second that is over 15 minutes, far longer than any proposer retries.
const dedupExpiry = 1 << 20

// dedupExpiryCheck: silent proposers are looked for at every entry whose index is a multiple
// of it.
const dedupExpiryCheck = 1 << 12

// lookup reports whether (p, seq) was applied or resolved, and the first timestamp of the
// original proposal when it is still known.
func (d dedup) lookup(p ProposerID, seq uint64) (dup bool, firstTS uint64) {
	st := d[p]
	if st == nil {
		return false, 0
	}
	if ts, ok := st.applied[seq]; ok {
		return true, ts
	}
	return seq <= st.floor, 0
}

// record notes that (p, seq) was applied at index with its first timestamp, and raises p's
// floor. It returns the state to persist.
func (d dedup) record(p ProposerID, seq, floor, index, firstTS uint64, applied bool) *proposerState {
	st := d[p]
	if st == nil {
		st = &proposerState{applied: map[uint64]uint64{}}
		d[p] = st
	}
	st.lastIndex = index
	if applied {
		st.applied[seq] = firstTS
	}
	if floor > st.floor {
		st.floor = floor
		for s := range st.applied {
			if s <= floor {
				delete(st.applied, s)
			}
		}
	}
	return st
}

// expired returns the proposers unseen since before index-dedupExpiry, in a deterministic
// order, and forgets them.
func (d dedup) expired(index uint64) []ProposerID {
	if index < dedupExpiry {
		return nil
	}
	var out []ProposerID
	for p, st := range d {
		if st.lastIndex < index-dedupExpiry {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b ProposerID) int { return slices.Compare(a[:], b[:]) })
	for _, p := range out {
		delete(d, p)
	}
	return out
}

func (st *proposerState) appendBinary(dst []byte) []byte {
	dst = binary.AppendUvarint(dst, st.floor)
	dst = binary.AppendUvarint(dst, st.lastIndex)
	dst = binary.AppendUvarint(dst, uint64(len(st.applied)))
	seqs := make([]uint64, 0, len(st.applied))
	for s := range st.applied {
		seqs = append(seqs, s)
	}
	slices.Sort(seqs) // canonical bytes: replicas write identical records
	for _, s := range seqs {
		dst = binary.AppendUvarint(dst, s)
		dst = binary.AppendUvarint(dst, st.applied[s])
	}
	return dst
}

func decodeProposerState(b []byte) (*proposerState, error) {
	st := &proposerState{applied: map[uint64]uint64{}}
	next := func() (uint64, bool) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, false
		}
		b = b[n:]
		return v, true
	}
	var n uint64
	var ok1, ok2, ok3 bool
	st.floor, ok1 = next()
	st.lastIndex, ok2 = next()
	n, ok3 = next()
	if !ok1 || !ok2 || !ok3 || n > uint64(len(b)) {
		return nil, fmt.Errorf("proposer record header")
	}
	for range n {
		s, ok1 := next()
		ts, ok2 := next()
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("proposer record entry")
		}
		st.applied[s] = ts
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("proposer record: %d trailing bytes", len(b))
	}
	return st, nil
}
