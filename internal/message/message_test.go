package message_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/strata-mq/strata/internal/message"
	"github.com/stretchr/testify/require"
)

// equal fails the test unless want and got are deeply equal. ctx, if any, is
// a format string and its arguments.
func equal(t testing.TB, want, got any, ctx ...any) {
	t.Helper()
	require.Equal(t, want, got, ctx...)
}

func noErr(t testing.TB, err error) {
	t.Helper()
	require.NoError(t, err, "unexpected error")
}

// errIs fails the test unless err wraps target.
func errIs(t testing.TB, err, target error, ctx ...any) {
	t.Helper()
	require.ErrorIs(t, err, target, ctx...)
}

// fixtures returns hand-picked messages that between them set every field,
// every flag and every uvarint width boundary that matters.
func fixtures() map[string]message.Message {
	return map[string]message.Message{
		"zero":        {},
		"qos0":        {ClientID: "c", Topic: "a/b", Payload: []byte("x"), QoS: 0},
		"qos1":        {ClientID: "c", Payload: []byte("x"), QoS: 1},
		"qos2 retain": {ClientID: "c", Payload: []byte("x"), QoS: 2, Retain: true},
		"retain only": {Retain: true},
		"binary payload": {
			ClientID: "sensor-17",
			Payload:  []byte{0x00, 0xff, 0x80, 0x7f, 0x00},
		},
		"payload 127": {Payload: bytes.Repeat([]byte{'a'}, 127)},
		"payload 128": {Payload: bytes.Repeat([]byte{'b'}, 128)},
		"payload 16384": {
			ClientID: strings.Repeat("k", 300),
			Payload:  bytes.Repeat([]byte{'c'}, 1<<14),
		},
		"unicode": {ClientID: "클라이언트", Topic: "温度/🌡", Payload: []byte("ünïcödé")},
		"payload format": {
			Properties: message.Properties{PayloadFormat: 1},
		},
		"expiry zero": {
			Properties: message.Properties{HasMessageExpiry: true},
		},
		"expiry max": {
			Properties: message.Properties{HasMessageExpiry: true, MessageExpiry: ^uint32(0)},
		},
		"content type": {
			Properties: message.Properties{ContentType: "application/json"},
		},
		"response topic": {
			Properties: message.Properties{ResponseTopic: "reply/to/me"},
		},
		"correlation data": {
			Properties: message.Properties{CorrelationData: []byte{0, 1, 2, 0xff}},
		},
		"user properties": {
			Properties: message.Properties{User: []message.UserProperty{
				{Key: "b", Value: "2"},
				{Key: "a", Value: "1"},
				{Key: "a", Value: "1"}, // duplicates are kept
				{Key: "", Value: ""},   // empty strings are legal
				{Key: "a", Value: "3"},
			}},
		},
		"everything": {
			ClientID:  "publisher-1",
			Topic:     "sensor/1/temp",
			Payload:   []byte(`{"t":21.5}`),
			QoS:       2,
			Retain:    true,
			Shard:     7,
			Timestamp: 1_700_000_000_000_000,
			Properties: message.Properties{
				PayloadFormat:    1,
				MessageExpiry:    3600,
				HasMessageExpiry: true,
				ContentType:      "application/json",
				ResponseTopic:    "sensor/1/ack",
				CorrelationData:  []byte("req-42"),
				User:             []message.UserProperty{{Key: "unit", Value: "C"}},
			},
		},
	}
}

// randString returns a string whose length often sits on a uvarint boundary.
func randString(r *rand.Rand) string {
	return string(randBytes(r))
}

