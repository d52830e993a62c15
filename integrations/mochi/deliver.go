package mochi

import (
	"context"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/strata-mq/strata/session"
)

// qos0Queue is how many QoS 0 messages wait for a durable connection's writer before new
// ones are dropped (mochi's own outbound queue for a client is 8192 packets by default;
// these are only the QoS 0 ones).
const qos0Queue = 1024

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
			if !d.Release && h.o.ReadAllowed != nil && !h.o.ReadAllowed(c.cl, d.Message.Topic) {
				h.skip(ctx, c, d)
				continue
			}
			if err := c.cl.WritePacket(packetOf(d, v5)); err != nil {
				// The connection is closing; the session re-sends the unacknowledged.
				return
			}
		}
	}
}

// skip completes a delivery the read ACL refuses, as if the client had acknowledged it,
// so that it neither holds a place in the window nor comes back after a resume.
func (h *Hook) skip(ctx context.Context, c *conn, d session.Delivery) {
	var err error
	switch d.QoS {
	case 1:
		err = c.s.Ack(d.PacketID)
	case 2:
		if err = c.s.Received(ctx, d.PacketID); err == nil {
			err = c.s.Complete(d.PacketID)
		}
	}
	if err != nil {
		h.o.Logger.Debug("strata: skipping a delivery the read ACL refuses", "client", c.cl.ID, "error", err)
	}
}

// write0 writes the connection's QoS 0 messages (see live) until ctx ends.
func (h *Hook) write0(ctx context.Context, c *conn) {
	defer close(c.wrote0)
	for {
		select {
		case <-ctx.Done():
			return
		case pk := <-c.out0:
			if err := c.cl.WritePacket(pk); err != nil {
				return
			}
		}
	}
}

// send0 queues a QoS 0 PUBLISH for the connection; false if its queue is full.
func (c *conn) send0(pk packets.Packet) bool {
	select {
	case c.out0 <- pk:
		return true
	default:
		return false
	}
}

// packetOf builds the PUBLISH (or PUBREL) of a delivery.
func packetOf(d session.Delivery, v5 bool) packets.Packet {
	if d.Release {
		return pubrel(d.PacketID)
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

func pubrel(pid uint16) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: pid}
}
