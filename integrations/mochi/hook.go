// Package mochi gives the mochi-mqtt v2 broker durable MQTT sessions kept in Strata.
//
// Add a Hook to a mochi server (after an auth hook): clients with a durable session — MQTT
// 3.1.1 clean session = false, MQTT 5 session expiry interval > 0 — get their session,
// subscriptions and undelivered messages from a session.Store over a ds.DB, and QoS 1 and 2
// messages that a durable session wants are stored in the DB before mochi acknowledges them.
// Other clients keep mochi's own path.
//
// How durable subscribers are kept out of mochi's in-memory delivery: after mochi adds a
// durable client's subscription to its topic index (processSubscribe), OnSubscribed takes
// it out again, before the SUBACK is written, and makes it a Strata subscription instead.
// mochi therefore never queues (or drops) messages for a durable client; every QoS 1 and 2
// delivery to it comes from session.Session.Next, written by a goroutine of the connection
// (deliver.go), and QoS 0 messages, which are not stored, reach it while it is connected
// through an index of the hook's own (live.go). The limits of that approach are listed in
// README.md.
package mochi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/session"
)

// DefaultExpiry is the session expiry given to MQTT 3.1.1 clean session = false clients
// (3.1.1 leaves it to the broker) when Options.Expiry3 is zero.
const DefaultExpiry = 24 * time.Hour

// Options configure a Hook.
type Options struct {
	Server *mqtt.Server   // the server the hook is added to (its topic index is edited)
	DB     *ds.DB         // where messages are stored
	Store  *session.Store // the sessions, opened over DB
	// Expiry3 is the session expiry of MQTT 3.1.1 durable clients. Default DefaultExpiry.
	Expiry3 time.Duration
	// Batch is how many deliveries a connection takes from its session at once. Default 256.
	Batch int
	// Timeout bounds each Strata call made while a packet is being processed. Default 10s.
	Timeout time.Duration
	// StoreAll stores every QoS 1 and 2 message, whether or not a session wants it (Wanted).
	// Brokers sharing a replicated DB need it: a broker learns of a subscription made through
	// another broker only once its own replica applied it (and after its restart, once it
	// caught up), and until then would acknowledge matching messages without storing them.
	// Unwanted messages cost disk until retention drops them.
	StoreAll bool
	// ReadAllowed, if set, is asked before each delivery to a durable client whether it may
	// read the topic (give it the ACL hook's check, e.g. func(cl, t) { return
	// acl.OnACLCheck(cl, t, false) }): mochi's own hooks cannot be called from outside the
	// server. A refused delivery is completed as if acknowledged. Nil allows every read.
	ReadAllowed func(cl *mqtt.Client, topic string) bool
	Logger      *slog.Logger
}

// Hook is the mochi hook. Create it with New and add it with Server.AddHook(h, nil).
type Hook struct {
	mqtt.HookBase
	o Options

	mu    sync.Mutex
	conns map[*mqtt.Client]*conn // durable connections (by mochi client, one per connection)
	live  *live                  // QoS 0 to connected durable clients
}

// conn is a durable client's connection.
type conn struct {
	cl      *mqtt.Client
	s       *session.Session
	present bool
	cancel  context.CancelFunc
	pumped  chan struct{} // closed when the delivery goroutine ended (nil: not started)
	out0    chan packets.Packet
	wrote0  chan struct{}       // closed when the QoS 0 writer ended
	filters map[string]struct{} // the filters live holds for this connection (under live.mu)
	// subQoS: the QoS each filter of the SUBSCRIBE being processed asked for (OnSubscribe
	// gives mochi QoS 0; OnSubscribed grants these).
	subQoS []byte
	// unsub: which filters of the UNSUBSCRIBE being processed existed (MQTT 5 UNSUBACK).
	unsubMu  sync.Mutex
	unsubPID uint16
	unsub    []bool
	closing  atomic.Bool
}

// New returns a Hook over o.
func New(o Options) (*Hook, error) {
	if o.Server == nil || o.DB == nil || o.Store == nil {
		return nil, errors.New("mochi: Options.Server, DB and Store are required")
	}
	if o.Expiry3 <= 0 {
		o.Expiry3 = DefaultExpiry
	}
	if o.Batch <= 0 {
		o.Batch = 256
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Hook{o: o, conns: map[*mqtt.Client]*conn{}, live: newLive(o.Server)}, nil
}

// ID names the hook.
func (h *Hook) ID() string { return "strata-sessions" }

// Provides lists the hook points used.
func (h *Hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnSessionEstablish,
		mqtt.OnSessionEstablished,
		mqtt.OnDisconnect,
		mqtt.OnSubscribe,
		mqtt.OnSubscribed,
		mqtt.OnUnsubscribe,
		mqtt.OnPublish,
		mqtt.OnPacketRead,
		mqtt.OnPacketEncode,
	}, []byte{b})
}