func randBytes(r *rand.Rand) []byte {
	var n int
	switch r.IntN(8) {
	case 0:
		return nil
	case 1:
		return []byte{}
	case 2:
		n = 127 + r.IntN(3) // 127, 128, 129
	case 3:
		n = 1000 + r.IntN(2000)
	default:
		n = r.IntN(40)
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func randMessage(r *rand.Rand) message.Message {
	m := message.Message{
		ClientID:  randString(r),
		Topic:     randString(r),
		Payload:   randBytes(r),
		QoS:       byte(r.IntN(3)),
		Retain:    r.IntN(2) == 0,
		Shard:     uint16(r.Uint32()),
		Timestamp: r.Uint64(),
	}
	p := &m.Properties
	// Each property is present about half the time, so that many messages
	// carry none and exercise the propflags-absent path.
	if r.IntN(2) == 0 {
		p.PayloadFormat = byte(r.IntN(2))
	}
	if r.IntN(2) == 0 {
		p.HasMessageExpiry = true
		p.MessageExpiry = r.Uint32()
	}
	if r.IntN(2) == 0 {
		p.ContentType = randString(r)
	}
	if r.IntN(2) == 0 {
		p.ResponseTopic = randString(r)
	}
	if r.IntN(2) == 0 {
		p.CorrelationData = randBytes(r)
	}
	if r.IntN(2) == 0 {
		n := r.IntN(5)
		p.User = make([]message.UserProperty, n)
		for i := range p.User {
			p.User[i] = message.UserProperty{Key: randString(r), Value: randString(r)}
		}
	}
	return m
}

// normalize maps m to the value DecodeRecord returns for its record: the
// format does not distinguish nil from empty, and drops MessageExpiry when
// HasMessageExpiry is false.
func normalize(m message.Message) message.Message {
	if len(m.Payload) == 0 {
		m.Payload = nil
	}
	if len(m.Properties.CorrelationData) == 0 {
		m.Properties.CorrelationData = nil
	}
	if len(m.Properties.User) == 0 {
		m.Properties.User = nil
	}
	if !m.Properties.HasMessageExpiry {
		m.Properties.MessageExpiry = 0
	}
	return m
}

// roundTrip encodes m, checks RecordSize, decodes into a message whose key
// fields are preset, and checks the result against normalize(m).
func roundTrip(t *testing.T, m message.Message) {
	t.Helper()
	rec := message.AppendRecord(nil, &m)
	equal(t, len(rec), message.RecordSize(&m), "RecordSize")

	got := message.Message{Topic: m.Topic, Shard: m.Shard, Timestamp: m.Timestamp}
	noErr(t, message.DecodeRecord(rec, &got))
	equal(t, normalize(m), got)
}

func TestRoundTrip(t *testing.T) {
	for name, m := range fixtures() {
		t.Run(name, func(t *testing.T) { roundTrip(t, m) })
	}
}

func TestRoundTripRandom(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 0xdeadbeef} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, seed))
			for range 500 {
				roundTrip(t, randMessage(r))
			}
		})
	}
}

// TestRecordFormat pins the encoding of two messages byte by byte, so that the
// on-disk format cannot change by accident. A deliberate change needs a new
// version.
func TestRecordFormat(t *testing.T) {
	cases := []struct {
		name string
		m    message.Message
		hex  string
	}{
		{
			name: "no properties",
			m:    message.Message{ClientID: "c1", Topic: "ignored", Payload: []byte("hi"), QoS: 1, Retain: true},
			hex: "01" + // version
				"05" + // flags: retain | QoS 1
				"02" + "6331" + // client ID "c1"
				"02" + "6869", // payload "hi"
		},
		{
			name: "all properties",
			m: message.Message{
				ClientID: "c",
				Payload:  []byte{0xaa},
				QoS:      2,
				Properties: message.Properties{
					PayloadFormat:    1,
					MessageExpiry:    0x01020304,
					HasMessageExpiry: true,
					ContentType:      "t",
					ResponseTopic:    "r",
					CorrelationData:  []byte{0xcd},
					User:             []message.UserProperty{{Key: "k", Value: "v"}},
				},
			},
			hex: "01" + // version
				"0a" + // flags: properties | QoS 2
				"3f" + // propflags: U D T C E F
				"01" + "63" + // client ID "c"
				"01" + // payload format
				"01020304" + // message expiry
				"01" + "74" + // content type "t"
				"01" + "72" + // response topic "r"
				"01" + "cd" + // correlation data
				"01" + "01" + "6b" + "01" + "76" + // 1 user property k=v
				"01" + "aa", // payload
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want, err := hex.DecodeString(tc.hex)
			noErr(t, err)
			equal(t, want, message.AppendRecord(nil, &tc.m))
		})
	}
}

