// Package message defines the MQTT application message that Strata stores and
// the byte format of its value record.
//
// # Where a message lives
//
// A stored message is one Pebble key/value pair. The key, owned by the layout
// packages, carries everything a reader seeks or filters on: the shard, the
// stream, the timestamp and the topic. The value is the record defined here and
// carries the rest. Keeping Topic, Shard and Timestamp out of the record means
// they are stored exactly once, and means a reader can skip a message whose
// topic does not match a filter without decoding its value at all.
//
// # Record format (version 1)
//
// Lengths and counts are uvarints (encoding/binary). The only fixed-width
// integer, the message expiry interval, is big-endian like the MQTT wire
// format. A box drawn with '=' has variable width.
//
//	+---------+---------+ - - - - - - -+==================+
//	| version |  flags  |  propflags   |    client ID     |
//	|  0x01   |         | iff flags.P  |  uvarint len, n  |
//	+---------+---------+ - - - - - - -+==================+
//
//	then, only for the propflags bits that are set, in this order:
//
//	  bit F  payload format     1 byte, always 0x01 (0 is the absent value)
//	  bit E  message expiry     4 bytes, big-endian seconds
//	  bit C  content type       uvarint len, n bytes (n > 0)
//	  bit T  response topic     uvarint len, n bytes (n > 0)
//	  bit D  correlation data   uvarint len, n bytes (n > 0)
//	  bit U  user properties    uvarint count (> 0), then count times:
//	                            +==================+==================+
//	                            |       key        |      value       |
//	                            |  uvarint len, n  |  uvarint len, n  |
//	                            +==================+==================+
//
//	and last, always:
//
//	+==================+
//	|     payload      |
//	|  uvarint len, n  |
//	+==================+
//
//	flags                               propflags
//	  7   6   5   4   3   2   1   0       7   6   5   4   3   2   1   0
//	+---+---+---+---+---+---+---+---+   +---+---+---+---+---+---+---+---+
//	| 0 | 0 | 0 | 0 | P | R |  QoS  |   | 0 | 0 | U | D | T | C | E | F |
//	+---+---+---+---+---+---+---+---+   +---+---+---+---+---+---+---+---+
//
//	QoS  0, 1 or 2 (3 is corrupt)
//	R    retain
//	P    a propflags byte follows; set iff at least one propflags bit is set
//
// The propflags byte exists because QoS, retain and six optional properties do
// not fit in one byte. Most messages carry no MQTT 5 properties at all, so
// rather than spend a second flags byte on every record, it is present only
// when needed: a QoS 1 message with no properties has a 2-byte header, and
// absent properties cost nothing.
//
// The payload comes last so that every small, fixed-cost field precedes it:
// a reader that only needs the metadata (say, to check expiry) can stop before
// touching the bulk of the record.
//
// # Invariants
//
//   - Canonical: every message has exactly one encoding, and DecodeRecord
//     accepts only that encoding. Reserved bits must be zero, uvarints must be
//     minimal, and a present optional field must not hold its absent value (an
//     empty string, empty correlation data, zero user properties, payload
//     format 0, or a propflags byte of zero). Hence for any buf that decodes,
//     AppendRecord(nil, decoded) == buf, which the fuzz test checks.
//   - Deterministic: AppendRecord's output depends only on the message.
//   - A nil and an empty payload (likewise correlation data) encode the same
//     way and decode as nil. MQTT does not distinguish them either.
//   - MessageExpiry is stored only when HasMessageExpiry is set; otherwise it
//     is dropped and decodes as 0.
//   - DecodeRecord never panics, never reads past the buffer, rejects trailing
//     bytes, and checks every length against the bytes that remain before
//     allocating, so a corrupted length cannot cause a huge allocation.
//   - Strings are not checked for UTF-8. The broker validated them when the
//     message arrived; rejecting them on the way out would make a stored
//     message unreadable for no benefit.
//   - The version byte comes first so that a future format can change
//     everything after it; DecodeRecord rejects versions it does not know.
//
// AppendRecord does not validate its input: the store validates messages before
// writing them. A message no valid record can hold (QoS > 2 or PayloadFormat >
// 1) is encoded so that DecodeRecord rejects it as corrupt, never so that it
// decodes as a different, valid message.
package message

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"unsafe"
)

// ErrCorrupt is wrapped by every decode error (fmt.Errorf("%w: ...", ErrCorrupt)).
var ErrCorrupt = errors.New("corrupt message record")

