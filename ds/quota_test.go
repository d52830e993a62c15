package ds_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// TestStorageQuota: past StorageQuota, Store fails with ErrQuotaExceeded (and stores nothing)
// while reads, AddGeneration and DropGeneration keep working; once the old generations are
// dropped and their space is reclaimed in the background, Store works again.
func TestStorageQuota(t *testing.T) {
	const quotaAbove = 4 << 20
	opts := fastOptions(func(o *ds.Options) { o.NShards = 2 })
	// The quota is relative to what an empty DB takes (WAL, manifest, options file).
	db := openTestDB(t, opts)
	m, err := db.Metrics()
	require.NoError(t, err)
	base := m.DiskBytes
	require.NoError(t, db.Close())
	quotaOpts := *opts
	quotaOpts.StorageQuota = int64(base) + quotaAbove
	db = openTestDBAt(t, db.dir, &quotaOpts)

	// Incompressible: a flush must not shrink what the WAL held (a compressible payload shrinks
	// many times when flushed to tables, which lifts the quota on its own, mid-test).
	payload := make([]byte, 32<<10)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(payload)
	var stored []ds.Ref
	var quotaErr error
	// Well past the quota, for the quota is measured at most every 100ms.
	for i := range 4 * 2 * quotaAbove / len(payload) {
		refs, err := db.Store(t.Context(),
			ds.Message{ClientID: fmt.Sprint(i % 7), Topic: "quota/a", Payload: payload},
			ds.Message{ClientID: fmt.Sprint(i%7 + 1), Topic: "quota/b", Payload: payload})
		if err != nil {
			// The two messages go to different shards; one shard may have taken its message
			// before the other refused (Store is atomic per shard): its Ref is set.
			for _, r := range refs {
				if r.Timestamp != 0 {
					stored = append(stored, r)
				}
			}
			quotaErr = err
			break
		}
		stored = append(stored, refs...)
	}
	require.ErrorIs(t, quotaErr, ds.ErrQuotaExceeded, "%d messages stored", len(stored))
	require.True(t, ds.IsRetryable(quotaErr))
	require.NotEmpty(t, stored)
	m, err = db.Metrics()
	require.NoError(t, err)
	t.Logf("quota %d, disk %d after %d messages", quotaOpts.StorageQuota, m.DiskBytes, len(stored))

	// Reads work, and the refused messages are not there.
	got := byRef(t, db.readFilter("quota/#", time.Time{}, 100))
	require.Len(t, got, len(stored))
	for _, r := range stored {
		require.Contains(t, got, r)
	}
	_, err = db.Store(t.Context(), msg("c", "quota/c", 0))
	require.ErrorIs(t, err, ds.ErrQuotaExceeded)

	// Rotate and drop everything old: the writes come back once the space is reclaimed.
	// The quota counts live data, not the WAL files Pebble keeps to recycle (see pebbleopts.QuotaUsage).
	require.NoError(t, db.AddGeneration(t.Context()))
	for sh := range ds.ShardID(db.NShards()) {
		require.NoError(t, db.DropGeneration(t.Context(), sh, 1))
	}
	var after ds.Ref
	// Reclaiming (the background compaction of the dropped range) takes well under a second.
	require.Eventually(t, func() bool {
		refs, err := db.Store(t.Context(), msg("c", "quota/after", 0))
		if err != nil {
			require.ErrorIs(t, err, ds.ErrQuotaExceeded)
			return false
		}
		after = refs[0]
		return true
	}, 5*time.Second, pollEvery, "Store works again after the drop")
	m, err = db.Metrics()
	require.NoError(t, err)
	t.Logf("disk %d after the drop", m.DiskBytes)
	require.Equal(t, []ds.Ref{after}, refsOf(db.readFilter("quota/#", time.Time{}, 100)))
}
