package raftgroup

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMembershipChangeNotThroughRemovedReplica: a membership change is made, and its outcome
// checked, through a local replica that is a member of the group; one being removed makes the
// group's other changes but never its own removal (the leader stops talking to it once the
// removal applies, so it may never learn that the removal committed: the change's answer and
// its membership view would stay stale, the flake this guards against). Meta leadership then goes to the site with the most staying
// replicas of the stuck groups, never to one whose meta replica is being removed.
func TestMembershipChangeNotThroughRemovedReplica(t *testing.T) {
	ids := [4]SiteID{{1}, {2}, {3}, {4}}
	st := &MetaState{
		Sites: []SiteInfo{
			{Slot: 1, ID: ids[1], MetaReplica: 1, State: SiteActive},
			{Slot: 2, ID: ids[2], MetaReplica: 2, State: SiteActive},
			{Slot: 3, ID: ids[3], MetaReplica: 3, State: SiteActive},
		},
		Replicas: []ReplicaInfo{
			{Group: metaGroup, ReplicaID: 1, Slot: 1, Voter: true, Member: memberVoter},
			{Group: metaGroup, ReplicaID: 2, Slot: 2, Voter: true, Member: memberVoter},
			{Group: metaGroup, ReplicaID: 3, Slot: 3, Voter: true, Member: memberVoter},
			// RF 1: group 1000 keeps slot 1's voter, group 1001 slot 3's (slot 1's replica
			// of 1001 is being added); slot 2's replicas of both, and slot 3's of 1000, are
			// being removed.
			{Group: 1000, ReplicaID: 1, Slot: 1, Voter: true, Member: memberVoter},
			{Group: 1000, ReplicaID: 2, Slot: 2, Voter: true, Member: memberVoter, Remove: true},
			{Group: 1000, ReplicaID: 3, Slot: 3, Voter: true, Member: memberVoter, Remove: true},
			{Group: 1000, ReplicaID: 7, Slot: 3, Member: memberNone}, // slot 3's non-voting replacement
			{Group: 1001, ReplicaID: 4, Slot: 1, Member: memberNone}, // being added
			{Group: 1001, ReplicaID: 5, Slot: 2, Voter: true, Member: memberVoter, Remove: true},
			{Group: 1001, ReplicaID: 6, Slot: 3, Voter: true, Member: memberVoter},
		},
	}
	site := func(running uint64) *Site {
		s := &Site{}
		s.mu.running = map[uint64]uint64{1000: running}
		return s
	}
	member := func(s *Site, slot int) bool { _, ok := s.memberHere(st, slot, 1000); return ok }
	require.True(t, member(site(1), 1), "slot 1's staying voter cannot make changes")
	// Slot 3's replica being removed is still a member: it makes the group's other changes
	// (drive never has it remove itself: it hands the group over once the removal is due).
	require.True(t, member(site(3), 3), "slot 3's member replica being removed cannot make other changes")
	require.False(t, member(site(7), 3), "slot 3's replacement, not a member yet, is used to make changes")
	// Slot 3 leads the meta group and is stuck on group 1000. Slot 2 holds member replicas
	// of both stuck groups, but both are being removed: slot 1 it is.
	stuck := []uint64{1000, 1001}
	got := handOverTarget(st, ids[3], stuck)
	require.Equal(t, uint64(1), got, "hand-over to meta replica %d, want 1", got)
	// Slot 1 leaving and slot 2's meta replica being removed: no site qualifies.
	st.Sites[0].State = SiteLeaving
	st.Replicas[1].Remove = true
	got = handOverTarget(st, ids[3], stuck)
	require.Equal(t, uint64(0), got, "hand-over to meta replica %d, want none", got)
}
