package layout

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// TestFormat pins the on-disk format of package layout (see doc.go) with the script in
// testdata/keys. Commands:
//
//	new [thresholds=2,1] [prefix=HEX] [layout=reference]
//	    a fresh in-memory Pebble and generation 1 of the given layout
//	add gen=G [abort] [topic=T ts=N client=C payload=P qos=Q retain]
//	    one batch of messages (the command line's, or one per input line); prints every key and
//	    value written, in key order, then what Commit reported (or Abort with abort)
//	streams gen=G filter=F
//	read gen=G key=K filter=F [from=N] [until=N] [max=N]
//	dump gen=G
//	reload gen=G
//	    Load the generation from Pebble, compare its dump with the live one, and use it from now on
//	inherit gen=G from=G [thresholds=...] [layout=reference]
//	    layout.New for generation G with the previous generation; prints the records it wrote
//	spans gen=G
//	    GenerationSpans
//	scan
//	    every key in the Pebble
func TestFormat(t *testing.T) {
	e := &formatEnv{}
	t.Cleanup(e.close)
	runDD(t, "testdata/keys", e.run)
}

// formatEnv is the state of one TestFormat script.
type formatEnv struct {
	db     *pebble.DB
	prefix []byte
	params Params
	gens   map[stream.GenerationID]Generation
	// levels remembers every level value added, so index keys can name the value behind a hash.
	levels map[uint64]string
}

// kv is one Set received by a recorder.
type kv struct{ k, v []byte }

// recorder is a Writer that keeps what it receives.
type recorder struct{ kvs []kv }

func (r *recorder) Set(k, v []byte, _ *pebble.WriteOptions) error {
	r.kvs = append(r.kvs, kv{slices.Clone(k), slices.Clone(v)})
	return nil
}

func (e *formatEnv) close() {
	if e.db != nil {
		e.db.Close()
		e.db = nil
	}
}

func openMem(t testing.TB) *pebble.DB {
	t.Helper()
	db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}})
	require.NoError(t, err)
	return db
}

func parseParams(t *testing.T, c *ddCase) Params {
	p := Params{Kind: stream.LayoutLTS}
	if c.arg("layout", "lts") == "reference" {
		p.Kind = stream.LayoutReference
	}
	if th := c.arg("thresholds", ""); th != "" {
		for _, s := range strings.Split(th, ",") {
			v, err := strconv.Atoi(s)
			require.NoError(t, err, "line %d: %s: thresholds", c.Line, c.Cmd)
			p.Thresholds = append(p.Thresholds, v)
		}
	}
	return p
}

func (e *formatEnv) gen(t *testing.T, c *ddCase) (stream.GenerationID, Generation) {
	t.Helper()
	id := stream.GenerationID(c.uint(t, "gen", 1))
	g, ok := e.gens[id]
	require.True(t, ok, "line %d: %s: no generation %d", c.Line, c.Cmd, id)
	return id, g
}

func (c *ddCase) uint(t *testing.T, key string, def uint64) uint64 {
	t.Helper()
	s := c.arg(key, "")
	if s == "" {
		return def
	}
	v, err := strconv.ParseUint(s, 10, 64)
	require.NoError(t, err, "line %d: %s: %s", c.Line, c.Cmd, key)
	return v
}

// commit writes what r holds into the Pebble as one batch.
func (e *formatEnv) commit(t *testing.T, r *recorder) {
	b := e.db.NewBatch()
	for _, p := range r.kvs {
		require.NoError(t, b.Set(p.k, p.v, nil))
	}
	require.NoError(t, b.Commit(pebble.NoSync))
}

