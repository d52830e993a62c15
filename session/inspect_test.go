package session_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/session"
	"github.com/stretchr/testify/require"
)

// TestInspectSessions: the sessions decoded from the records, through a running DB's
// ScanRecords, show what the Store wrote; a record that does not decode is listed with its
// error.
func TestInspectSessions(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	st := openStore(t, db)
	s, _, err := st.Connect(ctx, "sub", session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)
	require.NoError(t, s.Subscribe(ctx, "a/#", session.SubscribeOptions{QoS: 2, NoLocal: true, SubscriptionID: 5}))
	require.NoError(t, s.Subscribe(ctx, "b", session.SubscribeOptions{QoS: 1}))
	publish(t, db, "pub", "a/1", 2, 2)
	d := next(t, s, 2)
	require.NoError(t, s.Received(ctx, d[0].PacketID))
	stored, err := st.StoreQoS2(ctx, ds.Message{ClientID: "sub", Topic: "x", QoS: 2}, 7)
	require.NoError(t, err)
	require.True(t, stored)
	_, err = st.StoreQoS2(ctx, ds.Message{ClientID: "pub", Topic: "x", QoS: 2}, 9)
	require.NoError(t, err)
	_, _, err = st.Connect(ctx, "live", session.ConnectOptions{})
	require.NoError(t, err)
	require.NoError(t, s.Disconnect(ctx))

	scan := func(sh ds.ShardID, prefix []byte, f func(k, v []byte, ver uint64) bool) error {
		return db.ScanRecords(ctx, sh, prefix, f)
	}
	views, err := session.InspectSessions(db.NShards(), scan)
	require.NoError(t, err)
	byID := map[string]session.SessionView{}
	for _, v := range views {
		byID[v.ClientID] = v
		require.Equal(t, ds.ShardOf(v.ClientID, db.NShards()), v.Shard, v.ClientID)
	}
	require.Len(t, byID, 3)

	sub := byID["sub"]
	require.False(t, sub.Connected)
	require.False(t, sub.DisconnectedAt.IsZero())
	require.Equal(t, sub.DisconnectedAt.Add(time.Hour), sub.ExpiresAt)
	require.Equal(t, uint64(3600), sub.ExpirySeconds)
	require.True(t, strings.HasPrefix(sub.Owner, "test-"), sub.Owner)
	require.True(t, sub.Clean)
	require.NotZero(t, sub.Version)
	require.Equal(t, []session.SubscriptionView{{Filter: "a/#", QoS: 2, NoLocal: true, SubscriptionID: 5}, {Filter: "b", QoS: 1}}, sub.Subscriptions)
	require.Len(t, sub.QoS2, 2)
	states := map[uint16]string{}
	for _, q := range sub.QoS2 {
		states[q.PacketID] = q.State
		if q.State == "sent" {
			require.Equal(t, "a/1", q.Topic)
		}
	}
	require.Equal(t, map[uint16]string{d[0].PacketID: "received", d[1].PacketID: "sent"}, states)
	require.Equal(t, []uint16{7}, sub.InboundQoS2)
	require.Empty(t, sub.Error)

	require.True(t, byID["live"].Connected)
	require.True(t, byID["live"].ExpiresAt.IsZero())
	pub := byID["pub"]
	require.True(t, pub.NoSession)
	require.Equal(t, []uint16{9}, pub.InboundQoS2)
	require.NoError(t, st.Close())

	// A session record that does not decode.
	sh := ds.ShardOf("bad", db.NShards())
	_, err = db.Update(ctx, sh, &ds.Txn{Writes: []ds.RecordWrite{{Key: []byte("Sbad"), Value: []byte("garbage")}}})
	require.NoError(t, err)
	views, err = session.InspectSessions(db.NShards(), scan)
	require.ErrorIs(t, err, session.ErrCorruptState)
	found := false
	for _, v := range views {
		if v.ClientID == "bad" {
			found = true
			require.Contains(t, v.Error, "corrupt session record")
			require.Equal(t, sh, v.Shard)
		}
	}
	require.True(t, found)
	require.Len(t, views, 3) // "live" (expiry 0) ended when the Store closed

	kind, id, pid, view, err := session.DecodeRecord([]byte("Qab\x00\x01\x02"), nil, 3)
	require.NoError(t, err)
	require.Equal(t, [3]any{session.RecordInbound, "ab", uint16(0x0102)}, [3]any{kind, id, pid})
	require.Nil(t, view)
	_, _, _, _, err = session.DecodeRecord([]byte("Zzz"), nil, 1)
	require.ErrorIs(t, err, session.ErrCorruptState)
}
