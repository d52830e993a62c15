package raftgroup_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/raftgroup/clustertest"
	"github.com/stretchr/testify/require"
)

// TestStoreAsyncReplicated: StoreAsync through a replicated site (whose proposals may finish
// out of order) reports every message stored, also where the caller cancelled its ctx once
// StoreAsync returned, each publisher's outcomes in the order it queued them, and every site
// reads each message once with the Ref its outcome gave.
func TestStoreAsyncReplicated(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Sites: 3, Shards: 4})
	db1, err := c.DB(1)
	require.NoError(t, err)
	const publishers, each = 4, 100
	type outcome struct {
		i   int
		ref ds.Ref
		err error
	}
	var mu sync.Mutex
	outs := map[string][]outcome{}
	var wg sync.WaitGroup
	for p := range publishers {
		client := fmt.Sprintf("pub-%d", p)
		for i := range each {
			wg.Add(1)
			m := ds.Message{ClientID: client, Topic: "async/" + client, QoS: 1, Payload: fmt.Appendf(nil, "%s#%d", client, i)}
			// The ctx bounds only the wait for room in the queue: a caller that cancels it
			// once StoreAsync returned (half of them here) still gets its message stored.
			ctx, cancel := context.WithCancel(context.Background())
			err := db1.StoreAsync(ctx, m, func(ref ds.Ref, err error) {
				mu.Lock()
				outs[client] = append(outs[client], outcome{i, ref, err})
				mu.Unlock()
				wg.Done()
			})
			if i%2 == 0 {
				cancel()
			}
			defer cancel()
			require.NoError(t, err)
		}
	}
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	select {
	case <-all:
	case <-time.After(time.Minute):
		require.Fail(t, "StoreAsync outcomes missing")
	}
	want := map[ds.Ref]string{}
	for client, got := range outs {
		require.Len(t, got, each, client)
		for k, o := range got {
			require.NoError(t, o.err, "%s #%d", client, k)
			require.Equal(t, k, o.i, "%s: outcome %d is message %d's", client, k, o.i)
			want[o.ref] = fmt.Sprintf("%s#%d", client, k)
		}
	}
	require.Len(t, want, publishers*each, "distinct refs")
	for site := range 3 {
		db, err := c.DB(site)
		require.NoError(t, err)
		got := map[ds.Ref]string{}
		testutil.Eventually(t, 30*time.Second, fmt.Sprintf("site %d reads every message", site), func() error {
			msgs, err := db.Messages("async/#", time.Time{}, 10*len(want))
			if err != nil {
				return err
			}
			got = map[ds.Ref]string{}
			for _, m := range msgs {
				ref := ds.Ref{Shard: ds.ShardID(m.Shard), Timestamp: m.Timestamp}
				if _, dup := got[ref]; dup {
					return fmt.Errorf("message %v read twice", ref)
				}
				got[ref] = string(m.Payload)
			}
			if len(got) < len(want) {
				return fmt.Errorf("%d of %d messages", len(got), len(want))
			}
			return nil
		})
		require.Equal(t, want, got, "site %d", site)
	}

	// Messages queued on a site that is then closed: every outcome is in when Close returns
	// (stored, or an error), and each one reported stored is read once on the other sites.
	db2, err := c.DB(2)
	require.NoError(t, err)
	var late sync.Map // message i → its outcome
	var count sync.WaitGroup
	firstStored := make(chan struct{})
	var once sync.Once
	const lateN = 300
	for i := range lateN {
		count.Add(1)
		m := ds.Message{ClientID: "late", Topic: "late/x", QoS: 1, Payload: fmt.Appendf(nil, "late#%d", i)}
		err := db2.StoreAsync(context.Background(), m, func(ref ds.Ref, err error) {
			late.Store(i, outcome{i, ref, err})
			if err == nil {
				once.Do(func() { close(firstStored) })
			}
			count.Done()
		})
		if err != nil {
			count.Done()
			require.ErrorIs(t, err, ds.ErrClosed)
		}
	}
	select { // close while the rest are in flight
	case <-firstStored:
	case <-time.After(time.Minute):
		require.Fail(t, "no late message stored")
	}
	var before int
	late.Range(func(any, any) bool { before++; return true })
	t.Logf("closing the site with %d of %d outcomes still to come", lateN-before, lateN)
	require.NoError(t, c.Stop(2))
	reported := 0
	stored := map[ds.Ref]string{}
	late.Range(func(k, v any) bool {
		reported++
		if o := v.(outcome); o.err == nil {
			stored[o.ref] = fmt.Sprintf("late#%d", o.i)
		}
		return true
	})
	require.Equal(t, lateN, reported, "outcomes reported when the site's Close returned")
	count.Wait()
	t.Logf("%d of %d late messages stored before the site closed", len(stored), lateN)
	db0, err := c.DB(0)
	require.NoError(t, err)
	testutil.Eventually(t, 30*time.Second, "site 0 reads the late messages reported stored", func() error {
		msgs, err := db0.Messages("late/#", time.Time{}, 10*lateN)
		if err != nil {
			return err
		}
		got := map[ds.Ref]string{}
		for _, m := range msgs {
			got[ds.Ref{Shard: ds.ShardID(m.Shard), Timestamp: m.Timestamp}] = string(m.Payload)
		}
		for ref, want := range stored {
			if got[ref] != want {
				return fmt.Errorf("message %v: %q, want %q", ref, got[ref], want)
			}
		}
		return nil
	})
}
