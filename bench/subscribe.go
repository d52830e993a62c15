package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/raftgroup"
)

// SubConfig sizes the subscription scenarios (ds.Subscribe): fan-out at the tail, Store →
// delivery latency at half the maximum ingest, and catch-up from the oldest message.
type SubConfig struct {
	// Fan-out at the tail: FanOutSubs subscriptions on one filter take FanOutN messages each;
	// DisjointSubs subscriptions on filters fan/<i>/# share DisjointN messages spread evenly
	// over their topics. Publishers store them, one message per Store.
	FanOutSubs, FanOutN     int
	DisjointSubs, DisjointN int
	Publishers              int
	// LatencySubs subscriptions on t/# take LatencyN messages stored at LatencyRate msgs/s, or
	// else at half MaxIngest (the ingest scenario's rate), or else at half the maximum ingest
	// measured first on LatencyN messages.
	LatencySubs, LatencyN  int
	LatencyRate, MaxIngest float64
	// CatchUpN messages are stored on a new DB and read back through one subscription, next
	// to the raw replay of the same messages (0: none).
	CatchUpN int
	// MaxUnacked is SubscribeOptions.MaxUnacked (0: its default); Batch is Next's max (0: 1000).
	MaxUnacked, Batch int
	// Timeout bounds each run (0: 10 minutes): a lost message fails the run instead of hanging.
	Timeout time.Duration
}

func (sc SubConfig) timeout() time.Duration {
	if sc.Timeout > 0 {
		return sc.Timeout
	}
	return 10 * time.Minute
}

// RunSubscribe runs the embedded subscription scenarios, each on a new DB: fan-out on one
// filter, fan-out on disjoint filters, latency at half the maximum ingest, and catch-up of
// sc.CatchUpN messages next to the raw replay of the same messages (when sc.CatchUpN > 0).
func RunSubscribe(c Config, sc SubConfig) ([]Result, error) {
	var results []Result
	if sc.FanOutSubs > 0 && sc.FanOutN > 0 {
		r, err := RunSubFanOut(c, sc, sc.FanOutSubs, sc.FanOutN, false)
		if err != nil {
			return nil, err
		}
		results = append(results, r)
	}
	if sc.DisjointSubs > 0 && sc.DisjointN > 0 {
		r, err := RunSubFanOut(c, sc, sc.DisjointSubs, sc.DisjointN, true)
		if err != nil {
			return nil, err
		}
		results = append(results, r)
	}
	if sc.LatencySubs > 0 && sc.LatencyN > 0 {
		db, cleanup, err := openTemp(c, &ds.Options{Retention: ds.RetainForever})
		if err != nil {
			return nil, err
		}
		rs, err := runSubLatency(c, sc, "embedded", []*ds.DB{db})
		cleanup()
		if err != nil {
			return nil, err
		}
		results = append(results, rs...)
	}
	if sc.CatchUpN > 0 {
		rs, err := runCatchUpAlone(c, sc.CatchUpN)
		if err != nil {
			return nil, err
		}
		results = append(results, rs...)
	}
	return results, nil
}

// RunSubscribeReplicated measures Store → delivery latency on a cluster of sites sites in this
// process (see RunReplicated): every Store goes through site 0, and the subscriptions are spread
// over the sites, each woken as its site's replica applies the entry. One result per site.
func RunSubscribeReplicated(c Config, sc SubConfig, sites int, logdb raftgroup.LogDB) ([]Result, error) {
	cl, dbs, err := startSites(c, sites, logdb, "subscribe-"+string(logdb))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	return runSubLatency(c, sc, fmt.Sprintf("%d sites, %s log", sites, logdb), dbs)
}

// subOptions are the options of every benchmark subscription.
func (sc SubConfig) subOptions() *ds.SubscribeOptions {
	return &ds.SubscribeOptions{MaxUnacked: sc.MaxUnacked}
}

func (sc SubConfig) batch() int {
	if sc.Batch > 0 {
		return sc.Batch
	}
	return 1000
}

// consume calls Next until s delivered want messages, acknowledging every batch, and calls
// got (if not nil) with each batch and the time Next returned it. More than want is an error.
func consume(ctx context.Context, s *ds.Subscription, want, max int, got func([]ds.Message, time.Time)) error {
	var refs []ds.Ref
	for n := 0; n < want; {
		msgs, err := s.Next(ctx, max)
		if err != nil {
			return fmt.Errorf("subscription %s: after %d of %d messages: %w", s.Filter(), n, want, err)
		}
		at := time.Now()
		n += len(msgs)
		if n > want {
			return fmt.Errorf("subscription %s: %d messages, want %d", s.Filter(), n, want)
		}
		if got != nil {
			got(msgs, at)
		}
		refs = refs[:0]
		for _, m := range msgs {
			refs = append(refs, ds.RefOf(m))
		}
		if err := s.Ack(refs...); err != nil {
			return err
		}
	}
	return nil
}

