package shard

import "errors"

// Sentinel errors of a shard; package ds re-exports them.
var (
	// ErrClosed is returned by every call on a closed shard or DB.
	ErrClosed = errors.New("strata: closed")
	// ErrEndOfStream is returned by a read whose generation is sealed and whose cursor is past
	// the stream's last message.
	ErrEndOfStream = errors.New("strata: end of stream")
	// ErrGenerationNotFound is returned for a generation that does not exist or was dropped.
	ErrGenerationNotFound = errors.New("strata: generation not found")
	// ErrCurrentGeneration is returned when asked to drop the generation that takes writes.
	ErrCurrentGeneration = errors.New("strata: the current generation cannot be dropped")
	// ErrQuotaExceeded is returned by writes while the store is over its storage quota.
	ErrQuotaExceeded = errors.New("strata: storage quota exceeded")
	// ErrCorruption is wrapped by every error about stored bytes that do not decode.
	ErrCorruption = errors.New("strata: corruption")
	// ErrStreamNotFound is returned for an iterator whose stream does not exist in its
	// generation.
	ErrStreamNotFound = errors.New("strata: stream not found")
	// ErrFailed is wrapped by every write after the shard hit an error it cannot recover
	// from without a reopen (a failed WAL sync leaves durability unknown).
	ErrFailed = errors.New("strata: shard failed")
)

// ErrUnavailable is the error of replicated shards only.
var (
	// ErrUnavailable: the shard's Raft group could not commit in time (no leader, quorum lost,
	// this site cut off) or this site holds no open replica of it. Retry later. A write that
	// fails with it was not stored, unless the error says the outcome is unknown (a proposal
	// timed out after its leader received it).
	ErrUnavailable = errors.New("strata: shard unavailable")
)

// ErrOutcomeUnknown is wrapped, beside ErrUnavailable or ErrClosed, by a replicated write whose
// proposal may have been committed although the caller was not told: an attempt timed out
// after a leader had it, or the site closed meanwhile. Read to find out before storing again.
var ErrOutcomeUnknown = errors.New("strata: outcome unknown")
