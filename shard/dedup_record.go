package shard

import (
	"bytes"
	"fmt"
)

// ProposerRecord is one decoded de-duplication record of a replica (see dedup), for tools that
// inspect a replica's store without opening it as a Replica (inspect.Inspector.Check).
type ProposerRecord struct {
	Floor     uint64            // every sequence number at or below it is resolved
	LastIndex uint64            // log index of the proposer's last entry
	Applied   map[uint64]uint64 // sequence number above Floor → first timestamp (0: no message)
}

// DecodeProposerRecord decodes the value of a de-duplication record and checks that it is what
// a replica writes: canonical bytes (sequence numbers ascending, each once) and no sequence
// number at or below the floor (raising the floor forgets them). The error does not wrap
// ErrCorruption: the caller names the record and classifies it.
func DecodeProposerRecord(v []byte) (ProposerRecord, error) {
	st, err := decodeProposerState(v)
	if err != nil {
		return ProposerRecord{}, err
	}
	if !bytes.Equal(st.appendBinary(nil), v) {
		return ProposerRecord{}, fmt.Errorf("proposer record not in canonical form (sequence numbers out of order or repeated)")
	}
	for seq := range st.applied {
		if seq <= st.floor {
			return ProposerRecord{}, fmt.Errorf("proposer record: sequence %d at or below the floor %d", seq, st.floor)
		}
	}
	return ProposerRecord{Floor: st.floor, LastIndex: st.lastIndex, Applied: st.applied}, nil
}
