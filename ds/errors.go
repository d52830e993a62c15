package ds

import (
	"context"
	"errors"

	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// Sentinel errors. Every error the DB returns for one of these conditions wraps the sentinel,
// so test with errors.Is; the message adds the details (shard, generation, key, file).
var (
	// ErrClosed: the DB is closed.
	ErrClosed = shard.ErrClosed
	// ErrInvalidTopic: a message's topic is not a valid MQTT topic name.
	ErrInvalidTopic = topic.ErrInvalidTopic
	// ErrInvalidFilter: a filter is not a valid MQTT topic filter.
	ErrInvalidFilter = topic.ErrInvalidFilter
	// ErrInvalidMessage: a message field is out of range (QoS > 2, payload format > 1).
	ErrInvalidMessage = errors.New("strata: invalid message")
	// ErrMessageTooLarge: a message is larger than Options.MaxMessageBytes.
	ErrMessageTooLarge = errors.New("strata: message too large")
	// ErrEndOfStream: the iterator's generation is sealed and every message was read; ask
	// Streams for the streams of the next generation.
	ErrEndOfStream = shard.ErrEndOfStream
	// ErrGenerationNotFound: the generation does not exist or was dropped.
	ErrGenerationNotFound = shard.ErrGenerationNotFound
	// ErrCurrentGeneration: the current generation cannot be dropped.
	ErrCurrentGeneration = shard.ErrCurrentGeneration
	// ErrStreamNotFound: the stream does not exist in its generation.
	ErrStreamNotFound = shard.ErrStreamNotFound
	// ErrShardNotFound: the shard ID is not below NShards.
	ErrShardNotFound = errors.New("strata: shard not found")
	// ErrQuotaExceeded: the DB is over Options.StorageQuota; drop generations to write again.
	ErrQuotaExceeded = shard.ErrQuotaExceeded
	// ErrCorruption: stored bytes do not decode. The message names the shard and key or file.
	ErrCorruption = shard.ErrCorruption
	// ErrInvalidIterator: bytes handed to UnmarshalIterator or UnmarshalStream are not an
	// iterator or stream of this format (garbage, truncated, wrong checksum).
	ErrInvalidIterator = stream.ErrInvalid
	// ErrInvalidOptions: Options.Validate found problems; the message lists all of them.
	ErrInvalidOptions = errors.New("strata: invalid options")
	// ErrShardMismatch: the DB was created with another NShards, or by a build with another
	// on-disk format version.
	ErrShardMismatch = errors.New("strata: options do not match the stored DB")
	// ErrFailed: a shard hit an error that leaves durability unknown (a failed WAL fsync). The
	// messages of the failed call may or may not have been stored; reopen the DB and read to
	// find out. Every later write to the shard fails with it until the reopen.
	ErrFailed = shard.ErrFailed
	// ErrUnavailable (replicated mode): the shard's Raft group could not commit in time — no
	// leader, quorum lost, or this site is cut off from the majority — or this site has no
	// open replica of it yet (Streams, Read, Generations then fail with it rather than
	// answer empty). Retry later. The messages of the failed Store were not stored, unless the
	// error also wraps ErrOutcomeUnknown.
	ErrUnavailable = shard.ErrUnavailable
	// ErrOutcomeUnknown (replicated mode), beside ErrUnavailable or ErrClosed: a proposal may
	// have been committed although Store could not learn it (an attempt timed out after a
	// leader had it, or the site closed). Read before storing the messages again.
	ErrOutcomeUnknown = shard.ErrOutcomeUnknown
)

// IsCorruptionError reports whether err is about stored bytes that do not decode.
func IsCorruptionError(err error) bool { return errors.Is(err, ErrCorruption) }

// IsRetryable reports whether the same call may succeed later without a change by the caller:
// the quota may be lifted by a drop, a full queue or a deadline may clear, and a replicated
// shard may regain its quorum.
func IsRetryable(err error) bool {
	return errors.Is(err, ErrQuotaExceeded) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrUnavailable)
}
