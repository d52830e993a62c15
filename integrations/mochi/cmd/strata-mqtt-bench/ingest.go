package main

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// ingestResult is one row of the ingest scenario.
type ingestResult struct {
	Variant     string
	Publishers  int
	ConnectTime time.Duration // to connect the publishers (before the timer)
	Sent        int64         // PUBACKed
	Failed      int64         // publishes that failed (the publisher stopped)
	Elapsed     time.Duration // from the start to the last publisher's end
	Rate        float64       // Sent per second of Elapsed
	P50, P99    time.Duration // Publish to PUBACK
	Got         counts        // what the durable subscribers received
	Missing     int64         // Sent - distinct received
	DeliveredIn time.Duration // from the start to the last delivery
	Drops       int64         // mochi's own drop counters
}

// runIngest measures the QoS 1 publish throughput of publishers connections, each with one
// message awaiting its PUBACK at a time, while cfg.Subscribers durable (clean session =
// false) subscribers, connected, consume everything: publisher i publishes on
// bench/ingest/<i mod subscribers>/<i>, subscriber k subscribes to bench/ingest/<k>/+.
func runIngest(cfg *config, variant string, publishers int) (_ *ingestResult, err error) {
	dir, err := cfg.dbDir()
	if err != nil {
		return nil, err
	}
	b, err := startBroker(variant, dir, cfg.Log)
	if err != nil {
		return nil, err
	}
	var clients []paho.Client
	defer func() {
		disconnectAll(clients, cfg.ConnectParallel)
		err = errors.Join(err, b.Close(), cfg.removeDir(dir))
	}()

	tr := newTracker()
	for k := range cfg.Subscribers {
		sub, _, err := connect(clientOptions(b.addr, fmt.Sprintf("ingest-sub-%d", k), false, tr.handler))
		if err != nil {
			return nil, err
		}
		clients = append(clients, sub)
		if err := waitToken(sub.Subscribe(fmt.Sprintf("bench/ingest/%d/+", k), 1, nil)); err != nil {
			return nil, fmt.Errorf("subscribe: %w", err)
		}
	}

	r := &ingestResult{Variant: variant, Publishers: publishers}
	t0 := time.Now()
	pubs, err := connectMany(b.addr, "ingest-pub", publishers, cfg.ConnectParallel)
	if err != nil {
		return nil, err
	}
	clients = append(clients, pubs...)
	r.ConnectTime = time.Since(t0)

	var (
		start = make(chan struct{})
		wg    sync.WaitGroup
		lat   = make([][]time.Duration, publishers)
		errs  = make([]error, publishers)
		until time.Time // duration mode
	)
	for i, c := range pubs {
		quota := -1 // duration mode
		if cfg.IngestMessages > 0 {
			quota = cfg.IngestMessages / publishers
			if i < cfg.IngestMessages%publishers {
				quota++
			}
		}
		topic := fmt.Sprintf("bench/ingest/%d/%d", i%max(cfg.Subscribers, 1), i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := newPayload(cfg.Payload, uint32(i), 0)
			<-start
			for seq := 0; quota < 0 || seq < quota; seq++ {
				if quota < 0 && time.Now().After(until) {
					return
				}
				setPayload(p, uint32(i), uint32(seq)) // the previous message was acknowledged
				t := time.Now()
				if err := waitToken(c.Publish(topic, 1, false, p)); err != nil {
					errs[i] = fmt.Errorf("publisher %d, message %d: %w", i, seq, err)
					return
				}
				lat[i] = append(lat[i], time.Since(t))
			}
		}()
	}
	t0 = time.Now()
	until = t0.Add(cfg.Duration)
	close(start)
	wg.Wait()
	r.Elapsed = time.Since(t0)

	var all []time.Duration
	for i := range pubs {
		all = append(all, lat[i]...)
		if errs[i] != nil {
			r.Failed++
		}
	}
	slices.Sort(all)
	r.Sent = int64(len(all))
	r.Rate = float64(r.Sent) / r.Elapsed.Seconds()
	r.P50, r.P99 = percentile(all, 50), percentile(all, 99)
	if r.Failed > 0 {
		cfg.progress("  %d publishers failed, first: %v", r.Failed, errors.Join(errs...))
	}

	// Every acknowledged message should reach its subscriber.
	tr.waitFor(r.Sent, cfg.Idle, cfg.Limit)
	r.Got = tr.counts()
	r.Missing = max(r.Sent-r.Got.Unique, 0)
	if !r.Got.Last.IsZero() {
		r.DeliveredIn = r.Got.Last.Sub(t0)
	}
	r.Drops = b.drops()
	return r, nil
}

func ingestTables(cfg *config, results []*ingestResult) []*table {
	main := &table{
		title:  fmt.Sprintf("ingest: QoS 1, %d B payloads, one PUBLISH awaiting its PUBACK per connection, %d durable subscribers", cfg.Payload, cfg.Subscribers),
		labels: []string{"broker", "publishers"},
		cols: []column{
			{"msgs/s", rate}, {"p50 ms", millis}, {"p99 ms", millis}, {"acked", count}, {"failed pubs", count},
			{"received", count}, {"missing", count}, {"dups", count}, {"out-of-order", count},
			{"mochi drops", count}, {"all delivered after s", seconds}, {"connect s", seconds},
		},
	}
	for _, r := range results {
		main.add([]string{r.Variant, fmt.Sprint(r.Publishers)},
			r.Rate, ms(r.P50), ms(r.P99), float64(r.Sent), float64(r.Failed),
			float64(r.Got.Unique), float64(r.Missing), float64(r.Got.Dups), float64(r.Got.OutOfOrder),
			float64(r.Drops), r.DeliveredIn.Seconds(), r.ConnectTime.Seconds())
	}
	if cfg.IngestMessages > 0 {
		main.note("each row: %d messages in all", cfg.IngestMessages)
	} else {
		main.note("each row: publishing for %v; msgs/s = acked / time until the last publisher stopped", cfg.Duration)
	}
	main.note("received = distinct messages the subscribers got (waited for until none came for %v); missing = acked - received", cfg.Idle)

	// Strata / mochi of the same run and publisher count.
	rt := &table{
		title:  "ingest: mochi+strata / mochi (each ratio within one run)",
		labels: []string{"publishers"},
		cols:   []column{{"msgs/s", ratio}, {"p50", ratio}, {"p99", ratio}},
	}
	for i, s := range results {
		if s.Variant != onStrata {
			continue
		}
		// The plain mochi row of the same run and publisher count precedes it.
		for j := i - 1; j >= 0; j-- {
			if m := results[j]; m.Variant == plainMochi && m.Publishers == s.Publishers {
				rt.add([]string{fmt.Sprint(s.Publishers)}, s.Rate/m.Rate,
					s.P50.Seconds()/m.P50.Seconds(), s.P99.Seconds()/m.P99.Seconds())
				break
			}
		}
	}
	return []*table{main, rt}
}
