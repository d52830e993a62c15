// Package session gives an MQTT broker durable sessions kept in Strata: what a session is
// subscribed to, how far it has acknowledged, its QoS 2 deliveries in flight and the inbound
// QoS 2 packet IDs of its client, its expiry and its owner — in the same store as the
// messages and replicated the same way, so a session survives a restart of its broker and,
// on a replicated cluster, moves to another site with its client.
//
// A broker opens one Store over its ds.DB and calls it from its hooks:
//
//	CONNECT           Store.Connect (clean start or resume; session present), ErrTakenOver
//	                  for the connection it replaced
//	SUBSCRIBE         Session.Subscribe (QoS, no-local, retain-as-published, identifier)
//	UNSUBSCRIBE       Session.Unsubscribe
//	PUBLISH in        Store.Wanted (store only what a durable session wants), ds.DB.Store;
//	                  QoS 2: Store.StoreQoS2 (exactly once across re-sends), then on PUBREL
//	                  Store.ReleaseQoS2
//	PUBLISH out       Session.Next (batches, with packet IDs, DUP, granted QoS, PUBRELs to
//	                  repeat after a resume)
//	PUBACK            Session.Ack
//	PUBREC / PUBCOMP  Session.Received / Session.Complete
//	DISCONNECT        Session.Disconnect (expires Expiry later unless resumed)
//
// # Where the state lives
//
// A session is one record in the shard of its client ID (ds.ShardOf), written by
// conditional transactions of that shard (ds.Update): the deterministic apply every
// replica runs decides them, so the owner fence holds across sites. Each Connect raises the
// session's epoch; every later write of the session is conditional on the record version it
// wrote last, so a connection that was taken over (here or on another site) fails its next
// write with ErrTakenOver, and is ended at once when the take-over reaches its Store
// through the DB's record watch. The record format is drawn in record.go.
//
// # What is written when
//
//   - Subscribe, Unsubscribe, Connect, Disconnect: one record write each, durable before
//     the call returns.
//   - QoS 1 acknowledgements: only in memory until the next checkpoint
//     (Options.CheckpointInterval, default 1s), which writes the subscriptions' positions
//     (one ds.Position each: everything before it acknowledged). After a crash a session
//     receives again, marked DUP, what it acknowledged since — never less.
//   - QoS 2: a delivery is written (with its message and sequence number) before Next
//     returns it, and its PUBREC before Received returns, so a resumed session repeats the
//     same PUBLISH (same packet ID, DUP) or PUBREL; PUBCOMP waits for the next checkpoint
//     (a PUBREL repeated after a crash gets a PUBCOMP for an unknown ID, which MQTT allows).
//
// Packet IDs are derived from a per-session delivery sequence number, so a QoS 1 delivery
// costs no write of its own.
//
// # Invariants
//
//  1. A message stored while a subscription existed and matching it is delivered to the
//     session until it is acknowledged (PUBACK, PUBCOMP), across reconnects, restarts and
//     take-overs, unless retention dropped it first (counted in Metrics.Lost).
//  2. A subscription delivers the messages of one publisher in the order they were stored;
//     it receives none stored before it was made.
//  3. A QoS 2 delivery keeps its packet ID until PUBCOMP.
//  4. At most ConnectOptions.ReceiveMaximum QoS 1 and 2 deliveries await acknowledgement.
//  5. Only the latest Connect of a client ID writes its session.
//  6. Deliveries a subscription started are completed after it is unsubscribed (MQTT 5
//     §3.10.4), after a resume too: it stays in the record, retired, taking no new
//     messages, until they are acknowledged.
//
// # Known limits
//
//   - Overlapping subscriptions deliver one copy each (see Session), not one at the maximum
//     QoS.
//   - A session recorded as connected through a broker that never comes back stays until
//     its client resumes it or it is deleted (Store.Delete): there is no lease.
//   - Wanted on another site knows a subscription once that site's replica applied it.
package session
