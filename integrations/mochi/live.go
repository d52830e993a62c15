package mochi

import (
	"sort"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/strata-mq/strata/session"
)

// live sends QoS 0 messages to the durable clients connected to this broker. QoS 0
// messages are not stored (MQTT lets a session lose them while it is offline), and mochi
// cannot send them: a durable client's filters are not in mochi's topic index. live keeps
// an index of its own (mochi's TopicsIndex type, with mochi's matching rules) holding the
// subscriptions of connected durable sessions, by client ID.
//
// Invariant: idx holds the filters of owner[id].filters for each owner, nothing else. A
// client ID has at most one owner: a connection that takes a session over (on this broker)
// replaces the previous one's filters, and the previous one's detach does nothing.
type live struct {
	srv   *mqtt.Server // for Info.MessagesDropped
	idx   *mqtt.TopicsIndex
	mu    sync.Mutex
	owner map[string]*conn // guards every conn.filters too
	// filters counts what idx holds, so that a QoS 0 publish with no connected durable
	// subscriber costs no index lookup (mochi's Subscribers allocates its result maps).
	filters atomic.Int64
}

func newLive(srv *mqtt.Server) *live {
	return &live{srv: srv, idx: mqtt.NewTopicsIndex(), owner: map[string]*conn{}}
}

// attach makes c the owner of its client ID with the session's subscriptions.
func (l *live) attach(c *conn, subs []session.Subscription) {
	l.mu.Lock()
	defer l.mu.Unlock()
	id := c.cl.ID
	if old := l.owner[id]; old != nil {
		for f := range old.filters {
			l.idx.Unsubscribe(f, id)
		}
		l.filters.Add(-int64(len(old.filters)))
		old.filters = nil
	}
	l.owner[id] = c
	c.filters = map[string]struct{}{}
	for _, s := range subs {
		l.addLocked(c, s)
	}
}

func (l *live) add(c *conn, s session.Subscription) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.owner[c.cl.ID] == c {
		l.addLocked(c, s)
	}
}

func (l *live) addLocked(c *conn, s session.Subscription) {
	l.idx.Subscribe(c.cl.ID, packets.Subscription{
		Filter: s.Filter, Qos: 0, NoLocal: s.NoLocal, RetainAsPublished: s.RetainAsPublished,
		Identifier: int(s.SubscriptionID)})
	if _, ok := c.filters[s.Filter]; !ok {
		c.filters[s.Filter] = struct{}{}
		l.filters.Add(1)
	}
}

func (l *live) remove(c *conn, filter string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := c.filters[filter]; ok && l.owner[c.cl.ID] == c {
		l.idx.Unsubscribe(filter, c.cl.ID)
		delete(c.filters, filter)
		l.filters.Add(-1)
	}
}

// detach removes c's subscriptions, unless another connection took its client ID over.
func (l *live) detach(c *conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.owner[c.cl.ID] != c {
		return
	}
	for f := range c.filters {
		l.idx.Unsubscribe(f, c.cl.ID)
	}
	l.filters.Add(-int64(len(c.filters)))
	c.filters = nil
	delete(l.owner, c.cl.ID)
}

// publish queues a QoS 0 message for every connected durable client with a matching
// subscription: one copy per client, with the identifiers of all its matching
// subscriptions (MQTT 5 §3.3.4), no copy back to its publisher through a no-local
// subscription, and only where allowed reads the topic. A client whose queue is full
// loses the message (counted in mochi's $SYS messages dropped), as mochi's own QoS 0
// path does for a slow subscriber.
func (l *live) publish(from string, pk packets.Packet, allowed func(*mqtt.Client, string) bool) {
	if l.filters.Load() == 0 {
		return
	}
	subs := l.idx.Subscribers(pk.TopicName)
	for id, sub := range subs.Subscriptions {
		if sub.NoLocal && id == from {
			continue
		}
		l.mu.Lock()
		c := l.owner[id]
		l.mu.Unlock()
		if c == nil || (allowed != nil && !allowed(c.cl, pk.TopicName)) {
			continue
		}
		out := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: pk.FixedHeader.Retain && sub.RetainAsPublished},
			TopicName:   pk.TopicName,
			Payload:     pk.Payload,
			Properties:  outboundProperties(pk.Properties),
		}
		if c.cl.Properties.ProtocolVersion < 5 {
			out.FixedHeader.Retain = false // [MQTT-3.3.1-9]: only retained messages sent on subscribe
			out.Properties = packets.Properties{}
		} else {
			for _, sid := range sub.Identifiers {
				if sid > 0 {
					out.Properties.SubscriptionIdentifier = append(out.Properties.SubscriptionIdentifier, sid)
				}
			}
			sort.Ints(out.Properties.SubscriptionIdentifier)
		}
		if !c.send0(out) {
			atomic.AddInt64(&l.srv.Info.MessagesDropped, 1)
		}
	}
}

// outboundProperties are the PUBLISH properties forwarded to subscribers (MQTT 5 §3.3.2.3:
// not the topic alias or subscription identifiers of the incoming packet).
func outboundProperties(p packets.Properties) packets.Properties {
	return packets.Properties{
		PayloadFormat: p.PayloadFormat, PayloadFormatFlag: p.PayloadFormatFlag,
		ContentType: p.ContentType, ResponseTopic: p.ResponseTopic,
		CorrelationData: p.CorrelationData, User: p.User,
		MessageExpiryInterval: p.MessageExpiryInterval,
	}
}
