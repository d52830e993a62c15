package session_test

import (
	"context"
	"testing"
	"time"

	"github.com/strata-mq/strata/session"
	"github.com/stretchr/testify/require"
)

// TestQoS2CompletedNotRedelivered: a QoS 2 delivery completed (PUBREC, PUBCOMP) while an
// earlier message of the same shard is still unacknowledged must not be delivered again when
// the session resumes: the client already got it exactly once. The subscription's position
// cannot move past the earlier message, and the completed delivery is no longer in the
// window, so on resume it is read again and handed out as a new QoS 2 PUBLISH.
//
// Found by TestCrashResume (there after a crash with the completion checkpointed); here
// without a crash, with a clean Disconnect.
func TestQoS2CompletedNotRedelivered(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := openDB(t, dir)
	st := openStore(t, db)
	s, _, err := st.Connect(ctx, "sub", session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)
	require.NoError(t, s.Subscribe(ctx, "a/#", session.SubscribeOptions{QoS: 2}))
	publish(t, db, "pub", "a/1", 2, 2) // one publisher: one shard, in order
	got := next(t, s, 2)
	first, second := got[0], got[1]
	require.Equal(t, "a/1-0", string(first.Message.Payload))
	require.Equal(t, "a/1-1", string(second.Message.Payload))
	// The second completes; the first stays in flight.
	require.NoError(t, s.Received(ctx, second.PacketID))
	require.NoError(t, s.Complete(second.PacketID))
	db, _, s = reopenAndResume(t, dir, s, st, db)
	resent := next(t, s, 1)
	require.Equal(t, first.PacketID, resent[0].PacketID)
	require.True(t, resent[0].Dup)
	// Nothing else may come: publish a marker and take deliveries up to it.
	publish(t, db, "pub", "a/2", 2, 1)
	for {
		d := next(t, s, 1)[0]
		if d.Message.Topic == "a/2" {
			break
		}
		require.NotEqual(t, "a/1-1", string(d.Message.Payload),
			"the completed QoS 2 message was delivered again (packet ID %d, first sent as %d)", d.PacketID, second.PacketID)
	}
}
