package session_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/session"
	"github.com/stretchr/testify/require"
)

// TestReviewConcurrentConnectDeadlock: two Connects of one client ID in one Store race. The
// one registering second finds the first registered (o != old) with a lower epoch and calls
// o.endAsync while holding st.mu; endAsync locks st.mu again: self-deadlock, with st.mu held
// (every onRecords of the DB then blocks in the committing goroutine).
func TestReviewConcurrentConnectDeadlock(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	st := openStore(t, db)
	for i := range 300 {
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				s, _, err := st.Connect(ctx, "c", session.ConnectOptions{Expiry: time.Hour})
				if err == nil {
					_ = s
				}
			})
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			// Leave the Store and DB as they are: closing them would hang too.
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			for _, g := range strings.Split(string(buf), "\n\n") {
				if strings.Contains(g, "endAsync") {
					t.Log(g)
				}
			}
			require.Failf(t, "deadlock", "iteration %d: two concurrent Connects of one client ID never returned (deadlock on Store.mu)", i)
		}
	}
	require.NoError(t, st.Close())
	require.NoError(t, db.Close())
}

// TestReviewConcurrentNextLosesMessages: Session is documented safe for concurrent use. Two
// Next calls poll different subscriptions concurrently; each stores what it polled into
// s.carry, the second overwriting the first. The overwritten messages were taken from their
// ds.Subscription (outstanding, never acknowledged): they are never delivered on this
// connection.
func TestReviewConcurrentNextLosesMessages(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	st := openStore(t, db)
	defer st.Close()
	for iter := range 30 {
		id := fmt.Sprintf("c%d", iter)
		s, _, err := st.Connect(ctx, id, session.ConnectOptions{Expiry: time.Hour})
		require.NoError(t, err)
		const subs, per = 4, 50
		for k := range subs {
			require.NoError(t, s.Subscribe(ctx, fmt.Sprintf("%s/%d", id, k), session.SubscribeOptions{QoS: 1}))
		}
		got := make(chan session.Delivery, 1000)
		cctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for {
					ds, err := s.Next(cctx, 1)
					if err != nil {
						return
					}
					for _, d := range ds {
						_ = s.Ack(d.PacketID)
						got <- d
					}
				}
			})
		}
		for k := range subs {
			publish(t, db, "pub", fmt.Sprintf("%s/%d", id, k), 1, per)
		}
		seen := map[string]bool{}
		deadline := time.After(3 * time.Second)
	collect:
		for len(seen) < subs*per {
			select {
			case d := <-got:
				seen[string(d.Message.Payload)] = true
			case <-deadline:
				break collect
			}
		}
		cancel()
		wg.Wait()
		require.Equal(t, subs*per, len(seen), "iteration %d: messages stored while subscribed never delivered to concurrent Next calls", iter)
		require.NoError(t, s.Disconnect(ctx))
	}
}

// TestReviewLargeQoS2MessageWedgesSession: a QoS 2 delivery's whole message is written into
// the session record, which is bounded by shard.MaxRecordValue (1 MiB) — the same as the
// default MaxMessageBytes. A QoS 2 message near the message limit (accepted by ds.DB.Store)
// makes every later write of the session fail (shard ErrInvalidCommand): Next fails, then
// returns the delivery from s.pending without it being durable (invariant 3: its packet ID
// does not survive a crash), and Received/Disconnect/checkpoints fail for ever.
func TestReviewLargeQoS2MessageWedgesSession(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	st, err := session.Open(ctx, db, &session.Options{CheckpointInterval: time.Hour, ExpiryInterval: time.Hour})
	require.NoError(t, err)
	defer st.Close()
	s, _, err := st.Connect(ctx, "sub", session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)
	require.NoError(t, s.Subscribe(ctx, "big", session.SubscribeOptions{QoS: 2}))
	for range 2 {
		_, err = db.Store(ctx, ds.Message{ClientID: "pub", Topic: "big", QoS: 2, Payload: make([]byte, 600<<10)})
		require.NoError(t, err, "the DB accepts the message")
	}
	first := next(t, s, 1) // the first one's state write (600 KiB) succeeds

	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	d, err := s.Next(tctx, 1)
	if err != nil {
		// The second Next hands out the delivery the first could not make durable.
		d2, err2 := s.Next(tctx, 1)
		require.NoError(t, err2)
		require.Len(t, d2, 1)
		info := st.List()
		require.Len(t, info, 1)
		require.Equal(t, 2, info[0].InflightQoS2,
			"Next returned QoS 2 packet ID %d but the session record has no such delivery (Next's first error: %v)", d2[0].PacketID, err)
		d = d2
	}
	require.Len(t, d, 1)
	for _, x := range append(first, d...) {
		require.NoError(t, s.Received(ctx, x.PacketID), "PUBREC of a large QoS 2 delivery")
		require.NoError(t, s.Complete(x.PacketID))
	}
	require.NoError(t, s.Disconnect(ctx))
}

