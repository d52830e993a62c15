package shard

import (
	"testing"
	"time"
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
		if got := m.BatchSize[i].Load(); got != want[i] {
			t.Errorf("bucket %d (≤ %v): %d commits, want %d", i, bound(i), got, want[i])
		}
	}
	if m.Batches.Load() != 5 || m.Messages.Load() != 1+2+3+1024+1025 {
		t.Errorf("batches %d, messages %d", m.Batches.Load(), m.Messages.Load())
	}
	var commits uint64
	for i := range m.CommitLatency {
		commits += m.CommitLatency[i].Load()
	}
	if commits != 6 {
		t.Errorf("%d commits in the latency histogram, want 6", commits)
	}
}

func bound(i int) any {
	if i < len(BatchBuckets) {
		return BatchBuckets[i]
	}
	return "+Inf"
}
