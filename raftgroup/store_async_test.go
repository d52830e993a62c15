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
// out of order) reports every message stored, each publisher's outcomes in the order it queued
// them, and every site reads each message once with the Ref its outcome gave.
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
			err := db1.StoreAsync(context.Background(), m, func(ref ds.Ref, err error) {
				mu.Lock()
				outs[client] = append(outs[client], outcome{i, ref, err})
				mu.Unlock()
				wg.Done()
			})
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
}