func TestAppendRecordAppends(t *testing.T) {
	m := fixtures()["everything"]
	prefix := []byte("prefix")
	rec := message.AppendRecord(append([]byte(nil), prefix...), &m)
	equal(t, prefix, rec[:len(prefix)])
	equal(t, message.AppendRecord(nil, &m), rec[len(prefix):])
}

func TestDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for range 500 {
		m := randMessage(r)
		// A deep copy built independently must encode identically: the
		// record depends on the message's value, not its identity or
		// the capacity of its slices.
		c := m
		c.Payload = append(make([]byte, 0, len(m.Payload)+10), m.Payload...)
		c.Properties.User = append([]message.UserProperty(nil), m.Properties.User...)
		a := message.AppendRecord(nil, &m)
		equal(t, a, message.AppendRecord(nil, &m))
		equal(t, a, message.AppendRecord(nil, &c))
	}
}

func TestNilAndEmptyAreEqual(t *testing.T) {
	withNil := message.Message{ClientID: "c", Payload: nil}
	withEmpty := message.Message{ClientID: "c", Payload: []byte{}}
	withEmpty.Properties.CorrelationData = []byte{}
	withEmpty.Properties.User = []message.UserProperty{}
	rec := message.AppendRecord(nil, &withNil)
	equal(t, rec, message.AppendRecord(nil, &withEmpty))

	var got message.Message
	noErr(t, message.DecodeRecord(rec, &got))
	require.Nil(t, got.Payload, "empty fields decoded as non-nil: %+v", got)
	require.Nil(t, got.Properties.CorrelationData, "empty fields decoded as non-nil: %+v", got)
	require.Nil(t, got.Properties.User, "empty fields decoded as non-nil: %+v", got)
}

func TestExpiryWithoutFlagIsDropped(t *testing.T) {
	m := message.Message{Properties: message.Properties{MessageExpiry: 99}}
	plain := message.Message{}
	equal(t, message.AppendRecord(nil, &plain), message.AppendRecord(nil, &m))
}

func TestDecodeKeepsKeyFields(t *testing.T) {
	src := fixtures()["everything"]
	rec := message.AppendRecord(nil, &src)
	got := message.Message{Topic: "t/o/p", Shard: 3, Timestamp: 12345}
	noErr(t, message.DecodeRecord(rec, &got))
	equal(t, "t/o/p", got.Topic)
	equal(t, uint16(3), got.Shard)
	equal(t, uint64(12345), got.Timestamp)
}

// TestDecodeOverwrites checks that decoding into a used message replaces
// every record field, including properties absent from the new record.
func TestDecodeOverwrites(t *testing.T) {
	src := message.Message{ClientID: "new", Payload: []byte("p")}
	rec := message.AppendRecord(nil, &src)
	got := fixtures()["everything"]
	noErr(t, message.DecodeRecord(rec, &got))
	equal(t, "new", got.ClientID)
	equal(t, []byte("p"), got.Payload)
	equal(t, byte(0), got.QoS)
	equal(t, false, got.Retain)
	equal(t, message.Properties{}, got.Properties)
}

// TestDecodeDoesNotAlias overwrites the record after decoding, as a Pebble
// iterator does when it steps, and checks that the message is unaffected.
func TestDecodeDoesNotAlias(t *testing.T) {
	src := fixtures()["everything"]
	rec := message.AppendRecord(nil, &src)
	var got message.Message
	noErr(t, message.DecodeRecord(rec, &got))
	for i := range rec {
		rec[i] ^= 0xff
	}
	got.Topic, got.Shard, got.Timestamp = src.Topic, src.Shard, src.Timestamp
	equal(t, src, got)
}

func TestDecodeErrorLeavesMessageUnchanged(t *testing.T) {
	src := fixtures()["everything"]
	rec := message.AppendRecord(nil, &src)
	got := fixtures()["user properties"]
	err := message.DecodeRecord(rec[:len(rec)-1], &got)
	errIs(t, err, message.ErrCorrupt)
	equal(t, fixtures()["user properties"], got)
}