// UserProperty is one MQTT 5 User Property (a UTF-8 string pair).
type UserProperty struct{ Key, Value string }

// Properties are the MQTT 5 PUBLISH properties a durable session must deliver.
type Properties struct {
	PayloadFormat    byte   // 0 = unspecified bytes, 1 = UTF-8 (MQTT 5 §3.3.2.3.2); absent == 0
	MessageExpiry    uint32 // seconds; meaningful only if HasMessageExpiry
	HasMessageExpiry bool
	ContentType      string
	ResponseTopic    string
	CorrelationData  []byte
	User             []UserProperty // order and duplicates preserved
}

// Message is one MQTT application message.
type Message struct {
	ClientID   string // publisher client ID; chooses the shard
	Topic      string
	Payload    []byte
	QoS        byte // 0,1,2
	Retain     bool
	Properties Properties
	// Set by the store on write/read; ignored by Store:
	Shard     uint16
	Timestamp uint64 // µs, assigned by the shard, strictly increasing within it
}

// Version is the record format version that AppendRecord writes.
const Version = 1

// flags bits.
const (
	flagQoSMask    = 0x03
	flagRetain     = 0x04
	flagProperties = 0x08
	flagsReserved  = 0xf0
)

// propflags bits.
const (
	propPayloadFormat   = 0x01
	propMessageExpiry   = 0x02
	propContentType     = 0x04
	propResponseTopic   = 0x08
	propCorrelationData = 0x10
	propUser            = 0x20
	propReserved        = 0xc0
)

// maxQoS is the highest valid QoS. An out-of-range QoS is clamped to
// flagQoSMask (3), which the decoder rejects, rather than masked, which could
// turn QoS 4 into a valid QoS 0.
const maxQoS = 2

// payloadFormatUTF8 is the only payload format that is stored: 0 is the
// absent value.
const payloadFormatUTF8 = 1

// propFlags returns the propflags byte of p: a bit per present property.
func propFlags(p *Properties) byte {
	var f byte
	if p.PayloadFormat != 0 {
		f |= propPayloadFormat
	}
	if p.HasMessageExpiry {
		f |= propMessageExpiry
	}
	if p.ContentType != "" {
		f |= propContentType
	}
	if p.ResponseTopic != "" {
		f |= propResponseTopic
	}
	if len(p.CorrelationData) > 0 {
		f |= propCorrelationData
	}
	if len(p.User) > 0 {
		f |= propUser
	}
	return f
}

// AppendRecord appends the value record of m to dst: everything EXCEPT Topic,
// Shard and Timestamp (those live in the key). Deterministic: same message,
// same bytes. It does not validate m; see the package documentation.
func AppendRecord(dst []byte, m *Message) []byte {
	p := &m.Properties
	pf := propFlags(p)

	qos := m.QoS
	if qos > flagQoSMask {
		qos = flagQoSMask
	}
	flags := qos
	if m.Retain {
		flags |= flagRetain
	}
	if pf != 0 {
		flags |= flagProperties
	}

	dst = append(dst, Version, flags)
	if pf != 0 {
		dst = append(dst, pf)
	}
	dst = appendString(dst, m.ClientID)
	if pf&propPayloadFormat != 0 {
		dst = append(dst, p.PayloadFormat)
	}
	if pf&propMessageExpiry != 0 {
		dst = binary.BigEndian.AppendUint32(dst, p.MessageExpiry)
	}
	if pf&propContentType != 0 {
		dst = appendString(dst, p.ContentType)
	}
	if pf&propResponseTopic != 0 {
		dst = appendString(dst, p.ResponseTopic)
	}
	if pf&propCorrelationData != 0 {
		dst = appendBytes(dst, p.CorrelationData)
	}
	if pf&propUser != 0 {
		dst = binary.AppendUvarint(dst, uint64(len(p.User)))
		for i := range p.User {
			dst = appendString(dst, p.User[i].Key)
			dst = appendString(dst, p.User[i].Value)
		}
	}
	return appendBytes(dst, m.Payload)
}