// subscribers runs one goroutine per subscription, each consuming want[i] messages from subs[i]
// (see consume), and returns at once. wait waits for them and returns when the last one had
// all its messages and the first error; cancel stops them.
type subscribers struct {
	wg       sync.WaitGroup
	cancel   context.CancelFunc
	last     atomic.Int64 // UnixNano of the last subscription's last delivery
	firstErr atomic.Pointer[error]
}

func startSubscribers(subs []*ds.Subscription, want []int, max int, timeout time.Duration, got func(i int, msgs []ds.Message, at time.Time)) *subscribers {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	w := &subscribers{cancel: cancel}
	for i, s := range subs {
		w.wg.Go(func() {
			var f func([]ds.Message, time.Time)
			if got != nil {
				f = func(msgs []ds.Message, at time.Time) { got(i, msgs, at) }
			}
			if err := consume(ctx, s, want[i], max, f); err != nil {
				if w.firstErr.CompareAndSwap(nil, &err) {
					cancel() // fail fast: the others would wait for their timeout
				}
				return
			}
			now := time.Now().UnixNano()
			for {
				l := w.last.Load()
				if now <= l || w.last.CompareAndSwap(l, now) {
					break
				}
			}
		})
	}
	return w
}

func (w *subscribers) wait() (time.Time, error) {
	w.wg.Wait()
	w.cancel()
	if e := w.firstErr.Load(); e != nil {
		return time.Time{}, *e
	}
	return time.Unix(0, w.last.Load()), nil
}

// awaitTail waits until want subscriptions of db are fed at the tail on every shard: they
// have made their first Next call and found nothing to read. Publishing starts after it, so
// the figures are those of the tail.
func awaitTail(db *ds.DB, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		m, err := db.Metrics()
		if err != nil {
			return err
		}
		if m.Subscriptions.Tail >= int64(want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d subscriptions at the tail after %v", m.Subscriptions.Tail, want, timeout)
		}
		time.Sleep(20 * time.Millisecond) // Metrics walks every subscription: not too often
	}
}

// subDelta is the change of the subscription counters over a run.
func subDelta(before, after ds.SubscriptionMetrics) ds.SubscriptionMetrics {
	return ds.SubscriptionMetrics{Delivered: after.Delivered - before.Delivered, Reads: after.Reads - before.Reads,
		Fed: after.Fed - before.Fed, Demoted: after.Demoted - before.Demoted, Losses: after.Losses - before.Losses}
}

func subMetrics(db *ds.DB) (ds.SubscriptionMetrics, error) {
	m, err := db.Metrics()
	if err != nil {
		return ds.SubscriptionMetrics{}, err
	}
	return m.Subscriptions, nil
}

// readsPerDelivery renders Reads/Delivered.
func readsPerDelivery(m ds.SubscriptionMetrics) string {
	return fmt.Sprintf("%.4f storage reads/delivery (%d reads, %d delivered, %d demoted)",
		float64(m.Reads)/float64(max(m.Delivered, 1)), m.Reads, m.Delivered, m.Demoted)
}

func closeAll(subs []*ds.Subscription) {
	for _, s := range subs {
		s.Close()
	}
}

