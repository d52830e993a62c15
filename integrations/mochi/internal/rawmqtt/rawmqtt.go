// Package rawmqtt is an MQTT 3.1.1 client for tests that must decide each packet: which
// acknowledgement is sent, when, and when the connection drops (paho decides those
// itself). Packets are encoded and decoded with mochi's codec.
package rawmqtt

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Client is one connection. Its methods are not safe for concurrent use.
type Client struct {
	c       net.Conn
	r       *bufio.Reader
	timeout time.Duration
}

// Dial connects to addr ("host:port" or "tcp://host:port") with clean session = false and
// the client ID id, and returns the CONNACK's session present. Reads wait timeout at most.
func Dial(addr, id string, timeout time.Duration) (*Client, bool, error) {
	nc, err := net.DialTimeout("tcp", strings.TrimPrefix(addr, "tcp://"), timeout)
	if err != nil {
		return nil, false, err
	}
	c := &Client{c: nc, r: bufio.NewReader(nc), timeout: timeout}
	err = c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Keepalive: 60}})
	if err != nil {
		nc.Close()
		return nil, false, err
	}
	ack, err := c.Read()
	if err == nil && (ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0) {
		err = fmt.Errorf("connect %s: got %v, reason %d", id, ack.FixedHeader.Type, ack.ReasonCode)
	}
	if err != nil {
		nc.Close()
		return nil, false, err
	}
	return c, ack.SessionPresent, nil
}

// Close closes the connection without DISCONNECT.
func (c *Client) Close() error { return c.c.Close() }

// Send writes a CONNECT, SUBSCRIBE, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP or PINGREQ.
func (c *Client) Send(pk packets.Packet) error {
	pk.ProtocolVersion = 4
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		pk.FixedHeader.Qos = 1
		err = pk.SubscribeEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrel:
		pk.FixedHeader.Qos = 1
		err = pk.PubrelEncode(&buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	default:
		return fmt.Errorf("rawmqtt cannot send %v", pk.FixedHeader.Type)
	}
	if err != nil {
		return err
	}
	_, err = c.c.Write(buf.Bytes())
	return err
}

// Ack sends a PUBACK, PUBREC, PUBREL or PUBCOMP (typ) for pid.
func (c *Client) Ack(typ byte, pid uint16) error {
	return c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: typ}, PacketID: pid})
}

// Read returns the next packet from the broker: CONNACK, SUBACK, PUBLISH, PUBACK,
// PUBREC, PUBREL, PUBCOMP or PINGRESP.
func (c *Client) Read() (packets.Packet, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(c.timeout))
	pk := packets.Packet{ProtocolVersion: 4}
	b0, err := c.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b0); err != nil {
		return pk, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		b, err := c.r.ReadByte()
		if err != nil {
			return pk, err
		}
		if i == 4 {
			return pk, errors.New("rawmqtt: malformed remaining length")
		}
		n += int(b&127) * mul
		if b < 128 {
			break
		}
		mul *= 128
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubrel:
		err = pk.PubrelDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Pingresp:
	default:
		err = fmt.Errorf("rawmqtt: unexpected %v", pk.FixedHeader.Type)
	}
	return pk, err
}

// Subscribe subscribes to filter at qos and checks the SUBACK grants it.
func (c *Client) Subscribe(filter string, qos byte) error {
	err := c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter, Qos: qos}}})
	if err != nil {
		return err
	}
	ack, err := c.Read()
	if err == nil && (ack.FixedHeader.Type != packets.Suback || len(ack.ReasonCodes) != 1 || ack.ReasonCodes[0] != qos) {
		err = fmt.Errorf("subscribe %s: got %v %v", filter, ack.FixedHeader.Type, ack.ReasonCodes)
	}
	return err
}

// Ping sends PINGREQ and returns an error unless the next packet is the PINGRESP: it
// checks that the broker sent nothing else before.
func (c *Client) Ping() error {
	if err := c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}); err != nil {
		return err
	}
	pk, err := c.Read()
	if err == nil && pk.FixedHeader.Type != packets.Pingresp {
		err = fmt.Errorf("got %v %d before the PINGRESP", pk.FixedHeader.Type, pk.PacketID)
	}
	return err
}
