package inspect

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/strata-mq/strata/ds"

	"github.com/strata-mq/strata/generation"
)

// This file holds the JSON views shared by the operator tools: `ds-info <cmd> -json` over a
// data directory (an Inspector) and the admin HTTP handler over a running DB (Handler)
// produce the same rows from the same code, so a client reads either the same way.

// Source is what the inspection views read: a running *DB or a read-only *Inspector.
type Source interface {
	Generations() ([]ds.GenerationInfo, error)
	StreamCount(sh ds.ShardID, gen ds.GenerationID) (int, error)
	GenerationUsage(sh ds.ShardID, gen ds.GenerationID) (ds.GenerationUsage, error)
	Streams(filter string, since time.Time) ([]ds.Stream, error)
	DumpLayout(sh ds.ShardID, gen ds.GenerationID) (string, error)
	Messages(filter string, since time.Time, limit int) ([]ds.Message, error)
}

var (
	_ Source = (*ds.DB)(nil)
	_ Source = (*Inspector)(nil)
)

// InfoView is the summary of a store (ds-info info, GET /v1/info).
type InfoView struct {
	Format      int    `json:"format"`
	NShards     int    `json:"nshards"`
	Storage     string `json:"storage"` // "shared pebble", "pebble per shard", or "backend"
	Created     string `json:"created"` // RFC 3339; empty when unknown
	DiskBytes   uint64 `json:"disk_bytes"`
	Generations int    `json:"generations"`
	Streams     int    `json:"streams"`
}

// GenerationView is one generation of one shard (ds-info generations, GET /v1/generations).
type GenerationView struct {
	Shard       ds.ShardID      `json:"shard"`
	Generation  ds.GenerationID `json:"generation"`
	Since       string          `json:"since"`
	Until       string          `json:"until,omitempty"`
	SinceMicros uint64          `json:"since_us"`
	UntilMicros uint64          `json:"until_us,omitempty"`
	State       string          `json:"state"` // "current" or "sealed"
	Layout      string          `json:"layout"`
	Streams     int             `json:"streams"`
	Messages    uint64          `json:"messages"`
	// Uncounted: the generation was created before message counts existed; Messages is 0.
	Uncounted bool `json:"uncounted,omitempty"`
	// DiskBytes is Pebble's estimate of the generation's bytes in sstables and blob files;
	// data still in memtables counts 0 until it is flushed.
	DiskBytes uint64 `json:"disk_bytes"`
}

// StreamView is one learned stream (ds-info streams, GET /v1/streams).
type StreamView struct {
	Shard      ds.ShardID      `json:"shard"`
	Generation ds.GenerationID `json:"generation"`
	Key        uint64          `json:"key"`
	Layout     string          `json:"layout"`
	Pattern    string          `json:"pattern"`
}

// TrieView is the learned topic structure of one shard-generation (ds-info trie, GET /v1/trie).
type TrieView struct {
	Shard      int    `json:"shard"`
	Generation int64  `json:"generation"`
	Trie       string `json:"trie"`
}

// MessageView is one stored message (ds-info messages, GET /v1/messages). ClientID, Topic and
// Payload are escaped for display (EscapeBytes; Payload shows at most PayloadPreviewBytes);
// PayloadBase64 is the whole payload.
type MessageView struct {
	Shard         uint16 `json:"shard"`
	Timestamp     string `json:"timestamp"`
	Micros        uint64 `json:"timestamp_us"`
	ClientID      string `json:"client_id"`
	QoS           uint8  `json:"qos"`
	Retain        bool   `json:"retain,omitempty"`
	Topic         string `json:"topic"`
	Payload       string `json:"payload"`
	PayloadBase64 string `json:"payload_base64"`
	PayloadBytes  int    `json:"payload_bytes"`
}

// InfoOf summarizes src; m is its manifest and diskBytes its size. Errors of shards that did
// not load are joined and returned with the counts of the others.
func InfoOf(src Source, m ds.Manifest, diskBytes uint64) (InfoView, error) {
	gens, err := src.Generations()
	streams := 0
	for _, g := range gens {
		n, serr := src.StreamCount(g.Shard, g.ID)
		if serr != nil {
			err = errors.Join(err, serr)
		}
		streams += n
	}
	return InfoView{Format: m.Format, NShards: m.NShards, Storage: m.Storage(), Created: m.Created,
		DiskBytes: diskBytes, Generations: len(gens), Streams: streams}, err
}

