package raftgroup

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
)

// TestFailFastWithoutQuorum: with two of three sites down, a Store through the survivor
// fails within a few seconds (not the 10 s ProposalTimeout) with an error that says why
// (ErrNoQuorum, retryable) and, for a Store made once the survivor knows, that nothing was
// stored; once the sites are back, Stores succeed again.
func TestFailFastWithoutQuorum(t *testing.T) {
	c := newTestCluster(t, 3, 2, nil)
	storeN(t, c.db(0), "before", 20)
	c.close(1)
	c.close(2)

	store := func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		start := time.Now()
		_, err := c.db(0).Store(ctx, ds.Message{ClientID: "c1", Topic: "t", Payload: []byte("x")})
		return time.Since(start), err
	}
	// The first Stores may run into the loss itself (and wait for the probes to see it).
	deadline := time.Now().Add(20 * time.Second)
	var took time.Duration
	var err error
	for i := 0; ; i++ {
		took, err = store()
		t.Logf("Store %d after the loss: %v after %v", i, err, took.Round(time.Millisecond))
		if err == nil {
			t.Fatal("a Store committed without a quorum")
		}
		if errors.Is(err, ErrNoQuorum) && strings.Contains(err.Error(), "nothing stored") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no fail-fast error within 20s; last: %v (after %v)", err, took)
		}
	}
	// Known now: the next one fails at once.
	took, err = store()
	if !errors.Is(err, ErrNoQuorum) || !ds.IsRetryable(err) || errors.Is(err, ds.ErrOutcomeUnknown) || took > time.Second {
		t.Fatalf("Store without quorum: %v after %v; want a retryable ErrNoQuorum at once, outcome known", err, took)
	}
	if !strings.Contains(err.Error(), "1 of its 3 voters reachable") {
		t.Errorf("error does not say how many voters are reachable: %v", err)
	}
	t.Logf("without quorum: %v (after %v)", err, took)

	c.restart(1)
	c.restart(2)
	eventually(t, 30*time.Second, "Stores succeed again", func() error {
		if _, err := store(); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		return nil
	})
}
