package raftgroup

import (
	"path/filepath"
	"testing"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// The replica directory and store names decode to what encoded them, and nothing else decodes.
func TestReplicaDirNames(t *testing.T) {
	for _, c := range []struct {
		id      ds.ShardID
		replica uint64
	}{{0, 1}, {7, 42}, {ds.MaxShards - 1, 1<<64 - 1}} {
		name := filepath.Base(replicaDir("/site", c.id, c.replica))
		id, replica, ok := parseReplicaDir(name)
		require.True(t, ok, "%s decodes to %d, %d, %v", name, id, replica, ok)
		require.Equal(t, c.id, id, "%s decodes to %d, %d, %v", name, id, replica, ok)
		require.Equal(t, c.replica, replica, "%s decodes to %d, %d, %v", name, id, replica, ok)
	}
	for _, bad := range []string{"", "shard-", "shard-0001", "shard-001-r1", "shard-0001-r0", "shard-0001-r", "shard-00a1-r1",
		"shard-99999-r1", "shard-0001-r1x", "xshard-0001-r1", "shard-0001-r123456789012345678901"} {
		_, _, ok := parseReplicaDir(bad)
		require.False(t, ok, "%q decodes", bad)
	}
	for _, seq := range []int{1, 2, 999999, 1234567} {
		got, ok := parseStoreName(storeName(seq))
		require.True(t, ok, "%s decodes to %d, %v", storeName(seq), got, ok)
		require.Equal(t, seq, got, "%s decodes to %d, %v", storeName(seq), got, ok)
	}
	for _, bad := range []string{"", "db-", "db-1", "db-00001", "db-00000a", "xdb-000001", "db-000001 "} {
		_, ok := parseStoreName(bad)
		require.False(t, ok, "%q decodes", bad)
	}
}

func FuzzParseReplicaDir(f *testing.F) {
	f.Add("shard-0001-r3")
	f.Add("db-000001")
	f.Fuzz(func(t *testing.T, name string) {
		// Whatever decodes holds values that encode to a name decoding to the same values.
		if id, replica, ok := parseReplicaDir(name); ok {
			id2, replica2, ok2 := parseReplicaDir(filepath.Base(replicaDir("/", id, replica)))
			require.True(t, ok2, "%q decodes to %d, %d, which do not round-trip", name, id, replica)
			require.Equal(t, id, id2, "%q decodes to %d, %d, which do not round-trip", name, id, replica)
			require.Equal(t, replica, replica2, "%q decodes to %d, %d, which do not round-trip", name, id, replica)
		}
		if seq, ok := parseStoreName(name); ok {
			seq2, ok2 := parseStoreName(storeName(seq))
			require.True(t, ok2, "%q decodes to %d, which does not round-trip", name, seq)
			require.Equal(t, seq, seq2, "%q decodes to %d, which does not round-trip", name, seq)
		}
	})
}