// GenerationsOf lists the generations of src with their stream counts. The rows are never
// nil; an error may come with a partial result.
func GenerationsOf(src Source) ([]GenerationView, error) {
	gens, err := src.Generations()
	rows := []GenerationView{}
	for _, g := range gens {
		n, serr := src.StreamCount(g.Shard, g.ID)
		if serr != nil {
			err = errors.Join(err, serr)
		}
		u, uerr := src.GenerationUsage(g.Shard, g.ID)
		if uerr != nil {
			err = errors.Join(err, uerr)
		}
		r := GenerationView{Shard: g.Shard, Generation: g.ID, Since: generation.FormatTS(g.Since), SinceMicros: g.Since,
			State: "sealed", Layout: g.Layout.String(), Streams: n, Messages: u.Messages, Uncounted: !u.Counted && uerr == nil, DiskBytes: u.DiskBytes}
		if g.Current() {
			r.State = "current"
		} else {
			r.Until, r.UntilMicros = generation.FormatTS(g.Until), g.Until
		}
		rows = append(rows, r)
	}
	return rows, err
}

// StreamsOf lists the streams of src whose pattern can match filter, of every generation.
func StreamsOf(src Source, filter string) ([]StreamView, error) {
	streams, err := src.Streams(filter, time.Time{})
	rows := []StreamView{}
	for _, s := range streams {
		rows = append(rows, StreamView{s.Shard, s.Generation, s.Key, s.Layout.String(), s.Pattern})
	}
	return rows, err
}

// TrieOf renders the learned topic structure of one shard-generation.
func TrieOf(src Source, sh ds.ShardID, gen ds.GenerationID) (TrieView, error) {
	dump, err := src.DumpLayout(sh, gen)
	if err != nil {
		return TrieView{}, err
	}
	return TrieView{Shard: int(sh), Generation: int64(gen), Trie: dump}, nil
}

// MessagesOf lists up to limit messages of src matching filter from since (limit <= 0: no
// limit), by shard then timestamp.
func MessagesOf(src Source, filter string, since time.Time, limit int) ([]MessageView, error) {
	msgs, err := src.Messages(filter, since, limit)
	rows := []MessageView{}
	for _, m := range msgs {
		rows = append(rows, MessageView{
			Shard: m.Shard, Timestamp: generation.FormatTS(m.Timestamp), Micros: m.Timestamp,
			ClientID: EscapeBytes([]byte(m.ClientID)), QoS: m.QoS, Retain: m.Retain, Topic: EscapeBytes([]byte(m.Topic)),
			Payload: PayloadPreview(m.Payload), PayloadBase64: base64.StdEncoding.EncodeToString(m.Payload),
			PayloadBytes: len(m.Payload),
		})
	}
	return rows, err
}

// PayloadPreviewBytes is how much of a payload PayloadPreview shows.
const PayloadPreviewBytes = 64

// PayloadPreview shows a payload safely: EscapeBytes of its first PayloadPreviewBytes bytes,
// and the byte count when it is longer.
func PayloadPreview(p []byte) string {
	if len(p) <= PayloadPreviewBytes {
		return EscapeBytes(p)
	}
	return fmt.Sprintf("%s... (%d bytes)", EscapeBytes(p[:PayloadPreviewBytes]), len(p))
}

// EscapeBytes returns b with printable UTF-8 as is and every other byte (control characters,
// invalid UTF-8, non-printable runes) as \xNN; a backslash is doubled, so the output is
// unambiguous and never holds a tab, newline or terminal escape.
func EscapeBytes(b []byte) string {
	var s strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		switch {
		case r == '\\':
			s.WriteString(`\\`)
		case r == utf8.RuneError && n <= 1, !unicode.IsPrint(r):
			for _, c := range b[:n] {
				fmt.Fprintf(&s, `\x%02x`, c)
			}
		default:
			s.Write(b[:n])
		}
		b = b[n:]
	}
	return s.String()
}
