package raftgroup

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// TestClusterDuplicateProposal: the same proposal (same proposer and sequence) committed
// twice through Raft — as when a proposer retries after a timeout while the first attempt was
// in fact committed — is stored once; the duplicate reports the original's timestamp; replicas
// stay identical. A proposal from another proposer with the same sequence is stored.
func TestClusterDuplicateProposal(t *testing.T) {
	c := newTestCluster(t, 3, 1, nil)
	s := c.sites[1]
	cmd := &shard.Command{Time: 1, Messages: []*message.Message{{ClientID: "dup", Topic: "d/1", Payload: []byte("once")}}}
	var pid shard.ProposerID
	copy(pid[:], "test-proposer-01")
	propose := func(p shard.ProposerID, seq uint64) (uint64, uint64) {
		t.Helper()
		b := newProposal(p, seq, 0, cmd.AppendBinary(nil)).appendBinary(nil)
		for attempt := 0; ; attempt++ {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			res, err := s.nh.SyncPropose(ctx, s.nh.GetNoOPSession(shardGroup(0)), b)
			cancel()
			if retryable(err) && attempt < 100 {
				time.Sleep(20 * time.Millisecond) // no leader elected yet
				continue
			}
			require.NoError(t, err)
			return res.Value, firstTS(t, res.Value, res.Data)
		}
	}
	v1, ts1 := propose(pid, 7)
	v2, ts2 := propose(pid, 7) // the retry, committed as a second entry
	require.Equal(t, uint64(resultStored), v1, "first %d@%d, second %d@%d; want stored, then duplicate with the same timestamp", v1, ts1, v2, ts2)
	require.Equal(t, uint64(resultDuplicate), v2, "first %d@%d, second %d@%d; want stored, then duplicate with the same timestamp", v1, ts1, v2, ts2)
	require.Equal(t, ts2, ts1, "first %d@%d, second %d@%d; want stored, then duplicate with the same timestamp", v1, ts1, v2, ts2)
	require.NotZero(t, ts1, "first %d@%d, second %d@%d; want stored, then duplicate with the same timestamp", v1, ts1, v2, ts2)
	var other shard.ProposerID
	copy(other[:], "test-proposer-02")
	v, _ := propose(other, 7)
	require.Equal(t, uint64(resultStored), v, "another proposer's sequence 7: result %d", v)
	everySiteReads(t, c, 2) // the message twice, once per proposer
	c.waitConverged(1, 10*time.Second)
	d, _ := c.sites[0].Digest(stream.ShardID(0))
	require.NotZero(t, d.Applied, "digest %+v", d)
	require.NotZero(t, d.Keys, "digest %+v", d)
}

// everySiteReads waits until every site of c reads n messages.
func everySiteReads(t *testing.T, c *testCluster, n int) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("every site reads %d messages", n), func() error {
		for i := range c.sites {
			got, err := readAll(c.db(i))
			if err != nil {
				return err
			}
			if len(got) != n {
				return fmt.Errorf("site %d reads %q", i, got)
			}
		}
		return nil
	})
}

func firstTS(t testing.TB, value uint64, data []byte) uint64 {
	t.Helper()
	ts, _, _, err := decodeResult(value, data)
	require.NoError(t, err)
	return ts
}

// TestProposeAgainElsewhere: a proposal whose outcome a site lost (its replica moved away
// while an attempt was in flight) is proposed again as it is through another site's replica
// (forwarder.proposeAgain, service Propose): the answer is the first attempt's outcome — the
// original timestamp, the message stored once — and asking again, through any holder, gives
// the same answer. A proposal without a sequence is refused (it would not be applied once).
func TestProposeAgainElsewhere(t *testing.T) {
	c := newTestCluster(t, 3, 1, nil)
	storeN(t, c.db(0), "warm", 1) // a leader
	c.waitServices()              // every site's service address known
	cmd := &shard.Command{Time: 1, Messages: []*message.Message{{ClientID: "again", Topic: "d/1", Payload: []byte("once")}}}
	var pid shard.ProposerID
	copy(pid[:], "test-proposer-03")
	b := newProposal(pid, 9, 0, cmd.AppendBinary(nil)).appendBinary(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	res, err := c.sites[0].nh.SyncPropose(ctx, c.sites[0].nh.GetNoOPSession(shardGroup(0)), b)
	cancel()
	require.NoError(t, err)
	ts := firstTS(t, res.Value, res.Data)
	for i := range c.sites {
		value, data, err := c.sites[i].fwd.proposeAgain(0, b, time.Now().Add(10*time.Second))
		require.NoError(t, err, "through a site other than %d", i)
		require.Equal(t, uint64(resultDuplicate), value, "through a site other than %d", i)
		require.Equal(t, ts, firstTS(t, value, data), "through a site other than %d", i)
	}
	// Never proposed before: proposed now, once.
	fresh := newProposal(pid, 10, 0, (&shard.Command{Time: 1, Messages: []*message.Message{{ClientID: "again", Topic: "d/1", Payload: []byte("fresh")}}}).AppendBinary(nil)).appendBinary(nil)
	value, data, err := c.sites[1].fwd.proposeAgain(0, fresh, time.Now().Add(10*time.Second))
	require.NoError(t, err)
	require.Equal(t, uint64(resultStored), value)
	value2, data2, err := c.sites[2].fwd.proposeAgain(0, fresh, time.Now().Add(10*time.Second))
	require.NoError(t, err)
	require.Equal(t, uint64(resultDuplicate), value2)
	require.Equal(t, firstTS(t, value, data), firstTS(t, value2, data2))
	everySiteReads(t, c, 3) // each message once
	noSeq := newProposal(shard.ProposerID{}, 0, 0, cmd.AppendBinary(nil)).appendBinary(nil)
	_, _, err = c.sites[0].fwd.proposeAgain(0, noSeq, time.Now().Add(5*time.Second))
	require.ErrorContains(t, err, "without a sequence")
}