// RunSubFanOut measures fan-out at the tail on a new DB. subs subscriptions are made at
// TailPosition and fed at the tail (each with its own goroutine calling Next and Ack) before
// sc.Publishers publishers store n messages on topics fan/<k>/x, one message per Store. With
// disjoint set, subscription i has filter fan/<i>/# and the messages are spread evenly over
// the subs topics (n deliveries in all); otherwise every subscription has filter fan/# and
// takes every message (n × subs deliveries). The rate is deliveries per second, from the
// first Store to the last delivery; the note has the storage reads per delivery and the
// ingest rate meanwhile.
func RunSubFanOut(c Config, sc SubConfig, subs, n int, disjoint bool) (Result, error) {
	db, cleanup, err := openTemp(c, &ds.Options{Retention: ds.RetainForever})
	if err != nil {
		return Result{}, err
	}
	defer cleanup()
	publishers := max(1, min(sc.Publishers, n))
	topics, name := 64, fmt.Sprintf("subscribe fan-out: %d subscriptions on fan/#", subs)
	if disjoint {
		topics, name = subs, fmt.Sprintf("subscribe fan-out: %d subscriptions on fan/<i>/#", subs)
	}
	pos, err := db.TailPosition()
	if err != nil {
		return Result{}, err
	}
	ss := make([]*ds.Subscription, subs)
	want := make([]int, subs)
	defer func() { closeAll(ss) }()
	for i := range ss {
		filter := "fan/#"
		want[i] = n
		if disjoint {
			filter = fmt.Sprintf("fan/%d/#", i)
			want[i] = n / subs
			if i < n%subs {
				want[i]++
			}
		}
		if ss[i], err = db.Subscribe(filter, pos, sc.subOptions()); err != nil {
			return Result{}, err
		}
	}
	w := startSubscribers(ss, want, sc.batch(), sc.timeout(), nil)
	if err := awaitTail(db, subs, sc.timeout()); err != nil {
		w.cancel()
		w.wait()
		return Result{}, err
	}
	before, err := subMetrics(db)
	if err != nil {
		return Result{}, err
	}
	ctx := context.Background()
	pl := payloads(16, c.Payload)
	names := make([]string, topics)
	for k := range names {
		names[k] = fmt.Sprintf("fan/%d/x", k)
	}
	start := time.Now()
	ingest, lats, _, err := runPublishers(name, n, publishers, c.Progress, func(p, i int) error {
		g := i*publishers + p // message g of n: publisher p's i-th
		_, err := db.Store(ctx, ds.Message{ClientID: clientID(p), Topic: names[g%topics], QoS: 1, Payload: pl[g%len(pl)]})
		return err
	})
	if err != nil {
		w.cancel()
		w.wait()
		return Result{}, fmt.Errorf("%s: %w", name, err)
	}
	last, err := w.wait()
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", name, err)
	}
	after, err := subMetrics(db)
	if err != nil {
		return Result{}, err
	}
	d := subDelta(before, after)
	deliveries := 0
	for _, k := range want {
		deliveries += k
	}
	if d.Delivered != uint64(deliveries) {
		return Result{}, fmt.Errorf("%s: Metrics counted %d deliveries, want %d", name, d.Delivered, deliveries)
	}
	p50, p99, _ := percentiles(lats)
	return Result{Name: name, Msgs: deliveries, Bytes: int64(deliveries) * int64(c.Payload), Elapsed: last.Sub(start),
		Note: fmt.Sprintf("%s; ingest %s msgs/s (%d msgs from %d publishers, Store p50 %v p99 %v)", readsPerDelivery(d),
			Human(float64(n)/ingest.Seconds()), n, publishers, p50.Round(10*time.Microsecond), p99.Round(10*time.Microsecond))}, nil
}

// stamp is when something happened to a stored message, since the run's start.
type stamp struct {
	ref ds.Ref
	at  time.Duration
}

// storeStamp is when a message's Store was called and when it returned.
type storeStamp struct {
	call, ret time.Duration
}

