package shard

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestObserveCommitBatchSize: a commit of n messages lands in the first batch bucket whose
// bound is at least n, larger ones in the last; commits without messages (maintenance) count
// in the latency histogram only.
func TestObserveCommitBatchSize(t *testing.T) {
	var m Metrics
	for _, n := range []int{1, 2, 3, 1024, 1025, 0} {
		m.ObserveCommit(time.Millisecond, n, n*10)
	}
	want := map[int]uint64{0: 1, 1: 1, 2: 1, 10: 1, 11: 1} // bucket → commits
	for i := range m.BatchSize {
		require.Equal(t, want[i], m.BatchSize[i].Load(), "bucket %d (≤ %v): commits", i, bound(i))
	}
	require.Equal(t, uint64(5), m.Batches.Load(), "batches")
	require.Equal(t, uint64(1+2+3+1024+1025), m.Messages.Load(), "messages")
	var commits uint64
	for i := range m.CommitLatency {
		commits += m.CommitLatency[i].Load()
	}
	require.Equal(t, uint64(6), commits, "commits in the latency histogram")
}

func bound(i int) any {
	if i < len(BatchBuckets) {
		return BatchBuckets[i]
	}
	return "+Inf"
}