// RecordSize returns len(AppendRecord(nil, m)) without allocating (used for
// batch byte budgets).
func RecordSize(m *Message) int {
	p := &m.Properties
	pf := propFlags(p)
	n := 2 // version, flags
	if pf != 0 {
		n++
	}
	n += lenPrefixed(len(m.ClientID))
	if pf&propPayloadFormat != 0 {
		n++
	}
	if pf&propMessageExpiry != 0 {
		n += 4
	}
	if pf&propContentType != 0 {
		n += lenPrefixed(len(p.ContentType))
	}
	if pf&propResponseTopic != 0 {
		n += lenPrefixed(len(p.ResponseTopic))
	}
	if pf&propCorrelationData != 0 {
		n += lenPrefixed(len(p.CorrelationData))
	}
	if pf&propUser != 0 {
		n += uvarintLen(uint64(len(p.User)))
		for i := range p.User {
			n += lenPrefixed(len(p.User[i].Key)) + lenPrefixed(len(p.User[i].Value))
		}
	}
	return n + lenPrefixed(len(m.Payload))
}

// Size returns an estimate of the message's bytes (topic + payload + client ID
// + properties), used for MaxMessageBytes. It counts content only, not any
// encoding overhead, so it does not depend on the record format and is the
// same whether or not a message has been stored.
func Size(m *Message) int {
	p := &m.Properties
	n := len(m.Topic) + len(m.Payload) + len(m.ClientID)
	if p.PayloadFormat != 0 {
		n++
	}
	if p.HasMessageExpiry {
		n += 4
	}
	n += len(p.ContentType) + len(p.ResponseTopic) + len(p.CorrelationData)
	for i := range p.User {
		n += len(p.User[i].Key) + len(p.User[i].Value)
	}
	return n
}

// DecodeRecord decodes a record into m (ClientID, Payload, QoS, Retain,
// Properties); Topic, Shard and Timestamp are left untouched. The decoded
// strings and slices are copies and never alias buf, which is typically a
// Pebble iterator value that is reused on the next step.
//
// Any malformed input returns an error wrapping ErrCorrupt and leaves m
// unchanged. DecodeRecord never panics.
func DecodeRecord(buf []byte, m *Message) error {
	// One copy of the whole record: every field below is a view into it, so a decode costs one
	// allocation instead of one per field. The copy is never written to, which makes the string
	// views safe; the payload and correlation data views are capped so appends reallocate.
	if len(buf) > 0 {
		buf = append(make([]byte, 0, len(buf)), buf...)
	}
	r := reader{b: buf}

	version, ok := r.byte()
	if !ok {
		return corrupt("empty record")
	}
	if version != Version {
		return corrupt("unknown version %d", version)
	}
	flags, ok := r.byte()
	if !ok {
		return corrupt("truncated flags")
	}
	if flags&flagsReserved != 0 {
		return corrupt("reserved flags bits set: %#02x", flags)
	}
	qos := flags & flagQoSMask
	if qos > maxQoS {
		return corrupt("invalid QoS %d", qos)
	}
	var pf byte
	if flags&flagProperties != 0 {
		if pf, ok = r.byte(); !ok {
			return corrupt("truncated property flags")
		}
		if pf == 0 {
			// flagProperties promises at least one property.
			return corrupt("property flags byte present but empty")
		}
		if pf&propReserved != 0 {
			return corrupt("reserved property flags bits set: %#02x", pf)
		}
	}

	clientID, err := r.lenPrefixed("client ID")
	if err != nil {
		return err
	}

	var props Properties
	if pf&propPayloadFormat != 0 {
		b, ok := r.byte()
		if !ok {
			return corrupt("truncated payload format")
		}
		if b != payloadFormatUTF8 {
			return corrupt("invalid payload format %d", b)
		}
		props.PayloadFormat = b
	}
	if pf&propMessageExpiry != 0 {
		b, ok := r.next(4)
		if !ok {
			return corrupt("truncated message expiry")
		}
		props.MessageExpiry = binary.BigEndian.Uint32(b)
		props.HasMessageExpiry = true
	}
	if pf&propContentType != 0 {
		b, err := r.nonEmpty("content type")
		if err != nil {
			return err
		}
		props.ContentType = view(b)
	}
	if pf&propResponseTopic != 0 {
		b, err := r.nonEmpty("response topic")
		if err != nil {
			return err
		}
		props.ResponseTopic = view(b)
	}
	if pf&propCorrelationData != 0 {
		b, err := r.nonEmpty("correlation data")
		if err != nil {
			return err
		}
		props.CorrelationData = b[:len(b):len(b)]
	}
	if pf&propUser != 0 {
		count, err := r.uvarint("user property count")
		if err != nil {
			return err
		}
		if count == 0 {
			return corrupt("user property count is zero")
		}
		// Each pair takes at least two bytes (two empty strings), so a count
		// beyond half the remaining bytes is corrupt. Checking before make
		// bounds the allocation by the input size.
		if count > uint64(len(r.b))/2 {
			return corrupt("user property count %d exceeds remaining %d bytes", count, len(r.b))
		}
		props.User = make([]UserProperty, count)
		for i := range props.User {
			k, err := r.lenPrefixed("user property key")
			if err != nil {
				return err
			}
			v, err := r.lenPrefixed("user property value")
			if err != nil {
				return err
			}
			props.User[i] = UserProperty{Key: view(k), Value: view(v)}
		}
	}

	payload, err := r.lenPrefixed("payload")
	if err != nil {
		return err
	}
	if len(r.b) != 0 {
		return corrupt("%d trailing bytes", len(r.b))
	}

	m.ClientID = view(clientID)
	m.Payload = nil
	if len(payload) > 0 {
		m.Payload = payload[:len(payload):len(payload)]
	}
	m.QoS = qos
	m.Retain = flags&flagRetain != 0
	m.Properties = props
	return nil
}

