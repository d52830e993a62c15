// Package wire holds the messages of the site service: the calls a site forwards to another
// for a shard it holds no replica of (raftgroup's forward.go and service.go). They travel
// with net/rpc's gob codec, which needs exported types: hence this internal package. Messages
// inside them are in shard.Command's encoding. Package raftgroup maps errors to and from
// Error (it owns the sentinels).
package wire

import (
	"time"

	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// Error is an error as it crosses the wire: a code for the sentinels a caller tests with
// errors.Is, and the text.
type Error struct {
	Code byte
	Text string
}

// Error codes, in the order errors are tested (the first sentinel that matches wins; a code
// stands for every sentinel the original wrapped that matters to callers).
const (
	CodeNone byte = iota
	CodeOther
	CodeOutcomeUnknown // ErrUnavailable and ErrOutcomeUnknown
	CodeNoQuorum       // ErrUnavailable and ErrNoQuorum
	CodeUnavailable
	CodeNotHeld
	CodeQuota
	CodeClosed
	CodeGenerationNotFound
	CodeCurrentGeneration
	CodeEndOfStream
	CodeInvalidTopic
	CodeFailed
	CodeInvalidFilter
	CodeStreamNotFound
	CodeCorruption
	CodeInvalidIterator
)

// The calls' arguments and replies. Every reply carries Err; net/rpc's own error is left for
// transport failures.
type (
	Shard struct {
		Shard stream.ShardID
	}
	Submit struct {
		Shard stream.ShardID
		Cmd   []byte        // shard.Command's encoding: Messages and Txns (one proposer's batch)
		Wait  time.Duration // the caller's time left
	}
	SubmitReply struct {
		FirstTS uint64            // the first message's timestamp (Messages)
		Txns    []shard.TxnResult // per Txn (Txns)
		Leader  string            // the service address of the shard's leader, if another site's
		Err     Error
	}
	// Propose is a proposal made at the calling site, with its proposer identity and
	// sequence, to be proposed again as it is through this site's replica. The replicas apply
	// a sequence once, so the answer is the outcome of every attempt of it: this resolves an
	// attempt whose outcome the caller lost with its own replica (moved away meanwhile).
	Propose struct {
		Shard    stream.ShardID
		Proposal []byte        // raftgroup's proposal encoding
		Wait     time.Duration // the caller's time left
	}
	ProposeReply struct {
		Value uint64 // the entry's result, as the state machine returned it
		Data  []byte
		Err   Error
	}
	Admin struct {
		Shard stream.ShardID
		Add   bool
		Drop  stream.GenerationID
		Wait  time.Duration
	}
	ErrReply struct {
		Err Error
	}
	Streams struct {
		Shard  stream.ShardID
		Filter []string
		Since  uint64
	}
	StreamsReply struct {
		Streams []stream.Stream
		Err     Error
	}
	Read struct {
		It     stream.Iterator
		Filter []string
		Max    int
	}
	ReadReply struct {
		Msgs []byte   // shard.Command{Messages} encoding
		TS   []uint64 // the messages' timestamps
		Next uint64
		Err  Error
	}
	Limit struct {
		Shard stream.ShardID
	}
	LimitReply struct {
		Limit uint64
		Err   Error
	}
	// Tail asks for a shard's durable steps from Seq on, in the ring of Epoch (raftgroup's
	// tail.go), waiting up to Wait for one; MaxBytes bounds the messages and records of the
	// reply (at least one step).
	Tail struct {
		Shard      stream.ShardID
		Epoch, Seq uint64
		Wait       time.Duration
		MaxBytes   int
	}
	// TailReply: Steps from the asked Seq, and Next, the seq to ask for next, in the ring of
	// Epoch. Reset: the asked position is not in the ring; readers must look again below
	// Limit, and the steps from Next on follow (Limit, Version). No steps and no Reset:
	// nothing new within Wait.
	TailReply struct {
		Epoch, Next    uint64
		Reset          bool
		Limit, Version uint64 // Reset: the read limit and record version the steps from Next start at
		Steps          []TailStep
		Err            Error
	}
	// TailStep is one shard.Durable of the holder's replica.
	TailStep struct {
		From, Until               uint64
		FromVersion, UntilVersion uint64
		Msgs                      []byte   // shard.Command{Messages} encoding
		TS                        []uint64 // the messages' timestamps
		Streams                   []shard.StreamTouch
		Records                   []shard.RecordWrite
	}
	GenerationsReply struct {
		Generations []generation.Info
		Err         Error
	}
	Usage struct {
		Shard      stream.ShardID
		Generation stream.GenerationID
	}
	UsageReply struct {
		Usage shard.GenerationUsage
		Err   Error
	}
	Record struct {
		Shard stream.ShardID
		Key   []byte
	}
	RecordReply struct {
		Value   []byte
		Version uint64
		Err     Error
	}
	Scan struct {
		Shard  stream.ShardID
		Prefix []byte
		After  []byte // scan keys after this one (paging); nil: from the prefix
		Max    int
	}
	ScanReply struct {
		Keys, Values [][]byte
		Versions     []uint64
		More         bool
		Err          Error
	}
)

// Reply is implemented by every reply: the error the called site returned.
type Reply interface{ Failure() Error }

func (r *SubmitReply) Failure() Error      { return r.Err }
func (r *ProposeReply) Failure() Error     { return r.Err }
func (r *ErrReply) Failure() Error         { return r.Err }
func (r *StreamsReply) Failure() Error     { return r.Err }
func (r *ReadReply) Failure() Error        { return r.Err }
func (r *LimitReply) Failure() Error       { return r.Err }
func (r *TailReply) Failure() Error        { return r.Err }
func (r *GenerationsReply) Failure() Error { return r.Err }
func (r *UsageReply) Failure() Error       { return r.Err }
func (r *RecordReply) Failure() Error      { return r.Err }
func (r *ScanReply) Failure() Error        { return r.Err }
