package ds

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/shard"
)

// This file holds the JSON views shared by the operator tools: `ds-info <cmd> -json` over a
// data directory (an Inspector) and the admin HTTP handler over a running DB (AdminHandler)
// produce the same rows from the same code, so a client reads either the same way.

// InspectSource is what the inspection views read: a running *DB or a read-only *Inspector.
type InspectSource interface {
	Generations() ([]GenerationInfo, error)
	StreamCount(sh ShardID, gen GenerationID) (int, error)
	GenerationUsage(sh ShardID, gen GenerationID) (GenerationUsage, error)
	Streams(filter string, since time.Time) ([]Stream, error)
	DumpLayout(sh ShardID, gen GenerationID) (string, error)
	Messages(filter string, since time.Time, limit int) ([]Message, error)
}

var (
	_ InspectSource = (*DB)(nil)
	_ InspectSource = (*Inspector)(nil)
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
	Shard       ShardID      `json:"shard"`
	Generation  GenerationID `json:"generation"`
	Since       string       `json:"since"`
	Until       string       `json:"until,omitempty"`
	SinceMicros uint64       `json:"since_us"`
	UntilMicros uint64       `json:"until_us,omitempty"`
	State       string       `json:"state"` // "current" or "sealed"
	Layout      string       `json:"layout"`
	Streams     int          `json:"streams"`
	Messages    uint64       `json:"messages"`
	// Uncounted: the generation was created before message counts existed; Messages is 0.
	Uncounted bool `json:"uncounted,omitempty"`
	// DiskBytes is Pebble's estimate of the generation's bytes in sstables and blob files;
	// data still in memtables counts 0 until it is flushed.
	DiskBytes uint64 `json:"disk_bytes"`
}

// StreamView is one learned stream (ds-info streams, GET /v1/streams).
type StreamView struct {
	Shard      ShardID      `json:"shard"`
	Generation GenerationID `json:"generation"`
	Key        uint64       `json:"key"`
	Layout     string       `json:"layout"`
	Pattern    string       `json:"pattern"`
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

// StorageMode names the storage of a manifest, as InfoView.Storage.
func StorageMode(m Manifest) string {
	if m.PebblePerShard {
		return "pebble per shard"
	}
	return "shared pebble"
}

// InfoOf summarizes src; m is its manifest and diskBytes its size. Errors of shards that did
// not load are joined and returned with the counts of the others.
func InfoOf(src InspectSource, m Manifest, diskBytes uint64) (InfoView, error) {
	gens, err := src.Generations()
	streams := 0
	for _, g := range gens {
		n, serr := src.StreamCount(g.Shard, g.ID)
		if serr != nil {
			err = errors.Join(err, serr)
		}
		streams += n
	}
	return InfoView{Format: m.Format, NShards: m.NShards, Storage: StorageMode(m), Created: m.Created,
		DiskBytes: diskBytes, Generations: len(gens), Streams: streams}, err
}

// GenerationsOf lists the generations of src with their stream counts. The rows are never
// nil; an error may come with a partial result.
func GenerationsOf(src InspectSource) ([]GenerationView, error) {
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
func StreamsOf(src InspectSource, filter string) ([]StreamView, error) {
	streams, err := src.Streams(filter, time.Time{})
	rows := []StreamView{}
	for _, s := range streams {
		rows = append(rows, StreamView{s.Shard, s.Generation, s.Key, s.Layout.String(), s.Pattern})
	}
	return rows, err
}

// TrieOf renders the learned topic structure of one shard-generation.
func TrieOf(src InspectSource, sh ShardID, gen GenerationID) (TrieView, error) {
	dump, err := src.DumpLayout(sh, gen)
	if err != nil {
		return TrieView{}, err
	}
	return TrieView{Shard: int(sh), Generation: int64(gen), Trie: dump}, nil
}

// MessagesOf lists up to limit messages of src matching filter from since (limit <= 0: no
// limit), by shard then timestamp.
func MessagesOf(src InspectSource, filter string, since time.Time, limit int) ([]MessageView, error) {
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

// StreamCount returns the number of streams of one shard-generation, as Inspector.StreamCount.
func (db *DB) StreamCount(sh ShardID, gen GenerationID) (int, error) {
	exit, err := db.enter()
	if err != nil {
		return 0, err
	}
	defer exit()
	if int(sh) >= len(db.shards) {
		return 0, fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, sh, len(db.shards))
	}
	l, ok := db.shards[sh].Layout(gen)
	if !ok {
		return 0, fmt.Errorf("%w: shard %d generation %d", ErrGenerationNotFound, sh, gen)
	}
	return l.StreamCount(), nil
}

// GenerationUsage is what a generation holds: its messages and an estimate of its bytes on
// disk.
type GenerationUsage = shard.GenerationUsage

// GenerationUsage returns what one shard-generation holds: the messages stored in it
// (counted as they are stored, kept with the generation) and Pebble's estimate of its bytes
// on disk (messages still in memtables count 0 until they are flushed). ErrShardNotFound,
// ErrGenerationNotFound for unknown ones.
func (db *DB) GenerationUsage(sh ShardID, gen GenerationID) (GenerationUsage, error) {
	exit, err := db.enter()
	if err != nil {
		return GenerationUsage{}, err
	}
	defer exit()
	if int(sh) >= len(db.shards) {
		return GenerationUsage{}, fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, sh, len(db.shards))
	}
	return db.shards[sh].GenerationUsage(gen)
}

// Messages returns up to limit durable messages that match filter with a timestamp at or after
// since, ordered by shard, then timestamp (limit <= 0: no limit), as Inspector.Messages does
// for a data directory. It is for inspection (the admin handler): sessions read with Streams,
// Iterator and Next. A generation dropped while it is read is skipped.
func (db *DB) Messages(filter string, since time.Time, limit int) ([]Message, error) {
	streams, err := db.Streams(filter, since)
	if err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = int(^uint(0) >> 1)
	}
	ctx := context.Background()
	var out []Message
	for i := 0; i < len(streams) && len(out) < limit; {
		j := i
		for j < len(streams) && streams[j].Shard == streams[i].Shard && streams[j].Generation == streams[i].Generation {
			j++
		}
		var genMsgs []Message
		for _, s := range streams[i:j] {
			it, err := db.Iterator(s, filter, since)
			if err != nil {
				return out, err
			}
			for got := 0; got < limit-len(out); {
				msgs, next, err := db.Next(ctx, it, min(limit-len(out)-got, 1000))
				genMsgs = append(genMsgs, msgs...)
				got += len(msgs)
				if errors.Is(err, ErrEndOfStream) || errors.Is(err, ErrGenerationNotFound) {
					break
				}
				if err != nil {
					return out, err
				}
				if len(msgs) == 0 {
					break
				}
				it = next
			}
		}
		slices.SortStableFunc(genMsgs, func(a, b Message) int { return cmp.Compare(a.Timestamp, b.Timestamp) })
		out = append(out, genMsgs[:min(len(genMsgs), limit-len(out))]...)
		i = j
	}
	return out, nil
}
