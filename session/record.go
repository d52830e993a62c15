package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
)

// Record keys, inside the records of the shard ds.ShardOf(clientID) (MQTT client IDs never
// contain U+0000, so the separator cannot be forged):
//
//	session state:             'S' | clientID
//	inbound QoS 2 packet ID:   'Q' | clientID | 0x00 | packetID(u16)   (value: empty)
const (
	keySession = 'S'
	keyInbound = 'Q'
)

func sessionKey(clientID string) []byte { return append([]byte{keySession}, clientID...) }

func inboundPrefix(clientID string) []byte {
	return append(append([]byte{keyInbound}, clientID...), 0)
}

func inboundKey(clientID string, pid uint16) []byte {
	return binary.BigEndian.AppendUint16(inboundPrefix(clientID), pid)
}

// state is a session's durable state: what the record holds.
//
// Session record value (format version 1), integers uvarint unless noted:
//
//	+-----+---------+-------------+-----------+--------------------+-----------+---------+
//	| 'S' | version | epoch       | expiry(s) | disconnected(µs)   | next seq  | flags   |
//	|     |  (u8) 1 |             |           | 0: connected       |           | (u8)    |
//	+-----+---------+-------------+-----------+--------------------+-----------+---------+
//	| bytes(owner) | uvarint(n) | n × subscription | uvarint(w) | w × QoS 2 entry |
//	+--------------+------------+------------------+------------+-----------------+
//	| uvarint(d) | d × completed QoS 2 | crc32c |
//	+------------+---------------------+--------+
//
//	subscription: bytes(filter) | qos(u8) | opts(u8: bit0 no-local, bit1 retain-as-published,
//	              bit2 retired) | subscription ID | bytes(position: ds.Position)
//	              | bytes(sent: ds.Position) | [retired only] bytes(until: ds.Position)
//
// A retired subscription was unsubscribed while deliveries of it were in flight: a resumed
// session delivers again only what it had sent (below until), then forgets it.
//
//	QoS 2 entry:  seq | shard | ts | sub index+1 (0: unsubscribed) | state(u8: 1 sent,
//	              2 received, 3 sent and not kept) | [1 only] bytes(topic) | bytes(message record)
//
// A sent message is kept in the record (state 1) while the window's kept messages stay
// under maxKeptBytes; beyond, only its reference is (state 3), and a resumed session resends
// it when its subscription reads it again.
//
//	completed:    sub index+1 | shard | ts
//
// A completed QoS 2 delivery is kept while its subscription's position is at or before it
// (an earlier message of the shard is unacknowledged): a resumed subscription reads it again
// and must skip it, or the client would receive it twice.
// flags bit0 (clean): the state was written by Disconnect, so sent positions are exact.
// crc32c (Castagnoli, big-endian u32) covers everything before it. The encoding is
// canonical: decodeState accepts only what appendState writes.
type state struct {
	Epoch        uint64
	Expiry       time.Duration // whole seconds
	Disconnected uint64        // µs; 0 while connected
	NextSeq      uint64
	Clean        bool
	Owner        string
	Subs         []subState
	Window       []qos2Entry
	Done         []doneEntry
}

// doneEntry is a completed QoS 2 delivery above its subscription's position.
type doneEntry struct {
	Sub int // index+1 into Subs
	Ref ds.Ref
}

type subState struct {
	Filter         string
	QoS            byte
	NoLocal        bool
	RetainAsPub    bool
	SubscriptionID uint32
	Position       ds.Position // everything before it completed (acknowledged)
	Sent           ds.Position // everything before it sent at least once (exact when Clean)
	Retired        bool
	Until          ds.Position // retired: what it sent before it was unsubscribed
}

type qos2Entry struct {
	Seq      uint64
	Ref      ds.Ref
	Sub      int // index+1 into Subs; 0 once unsubscribed
	Received bool
	Msg      *ds.Message // nil once Received, or not kept (state 3)
}

// maxKeptBytes bounds the QoS 2 messages kept in a session record.
const maxKeptBytes = 256 << 10

