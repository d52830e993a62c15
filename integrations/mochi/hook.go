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
// mochi therefore never queues (or drops) messages for a durable client; every delivery to
// it comes from session.Session.Next, written by a goroutine of the connection. The
// limits of that approach are listed in README.md.
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
	Logger  *slog.Logger
}

// Hook is the mochi hook. Create it with New and add it with Server.AddHook(h, nil).
type Hook struct {
	mqtt.HookBase
	o Options

	mu    sync.Mutex
	conns map[*mqtt.Client]*conn // durable connections (by mochi client, one per connection)
}

// conn is a durable client's connection.
type conn struct {
	cl      *mqtt.Client
	s       *session.Session
	present bool
	cancel  context.CancelFunc
	pumped  chan struct{} // closed when the delivery goroutine ended (nil: not started)
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
	return &Hook{o: o, conns: map[*mqtt.Client]*conn{}}, nil
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
	h.conns[cl] = &conn{cl: cl, s: s, present: present}
	h.mu.Unlock()
}

// OnSessionEstablished (after the CONNACK) starts the connection's delivery goroutine.
func (h *Hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	c := h.conn(cl)
	if c == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.pumped = make(chan struct{})
	go h.pump(ctx, c)
}

// pump writes the session's deliveries to the client until the connection or the session
// ends. WritePacket blocks while the socket does, which is the back-pressure; the session
// bounds what awaits a PUBACK (its ReceiveMaximum).
func (h *Hook) pump(ctx context.Context, c *conn) {
	defer close(c.pumped)
	v5 := c.cl.Properties.ProtocolVersion >= 5
	for {
		batch, err := c.s.Next(ctx, h.o.Batch)
		if err != nil {
			if ctx.Err() == nil && !c.closing.Load() {
				// Taken over elsewhere (another Store or site) or the Store closed.
				h.o.Logger.Info("strata: session ended", "client", c.cl.ID, "error", err)
				c.cl.Stop(err)
			}
			return
		}
		for _, d := range batch {
			if err := c.cl.WritePacket(packetOf(d, v5)); err != nil {
				// The connection is closing; the session re-sends the unacknowledged.
				return
			}
		}
	}
}

// packetOf builds the PUBLISH (or PUBREL) of a delivery.
func packetOf(d session.Delivery, v5 bool) packets.Packet {
	if d.Release {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: d.PacketID}
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: d.QoS, Dup: d.Dup, Retain: d.Retain},
		TopicName:   d.Message.Topic,
		Payload:     d.Message.Payload,
	}
	if d.QoS > 0 {
		pk.PacketID = d.PacketID
	}
	if v5 {
		for _, id := range d.SubIDs {
			pk.Properties.SubscriptionIdentifier = append(pk.Properties.SubscriptionIdentifier, int(id))
		}
		p := d.Message.Properties
		pk.Properties.PayloadFormat, pk.Properties.PayloadFormatFlag = p.PayloadFormat, p.PayloadFormat != 0
		pk.Properties.ContentType = p.ContentType
		pk.Properties.ResponseTopic = p.ResponseTopic
		pk.Properties.CorrelationData = p.CorrelationData
		for _, u := range p.User {
			pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: u.Key, Val: u.Value})
		}
	}
	return pk
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
	if c.cancel != nil {
		c.cancel()
		<-c.pumped
	}
	ctx, cancel := h.ctx()
	defer cancel()
	if derr := c.s.Disconnect(ctx); derr != nil && !errors.Is(derr, session.ErrTakenOver) && !errors.Is(derr, session.ErrSessionClosed) {
		h.o.Logger.Warn("strata: disconnecting a session", "client", cl.ID, "error", derr)
	}
}

// OnSubscribe caps a durable client's subscriptions at QoS 1 (outbound QoS 2 is not wired
// up yet: mochi answers a PUBREC it does not know itself) and turns off mochi's retained
// delivery for them (it would allocate packet IDs the session also uses).
func (h *Hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if h.conn(cl) == nil {
		return pk
	}
	filters := make(packets.Subscriptions, len(pk.Filters))
	copy(filters, pk.Filters)
	for i := range filters {
		if mqtt.IsSharedFilter(filters[i].Filter) {
			continue // shared subscriptions stay with mochi
		}
		filters[i].Qos = min(filters[i].Qos, 1)
		filters[i].RetainHandling = 2
	}
	pk.Filters = filters
	return pk
}

// OnSubscribed (after mochi indexed the filters, before the SUBACK) moves each granted
// filter of a durable client from mochi's topic index to the Strata session. A filter the
// session refuses is answered 0x80 (reasonCodes is the SUBACK's own slice).
func (h *Hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	c := h.conn(cl)
	if c == nil {
		return
	}
	ctx, cancel := h.ctx()
	defer cancel()
	for i, sub := range pk.Filters {
		if i >= len(reasonCodes) || reasonCodes[i] >= packets.ErrUnspecifiedError.Code || mqtt.IsSharedFilter(sub.Filter) {
			continue
		}
		// Out of mochi's index first: a message published in between goes to neither, and
		// none was promised before the SUBACK.
		if h.o.Server.Topics.Unsubscribe(sub.Filter, cl.ID) {
			atomic.AddInt64(&h.o.Server.Info.Subscriptions, -1)
		}
		cl.State.Subscriptions.Delete(sub.Filter)
		err := c.s.Subscribe(ctx, sub.Filter, session.SubscribeOptions{
			QoS: reasonCodes[i], NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished,
			SubscriptionID: uint32(sub.Identifier)})
		if err != nil {
			h.o.Logger.Warn("strata: subscribe", "client", cl.ID, "filter", sub.Filter, "error", err)
			reasonCodes[i] = packets.ErrUnspecifiedError.Code
		}
	}
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

// OnPacketRead takes a durable client's acknowledgements of the session's deliveries, and
// an inbound QoS 2 PUBREL. A PUBACK the session took is handed on to mochi with packet ID
// 0, which mochi's processPuback ignores: its own inflight map also holds the client's
// inbound QoS 2 packet IDs (as PUBREC entries), which a PUBACK of a session delivery with
// the same number would otherwise delete.
func (h *Hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Puback:
		if c := h.conn(cl); c != nil {
			err := c.s.Ack(pk.PacketID)
			switch {
			case err == nil:
				pk.PacketID = 0
			case !errors.Is(err, session.ErrUnknownPacketID):
				h.o.Logger.Debug("strata: puback", "client", cl.ID, "error", err)
			}
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

// OnPublish stores a QoS 1 or 2 message some durable session wants before mochi answers
// PUBACK/PUBREC (processPublish calls OnPublish first). If the store fails, the message is
// rejected (mochi neither acknowledges nor delivers it) and the connection closed, so the
// client sends it again.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Qos == 0 || !h.o.Store.Wanted(pk.TopicName) {
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