// durable reports whether the client's CONNECT asked for a session that outlives it.
func durable(cl *mqtt.Client) bool {
	if cl.Net.Inline {
		return false
	}
	if cl.Properties.ProtocolVersion >= 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

func (h *Hook) conn(cl *mqtt.Client) *conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.conns[cl]
}

func (h *Hook) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), h.o.Timeout)
}

// OnSessionEstablish (after authentication, before mochi's own session take-over and the
// CONNACK) connects the client's Strata session. A failure closes the connection, so the
// CONNACK is never written.
func (h *Hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	ctx, cancel := h.ctx()
	defer cancel()
	if !durable(cl) {
		if cl.Net.Inline {
			return
		}
		// A clean, non-durable connection ends any durable session of its client ID.
		if err := h.o.Store.Delete(ctx, cl.ID); err != nil {
			h.o.Logger.Warn("strata: deleting the session of a clean connection", "client", cl.ID, "error", err)
			cl.Stop(err)
		}
		return
	}
	expiry := h.o.Expiry3
	receive := 0
	if cl.Properties.ProtocolVersion >= 5 {
		expiry = time.Duration(cl.Properties.Props.SessionExpiryInterval) * time.Second
		receive = int(cl.Properties.Props.ReceiveMaximum)
	}
	s, present, err := h.o.Store.Connect(ctx, cl.ID, session.ConnectOptions{
		CleanStart: pk.Connect.Clean, Expiry: expiry, ReceiveMaximum: receive})
	if err != nil {
		h.o.Logger.Warn("strata: connecting a durable session", "client", cl.ID, "error", err)
		cl.Stop(err)
		return
	}
	h.mu.Lock()
	h.conns[cl] = &conn{cl: cl, s: s, present: present, out0: make(chan packets.Packet, qos0Queue)}
	h.mu.Unlock()
}

// OnSessionEstablished (after the CONNACK, before the connection's read loop) starts the
// connection's delivery goroutines and lets QoS 0 messages reach it.
func (h *Hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	c := h.conn(cl)
	if c == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.pumped, c.wrote0 = make(chan struct{}), make(chan struct{})
	go h.pump(ctx, c)
	go h.write0(ctx, c)
	h.live.attach(c, c.s.Subscriptions())
}

// OnDisconnect (after the connection's read loop ended) stops the delivery goroutine and
// disconnects the session: it expires its expiry later unless resumed.
func (h *Hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.mu.Lock()
	c := h.conns[cl]
	delete(h.conns, cl)
	h.mu.Unlock()
	if c == nil {
		return
	}
	c.closing.Store(true)
	h.live.detach(c)
	if c.cancel != nil {
		c.cancel()
		<-c.pumped
		<-c.wrote0
	}
	ctx, cancel := h.ctx()
	defer cancel()
	if derr := c.s.Disconnect(ctx); derr != nil && !errors.Is(derr, session.ErrTakenOver) && !errors.Is(derr, session.ErrSessionClosed) {
		h.o.Logger.Warn("strata: disconnecting a session", "client", cl.ID, "error", derr)
	}
}

// OnSubscribe hands mochi a durable client's filters at QoS 0 and keeps the QoS asked
// for, which OnSubscribed grants. mochi's topic index briefly holds the filters (until
// OnSubscribed takes them out), and a QoS 0 entry there gets no packet ID of mochi's that
// could clash with the session's. With QoS 0 mochi still sends the retained messages after
// the SUBACK (at QoS 0, through its ACL check), following the retain handling; handling 1
// ("only if new") becomes 2 when the session already has the filter, which mochi cannot
// know once its index no longer holds it.
func (h *Hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	c := h.conn(cl)
	if c == nil {
		return pk
	}
	have := map[string]bool{}
	for _, s := range c.s.Subscriptions() {
		have[s.Filter] = true
	}
	filters := make(packets.Subscriptions, len(pk.Filters))
	copy(filters, pk.Filters)
	c.subQoS = make([]byte, len(filters))
	for i := range filters {
		if mqtt.IsSharedFilter(filters[i].Filter) {
			continue // shared subscriptions stay with mochi
		}
		c.subQoS[i] = min(filters[i].Qos, h.o.Server.Options.Capabilities.MaximumQos)
		filters[i].Qos = 0
		if filters[i].RetainHandling == 1 && have[filters[i].Filter] {
			filters[i].RetainHandling = 2
		}
	}
	pk.Filters = filters
	return pk
}