// runSubLatency measures Store → delivery latency. The rate is sc.LatencyRate if set, else half
// of sc.MaxIngest if set, else half the maximum ingest of dbs[0] measured first (c.Publishers
// publishers storing sc.LatencyN messages as fast as they can). It makes sc.LatencySubs
// subscriptions on t/# at TailPosition (subscription k on dbs[k mod len(dbs)]), waits until
// they are at the tail, and stores sc.LatencyN messages through dbs[0] at that rate, from
// c.Publishers paced publishers. A message's latency is the time from its Store's return to
// its delivery by Next (0 if it came first); the note has the latency from the Store call as
// well. One result per DB of subscriptions.
func runSubLatency(c Config, sc SubConfig, where string, dbs []*ds.DB) ([]Result, error) {
	ctx := context.Background()
	pub := dbs[0]
	pl := payloads(64, c.Payload)
	n, publishers := sc.LatencyN, max(1, min(c.Publishers, sc.LatencyN))
	rate, rateNote := sc.LatencyRate, "rate set"
	switch {
	case rate > 0:
	case sc.MaxIngest > 0:
		rate, rateNote = sc.MaxIngest/2, "half the ingest scenario's "+Human(sc.MaxIngest)+" msgs/s"
	default:
		name := fmt.Sprintf("maximum ingest (%s)", where)
		// Under another root than the subscriptions' t/#: a site whose replica still applies
		// these when its subscription takes TailPosition would deliver them too.
		elapsed, _, _, err := runPublishers(name, n, publishers, c.Progress, func(p, i int) error {
			_, err := pub.Store(ctx, ds.Message{ClientID: clientID(p), Topic: "max/" + topicOf(p, i), QoS: 1, Payload: pl[(p+i)%len(pl)]})
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		max := float64(n) / elapsed.Seconds()
		rate, rateNote = max/2, "half the maximum "+Human(max)+" msgs/s, measured first"
	}

	subs := make([]*ds.Subscription, sc.LatencySubs)
	want := make([]int, len(subs))
	site := make([]int, len(subs))
	defer func() { closeAll(subs) }()
	for k := range subs {
		site[k] = k % len(dbs)
		pos, err := dbs[site[k]].TailPosition()
		if err != nil {
			return nil, err
		}
		if subs[k], err = dbs[site[k]].Subscribe("t/#", pos, sc.subOptions()); err != nil {
			return nil, err
		}
		want[k] = n
	}
	delivered := make([][]stamp, len(subs))
	for k := range delivered {
		delivered[k] = make([]stamp, 0, n)
	}
	base := time.Now() // the origin of every stamp
	w := startSubscribers(subs, want, sc.batch(), sc.timeout(), func(k int, msgs []ds.Message, at time.Time) {
		t := at.Sub(base)
		for _, m := range msgs {
			delivered[k] = append(delivered[k], stamp{ds.RefOf(m), t})
		}
	})
	stopSubs := func() { w.cancel(); w.wait() }
	for i, db := range dbs {
		per := 0
		for k := range subs {
			if site[k] == i {
				per++
			}
		}
		if err := awaitTail(db, per, sc.timeout()); err != nil {
			stopSubs()
			return nil, err
		}
	}
	befores := make([]ds.SubscriptionMetrics, len(dbs))
	for i, db := range dbs {
		var err error
		if befores[i], err = subMetrics(db); err != nil {
			stopSubs()
			return nil, err
		}
	}

	type storeRec struct {
		ref ds.Ref
		storeStamp
	}
	stored := make([][]storeRec, publishers)
	interval := time.Duration(float64(time.Second) / rate) // between two Stores of all publishers
	name := fmt.Sprintf("subscribe latency (%s)", where)
	paceStart := time.Since(base)
	elapsed, _, _, err := runPublishers(name, n, publishers, c.Progress, func(p, i int) error {
		// Publisher p's i-th message is due at (i×publishers + p) × interval: an even pace
		// that does not wait for the previous Store unless that one is late.
		if d := paceStart + time.Duration(i*publishers+p)*interval - time.Since(base); d > 0 {
			time.Sleep(d)
		}
		call := time.Since(base)
		refs, err := pub.Store(ctx, ds.Message{ClientID: clientID(p), Topic: topicOf(p, i), QoS: 1, Payload: pl[(p+i)%len(pl)]})
		if err != nil {
			return err
		}
		stored[p] = append(stored[p], storeRec{refs[0], storeStamp{call, time.Since(base)}})
		return nil
	})
	if err != nil {
		stopSubs()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if _, err := w.wait(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	byRef := make(map[ds.Ref]storeStamp, n)
	var storeLats []time.Duration
	for p := range stored {
		for _, s := range stored[p] {
			byRef[s.ref] = s.storeStamp
			storeLats = append(storeLats, s.ret-s.call)
		}
	}
	s50, s99, _ := percentiles(storeLats)
	round := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	var results []Result
	for i, db := range dbs {
		var fromRet, fromCall []time.Duration
		early, per := 0, 0
		for k := range subs {
			if site[k] != i {
				continue
			}
			per++
			for _, d := range delivered[k] {
				st, ok := byRef[d.ref]
				if !ok {
					return nil, fmt.Errorf("%s: subscription %d got message %+v, not stored by the run", name, k, d.ref)
				}
				l := d.at - st.ret
				if l < 0 {
					early++ // delivered before its Store returned to the publisher
					l = 0
				}
				fromRet = append(fromRet, l)
				fromCall = append(fromCall, d.at-st.call)
			}
		}
		if per == 0 {
			continue
		}
		after, err := subMetrics(db)
		if err != nil {
			return nil, err
		}
		r := Result{Name: name, Msgs: len(fromRet), Bytes: int64(len(fromRet)) * int64(c.Payload), Elapsed: elapsed}
		if len(dbs) > 1 {
			r.Name = fmt.Sprintf("subscribe latency (%s, stores via site 0, %d subs on site %d)", where, per, i)
		}
		r.P50, r.P99, r.P999 = percentiles(fromRet)
		c50, c99, c999 := percentiles(fromCall)
		r.Note = fmt.Sprintf("Store return → delivery (%.1f%% came before the Store returned: 0); from the Store call: p50 %v p99 %v p99.9 %v; "+
			"%d subs on t/#, ingest %s msgs/s (%s), Store p50 %v p99 %v; %s",
			100*float64(early)/float64(max(len(fromRet), 1)), round(c50), round(c99), round(c999),
			per, Human(float64(n)/elapsed.Seconds()), rateNote, round(s50), round(s99), readsPerDelivery(subDelta(befores[i], after)))
		results = append(results, r)
	}
	return results, nil
}

// SubCatchUp reads every message matching filter through one subscription from the oldest
// message (StartPosition of the zero time), in Next calls of up to 1000 messages, each batch
// acknowledged, and checks that it delivers want messages.
func SubCatchUp(ctx context.Context, db *ds.DB, name, filter string, want int) (Result, error) {
	before, err := subMetrics(db)
	if err != nil {
		return Result{}, err
	}
	start := time.Now()
	s, err := db.Subscribe(filter, db.StartPosition(time.Time{}), nil)
	if err != nil {
		return Result{}, err
	}
	defer s.Close()
	var bytes int64
	if err := consume(ctx, s, want, 1000, func(msgs []ds.Message, _ time.Time) {
		for i := range msgs {
			bytes += int64(len(msgs[i].Payload))
		}
	}); err != nil {
		return Result{}, fmt.Errorf("%s: %w", name, err)
	}
	elapsed := time.Since(start)
	after, err := subMetrics(db)
	if err != nil {
		return Result{}, err
	}
	d := subDelta(before, after)
	return Result{Name: name, Msgs: want, Bytes: bytes, Elapsed: elapsed,
		Note: fmt.Sprintf("%s from the oldest, one subscription; %.1f msgs/storage read", filter, float64(d.Delivered)/float64(max(d.Reads, 1)))}, nil
}

// runCatchUpAlone stores n messages of c.Publishers publishers on a new DB (in batches of 500,
// to be quick: the layout on disk is the same), replays them all as the ingest scenario does
// (parallel readers, and one reader), then reads them through one subscription on t/#.
func runCatchUpAlone(c Config, n int) ([]Result, error) {
	db, cleanup, err := openTemp(c, &ds.Options{Retention: ds.RetainForever})
	if err != nil {
		return nil, err
	}
	defer cleanup()
	ctx := context.Background()
	pl := payloads(64, c.Payload)
	const writers, batchSize = 8, 500
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	for wr := range writers {
		wg.Go(func() {
			batch := make([]ds.Message, 0, batchSize)
			for g := wr; g < n; g += writers {
				p, i := g%c.Publishers, g/c.Publishers
				batch = append(batch, ds.Message{ClientID: clientID(p), Topic: topicOf(p, i), QoS: 1, Payload: pl[g%len(pl)]})
				if len(batch) == cap(batch) || g+writers >= n {
					if _, err := db.Store(ctx, batch...); err != nil {
						firstErr.CompareAndSwap(nil, &err)
						return
					}
					batch = batch[:0]
				}
			}
		})
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return nil, *e
	}
	return catchUpVsReplay(ctx, db, n, "t/#", "", nil)
}

// catchUpVsReplay replays the n messages of db that match filter with one reader, and with
// the ingest scenario's parallel readers unless par (that replay, already measured) is given,
// then reads them through one subscription, and reports the figures with the ratios.
func catchUpVsReplay(ctx context.Context, db *ds.DB, n int, filter, suffix string, par *Result) ([]Result, error) {
	var results []Result
	if par == nil {
		r, err := Replay(ctx, db, "replay "+filter+" (parallel readers)"+suffix, filter, 0)
		if err != nil {
			return nil, err
		}
		r.Note = filter + ", every stream to its end, GOMAXPROCS readers"
		par, results = &r, append(results, r)
	}
	one, err := Replay(ctx, db, "replay "+filter+" (1 reader)"+suffix, filter, 1)
	if err != nil {
		return nil, err
	}
	one.Note = filter + ", every stream to its end, one reader"
	if par.Msgs != n || one.Msgs != n {
		return nil, fmt.Errorf("replay %s: %d and %d messages, want %d", filter, par.Msgs, one.Msgs, n)
	}
	sub, err := SubCatchUp(ctx, db, "subscribe catch-up "+filter+suffix, filter, n)
	if err != nil {
		return nil, err
	}
	sub.Note += fmt.Sprintf("; %.2f× the parallel replay, %.2f× the 1-reader replay",
		sub.MsgsPerSec()/par.MsgsPerSec(), sub.MsgsPerSec()/one.MsgsPerSec())
	return append(results, one, sub), nil
}