func (e *formatEnv) run(t *testing.T, c *ddCase) string {
	switch c.Cmd {
	case "new":
		e.close()
		e.db = openMem(t)
		e.levels = map[uint64]string{}
		e.params = parseParams(t, c)
		var err error
		e.prefix, err = hex.DecodeString(c.arg("prefix", ""))
		require.NoError(t, err, "line %d: %s: prefix", c.Line, c.Cmd)
		r := &recorder{}
		g, err := New(e.params, e.prefix, 1, nil, r)
		if err != nil {
			return "error: " + err.Error()
		}
		e.commit(t, r)
		e.gens = map[stream.GenerationID]Generation{1: g}
		return e.describe(r.kvs)

	case "add":
		_, g := e.gen(t, c)
		lines := c.Input
		if len(lines) == 0 {
			lines = []string{argString(c.Args)}
		}
		r := &recorder{}
		for _, l := range lines {
			mc := &ddCase{Line: c.Line, Cmd: c.Cmd, Args: parseArgs(l)}
			m := &message.Message{
				Topic:     mc.arg("topic", ""),
				Timestamp: mc.uint(t, "ts", 0),
				ClientID:  mc.arg("client", ""),
				Payload:   []byte(mc.arg("payload", "")),
				QoS:       byte(mc.uint(t, "qos", 0)),
				Retain:    mc.has("retain"),
			}
			require.NoError(t, topic.ValidateName(m.Topic), "line %d: %s", c.Line, c.Cmd)
			levels := topic.Split(m.Topic)
			for _, lv := range levels {
				e.levels[xxhash.Sum64String(lv)] = lv
			}
			if _, err := g.Add(r, m, levels); err != nil {
				return "error: " + err.Error()
			}
		}
		out := e.describe(r.kvs)
		if c.has("abort") {
			g.Abort()
			return out + "aborted\n"
		}
		e.commit(t, r)
		return out + fmt.Sprintf("commit: new streams=%t\n", g.Commit())

	case "streams":
		_, g := e.gen(t, c)
		var b strings.Builder
		for _, s := range g.Streams(topic.Split(c.arg("filter", "#"))) {
			fmt.Fprintf(&b, "key=%d pattern=%s\n", s.Key, s.Pattern)
		}
		if b.Len() == 0 {
			return "(none)"
		}
		return b.String()

	case "read":
		_, g := e.gen(t, c)
		req := ReadRequest{
			Key:    c.uint(t, "key", 0),
			Filter: topic.Split(c.arg("filter", "#")),
			From:   c.uint(t, "from", 0),
			Until:  c.uint(t, "until", 1<<63),
			Max:    int(c.uint(t, "max", 100)),
		}
		msgs, res, err := g.Read(e.db, req, nil)
		var b strings.Builder
		for _, m := range msgs {
			fmt.Fprintf(&b, "ts=%d topic=%s %s\n", m.Timestamp, m.Topic, describeMessage(&m))
		}
		if err != nil {
			fmt.Fprintf(&b, "error: %v\n", err)
		}
		fmt.Fprintf(&b, "next=%d exhausted=%t\n", res.Next, res.Exhausted)
		return b.String()

	case "dump":
		_, g := e.gen(t, c)
		return g.Dump()

	case "reload":
		id, g := e.gen(t, c)
		l, err := Load(e.db, g.Params(), e.prefix, id)
		if err != nil {
			return "error: " + err.Error()
		}
		e.gens[id] = l
		if got, want := l.Dump(), g.Dump(); got != want {
			return "reloaded dump differs:\n" + got + "live:\n" + want
		}
		return "reloaded dump equals the live dump"

	case "inherit":
		id := stream.GenerationID(c.uint(t, "gen", 0))
		from := e.gens[stream.GenerationID(c.uint(t, "from", 0))]
		r := &recorder{}
		p := parseParams(t, c)
		if !c.has("thresholds") {
			p.Thresholds = e.params.Thresholds
		}
		g, err := New(p, e.prefix, id, from, r)
		if err != nil {
			return "error: " + err.Error()
		}
		e.commit(t, r)
		e.gens[id] = g
		return e.describe(r.kvs)

	case "spans":
		var b strings.Builder
		for _, sp := range GenerationSpans(e.prefix, stream.GenerationID(c.uint(t, "gen", 0))) {
			fmt.Fprintf(&b, "[%x, %x)\n", sp[0], sp[1])
		}
		return b.String()

	case "scan":
		it, err := e.db.NewIter(nil)
		require.NoError(t, err)
		defer it.Close()
		var kvs []kv
		for ok := it.First(); ok; ok = it.Next() {
			kvs = append(kvs, kv{slices.Clone(it.Key()), slices.Clone(it.Value())})
		}
		require.NoError(t, it.Error())
		return e.describe(kvs)

	default:
		c.fatalf(t, "unknown command")
		return ""
	}
}

// describe renders keys and values, in key order, each key as hex split at its fields, then
// what the fields mean, then the value.
func (e *formatEnv) describe(kvs []kv) string {
	kvs = slices.Clone(kvs)
	slices.SortFunc(kvs, func(a, b kv) int { return bytes.Compare(a.k, b.k) })
	var b strings.Builder
	for _, p := range kvs {
		fields, meaning, value := e.describeKV(p.k, p.v)
		fmt.Fprintf(&b, "%s\n  %s\n", strings.Join(fields, " "), meaning)
		if value != "" {
			fmt.Fprintf(&b, "  %s\n", value)
		}
	}
	return b.String()
}