// OnSubscribed (after mochi indexed the filters, before the SUBACK) moves each granted
// filter of a durable client from mochi's topic index to the Strata session, and grants
// the QoS asked for. A filter the session refuses is answered 0x80 (reasonCodes is the
// SUBACK's own slice).
func (h *Hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	c := h.conn(cl)
	if c == nil {
		return
	}
	ctx, cancel := h.ctx()
	defer cancel()
	for i, sub := range pk.Filters {
		if i >= len(reasonCodes) || i >= len(c.subQoS) || reasonCodes[i] >= packets.ErrUnspecifiedError.Code || mqtt.IsSharedFilter(sub.Filter) {
			continue
		}
		// Out of mochi's index first: a message published in between goes to neither, and
		// none was promised before the SUBACK.
		if h.o.Server.Topics.Unsubscribe(sub.Filter, cl.ID) {
			atomic.AddInt64(&h.o.Server.Info.Subscriptions, -1)
		}
		cl.State.Subscriptions.Delete(sub.Filter)
		opts := session.SubscribeOptions{
			QoS: c.subQoS[i], NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished,
			SubscriptionID: uint32(sub.Identifier)}
		if err := c.s.Subscribe(ctx, sub.Filter, opts); err != nil {
			h.o.Logger.Warn("strata: subscribe", "client", cl.ID, "filter", sub.Filter, "error", err)
			reasonCodes[i] = packets.ErrUnspecifiedError.Code
			continue
		}
		reasonCodes[i] = opts.QoS
		h.live.add(c, session.Subscription{Filter: sub.Filter, SubscribeOptions: opts})
	}
	c.subQoS = nil
}

// OnUnsubscribe (before mochi's own unsubscribe and the UNSUBACK) removes the filters from
// the session; OnPacketEncode then corrects the MQTT 5 UNSUBACK's reason codes.
func (h *Hook) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	c := h.conn(cl)
	if c == nil {
		return pk
	}
	ctx, cancel := h.ctx()
	defer cancel()
	existed := make([]bool, len(pk.Filters))
	for i, sub := range pk.Filters {
		if mqtt.IsSharedFilter(sub.Filter) {
			continue
		}
		h.live.remove(c, sub.Filter)
		ok, err := c.s.Unsubscribe(ctx, sub.Filter)
		if err != nil {
			h.o.Logger.Warn("strata: unsubscribe", "client", cl.ID, "filter", sub.Filter, "error", err)
		}
		existed[i] = ok
	}
	c.unsubMu.Lock()
	c.unsubPID, c.unsub = pk.PacketID, existed
	c.unsubMu.Unlock()
	return pk
}

// OnPacketEncode sets what mochi cannot know in two packets of a durable client: the
// CONNACK's session present (from Strata: it survives restarts of the broker, mochi's own
// does not) and the MQTT 5 UNSUBACK's reason codes of filters that were in Strata.
func (h *Hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Connack, packets.Unsuback:
	default:
		return pk
	}
	c := h.conn(cl)
	if c == nil {
		return pk
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		if pk.ReasonCode == packets.CodeSuccess.Code {
			pk.SessionPresent = c.present
		}
	case packets.Unsuback:
		c.unsubMu.Lock()
		if c.unsubPID == pk.PacketID && len(c.unsub) == len(pk.ReasonCodes) {
			codes := append([]byte(nil), pk.ReasonCodes...)
			for i, ok := range c.unsub {
				if ok && codes[i] == packets.CodeNoSubscriptionExisted.Code {
					codes[i] = packets.CodeSuccess.Code
				}
			}
			pk.ReasonCodes = codes
		}
		c.unsub = nil
		c.unsubMu.Unlock()
	}
	return pk
}