const (
	stateMagic   = 'S'
	stateVersion = 1
	maxItems     = 1 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func appendBytes(dst, b []byte) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(b))), b...)
}

func appendState(dst []byte, s *state) []byte {
	start := len(dst)
	dst = append(dst, stateMagic, stateVersion)
	dst = binary.AppendUvarint(dst, s.Epoch)
	dst = binary.AppendUvarint(dst, uint64(s.Expiry/time.Second))
	dst = binary.AppendUvarint(dst, s.Disconnected)
	dst = binary.AppendUvarint(dst, s.NextSeq)
	var flags byte
	if s.Clean {
		flags |= 1
	}
	dst = append(dst, flags)
	dst = appendBytes(dst, []byte(s.Owner))
	dst = binary.AppendUvarint(dst, uint64(len(s.Subs)))
	for _, sb := range s.Subs {
		dst = appendBytes(dst, []byte(sb.Filter))
		var o byte
		if sb.NoLocal {
			o |= 1
		}
		if sb.RetainAsPub {
			o |= 2
		}
		if sb.Retired {
			o |= 4
		}
		dst = append(dst, sb.QoS, o)
		dst = binary.AppendUvarint(dst, uint64(sb.SubscriptionID))
		p, _ := sb.Position.MarshalBinary()
		dst = appendBytes(dst, p)
		p, _ = sb.Sent.MarshalBinary()
		dst = appendBytes(dst, p)
		if sb.Retired {
			p, _ = sb.Until.MarshalBinary()
			dst = appendBytes(dst, p)
		}
	}
	dst = binary.AppendUvarint(dst, uint64(len(s.Window)))
	var rec []byte
	for _, e := range s.Window {
		dst = binary.AppendUvarint(dst, e.Seq)
		dst = binary.AppendUvarint(dst, uint64(e.Ref.Shard))
		dst = binary.AppendUvarint(dst, e.Ref.Timestamp)
		dst = binary.AppendUvarint(dst, uint64(e.Sub))
		if e.Received {
			dst = append(dst, 2)
			continue
		}
		if e.Msg == nil {
			dst = append(dst, 3)
			continue
		}
		dst = append(dst, 1)
		dst = appendBytes(dst, []byte(e.Msg.Topic))
		rec = message.AppendRecord(rec[:0], e.Msg)
		dst = appendBytes(dst, rec)
	}
	dst = binary.AppendUvarint(dst, uint64(len(s.Done)))
	for _, d := range s.Done {
		dst = binary.AppendUvarint(dst, uint64(d.Sub))
		dst = binary.AppendUvarint(dst, uint64(d.Ref.Shard))
		dst = binary.AppendUvarint(dst, d.Ref.Timestamp)
	}
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// ErrCorruptState is wrapped by every error about a session record that does not decode.
var ErrCorruptState = errors.New("strata/session: corrupt session record")

func decodeState(b []byte) (*state, error) {
	bad := func(what string) (*state, error) {
		return nil, fmt.Errorf("%w: %s", ErrCorruptState, what)
	}
	if len(b) < 2+4 || b[0] != stateMagic || b[1] != stateVersion {
		return bad("header")
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[len(b)-4:]) {
		return bad("checksum")
	}
	r := body[2:]
	ok := true
	uv := func() uint64 {
		v, n := binary.Uvarint(r)
		if n <= 0 || n > 1 && r[n-1] == 0 {
			ok = false
			r = nil
			return 0
		}
		r = r[n:]
		return v
	}
	byt := func() byte {
		if len(r) == 0 {
			ok = false
			return 0
		}
		v := r[0]
		r = r[1:]
		return v
	}
	bytesOf := func() []byte {
		l := uv()
		if !ok || l > uint64(len(r)) {
			ok = false
			return nil
		}
		v := r[:l]
		r = r[l:]
		return v
	}
	s := &state{Epoch: uv()}
	if s.Epoch == 0 {
		return bad("epoch")
	}
	exp := uv()
	if exp > uint64(maxExpiry/time.Second) {
		return bad("expiry")
	}
	s.Expiry = time.Duration(exp) * time.Second
	s.Disconnected = uv()
	s.NextSeq = uv()
	flags := byt()
	if flags > 1 {
		return bad("flags")
	}
	s.Clean = flags == 1
	s.Owner = string(bytesOf())
	n := uv()
	if !ok || n > maxItems || n > uint64(len(r)) {
		return bad("subscription count")
	}
	for range n {
		var sb subState
		sb.Filter = string(bytesOf())
		sb.QoS = byt()
		o := byt()
		id := uv()
		if !ok || sb.QoS > 2 || o > 7 || id > maxSubscriptionID || topic.ValidateFilter(sb.Filter) != nil {
			return bad("subscription")
		}
		sb.NoLocal, sb.RetainAsPub, sb.Retired, sb.SubscriptionID = o&1 != 0, o&2 != 0, o&4 != 0, uint32(id)
		for _, other := range s.Subs {
			if other.Filter == sb.Filter && !other.Retired && !sb.Retired {
				return bad("subscription filter twice")
			}
		}
		var err error
		if sb.Position, err = ds.UnmarshalPosition(bytesOf()); err != nil || !ok {
			return bad("subscription position")
		}
		if sb.Sent, err = ds.UnmarshalPosition(bytesOf()); err != nil || !ok {
			return bad("subscription sent position")
		}
		if sb.Retired {
			if sb.Until, err = ds.UnmarshalPosition(bytesOf()); err != nil || !ok {
				return bad("retired subscription's until position")
			}
		}
		s.Subs = append(s.Subs, sb)
	}
	w := uv()
	if !ok || w > maxItems || w > uint64(len(r)) {
		return bad("window count")
	}
	for range w {
		e := qos2Entry{Seq: uv()}
		sh := uv()
		e.Ref = ds.Ref{Shard: ds.ShardID(sh), Timestamp: uv()}
		sub := uv()
		st := byt()
		if !ok || sh > 1<<16-1 || sub > uint64(len(s.Subs)) || st < 1 || st > 3 || e.Seq == 0 || e.Seq >= s.NextSeq ||
			len(s.Window) > 0 && e.Seq <= s.Window[len(s.Window)-1].Seq {
			return bad("QoS 2 entry")
		}
		e.Sub, e.Received = int(sub), st == 2
		if st == 1 {
			t := bytesOf()
			rec := bytesOf()
			if !ok || topic.ValidateName(string(t)) != nil {
				return bad("QoS 2 message")
			}
			m := &ds.Message{Topic: string(t)}
			if err := message.DecodeRecord(rec, m); err != nil {
				return bad("QoS 2 message record")
			}
			m.Shard, m.Timestamp = uint16(e.Ref.Shard), e.Ref.Timestamp
			e.Msg = m
		}
		s.Window = append(s.Window, e)
	}
	d := uv()
	if !ok || d > maxItems || d > uint64(len(r)) {
		return bad("completed count")
	}
	for range d {
		sub, sh, ts := uv(), uv(), uv()
		if !ok || sub == 0 || sub > uint64(len(s.Subs)) || sh > 1<<16-1 {
			return bad("completed QoS 2 entry")
		}
		d := doneEntry{Sub: int(sub), Ref: ds.Ref{Shard: ds.ShardID(sh), Timestamp: ts}}
		if n := len(s.Done); n > 0 && compareDone(s.Done[n-1], d) >= 0 {
			return bad("completed QoS 2 entries out of order")
		}
		s.Done = append(s.Done, d)
	}
	if !ok || len(r) != 0 {
		return bad("trailing bytes")
	}
	return s, nil
}

// compareDone orders completed entries as appendState writes them: by subscription, shard,
// timestamp.
func compareDone(a, b doneEntry) int {
	switch {
	case a.Sub != b.Sub:
		return a.Sub - b.Sub
	case a.Ref.Shard != b.Ref.Shard:
		return int(a.Ref.Shard) - int(b.Ref.Shard)
	case a.Ref.Timestamp < b.Ref.Timestamp:
		return -1
	case a.Ref.Timestamp > b.Ref.Timestamp:
		return 1
	}
	return 0
}
