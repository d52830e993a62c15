package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-mq/strata/inspect"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/session"
	"github.com/stretchr/testify/require"
)

// buildSessionsDB creates a DB of 3 shards holding durable sessions, written by package
// session at fixed clocks: "sub" disconnected with subscriptions, QoS 2 in flight both ways;
// "keep" still connected (its Store never disconnected it); "pub" with inbound QoS 2 only. It
// returns the directory and the admin URL of the DB kept open over it when serve is set (the
// directory is then in use).
func buildSessionsDB(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "db")
	db, err := ds.Open(dir, &ds.Options{NShards: 3, Durability: ds.NoSync,
		Expert: ds.ExpertOptions{Now: func() time.Time { return t0 }, MemTableBytes: 8 << 20, CacheBytes: 1 << 20}})
	require.NoError(t, err)
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	st, err := session.Open(ctx, db, &session.Options{Owner: "broker-1", Now: func() time.Time { return t0.Add(time.Minute) },
		CheckpointInterval: time.Hour, ExpiryInterval: time.Hour, Logger: quiet})
	require.NoError(t, err)
	must := func(err error) {
		t.Helper()
		require.NoError(t, err)
	}
	s, _, err := st.Connect(ctx, "sub", session.ConnectOptions{Expiry: time.Hour})
	must(err)
	must(s.Subscribe(ctx, "a/#", session.SubscribeOptions{QoS: 2, NoLocal: true, SubscriptionID: 5}))
	must(s.Subscribe(ctx, "b", session.SubscribeOptions{QoS: 1}))
	for _, p := range []string{"one", "two"} {
		_, err := db.Store(ctx, ds.Message{ClientID: "pub", Topic: "a/1", QoS: 2, Payload: []byte(p)})
		require.NoError(t, err)
	}
	var got []session.Delivery
	for len(got) < 2 {
		d, err := s.Next(ctx, 2-len(got))
		must(err)
		got = append(got, d...)
	}
	must(s.Received(ctx, got[0].PacketID))
	_, err = st.StoreQoS2(ctx, ds.Message{ClientID: "sub", Topic: "x/y", QoS: 2}, 7)
	must(err)
	_, err = st.StoreQoS2(ctx, ds.Message{ClientID: "pub", Topic: "x/y", QoS: 2}, 9)
	must(err)
	_, err = st.StoreQoS2(ctx, ds.Message{ClientID: "pub", Topic: "x/y", QoS: 2}, 300)
	must(err)
	must(s.Disconnect(ctx))

	// "keep" stays connected: its Store outlives the DB (Close then fails to write it).
	st2, err := session.Open(ctx, db, &session.Options{Owner: "broker-2", Now: func() time.Time { return t0.Add(2 * time.Minute) },
		CheckpointInterval: time.Hour, ExpiryInterval: time.Hour, Logger: quiet})
	must(err)
	k, _, err := st2.Connect(ctx, "keep", session.ConnectOptions{Expiry: 10 * time.Minute})
	must(err)
	must(k.Subscribe(ctx, "c/+/d", session.SubscribeOptions{QoS: 0}))
	must(st.Close())
	must(db.Close())
	st2.Close()
	return dir
}

func TestSessions(t *testing.T) {
	dir := buildSessionsDB(t)
	for _, tc := range []struct{ name, json string }{{"sessions", ""}, {"sessions_json", "-json"}} {
		args := []string{"sessions", "-dir", dir}
		if tc.json != "" {
			args = append(args, tc.json)
		}
		code, out, errs := runCmd(t, args...)
		require.Equal(t, 0, code, "%s: exit %d, stderr:\n%s", tc.name, code, errs)
		require.Empty(t, errs, "%s: exit %d, stderr:\n%s", tc.name, code, errs)
		golden(t, tc.name, normalize(out, dir))
	}
	_, out, _ := runCmd(t, "sessions", "-json", "-dir", dir)
	var rows []session.SessionView
	require.NoError(t, json.Unmarshal([]byte(out), &rows))
	byID := map[string]session.SessionView{}
	for _, r := range rows {
		byID[r.ClientID] = r
	}
	require.Len(t, rows, 3, "sessions: %+v", rows)
	require.False(t, byID["sub"].Connected, "sessions: %+v", rows)
	require.True(t, byID["keep"].Connected, "sessions: %+v", rows)
	require.True(t, byID["pub"].NoSession, "sessions: %+v", rows)
	require.Len(t, byID["sub"].QoS2, 2, "sessions: %+v", rows)
	require.Len(t, byID["pub"].InboundQoS2, 2, "sessions: %+v", rows)
	require.Equal(t, "broker-2", byID["keep"].Owner, "sessions: %+v", rows)
	// check counts the records: 2 sessions, 3 inbound packet IDs.
	code, out, errs := runCmd(t, "check", "-dir", dir)
	require.Equal(t, 0, code, "check: exit %d\n%s%s", code, out, errs)
	require.Contains(t, out, "records       5\n", "check: exit %d\n%s%s", code, out, errs)

	// -url prints the same, from the records of a running node.
	textDir, _ := func() (string, string) { _, o, e := runCmd(t, "sessions", "-dir", dir); return o, e }()
	db, err := ds.Open(dir, &ds.Options{Durability: ds.NoSync, Expert: ds.ExpertOptions{Now: func() time.Time { return t0 }}})
	require.NoError(t, err)
	defer db.Close()
	mux := http.NewServeMux()
	mux.Handle("/strata/", http.StripPrefix("/strata", inspect.Handler(db, inspect.WithPayloads(nil))))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	code, textURL, errs := runCmd(t, "-url", srv.URL+"/strata", "sessions")
	require.Equal(t, 0, code, "sessions -url: exit %d, stderr %s\n%s\nwant\n%s", code, errs, textURL, textDir)
	require.Empty(t, errs, "sessions -url: exit %d, stderr %s\n%s\nwant\n%s", code, errs, textURL, textDir)
	require.Equal(t, textDir, textURL, "sessions -url: exit %d, stderr %s\n%s\nwant\n%s", code, errs, textURL, textDir)
}

// TestSessionsDamaged: a session record that does not decode is listed with its error, and
// the exit status is 1.
func TestSessionsDamaged(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	db, err := ds.Open(dir, &ds.Options{NShards: 2, Durability: ds.NoSync})
	require.NoError(t, err)
	sh := ds.ShardOf("bad", 2)
	_, err = db.Update(context.Background(), sh, &ds.Txn{Writes: []ds.RecordWrite{{Key: []byte("Sbad"), Value: []byte("garbage")}}})
	require.NoError(t, err)
	require.NoError(t, db.Close())
	code, out, errs := runCmd(t, "sessions", "-dir", dir)
	require.Equal(t, exitFailed, code, "exit %d\n%s%s", code, out, errs)
	require.Contains(t, out, "bad ", "exit %d\n%s%s", code, out, errs)
	require.Contains(t, out, "ERROR: strata/session: corrupt session record", "exit %d\n%s%s", code, out, errs)
	require.Contains(t, errs, "1 record(s) did not decode", "exit %d\n%s%s", code, out, errs)
	// check does not judge the value (it is package session's): the record is sound.
	code, out, errs = runCmd(t, "check", "-dir", dir)
	require.Equal(t, 0, code, "check: exit %d\n%s%s", code, out, errs)
}