// TestReviewLongClientID: validClientID accepts client IDs up to 65535 bytes (MQTT's limit),
// but the session record key ('S' | clientID) is bounded by shard.MaxRecordKey (1024): a
// client ID of 1024+ bytes fails Connect with an undocumented shard error, not
// ErrInvalidArgument.
func TestReviewLongClientID(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	st := openStore(t, db)
	defer st.Close()
	id := strings.Repeat("x", 2000)
	s, _, err := st.Connect(ctx, id, session.ConnectOptions{Expiry: time.Hour})
	if err != nil {
		require.ErrorIs(t, err, session.ErrInvalidArgument, "Connect with a %d-byte client ID", len(id))
		return
	}
	require.NoError(t, s.Disconnect(ctx))
}

// TestReviewPacketIDZero: packet ID 0 is out of range (ErrInvalidArgument, "Nothing
// changed"), as StoreQoS2 says; the acknowledgements and ReleaseQoS2 report it as an
// unknown packet ID instead.
func TestReviewPacketIDZero(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	st := openStore(t, db)
	defer st.Close()
	s, _, err := st.Connect(ctx, "c", session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)
	require.ErrorIs(t, s.Ack(0), session.ErrInvalidArgument)
	require.ErrorIs(t, s.Received(ctx, 0), session.ErrInvalidArgument)
	require.ErrorIs(t, s.Complete(0), session.ErrInvalidArgument)
	require.ErrorIs(t, st.ReleaseQoS2(ctx, "c", 0), session.ErrInvalidArgument)
}

// TestReviewExpiryDeletesSessionBeingConnected: Expire treats a session recorded as connected
// through this Store's Owner but not in st.mu.local as disconnected since the Store opened.
// Connect writes the record (the watch makes it known) before it registers the session in
// local (after resume opened its subscriptions): an expiry in between deletes the session
// that is being connected. The Session then fails its next write with ErrTakenOver, its
// subscriptions gone (Wanted false: the broker stops storing their messages).
func TestReviewExpiryDeletesSessionBeingConnected(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	st, err := session.Open(ctx, db, &session.Options{CheckpointInterval: time.Hour, ExpiryInterval: time.Hour,
		MaxSubscriptions: 100, Now: clock})
	require.NoError(t, err)
	defer st.Close()
	// A session with many subscriptions (its resume takes a while), disconnected.
	s, _, err := st.Connect(ctx, "c", session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)
	for k := range 99 {
		require.NoError(t, s.Subscribe(ctx, fmt.Sprintf("t/%d", k), session.SubscribeOptions{QoS: 1}))
	}
	// Two hours after the Store opened, the client disconnects and resumes (expiry one hour:
	// not expired, it disconnected just now on the Store's clock).
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	require.NoError(t, s.Disconnect(ctx))
	for i := range 50 {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = st.Expire(ctx)
			}
		})
		s, present, err := st.Connect(ctx, "c", session.ConnectOptions{Expiry: time.Hour})
		close(stop)
		wg.Wait()
		require.NoError(t, err)
		require.True(t, present)
		require.True(t, st.Wanted("t/1"), "iteration %d: the session being resumed was deleted by expiry", i)
		require.NoError(t, s.Subscribe(ctx, "extra", session.SubscribeOptions{}), "iteration %d", i)
		_, err = s.Unsubscribe(ctx, "extra")
		require.NoError(t, err)
		require.NoError(t, s.Disconnect(ctx))
	}
}

// TestReviewSameOwnerStoresExpireEachOther: two Stores over one DB with the default Owner
// must not treat each other's connected sessions as their own leftovers from a restart
// ("disconnected since the Store opened") and expire them while they are connected.
func TestReviewSameOwnerStoresExpireEachOther(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	openDefault := func() *session.Store {
		st, err := session.Open(ctx, db, &session.Options{ExpiryInterval: time.Hour}) // Expire called below
		require.NoError(t, err)
		return st
	}
	a := openDefault()
	defer a.Close()
	s, _, err := a.Connect(ctx, "c", session.ConnectOptions{}) // expiry 0: ends at Disconnect
	require.NoError(t, err)
	require.NoError(t, s.Subscribe(ctx, "x", session.SubscribeOptions{QoS: 1}))
	b := openDefault()
	defer b.Close()
	_, err = b.Expire(ctx)
	require.NoError(t, err)
	require.True(t, a.Wanted("x"), "a connected session of Store a was expired by Store b")
	require.NoError(t, s.Subscribe(ctx, "y", session.SubscribeOptions{QoS: 1}))
	require.False(t, errors.Is(s.Disconnect(ctx), session.ErrTakenOver))
}
