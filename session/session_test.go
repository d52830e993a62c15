package session_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/session"
	"github.com/stretchr/testify/require"
)

func openDB(t testing.TB, dir string) *ds.DB {
	t.Helper()
	db, err := ds.Open(dir, &ds.Options{NShards: 4, Durability: ds.NoSync,
		Expert: ds.ExpertOptions{MemTableBytes: 8 << 20, CacheBytes: 8 << 20}})
	require.NoError(t, err)
	return db
}

var storeCount atomic.Int64

// reopenAndResume disconnects s, closes st and db, opens both again over dir and resumes the
// session "sub" (expiry 1h), which must be present; the new DB and Store close when the test
// ends.
func reopenAndResume(t testing.TB, dir string, s *session.Session, st *session.Store, db *ds.DB) (*ds.DB, *session.Store, *session.Session) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, s.Disconnect(ctx))
	require.NoError(t, st.Close())
	require.NoError(t, db.Close())
	db = openDB(t, dir)
	t.Cleanup(func() { db.Close() })
	st = openStore(t, db)
	t.Cleanup(func() { st.Close() })
	s, present, err := st.Connect(ctx, "sub", session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)
	require.True(t, present)
	return db, st, s
}

func openStore(t testing.TB, db *ds.DB) *session.Store {
	t.Helper()
	// Each Store its own Owner: two Stores open at once with one Owner expire each other's
	// connected sessions.
	owner := fmt.Sprintf("test-%d", storeCount.Add(1))
	st, err := session.Open(context.Background(), db, &session.Options{Owner: owner, CheckpointInterval: 10 * time.Millisecond, ExpiryInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	return st
}

func publish(t testing.TB, db *ds.DB, client, topic string, qos byte, n int) {
	t.Helper()
	for i := range n {
		_, err := db.Store(context.Background(), ds.Message{ClientID: client, Topic: topic, QoS: qos, Payload: fmt.Appendf(nil, "%s-%d", topic, i)})
		require.NoError(t, err)
	}
}

// next takes n deliveries.
func next(t testing.TB, s *session.Session, n int) []session.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []session.Delivery
	for len(out) < n {
		d, err := s.Next(ctx, n-len(out))
		require.NoError(t, err)
		out = append(out, d...)
	}
	return out
}

func TestResumeRedeliversUnacknowledged(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := openDB(t, dir)
	st := openStore(t, db)
	s, present, err := st.Connect(ctx, "sub", session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)
	require.False(t, present)
	require.NoError(t, s.Subscribe(ctx, "a/#", session.SubscribeOptions{QoS: 2}))
	require.True(t, st.Wanted("a/b"))
	require.False(t, st.Wanted("b"))
	publish(t, db, "pub", "a/1", 1, 5)
	publish(t, db, "pub", "a/2", 2, 3)
	ds1 := next(t, s, 8)
	var q1, q2 []session.Delivery
	for _, d := range ds1 {
		require.False(t, d.Dup)
		if d.QoS == 1 {
			q1 = append(q1, d)
		} else {
			q2 = append(q2, d)
		}
	}
	require.Len(t, q1, 5)
	require.Len(t, q2, 3)
	// Ack two QoS 1, PUBREC one QoS 2, complete nothing.
	require.NoError(t, s.Ack(q1[0].PacketID))
	require.NoError(t, s.Ack(q1[1].PacketID))
	require.ErrorIs(t, s.Ack(q1[1].PacketID), session.ErrUnknownPacketID)
	require.ErrorIs(t, s.Ack(q2[0].PacketID), session.ErrWrongAck)
	require.NoError(t, s.Received(ctx, q2[0].PacketID))
	_, _, s = reopenAndResume(t, dir, s, st, db)
	got := next(t, s, 6) // 1 PUBREL, 2 QoS 2 resends, 3 QoS 1
	rel, dup2, dup1 := 0, 0, 0
	for _, d := range got {
		switch {
		case d.Release:
			rel++
			require.Equal(t, q2[0].PacketID, d.PacketID)
		case d.QoS == 2:
			dup2++
			require.True(t, d.Dup)
		case d.QoS == 1:
			dup1++
			require.True(t, d.Dup)
		}
	}
	require.Equal(t, [3]int{1, 2, 3}, [3]int{rel, dup2, dup1})
}

func TestTakeOverFencesOldOwner(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	a := openStore(t, db)
	defer a.Close()
	b := openStore(t, db)
	defer b.Close()
	s1, _, err := a.Connect(ctx, "c", session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)
	require.NoError(t, s1.Subscribe(ctx, "x", session.SubscribeOptions{QoS: 1}))
	s2, present, err := b.Connect(ctx, "c", session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)
	require.True(t, present)
	require.Len(t, s2.Subscriptions(), 1)
	err = s1.Subscribe(ctx, "y", session.SubscribeOptions{})
	require.True(t, errors.Is(err, session.ErrTakenOver), "%v", err)
}

func TestInboundQoS2ExactlyOnce(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	st := openStore(t, db)
	defer st.Close()
	m := ds.Message{ClientID: "pub", Topic: "t", QoS: 2, Payload: []byte("x")}
	stored, err := st.StoreQoS2(ctx, m, 7)
	require.NoError(t, err)
	require.True(t, stored)
	stored, err = st.StoreQoS2(ctx, m, 7)
	require.NoError(t, err)
	require.False(t, stored)
	require.NoError(t, st.ReleaseQoS2(ctx, "pub", 7))
	require.ErrorIs(t, st.ReleaseQoS2(ctx, "pub", 7), session.ErrUnknownPacketID)
}

func TestExpiry(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	st := openStore(t, db)
	defer st.Close()
	s, _, err := st.Connect(ctx, "c", session.ConnectOptions{Expiry: time.Second})
	require.NoError(t, err)
	require.NoError(t, s.Subscribe(ctx, "x/#", session.SubscribeOptions{QoS: 1}))
	require.NoError(t, s.Disconnect(ctx))
	require.Len(t, st.List(), 1)
	// The record watch may empty the list before Expire counts the deletion.
	require.Eventually(t, func() bool { return len(st.List()) == 0 && st.Metrics().Expired == 1 }, 10*time.Second, 10*time.Millisecond)
	require.False(t, st.Wanted("x/y"))
}

// TestUnsubscribeCompletesInFlight: MQTT 5 §3.10.4 — deliveries a subscription started are
// completed after it is unsubscribed, across a reconnect too; nothing else of it comes.
func TestUnsubscribeCompletesInFlight(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := openDB(t, dir)
	st := openStore(t, db)
	s, _, err := st.Connect(ctx, "sub", session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)
	require.NoError(t, s.Subscribe(ctx, "u/#", session.SubscribeOptions{QoS: 1}))
	publish(t, db, "pub", "u/1", 1, 3)
	first := next(t, s, 3)
	require.NoError(t, s.Ack(first[0].PacketID))
	existed, err := s.Unsubscribe(ctx, "u/#")
	require.NoError(t, err)
	require.True(t, existed)
	require.Empty(t, s.Subscriptions())
	require.False(t, st.Wanted("u/1"), "an unsubscribed filter is not wanted, even while its deliveries complete")
	publish(t, db, "pub", "u/1", 1, 2) // after the unsubscribe: never delivered
	db, st, s = reopenAndResume(t, dir, s, st, db)
	require.Empty(t, s.Subscriptions())
	again := next(t, s, 2)
	for i, d := range again {
		require.Equal(t, first[i+1].Message.Payload, d.Message.Payload)
		require.True(t, d.Dup)
		require.NoError(t, s.Ack(d.PacketID))
	}
	// Nothing else comes: a new subscription's marker is the next delivery.
	require.NoError(t, s.Subscribe(ctx, "marker", session.SubscribeOptions{QoS: 1}))
	publish(t, db, "pub", "marker", 1, 1)
	d := next(t, s, 1)
	require.Equal(t, "marker", d[0].Message.Topic)
	require.NoError(t, s.Ack(d[0].PacketID))
	require.NoError(t, s.Checkpoint(ctx))
	for _, in := range st.List() {
		if in.ClientID == "sub" {
			require.Equal(t, []string{"marker"}, in.Subscriptions)
		}
	}
}

// TestSubscribeWakesWaitingNext: a Next already waiting when a subscription is added
// delivers that subscription's messages (found through the mochi integration).
func TestSubscribeWakesWaitingNext(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	st := openStore(t, db)
	defer st.Close()
	s, _, err := st.Connect(ctx, "c", session.ConnectOptions{Expiry: time.Minute})
	require.NoError(t, err)
	got := make(chan []session.Delivery, 1)
	waiting := make(chan struct{})
	go func() {
		nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		close(waiting)
		d, _ := s.Next(nctx, 10)
		got <- d
	}()
	<-waiting
	require.NoError(t, s.Subscribe(ctx, "d/+", session.SubscribeOptions{QoS: 1}))
	publish(t, db, "p", "d/a", 1, 1)
	d := <-got
	require.Len(t, d, 1, "the waiting Next did not see the new subscription's message")
	require.Equal(t, "d/a", d[0].Message.Topic)
}
