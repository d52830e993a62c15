package main

import (
	"errors"
	"fmt"
)

// anchorResult is one cell pair of the anchor scenario.
type anchorResult struct {
	Variant   string
	Restart   bool
	Published int
	Present   bool
	Got       counts
	Missing   int64
	Drops     int64 // mochi's drop counters, before the restart
}

// runAnchor: one durable subscriber (clean session = false) subscribes at QoS 1 and
// disconnects; cfg.AnchorMessages QoS 1 messages are published by one client while it is
// offline; with restart, the broker is then restarted (mochi+strata: the server, session
// store and DB closed and reopened on the same directory; mochi alone: a new server, nothing
// being persisted); the subscriber reconnects and what it receives is counted.
func runAnchor(cfg *config, variant string, restart bool) (_ *anchorResult, err error) {
	dir, err := cfg.dbDir()
	if err != nil {
		return nil, err
	}
	b, err := startBroker(variant, dir, cfg.Log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if b != nil {
			err = errors.Join(err, b.Close())
		}
		err = errors.Join(err, cfg.removeDir(dir))
	}()

	r := &anchorResult{Variant: variant, Restart: restart, Published: cfg.AnchorMessages}
	tr := newTracker()
	if err := subscribeAndLeave(b.addr, "anchor-sub", "bench/anchor/+", tr); err != nil {
		return nil, err
	}
	if err := publishMany(cfg, b.addr, "anchor-pub", "bench/anchor/%d", cfg.AnchorMessages, 1); err != nil {
		return nil, err
	}
	r.Drops = b.drops()
	if restart {
		nb, err := b.restart(cfg.Log)
		b = nb // nil if it failed (the old one is closed)
		if err != nil {
			return nil, fmt.Errorf("restart: %w", err)
		}
	}
	sub, present, err := connect(clientOptions(b.addr, "anchor-sub", false, tr.handler))
	if err != nil {
		return nil, err
	}
	defer sub.Disconnect(100)
	r.Present = present
	tr.waitFor(int64(cfg.AnchorMessages), cfg.Idle, cfg.Limit)
	r.Got = tr.counts()
	r.Missing = max(int64(cfg.AnchorMessages)-r.Got.Unique, 0)
	return r, nil
}

func anchorTable(cfg *config, results []*anchorResult) *table {
	t := &table{
		title:  fmt.Sprintf("anchor: %d QoS 1 messages of %d B published while a durable subscriber is offline", cfg.AnchorMessages, cfg.Payload),
		labels: []string{"reconnect", "broker"},
		cols: []column{{"delivered", count}, {"missing", count}, {"dups", count}, {"out-of-order", count},
			{"session present", yesNo}, {"mochi drops", count}},
	}
	for _, restart := range []bool{false, true} {
		label := "no restart"
		if restart {
			label = "after broker restart"
		}
		for _, v := range variants {
			for _, r := range results {
				if r.Restart == restart && r.Variant == v {
					t.add([]string{label, v}, float64(r.Got.Unique), float64(r.Missing), float64(r.Got.Dups),
						float64(r.Got.OutOfOrder), boolf(r.Present), float64(r.Drops))
				}
			}
		}
	}
	t.note("mochi drops: mochi's own counters, before any restart; waited for deliveries until none came for %v", cfg.Idle)
	return t
}
