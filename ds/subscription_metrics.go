package ds

import "sync/atomic"

// subStats are the DB's subscription counters.
type subStats struct {
	parked    atomic.Int64  // Next calls waiting for an Ack (MaxUnacked reached)
	delivered atomic.Uint64 // messages returned by Next
	fed       atomic.Uint64 // messages the feeds handed to tail subscriptions (per group)
	reads     atomic.Uint64 // storage reads of subscriptions behind the tail
	demoted   atomic.Uint64 // tail subscriptions sent back to reading (buffer full, gap)
	losses    atomic.Uint64 // LossErrors reported
}

// SubscriptionMetrics are the DB's subscription figures (Metrics.Subscriptions).
type SubscriptionMetrics struct {
	// Subscriptions open; Tail of them fed from commits on every shard; Parked Next calls
	// waiting for an Ack.
	Subscriptions, Tail, Parked int64
	// Delivered: messages returned by Next since Open. Reads: storage reads made by
	// subscriptions behind the tail. Reads/Delivered is the storage reads per delivered
	// message; the tail's deliveries cost none.
	Delivered, Reads uint64
	// Fed: messages the shards' feeds handed to groups of tail subscriptions. Demoted: times a
	// tail subscription was sent back to reading (its buffer was full, or a replica's state
	// was replaced). Losses: LossErrors reported.
	Fed, Demoted, Losses uint64
	// MaxLag is the largest distance, in µs of timestamps, between a shard's read limit and
	// a subscription's position there (0: every subscription is at the tail).
	MaxLag uint64
}

// subscriptionMetrics collects the figures; the lag walks every subscription.
func (db *DB) subscriptionMetrics() SubscriptionMetrics {
	m := SubscriptionMetrics{
		Parked:    db.subStats.parked.Load(),
		Delivered: db.subStats.delivered.Load(), Reads: db.subStats.reads.Load(),
		Fed: db.subStats.fed.Load(), Demoted: db.subStats.demoted.Load(), Losses: db.subStats.losses.Load(),
	}
	limits := make([]uint64, len(db.shards))
	for i, s := range db.shards {
		limits[i], _ = s.ReadLimit()
	}
	subs := db.subscriptions()
	m.Subscriptions = int64(len(subs))
	for _, s := range subs {
		tail := true
		s.mu.Lock()
		for i, sh := range s.shards {
			tail = tail && sh.tail
			if p := sh.positionLocked(); p < limits[i] {
				m.MaxLag = max(m.MaxLag, limits[i]-p)
			}
		}
		s.mu.Unlock()
		if tail {
			m.Tail++
		}
	}
	return m
}
