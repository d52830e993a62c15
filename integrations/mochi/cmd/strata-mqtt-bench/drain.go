package main

import (
	"errors"
	"fmt"
	"time"
)

// drainResult is one row of the drain scenario.
type drainResult struct {
	Variant     string
	Published   int
	PublishTime time.Duration
	Present     bool   // the reconnecting subscriber's CONNACK session present flag
	Got         counts // what it received after reconnecting
	Missing     int64
	DrainTime   time.Duration // from the reconnect (CONNECT sent) to the last delivery
	Rate        float64       // distinct messages delivered per second of DrainTime
	Drops       int64
}

// runDrain: a durable subscriber subscribes (bench/drain/+, QoS 1) and disconnects;
// cfg.DrainMessages QoS 1 messages are published by cfg.DrainPublishers clients (each with
// up to cfg.Window awaiting their PUBACK); the subscriber reconnects and the time until it
// has them all (or nothing more comes for cfg.Idle) is measured.
func runDrain(cfg *config, variant string) (_ *drainResult, err error) {
	dir, err := cfg.dbDir()
	if err != nil {
		return nil, err
	}
	b, err := startBroker(variant, dir, cfg.Log)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, b.Close(), cfg.removeDir(dir)) }()

	r := &drainResult{Variant: variant, Published: cfg.DrainMessages}
	tr := newTracker()
	if err := subscribeAndLeave(b.addr, "drain-sub", "bench/drain/+", tr); err != nil {
		return nil, err
	}

	t0 := time.Now()
	if err := publishMany(cfg, b.addr, "drain-pub", "bench/drain/%d", cfg.DrainMessages, cfg.DrainPublishers); err != nil {
		return nil, err
	}
	r.PublishTime = time.Since(t0)

	t0 = time.Now()
	sub, present, err := connect(clientOptions(b.addr, "drain-sub", false, tr.handler))
	if err != nil {
		return nil, err
	}
	defer sub.Disconnect(100)
	r.Present = present
	tr.waitFor(int64(cfg.DrainMessages), cfg.Idle, cfg.Limit)
	r.Got = tr.counts()
	r.Missing = max(int64(cfg.DrainMessages)-r.Got.Unique, 0)
	if !r.Got.Last.IsZero() {
		r.DrainTime = r.Got.Last.Sub(t0)
		r.Rate = float64(r.Got.Unique) / r.DrainTime.Seconds()
	}
	r.Drops = b.drops()
	return r, nil
}

// subscribeAndLeave connects a durable (clean session = false) client id, subscribes it to
// filter at QoS 1 and disconnects it. Anything it receives meanwhile goes to tr.
func subscribeAndLeave(addr, id, filter string, tr *tracker) error {
	sub, _, err := connect(clientOptions(addr, id, false, tr.handler))
	if err != nil {
		return err
	}
	defer sub.Disconnect(250)
	if err := waitToken(sub.Subscribe(filter, 1, nil)); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	return nil
}

// publishMany connects publishers clean-session clients and publishes n QoS 1 messages in
// all, publisher i on fmt.Sprintf(topicFormat, i), up to cfg.Window awaiting a PUBACK per
// publisher, then disconnects them.
func publishMany(cfg *config, addr, prefix, topicFormat string, n, publishers int) error {
	pubs, err := connectMany(addr, prefix, publishers, cfg.ConnectParallel)
	if err != nil {
		return err
	}
	defer disconnectAll(pubs, cfg.ConnectParallel)
	errs := make([]error, publishers)
	parallelDo(publishers, publishers, func(i int) {
		quota := n / publishers
		if i < n%publishers {
			quota++
		}
		errs[i] = publishWindowed(pubs[i], fmt.Sprintf(topicFormat, i), cfg.Payload, uint32(i), quota, cfg.Window)
	})
	return errors.Join(errs...)
}

func drainTable(cfg *config, results []*drainResult) *table {
	t := &table{
		title:  fmt.Sprintf("drain: an offline durable QoS 1 subscriber reconnects to %d messages of %d B", cfg.DrainMessages, cfg.Payload),
		labels: []string{"broker"},
		cols: []column{
			{"delivered msgs/s", rate}, {"drain s", seconds}, {"delivered", count}, {"missing", count},
			{"dups", count}, {"out-of-order", count}, {"session present", yesNo}, {"mochi drops", count},
			{"publish msgs/s", rate},
		},
	}
	for _, r := range results {
		t.add([]string{r.Variant}, r.Rate, r.DrainTime.Seconds(), float64(r.Got.Unique), float64(r.Missing),
			float64(r.Got.Dups), float64(r.Got.OutOfOrder), boolf(r.Present), float64(r.Drops),
			float64(r.Published)/r.PublishTime.Seconds())
	}
	t.note("published by %d clients, each with up to %d messages awaiting a PUBACK; drain s = reconnect to last delivery", cfg.DrainPublishers, cfg.Window)
	t.note("mochi alone keeps at most MaximumInflight (8192) messages per offline client and drops the rest (mochi drops)")
	return t
}
