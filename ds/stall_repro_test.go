package ds_test

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

func TestZZRotateParkedDSPump(t *testing.T) {
	for i := range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		db := openTestDB(t, fastOptions())
		publish := func(client, topic string) {
			_, err := db.Store(ctx, ds.Message{ClientID: client, Topic: topic, QoS: 2, Payload: fmt.Appendf(nil, "%s", topic)})
			require.NoError(t, err)
		}
		pos, _ := db.TailPosition()
		sub, err := db.Subscribe("a/+", pos, &ds.SubscribeOptions{MaxUnacked: 1, ReadBuffer: 1024})
		require.NoError(t, err)
		ch := make(chan ds.Message, 10)
		go func() {
			for {
				m, err := sub.Next(ctx, 256)
				if err != nil {
					if ctx.Err() == nil {
						t.Logf("Next: %v", err)
					}
					return
				}
				for _, x := range m {
					ch <- x
				}
			}
		}()
		nx := func() ds.Message {
			select {
			case m := <-ch:
				return m
			case <-time.After(3 * time.Second):
				_ = pprof.Lookup
				t.Fatalf("iteration %d: nothing; position %v\n%s", i, sub.Position(), ds.DebugSub(sub)+"\n"+ds.DbgDump())
			}
			return ds.Message{}
		}
		publish("p1", "a/b")
		m := nx()
		require.NoError(t, sub.Ack(ds.RefOf(m)))
		publish("p1", "a/c")
		if os.Getenv("ZZROT") != "" {
			require.NoError(t, db.AddGeneration(ctx))
		}
		m = nx()
		publish("p1", "a/b")
		if os.Getenv("ZZREC") != "" {
			_, err = db.Update(ctx, ds.ShardOf("p1", 4), &ds.Txn{Writes: []ds.RecordWrite{{Key: []byte("k"), Value: []byte("v")}}})
			require.NoError(t, err)
		}
		require.NoError(t, sub.Ack(ds.RefOf(m)))
		m = nx()
		sub.Close()
		cancel()
		db.Close()
	}
}
