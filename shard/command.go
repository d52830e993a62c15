package shard

import (
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/stream"
)

// Command is one deterministic input of a shard's state machine: Apply of the same command on
// the same state writes the same bytes and assigns the same timestamps. Embedded mode applies
// commands directly; replicated mode proposes them to the shard's Raft group.
type Command struct {
	// Time is the proposal time in µs. Timestamps are max(last+1, Time), so a replica never
	// reads its own clock while applying.
	Time uint64
	// AddGeneration seals the current generation and opens a new one before anything else.
	AddGeneration bool
	// Drop lists sealed generations to drop, by one range deletion each.
	Drop []stream.GenerationID
	// Messages are stored in order into the current generation. Their topics must be valid.
	Messages []*message.Message
}
