package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/session"
)

// SessionConfig sizes the durable-session scenario (package session).
type SessionConfig struct {
	// Sessions durable sessions are connected during the second of two ingest runs of N
	// messages (c.Publishers publishers, one message per Store); session i subscribes to
	// dev/<i>/# at QoS 1 and the messages go to dev/<k>/x, spread evenly, so that every message
	// matches exactly one session. Each session is driven by its own goroutine (Next, then an
	// Ack of every delivery), like a broker connection's write loop.
	Sessions, N int
	// ResumeN QoS 1 messages are left unacknowledged in one session, which is then resumed
	// through a new Store (0: no resume run).
	ResumeN int
	// Batch is Next's n (0: 1000).
	Batch int
	// CheckpointInterval is session.Options.CheckpointInterval (0: its default, 1s).
	CheckpointInterval time.Duration
	// Setup is how many goroutines connect, subscribe and disconnect the sessions (0: 256),
	// concurrently so that the shards group-commit their records.
	Setup int
	// Timeout bounds each run (0: 10 minutes).
	Timeout time.Duration
	// NoIsolation skips the third ingest run, with the sessions' checkpoints off (an interval
	// of an hour), which separates what the state writes cost from what the deliveries do.
	NoIsolation bool

	label string // added to the run's name
}

func (sc SessionConfig) batch() int {
	if sc.Batch > 0 {
		return sc.Batch
	}
	return 1000
}

func (sc SessionConfig) setup() int {
	if sc.Setup > 0 {
		return sc.Setup
	}
	return 256
}

func (sc SessionConfig) timeout() time.Duration {
	if sc.Timeout > 0 {
		return sc.Timeout
	}
	return 10 * time.Minute
}

func (sc SessionConfig) storeOptions() *session.Options {
	return &session.Options{CheckpointInterval: sc.CheckpointInterval}
}

// RunSessions runs the durable-session scenario: ingest without sessions, then on a new DB
// the same ingest with sc.Sessions sessions taking every message (see SessionConfig), and,
// when sc.ResumeN > 0, the resume of a session with sc.ResumeN unacknowledged messages. Each
// run has a new DB with c's options (durability included).
func RunSessions(c Config, sc SessionConfig) ([]Result, error) {
	if sc.Sessions < 1 || sc.N < 1 {
		return nil, fmt.Errorf("sessions: need Sessions >= 1 and N >= 1")
	}
	without, err := runSessionIngest(c, sc, 0)
	if err != nil {
		return nil, err
	}
	with, err := runSessionIngest(c, sc, sc.Sessions)
	if err != nil {
		return nil, err
	}
	ratio := with[0].MsgsPerSec() / without[0].MsgsPerSec()
	with[0].Note = fmt.Sprintf("%.2f× the ingest without sessions; ", ratio) + with[0].Note
	with[0].Figures["ratio_to_without"] = ratio
	results := append(without, with...)
	if !sc.NoIsolation {
		iso := sc
		iso.CheckpointInterval, iso.label = time.Hour, ", checkpoints off"
		off, err := runSessionIngest(c, iso, sc.Sessions)
		if err != nil {
			return nil, err
		}
		r := off[0].MsgsPerSec() / without[0].MsgsPerSec()
		off[0].Note = fmt.Sprintf("%.2f× the ingest without sessions, %.2f× with checkpoints: the deliveries' cost without the state writes; ",
			r, with[0].MsgsPerSec()/off[0].MsgsPerSec()) + off[0].Note
		off[0].Figures["ratio_to_without"] = r
		results = append(results, off[0])
	}
	if sc.ResumeN > 0 {
		rs, err := runSessionResume(c, sc)
		if err != nil {
			return nil, err
		}
		results = append(results, rs...)
	}
	return results, nil
}

// sessionTopic is the topic of message g of an ingest run with k sessions (any when k = 0).
func sessionTopic(g, k int) string { return fmt.Sprintf("dev/%d/x", g%max(k, 1)) }

// forEach calls f(i) for i in [0, n) from workers goroutines and returns the first error.
func forEach(n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for firstErr.Load() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return *e
	}
	return nil
}