// TestTruncation checks that every proper prefix of a valid record, including
// the empty one, is rejected. Because every field is length-prefixed and the
// payload is too, no prefix can parse as a shorter valid record.
func TestTruncation(t *testing.T) {
	check := func(t *testing.T, m message.Message) {
		rec := message.AppendRecord(nil, &m)
		for n := range len(rec) {
			var got message.Message
			err := message.DecodeRecord(rec[:n], &got)
			errIs(t, err, message.ErrCorrupt, "prefix of %d/%d bytes", n, len(rec))
		}
	}
	for name, m := range fixtures() {
		t.Run(name, func(t *testing.T) { check(t, m) })
	}
	t.Run("random", func(t *testing.T) {
		r := rand.New(rand.NewPCG(11, 11))
		for range 50 {
			check(t, randMessage(r))
		}
	})
}

func TestTrailingBytes(t *testing.T) {
	for name, m := range fixtures() {
		rec := message.AppendRecord(nil, &m)
		for _, tail := range [][]byte{{0}, {1}, {0xff, 0xff}} {
			var got message.Message
			err := message.DecodeRecord(append(rec[:len(rec):len(rec)], tail...), &got)
			errIs(t, err, message.ErrCorrupt, "%s + %x", name, tail)
		}
	}
}

// TestCorrupt feeds hand-built malformed records, one per rule the decoder
// enforces.
func TestCorrupt(t *testing.T) {
	huge := binary.AppendUvarint(nil, 1<<62)
	cases := map[string][]byte{
		"empty":                     {},
		"version 0":                 {0, 0, 0, 0},
		"version 2":                 {2, 0, 0, 0},
		"version 255":               {255, 0, 0, 0},
		"no flags":                  {1},
		"qos 3":                     {1, 0x03, 0, 0},
		"reserved flag 4":           {1, 0x10, 0, 0},
		"reserved flag 7":           {1, 0x80, 0, 0},
		"propflags missing":         {1, 0x08},
		"propflags empty":           {1, 0x08, 0x00, 0, 0},
		"propflags reserved 6":      {1, 0x08, 0x40, 0, 0},
		"propflags reserved 7":      {1, 0x08, 0x80, 0, 0},
		"payload format 0":          {1, 0x08, 0x01, 0, 0, 0},
		"payload format 2":          {1, 0x08, 0x01, 0, 2, 0},
		"payload format missing":    {1, 0x08, 0x01, 0},
		"expiry short":              {1, 0x08, 0x02, 0, 0, 0, 0},
		"content type empty":        {1, 0x08, 0x04, 0, 0, 0},
		"response topic empty":      {1, 0x08, 0x08, 0, 0, 0},
		"correlation data empty":    {1, 0x08, 0x10, 0, 0, 0},
		"user count zero":           {1, 0x08, 0x20, 0, 0, 0},
		"user count too big":        {1, 0x08, 0x20, 0, 3, 0, 0, 0, 0, 0},
		"user count huge":           append([]byte{1, 0x08, 0x20, 0}, huge...),
		"user value missing":        {1, 0x08, 0x20, 0, 1, 0, 0},
		"client ID past end":        {1, 0, 5, 'a', 'b', 0},
		"client ID length huge":     append([]byte{1, 0}, huge...),
		"payload past end":          {1, 0, 0, 3, 'a', 'b'},
		"payload length huge":       append([]byte{1, 0, 0}, huge...),
		"payload missing":           {1, 0, 0},
		"non-minimal client ID len": {1, 0, 0x80, 0x00, 0},
		"non-minimal payload len":   {1, 0, 0, 0x81, 0x00, 'x'},
		"uvarint overflow": {1, 0, 0xff, 0xff, 0xff, 0xff, 0xff,
			0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"uvarint unterminated": {1, 0, 0x80, 0x80},
	}
	for name, rec := range cases {
		t.Run(name, func(t *testing.T) {
			var got message.Message
			err := message.DecodeRecord(rec, &got)
			errIs(t, err, message.ErrCorrupt)
			equal(t, message.Message{}, got)
		})
	}
}

// TestInvalidMessageIsNotMisread checks that a message AppendRecord cannot
// represent is written so that it reads back as corrupt rather than as a
// different valid message. In particular QoS 4 must not wrap to QoS 0.
func TestInvalidMessageIsNotMisread(t *testing.T) {
	for _, m := range []message.Message{
		{QoS: 3},
		{QoS: 4},
		{QoS: 255},
		{Properties: message.Properties{PayloadFormat: 2}},
		{Properties: message.Properties{PayloadFormat: 255}},
	} {
		rec := message.AppendRecord(nil, &m)
		equal(t, len(rec), message.RecordSize(&m))
		var got message.Message
		errIs(t, message.DecodeRecord(rec, &got), message.ErrCorrupt, "%+v", m)
	}
}

func TestRecordSizeDoesNotAllocate(t *testing.T) {
	m := fixtures()["everything"]
	allocs := testing.AllocsPerRun(100, func() { _ = message.RecordSize(&m) })
	equal(t, 0.0, allocs)
}

func TestAppendRecordIntoCapacityDoesNotAllocate(t *testing.T) {
	m := fixtures()["everything"]
	buf := make([]byte, 0, message.RecordSize(&m))
	allocs := testing.AllocsPerRun(100, func() { _ = message.AppendRecord(buf[:0], &m) })
	equal(t, 0.0, allocs)
}

func TestSize(t *testing.T) {
	equal(t, 0, message.Size(&message.Message{}))
	m := message.Message{ClientID: "abc", Topic: "t/t", Payload: []byte("12345")}
	equal(t, 11, message.Size(&m))
	m.Properties = message.Properties{
		PayloadFormat:    1,                                               // 1
		HasMessageExpiry: true,                                            // 4
		ContentType:      "ct",                                            // 2
		ResponseTopic:    "rt",                                            // 2
		CorrelationData:  []byte("cd"),                                    // 2
		User:             []message.UserProperty{{Key: "k", Value: "vv"}}, // 3
	}
	equal(t, 11+14, message.Size(&m))

	// Size counts the topic, which the record does not hold, and no framing.
	r := rand.New(rand.NewPCG(5, 5))
	for range 200 {
		m := randMessage(r)
		require.GreaterOrEqual(t, message.Size(&m), len(m.Topic)+len(m.Payload)+len(m.ClientID),
			"Size, at least topic+payload+client ID")
	}
}

func TestErrCorruptMessage(t *testing.T) {
	var got message.Message
	err := message.DecodeRecord([]byte{9}, &got)
	errIs(t, err, message.ErrCorrupt)
	equal(t, "corrupt message record: unknown version 9", err.Error())
}

func FuzzDecodeRecord(f *testing.F) {
	for _, m := range fixtures() {
		f.Add(message.AppendRecord(nil, &m))
	}
	r := rand.New(rand.NewPCG(3, 3))
	for range 20 {
		m := randMessage(r)
		f.Add(message.AppendRecord(nil, &m))
	}
	f.Add([]byte{})
	f.Add([]byte{1, 0x08, 0x20, 0, 0x7f})

	f.Fuzz(func(t *testing.T, buf []byte) {
		orig := append([]byte(nil), buf...)
		var m message.Message
		if err := message.DecodeRecord(buf, &m); err != nil {
			require.ErrorIs(t, err, message.ErrCorrupt)
			return
		}
		require.True(t, bytes.Equal(orig, buf), "DecodeRecord modified its input")
		// The format is canonical, so a record that decodes re-encodes to
		// exactly the same bytes, and therefore decodes to the same message.
		rec := message.AppendRecord(nil, &m)
		require.True(t, bytes.Equal(rec, buf), "re-encoding differs:\n in  %x\n out %x", buf, rec)
		require.Equal(t, len(rec), message.RecordSize(&m), "RecordSize")
		var m2 message.Message
		require.NoError(t, message.DecodeRecord(rec, &m2), "re-decoding")
		equal(t, m, m2)
	})
}

func benchMessage() message.Message {
	m := fixtures()["everything"]
	m.Payload = bytes.Repeat([]byte{0x5a}, 1024)
	return m
}

func BenchmarkAppendRecord(b *testing.B) {
	m := benchMessage()
	buf := make([]byte, 0, message.RecordSize(&m))
	b.SetBytes(int64(message.RecordSize(&m)))
	b.ReportAllocs()
	for b.Loop() {
		buf = message.AppendRecord(buf[:0], &m)
	}
}

func BenchmarkDecodeRecord(b *testing.B) {
	m := benchMessage()
	rec := message.AppendRecord(nil, &m)
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	var got message.Message
	for b.Loop() {
		if err := message.DecodeRecord(rec, &got); err != nil {
			b.Fatal(err)
		}
	}
}
