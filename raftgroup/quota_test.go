package raftgroup

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// TestClusterStorageQuota: in replicated mode StorageQuota is admission control per site:
// past it, Stores through a site fail with a retryable ErrQuotaExceeded and propose nothing;
// every site holds the same data, so the others refuse too; reads and the replicas' identity
// are unaffected; AddGeneration and DropGeneration still work, and once the old generations'
// space is reclaimed, writes come back.
func TestClusterStorageQuota(t *testing.T) {
	const nShards, quota = 2, 3 << 20
	c := newTestCluster(t, 3, nShards, func(i int, cfg *Config) { cfg.DB.StorageQuota = quota })
	// Incompressible: a flush must not shrink what the WAL held.
	pad := make([]byte, 32<<10)
	_, _ = rand.NewChaCha8([32]byte{7}).Read(pad)
	msg := func(i int) ds.Message {
		return ds.Message{ClientID: fmt.Sprintf("q%d", i%5), Topic: "quota/t", Payload: append([]byte(fmt.Sprintf("%07d|", i)), pad...)}
	}
	var acked []string
	var quotaErr error
	for i := range 4 * quota / len(pad) { // well past the quota, measured at most every 100ms
		m := msg(i)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := c.db(0).Store(ctx, m)
		cancel()
		if err != nil {
			quotaErr = err
			break
		}
		acked = append(acked, fmt.Sprintf("%s %s %s", m.ClientID, m.Topic, m.Payload))
	}
	require.ErrorIs(t, quotaErr, ds.ErrQuotaExceeded, "after %d messages: %v, want a retryable ErrQuotaExceeded", len(acked), quotaErr)
	require.True(t, ds.IsRetryable(quotaErr), "after %d messages: %v, want a retryable ErrQuotaExceeded", len(acked), quotaErr)
	require.NotEmpty(t, acked, "after %d messages: %v, want a retryable ErrQuotaExceeded", len(acked), quotaErr)
	t.Logf("refused after %d messages: %v", len(acked), quotaErr)
	// The other sites hold the same data: they refuse too, once they applied it. (A Store
	// that lands meanwhile is acknowledged like any other: each attempt is a new message.)
	next := 1 << 20
	for i := 1; i < 3; i++ {
		eventually(t, 20*time.Second, fmt.Sprintf("site %d refuses", i), func() error {
			m := msg(next)
			next++
			_, err := c.db(i).Store(context.Background(), m)
			if errors.Is(err, ds.ErrQuotaExceeded) {
				return nil
			}
			if err == nil {
				acked = append(acked, fmt.Sprintf("%s %s %s", m.ClientID, m.Topic, m.Payload))
			}
			return fmt.Errorf("store: %v", err)
		})
	}
	c.requireAllRead(acked, 30*time.Second)
	c.waitConverged(nShards, 30*time.Second)

	// Rotate and drop the old generations: the writes come back once the space is reclaimed.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, c.db(1).AddGeneration(ctx))
	for sh := range ds.ShardID(nShards) {
		require.NoError(t, c.db(2).DropGeneration(ctx, sh, 1))
	}
	eventually(t, 20*time.Second, "writes come back on every site", func() error {
		for i := range 3 {
			if c.quotaExceededNow(i) {
				return fmt.Errorf("site %d still over its quota", i)
			}
		}
		return nil
	})
	after := storeN(t, c.db(0), "after", 5)
	c.requireAllRead(after, 30*time.Second)
}

// quotaExceededNow measures site i's quota afresh.
func (c *testCluster) quotaExceededNow(i int) bool {
	s := c.sites[i]
	s.quota.mu.Lock()
	s.quota.checked = time.Time{}
	s.quota.mu.Unlock()
	return s.quotaExceeded()
}
