package ds

import (
	"time"

	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/stream"
)

// Message is one MQTT application message: publisher client ID, topic, payload, QoS, retain
// and the MQTT 5 properties. On read, Shard and Timestamp say where it was stored.
type Message = message.Message

// Properties are the MQTT 5 PUBLISH properties kept with a message.
type Properties = message.Properties

// UserProperty is one MQTT 5 user property.
type UserProperty = message.UserProperty

// Stream is one stream of one shard-generation. It is a value: marshal it with MarshalBinary and
// restore it with UnmarshalStream.
type Stream = stream.Stream

// Iterator is a resumable cursor over one stream. It is a value: store the bytes of
// MarshalBinary with the session and resume with UnmarshalIterator, after a restart or on
// another node.
type Iterator = stream.Iterator

// ShardID identifies a shard.
type ShardID = stream.ShardID

// GenerationID identifies a generation within its shard.
type GenerationID = stream.GenerationID

// LayoutKind selects a layout.
type LayoutKind = stream.LayoutKind

// Layouts.
const (
	LayoutLTS       = stream.LayoutLTS
	LayoutReference = stream.LayoutReference
)

// UnmarshalIterator decodes an iterator; bytes that are not one give ErrInvalidIterator.
func UnmarshalIterator(b []byte) (Iterator, error) {
	var it Iterator
	err := it.UnmarshalBinary(b)
	return it, err
}

// UnmarshalStream decodes a stream; bytes that are not one give ErrInvalidIterator.
func UnmarshalStream(b []byte) (Stream, error) {
	var s Stream
	err := s.UnmarshalBinary(b)
	return s, err
}

// Micros converts a time to Strata's µs timestamps; the zero time is 0 (the beginning).
func Micros(t time.Time) uint64 {
	if t.IsZero() || t.UnixMicro() < 0 {
		return 0
	}
	return uint64(t.UnixMicro())
}

// Time converts a Strata timestamp to a time.
func Time(ts uint64) time.Time { return time.UnixMicro(int64(ts)) }