// OnPacketRead takes a durable client's acknowledgements of the session's deliveries
// (PUBACK, PUBREC, PUBCOMP), and an inbound QoS 2 PUBREL.
//
// An acknowledgement the session took is handed on to mochi as a PUBACK with packet ID 0,
// which mochi's processPuback ignores. mochi must not see it: its inflight map holds the
// client's inbound QoS 2 packet IDs too (the packet ID spaces of the two directions are
// separate in MQTT, not in mochi's map), so a session's PUBACK with the same number would
// delete one of them; it answers a PUBREC it does not know with a PUBREL of its own (an
// error in MQTT 5); and its processPubcomp raises the client's quotas for any PUBCOMP.
// After a PUBREC the hook writes the PUBREL itself, once the session has made the PUBREC
// durable (a resumed session repeats the PUBREL, never the message).
func (h *Hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubrec, packets.Pubcomp:
		c := h.conn(cl)
		if c == nil {
			return pk, nil
		}
		err := h.acknowledge(c, pk)
		switch {
		case err == nil:
			return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}}, nil
		case errors.Is(err, session.ErrUnknownPacketID):
			return pk, nil // not the session's: mochi's own (a shared subscription's)
		case errors.Is(err, session.ErrWrongAck):
			h.o.Logger.Debug("strata: acknowledgement", "client", cl.ID, "packet", pk.FixedHeader.Type, "error", err)
			return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}}, nil
		default:
			// Not recorded (the session ended, or its write failed): the client repeats the
			// acknowledgement after it reconnects.
			h.o.Logger.Warn("strata: acknowledgement not recorded; closing the connection", "client", cl.ID, "error", err)
			cl.Stop(err)
			return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}}, nil
		}
	case packets.Pubrel:
		ctx, cancel := h.ctx()
		defer cancel()
		if err := h.o.Store.ReleaseQoS2(ctx, cl.ID, pk.PacketID); err != nil && !errors.Is(err, session.ErrUnknownPacketID) {
			h.o.Logger.Warn("strata: pubrel", "client", cl.ID, "error", err)
		}
	}
	return pk, nil
}

// acknowledge gives the session an acknowledgement of one of its deliveries.
func (h *Hook) acknowledge(c *conn, pk packets.Packet) error {
	switch pk.FixedHeader.Type {
	case packets.Puback:
		return c.s.Ack(pk.PacketID)
	case packets.Pubcomp:
		return c.s.Complete(pk.PacketID)
	}
	ctx, cancel := h.ctx()
	defer cancel()
	if err := c.s.Received(ctx, pk.PacketID); err != nil {
		return err
	}
	if pk.ReasonCode >= packets.ErrUnspecifiedError.Code {
		// MQTT 5 §4.3.3: a PUBREC with an error ends the exchange; no PUBREL.
		return c.s.Complete(pk.PacketID)
	}
	if err := c.cl.WritePacket(pubrel(pk.PacketID)); err != nil {
		h.o.Logger.Debug("strata: pubrel not written (the session repeats it)", "client", c.cl.ID, "error", err)
	}
	return nil
}

// OnPublish stores a QoS 1 or 2 message some durable session wants (every one, with
// Options.StoreAll) before mochi answers PUBACK/PUBREC (processPublish calls OnPublish
// first), and sends a QoS 0 message to the connected durable clients that subscribed to it
// (see live). If the store fails, the message is rejected (mochi neither acknowledges nor
// delivers it) and the connection closed, so the client sends it again.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Qos == 0 {
		h.live.publish(cl.ID, pk, h.o.ReadAllowed)
		return pk, nil
	}
	if !h.o.StoreAll && !h.o.Store.Wanted(pk.TopicName) {
		return pk, nil
	}
	m := ds.Message{ClientID: cl.ID, Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain}
	p := &pk.Properties
	m.Properties.PayloadFormat = p.PayloadFormat
	m.Properties.ContentType = p.ContentType
	m.Properties.ResponseTopic = p.ResponseTopic
	m.Properties.CorrelationData = p.CorrelationData
	for _, u := range p.User {
		m.Properties.User = append(m.Properties.User, ds.UserProperty{Key: u.Key, Value: u.Val})
	}
	ctx, cancel := h.ctx()
	defer cancel()
	var err error
	if pk.FixedHeader.Qos == 2 && !cl.Net.Inline {
		_, err = h.o.Store.StoreQoS2(ctx, m, pk.PacketID)
	} else {
		_, err = h.o.DB.Store(ctx, m)
	}
	if err != nil {
		h.o.Logger.Error("strata: storing a publish; closing the connection", "client", cl.ID, "topic", pk.TopicName, "error", err)
		cl.Stop(fmt.Errorf("strata: store: %w", err))
		return pk, packets.ErrRejectPacket
	}
	return pk, nil
}