// runSessionIngest ingests sc.N messages on a new DB with k sessions connected (0: none,
// and no session Store). With sessions it returns the ingest result, with the session
// figures in its note and Figures, and the delivery result.
func runSessionIngest(c Config, sc SessionConfig, k int) ([]Result, error) {
	db, cleanup, err := openTemp(c, &ds.Options{Retention: ds.RetainForever})
	if err != nil {
		return nil, err
	}
	defer cleanup()
	ctx, cancel := context.WithTimeout(context.Background(), sc.timeout())
	defer cancel()
	n := sc.N
	publishers := max(1, min(c.Publishers, n))
	name := fmt.Sprintf("ingest without sessions (%s)", c.Durability)
	if k > 0 {
		name = fmt.Sprintf("ingest with %d sessions%s (%s)", k, sc.label, c.Durability)
	}

	var st *session.Store
	var sessions []*session.Session
	var drivers sync.WaitGroup
	var delivered atomic.Int64
	var last atomic.Int64 // UnixNano of the last delivery
	var driveErr atomic.Pointer[error]
	var setupTime time.Duration
	if k > 0 {
		if st, err = session.Open(ctx, db, sc.storeOptions()); err != nil {
			return nil, err
		}
		defer st.Close()
		t0 := time.Now()
		sessions = make([]*session.Session, k)
		err := forEach(k, sc.setup(), func(i int) error {
			s, _, err := st.Connect(ctx, fmt.Sprintf("sess-%d", i), session.ConnectOptions{Expiry: time.Hour})
			if err != nil {
				return err
			}
			sessions[i] = s
			return s.Subscribe(ctx, fmt.Sprintf("dev/%d/#", i), session.SubscribeOptions{QoS: 1})
		})
		if err != nil {
			return nil, fmt.Errorf("%s: connect: %w", name, err)
		}
		setupTime = time.Since(t0)
		// Disconnect concurrently at the end (Store.Close would one by one).
		defer forEach(k, sc.setup(), func(i int) error { return sessions[i].Disconnect(context.Background()) })
		dctx, dcancel := context.WithCancel(ctx)
		defer dcancel()
		for i, s := range sessions {
			want := n / k
			if i < n%k {
				want++
			}
			drivers.Go(func() {
				for got := 0; got < want; {
					out, err := s.Next(dctx, sc.batch())
					if err != nil {
						err = fmt.Errorf("session %s: after %d of %d messages: %w", s.ClientID(), got, want, err)
						if driveErr.CompareAndSwap(nil, &err) {
							dcancel()
						}
						return
					}
					for _, d := range out {
						if err := s.Ack(d.PacketID); err != nil {
							driveErr.CompareAndSwap(nil, &err)
							dcancel()
							return
						}
					}
					got += len(out)
					delivered.Add(int64(len(out)))
				}
				now := time.Now().UnixNano()
				for {
					l := last.Load()
					if now <= l || last.CompareAndSwap(l, now) {
						break
					}
				}
			})
		}
		// Every session's subscription fed at the tail before the first Store.
		if err := awaitTail(db, k, sc.timeout()); err != nil {
			dcancel()
			drivers.Wait()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	var before session.Metrics
	if st != nil {
		before = st.Metrics()
	}
	subsBefore, err := subMetrics(db)
	if err != nil {
		return nil, err
	}
	pl := payloads(64, c.Payload)
	names := make([]string, max(k, 1))
	for i := range names {
		names[i] = sessionTopic(i, k)
	}
	start := time.Now()
	elapsed, lats, series, err := runPublishers(name, n, publishers, c.Progress, func(p, i int) error {
		g := i*publishers + p // message g of n: publisher p's i-th
		_, err := db.Store(ctx, ds.Message{ClientID: clientID(p), Topic: names[g%len(names)], QoS: 1, Payload: pl[g%len(pl)]})
		return err
	})
	if err != nil {
		cancel()
		drivers.Wait()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	ingest := Result{Name: name, Msgs: n, Bytes: int64(n) * int64(c.Payload), Elapsed: elapsed}
	ingest.setRun(lats, series)
	if k == 0 {
		ingest.Note = fmt.Sprintf("%d publishers, topics dev/<k>/x, QoS 1, one message per Store", publishers)
		return []Result{ingest}, nil
	}
	drivers.Wait()
	if e := driveErr.Load(); e != nil {
		return nil, fmt.Errorf("%s: %w", name, *e)
	}
	lastAt := time.Unix(0, last.Load())
	atEnd := st.Metrics()
	subsAfter, err := subMetrics(db)
	if err != nil {
		return nil, err
	}
	sd := subDelta(subsBefore, subsAfter)
	// The acknowledgements of the last deliveries are checkpointed within an interval:
	// count those writes too (they are the cost of the deliveries); wait at most 3 s.
	interval := sc.CheckpointInterval
	if interval == 0 {
		interval = time.Second
	}
	time.Sleep(min(interval+interval/2, 3*time.Second))
	settled := st.Metrics()
	deliveries := settled.Deliveries - before.Deliveries
	if deliveries != uint64(n) || delivered.Load() != int64(n) {
		return nil, fmt.Errorf("%s: %d deliveries (%d counted by Metrics), want %d", name, delivered.Load(), deliveries, n)
	}
	writes := settled.StateWrites - before.StateWrites
	writesAtEnd := atEnd.StateWrites - before.StateWrites
	perDelivery := float64(writes) / float64(deliveries)
	deliveryRate := float64(n) / lastAt.Sub(start).Seconds()
	ingest.Figures = map[string]float64{
		"deliveries_per_sec":          deliveryRate,
		"state_writes_per_delivery":   perDelivery,
		"state_writes":                float64(writes),
		"state_writes_until_last_ack": float64(writesAtEnd),
		"checkpoints":                 float64(settled.Checkpoints - before.Checkpoints),
		"setup_sec":                   setupTime.Seconds(),
		"ds_demoted":                  float64(sd.Demoted),
		"ds_reads_per_delivery":       float64(sd.Reads) / float64(max(sd.Delivered, 1)),
	}
	ingest.Note = fmt.Sprintf("%s deliveries/s; %.3f session state writes/delivery (%d writes, %d checkpoints, %d deliveries; %d writes until the last delivery); %d sessions connected and subscribed in %v",
		Human(deliveryRate), perDelivery, writes, settled.Checkpoints-before.Checkpoints, deliveries, writesAtEnd, k, setupTime.Round(time.Millisecond))
	delivery := Result{Name: fmt.Sprintf("session deliveries (%d sessions, QoS 1, acked)", k), Msgs: n,
		Bytes: int64(n) * int64(c.Payload), Elapsed: lastAt.Sub(start),
		Note: fmt.Sprintf("from the first Store to the last delivery; %d per session; Next(%d), one goroutine per session; ds subscriptions: %s",
			n/k, sc.batch(), readsPerDelivery(sd))}
	return []Result{ingest, delivery}, nil
}

// runSessionResume leaves sc.ResumeN QoS 1 messages unacknowledged in one session (connected,
// subscribed to res/#, the messages stored, then disconnected without a Next), closes its
// Store and opens a new one over the same DB (a broker restart), and times Connect until the
// first Next returns, and until every message was delivered again (each batch acknowledged).
func runSessionResume(c Config, sc SessionConfig) ([]Result, error) {
	db, cleanup, err := openTemp(c, &ds.Options{Retention: ds.RetainForever})
	if err != nil {
		return nil, err
	}
	defer cleanup()
	ctx, cancel := context.WithTimeout(context.Background(), sc.timeout())
	defer cancel()
	n := sc.ResumeN
	const id, filter = "resume-client", "res/#"
	st, err := session.Open(ctx, db, sc.storeOptions())
	if err != nil {
		return nil, err
	}
	s, _, err := st.Connect(ctx, id, session.ConnectOptions{Expiry: time.Hour})
	if err == nil {
		err = s.Subscribe(ctx, filter, session.SubscribeOptions{QoS: 1})
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	// Stored in batches of 500 from 8 writers (quick; the layout is the same), from 100
	// publishers on res/<p mod 8>/client-<p>.
	pl := payloads(64, c.Payload)
	const writers, batchSize, publishers = 8, 500, 100
	err = forEach(writers, writers, func(wr int) error {
		batch := make([]ds.Message, 0, batchSize)
		for g := wr; g < n; g += writers {
			p := g % publishers
			batch = append(batch, ds.Message{ClientID: clientID(p), Topic: fmt.Sprintf("res/%d/client-%d", p%8, p), QoS: 1, Payload: pl[g%len(pl)]})
			if len(batch) == cap(batch) || g+writers >= n {
				if _, err := db.Store(ctx, batch...); err != nil {
					return err
				}
				batch = batch[:0]
			}
		}
		return nil
	})
	if err == nil {
		err = s.Disconnect(ctx)
	}
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("session resume: %w", err)
	}

	if st, err = session.Open(ctx, db, sc.storeOptions()); err != nil {
		return nil, err
	}
	defer st.Close()
	start := time.Now()
	s, present, err := st.Connect(ctx, id, session.ConnectOptions{Expiry: time.Hour})
	if err != nil {
		return nil, err
	}
	if !present {
		return nil, fmt.Errorf("session resume: the session was not present")
	}
	connected := time.Since(start)
	var first time.Duration
	firstN := 0
	for got := 0; got < n; {
		out, err := s.Next(ctx, sc.batch())
		if err != nil {
			return nil, fmt.Errorf("session resume: after %d of %d messages: %w", got, n, err)
		}
		if got == 0 {
			first, firstN = time.Since(start), len(out)
		}
		for _, d := range out {
			if err := s.Ack(d.PacketID); err != nil {
				return nil, err
			}
		}
		got += len(out)
		if got > n {
			return nil, fmt.Errorf("session resume: %d messages, want %d", got, n)
		}
	}
	all := time.Since(start)
	return []Result{
		{Name: "session resume: Connect → first Next", Msgs: firstN, Bytes: int64(firstN) * int64(c.Payload), Elapsed: first,
			Note:    fmt.Sprintf("%d unacknowledged QoS 1 messages, new Store over the same DB; Connect alone %v", n, connected.Round(time.Microsecond)),
			Figures: map[string]float64{"connect_sec": connected.Seconds(), "first_next_sec": first.Seconds()}},
		{Name: fmt.Sprintf("session resume: redeliver %d", n), Msgs: n, Bytes: int64(n) * int64(c.Payload), Elapsed: all,
			Note: fmt.Sprintf("from Connect to the last delivery, Next(%d), every batch acked", sc.batch())},
	}, nil
}
