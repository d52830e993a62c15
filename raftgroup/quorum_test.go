package raftgroup_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/raftgroup"
	"github.com/strata-mq/strata/raftgroup/clustertest"
	"github.com/stretchr/testify/require"
)

// TestFailFastWithoutQuorum: with two of three sites down, a Store through the survivor
// fails within a few seconds (not the 10 s ProposalTimeout) with an error that says why
// (ErrNoQuorum, retryable) and, for a Store made once the survivor knows, that nothing was
// stored; once the sites are back, Stores succeed again.
func TestFailFastWithoutQuorum(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Sites: 3, Shards: 2})
	db0, err := c.DB(0)
	require.NoError(t, err)
	store := func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		start := time.Now()
		_, err := db0.Store(ctx, ds.Message{ClientID: "c1", Topic: "t", Payload: []byte("x")})
		return time.Since(start), err
	}
	for i := range 20 {
		took, err := store()
		require.NoError(t, err, "store #%d: %v after %v", i, err, took)
	}
	for _, i := range []int{1, 2} {
		require.NoError(t, c.Stop(i))
	}

	// The first Stores may run into the loss itself (and wait for the probes to see it).
	deadline := time.Now().Add(20 * time.Second)
	var took time.Duration
	for i := 0; ; i++ {
		took, err = store()
		t.Logf("Store %d after the loss: %v after %v", i, err, took.Round(time.Millisecond))
		require.Error(t, err, "a Store committed without a quorum")
		if errors.Is(err, raftgroup.ErrNoQuorum) && strings.Contains(err.Error(), "nothing stored") {
			break
		}
		require.False(t, time.Now().After(deadline), "no fail-fast error within 20s; last: %v (after %v)", err, took)
	}
	// Known now: the next one fails at once.
	took, err = store()
	require.ErrorIs(t, err, raftgroup.ErrNoQuorum, "Store without quorum: %v after %v; want a retryable ErrNoQuorum at once, outcome known", err, took)
	require.True(t, ds.IsRetryable(err), "Store without quorum: %v after %v; want a retryable ErrNoQuorum at once, outcome known", err, took)
	require.NotErrorIs(t, err, ds.ErrOutcomeUnknown, "Store without quorum: %v after %v; want a retryable ErrNoQuorum at once, outcome known", err, took)
	require.LessOrEqual(t, took, time.Second, "Store without quorum: %v after %v; want a retryable ErrNoQuorum at once, outcome known", err, took)
	require.Contains(t, err.Error(), "1 of its 3 voters reachable", "error does not say how many voters are reachable: %v", err)
	t.Logf("without quorum: %v (after %v)", err, took)

	for _, i := range []int{1, 2} {
		require.NoError(t, c.Restart(context.Background(), i))
	}
	testutil.Eventually(t, 30*time.Second, "Stores succeed again", func() error {
		if _, err := store(); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		return nil
	})
}