// describeKV decodes one key/value independently of the code under test (by the drawing in
// doc.go), so that a change of the format shows as a diff of the hex, and a decoding mismatch
// as a "?".
func (e *formatEnv) describeKV(k, v []byte) (fields []string, meaning, value string) {
	if !bytes.HasPrefix(k, e.prefix) {
		return []string{hex.EncodeToString(k)}, "? not under the prefix", ""
	}
	if len(e.prefix) > 0 {
		fields = append(fields, hex.EncodeToString(e.prefix))
	}
	rest := k[len(e.prefix):]
	take := func(n int) []byte {
		if len(rest) < n {
			n = len(rest)
		}
		f := rest[:n]
		fields = append(fields, hex.EncodeToString(f))
		rest = rest[n:]
		return f
	}
	bad := func(what string) ([]string, string, string) {
		if len(rest) > 0 {
			take(len(rest))
		}
		return fields, "? " + what, "= " + hex.EncodeToString(v)
	}
	ks := take(1)
	if len(ks) != 1 {
		return bad("empty key")
	}
	gen := take(4)
	if len(gen) != 4 {
		return bad("short generation")
	}
	g := binary.BigEndian.Uint32(gen)
	switch ks[0] {
	case 't':
		seq := take(4)
		if len(seq) != 4 || len(rest) != 0 {
			return bad("trie key")
		}
		meaning = fmt.Sprintf("t gen=%d seq=%d", g, binary.BigEndian.Uint32(seq))
		switch {
		case len(v) >= 10 && v[0] == 1:
			value = fmt.Sprintf("= %02x %x %x %02x %x: edge parent=%d child=%d plus=%d literal=%q",
				v[0], v[1:5], v[5:9], v[9], v[10:], binary.BigEndian.Uint32(v[1:]), binary.BigEndian.Uint32(v[5:]), v[9], v[10:])
		case len(v) == 5 && v[0] == 2:
			value = fmt.Sprintf("= %02x %x: stream node=%d", v[0], v[1:], binary.BigEndian.Uint32(v[1:]))
		default:
			value = fmt.Sprintf("= %x: ?", v)
		}
		return fields, meaning, value
	case 'd':
	default:
		return bad("unknown keyspace")
	}
	if l := e.gens[stream.GenerationID(g)]; l != nil && l.Params().Kind == stream.LayoutReference {
		ts := take(8)
		if len(ts) != 8 || len(rest) != 0 {
			return bad("reference key")
		}
		meaning = fmt.Sprintf("d gen=%d ts=%d (reference)", g, binary.BigEndian.Uint64(ts))
		n, w := binary.Uvarint(v)
		if w <= 0 || n > uint64(len(v)-w) {
			return fields, meaning, fmt.Sprintf("= %x: ? topic", v)
		}
		tp, rec := v[w:w+int(n)], v[w+int(n):]
		return fields, meaning, fmt.Sprintf("= %x %x %x: topic=%q %s", v[:w], tp, rec, tp, describeRecord(rec))
	}
	static := take(8)
	level := take(2)
	if len(level) != 2 {
		return bad("short LTS key")
	}
	st, lv := binary.BigEndian.Uint64(static), binary.BigEndian.Uint16(level)
	if lv == 0 {
		ts := take(8)
		if len(ts) != 8 {
			return bad("data key without ts")
		}
		var varying []string
		for len(rest) > 0 {
			n, w := binary.Uvarint(rest)
			if w <= 0 || n > uint64(len(rest)-w) {
				return bad("varying level")
			}
			varying = append(varying, string(rest[w:w+int(n)]))
			fields = append(fields, fmt.Sprintf("%x:%x", rest[:w], rest[w:w+int(n)]))
			rest = rest[w+int(n):]
		}
		meaning = fmt.Sprintf("d gen=%d static=%d data ts=%d varying=%s", g, st, binary.BigEndian.Uint64(ts), quoteAll(varying))
		return fields, meaning, fmt.Sprintf("= %x: %s", v, describeRecord(v))
	}
	h := take(8)
	ts := take(8)
	if len(ts) != 8 || len(rest) != 0 {
		return bad("index key")
	}
	hv := binary.BigEndian.Uint64(h)
	name, ok := e.levels[hv]
	hs := "?"
	if ok {
		hs = fmt.Sprintf("xxhash(%q)", name)
	}
	meaning = fmt.Sprintf("d gen=%d static=%d index level=%d hash=%s ts=%d", g, st, lv, hs, binary.BigEndian.Uint64(ts))
	if len(v) != 0 {
		value = fmt.Sprintf("= %x: ? index value not empty", v)
	}
	return fields, meaning, value
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ",") + "]"
}

func describeRecord(v []byte) string {
	var m message.Message
	if err := message.DecodeRecord(v, &m); err != nil {
		return "? " + err.Error()
	}
	return describeMessage(&m)
}

func describeMessage(m *message.Message) string {
	s := fmt.Sprintf("client=%q qos=%d payload=%q", m.ClientID, m.QoS, m.Payload)
	if m.Retain {
		s += " retain"
	}
	return s
}

// quietLogger drops Pebble's info lines.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)         {}
func (quietLogger) Errorf(f string, args ...any) { fmt.Fprintf(os.Stderr, f+"\n", args...) }
func (quietLogger) Fatalf(f string, args ...any) { panic(fmt.Sprintf(f, args...)) }
