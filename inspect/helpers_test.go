package inspect_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// The inspector and the handler are tested against real DBs on real disk in t.TempDir().

// fastOptions returns Options for a small, fast test DB: 4 shards, no fsync.
func fastOptions() *ds.Options {
	return &ds.Options{NShards: 4, Durability: ds.NoSync, Expert: ds.ExpertOptions{MemTableBytes: 8 << 20, CacheBytes: 8 << 20}}
}

// testDB is a DB under test.
type testDB struct {
	*ds.DB
	t   testing.TB
	dir string
}

// openTestDB opens a DB in a fresh temporary directory, closed when the test ends.
func openTestDB(t testing.TB, opts *ds.Options) *testDB {
	t.Helper()
	dir := t.TempDir()
	db, err := ds.Open(dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		err := db.Close()
		require.False(t, err != nil && !errors.Is(err, ds.ErrClosed), "close: %v", err)
	})
	return &testDB{DB: db, t: t, dir: dir}
}

// store stores msgs in one call.
func (d *testDB) store(msgs ...ds.Message) []ds.Ref {
	d.t.Helper()
	refs, err := d.Store(context.Background(), msgs...)
	require.NoError(d.t, err)
	return refs
}

// msg is a message with a payload that names it.
func msg(client, topic string, i int) ds.Message {
	return ds.Message{ClientID: client, Topic: topic, QoS: 1, Payload: fmt.Appendf(nil, "%s#%d", topic, i)}
}