// reader consumes a record from the front. Every method reports failure
// instead of panicking, and none allocates.
type reader struct {
	b []byte
}

func (r *reader) byte() (byte, bool) {
	if len(r.b) == 0 {
		return 0, false
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c, true
}

func (r *reader) next(n int) ([]byte, bool) {
	if n > len(r.b) {
		return nil, false
	}
	b := r.b[:n:n]
	r.b = r.b[n:]
	return b, true
}

// uvarint reads a minimally encoded uvarint. Non-minimal encodings (such as
// 0x80 0x00 for zero) are rejected so that the format stays canonical. what
// names the value in the error.
func (r *reader) uvarint(what string) (uint64, error) {
	v, problem := r.rawUvarint()
	if problem != "" {
		return 0, corrupt("%s %s", problem, what)
	}
	return v, nil
}

// rawUvarint is uvarint reporting failure as a word rather than an error, so
// that callers can name the field without building the name on the success
// path (concatenating it would allocate on every field of every record).
func (r *reader) rawUvarint() (v uint64, problem string) {
	v, n := binary.Uvarint(r.b)
	switch {
	case n == 0:
		return 0, "truncated"
	case n < 0:
		return 0, "64-bit overflow in"
	case n != uvarintLen(v):
		return 0, "non-minimal"
	}
	r.b = r.b[n:]
	return v, ""
}

// lenPrefixed reads a uvarint length and that many bytes. The returned slice
// aliases the record; callers copy it.
func (r *reader) lenPrefixed(what string) ([]byte, error) {
	n, problem := r.rawUvarint()
	if problem != "" {
		return nil, corrupt("%s %s length", problem, what)
	}
	// Compare as uint64: converting a corrupted length to int first could
	// wrap negative.
	if n > uint64(len(r.b)) {
		return nil, corrupt("%s length %d exceeds remaining %d bytes", what, n, len(r.b))
	}
	b, _ := r.next(int(n))
	return b, nil
}

// nonEmpty is lenPrefixed for an optional field, whose presence bit would not
// be set if it were empty.
func (r *reader) nonEmpty(what string) ([]byte, error) {
	b, err := r.lenPrefixed(what)
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, corrupt("%s present but empty", what)
	}
	return b, nil
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// uvarintLen returns the length of the minimal uvarint encoding of v.
func uvarintLen(v uint64) int {
	return (bits.Len64(v|1) + 6) / 7
}

// lenPrefixed returns the encoded size of an n-byte length-prefixed field.
func lenPrefixed(n int) int {
	return uvarintLen(uint64(n)) + n
}

// clone copies b so that the result does not alias the record. Empty input
// returns nil: nil and empty are the same value in this format.
// view returns b as a string without copying. REQUIRES: b is never modified afterwards.
func view(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// Clone returns a copy of m that shares no memory with it: payload, correlation data and user
// properties are copied (strings are immutable and shared). The payload and correlation data
// share one allocation.
func Clone(m *Message) *Message {
	c := *m
	if n := len(m.Payload) + len(m.Properties.CorrelationData); n > 0 {
		buf := make([]byte, 0, n)
		buf = append(buf, m.Payload...)
		c.Payload = buf[:len(m.Payload):len(m.Payload)]
		if len(m.Properties.CorrelationData) > 0 {
			buf = append(buf, m.Properties.CorrelationData...)
			c.Properties.CorrelationData = buf[len(m.Payload):]
		}
		if len(m.Payload) == 0 {
			c.Payload = nil
		}
	}
	if m.Properties.User != nil {
		c.Properties.User = append([]UserProperty(nil), m.Properties.User...)
	}
	return &c
}
