package ds

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/strata-mq/strata/shard"
)

// AdminHandler returns an HTTP handler with the operator's view of a running DB, for a broker
// to mount, e.g. mux.Handle("/strata/", http.StripPrefix("/strata", ds.AdminHandler(db))).
// Every route is GET and read-only:
//
//	/metrics                          Prometheus text exposition format (below)
//	/v1/info                          InfoView
//	/v1/generations                   []GenerationView
//	/v1/streams?filter=F              []StreamView (filter default #)
//	/v1/trie?shard=N&gen=G            TrieView
//	/v1/messages?filter=F&since=T&limit=N
//	                                  []MessageView (since RFC 3339; limit default 100, 0: none)
//	/v1/records?shard=N&prefix=P&limit=N
//	                                  []RecordView: the records of shard N whose key starts
//	                                  with P (raw bytes, URL-escaped; default all), in key
//	                                  order (limit default 0: none); ds-info sessions -url
//	                                  decodes package session's from them
//
// /v1/messages and /v1/records serve what clients stored (payloads; session records hold QoS 2
// messages): they are off unless AdminPayloads turns them on, and answer 403 until then, so
// that mounting the handler for its metrics and views exposes no payload by accident.
//
// The JSON is what `ds-info <cmd> -json` prints for a data directory, and `ds-info -url`
// reads it. Errors are JSON {"error": "..."}: 400 for a bad filter or parameter, 404 for an
// unknown shard or generation, 503 when the DB is closed or unavailable (ErrClosed,
// ErrUnavailable), 500 otherwise.
//
// # Metrics
//
// Per shard, with the label shard="N":
//
//	strata_messages_stored_total      counter   messages stored since the DB was opened
//	strata_bytes_stored_total         counter   message bytes stored since the DB was opened
//	strata_commits_total              counter   group commits since the DB was opened
//	strata_queue_depth                gauge     Store calls waiting for the shard's writer
//	strata_generations                gauge     generations held
//	strata_streams                    gauge     streams of the current generation
//	strata_messages_held              gauge     messages in its generations (not expired)
//	strata_shard_disk_bytes           gauge     estimate of its generations' bytes on disk
//	strata_shard_available            gauge     1, or 0 where a replicated site holds no
//	                                            open replica of the shard right now
//	strata_commit_latency_seconds     histogram commit latency (buckets: shard.LatencyBuckets)
//	strata_batch_messages             histogram messages per group commit (shard.BatchBuckets)
//
// For the whole DB, without labels:
//
//	strata_disk_bytes                 gauge     size of the storage's files
//	strata_bytes_written_total        counter   bytes the storage wrote since it was opened
//	strata_subscriptions              gauge     open subscriptions
//	strata_subscriptions_tail         gauge     of them fed from commits on every shard
//	strata_subscriptions_parked       gauge     Next calls waiting for an Ack
//	strata_subscription_lag_seconds   gauge     largest distance of a subscription behind a
//	                                            shard's read limit
//	strata_subscription_delivered_total counter messages returned by Subscription.Next
//	strata_subscription_reads_total   counter   storage reads by subscriptions behind the tail
//	strata_subscription_fed_total     counter   messages the feeds handed to tail groups
//	strata_subscription_demoted_total counter   tail subscriptions sent back to reading
//	strata_subscription_losses_total  counter   losses by retention reported
//
// These names and labels are stable. AdminMetrics appends other metrics (package session's:
// Store.WriteMetrics) to /metrics.
func AdminHandler(db *DB, opts ...AdminOption) http.Handler {
	a := &admin{db: db}
	for _, o := range opts {
		o(a)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", a.metrics)
	mux.HandleFunc("GET /v1/info", a.info)
	mux.HandleFunc("GET /v1/generations", a.generations)
	mux.HandleFunc("GET /v1/streams", a.streams)
	mux.HandleFunc("GET /v1/trie", a.trie)
	mux.HandleFunc("GET /v1/messages", a.payloadEndpoint(a.messages))
	mux.HandleFunc("GET /v1/records", a.payloadEndpoint(a.records))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics", "/v1/info", "/v1/generations", "/v1/streams", "/v1/trie", "/v1/messages", "/v1/records":
			w.Header().Set("Allow", "GET, HEAD")
			writeAdminError(w, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: only GET", r.Method, r.URL.Path))
			return
		}
		writeAdminError(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// AdminOption configures AdminHandler.
type AdminOption func(*admin)

// AdminDataDir tells the handler the DB's directory (the one given to Open), so that /v1/info
// reports its manifest (the creation time). Without it, info reports what the DB knows.
func AdminDataDir(dir string) AdminOption {
	return func(a *admin) { a.dir = dir }
}

// AdminMetrics appends what write writes to /metrics, after the DB's metrics and in the
// order the options are given: other metrics in the Prometheus text format, such as package
// session's (ds.AdminHandler(db, ds.AdminMetrics(store.WriteMetrics))). Their names must not
// repeat the DB's. An error of write fails the request (500) and nothing is sent.
func AdminMetrics(write func(w io.Writer) error) AdminOption {
	return func(a *admin) {
		if write != nil {
			a.extraMetrics = append(a.extraMetrics, write)
		}
	}
}

type admin struct {
	db           *DB
	dir          string
	extraMetrics []func(io.Writer) error
	payloads     bool
	authorize    func(*http.Request) error
}

// AdminPayloads turns on /v1/messages and /v1/records, the endpoints that serve stored
// payloads. authorize, if not nil, is asked for each of their requests; an error answers 401
// with it (AdminBearerToken checks a token). With a nil authorize they are open to whoever
// reaches the handler.
func AdminPayloads(authorize func(*http.Request) error) AdminOption {
	return func(a *admin) { a.payloads, a.authorize = true, authorize }
}

// ErrUnauthorized is what AdminBearerToken's check returns for a request without the token.
var ErrUnauthorized = errors.New("strata: unauthorized")

// AdminBearerToken returns an authorizer for AdminPayloads that accepts the requests carrying
// "Authorization: Bearer <token>" (compared in constant time). An empty token accepts nothing.
func AdminBearerToken(token string) func(*http.Request) error {
	want := []byte("Bearer " + token)
	return func(r *http.Request) error {
		got := []byte(r.Header.Get("Authorization"))
		if token == "" || subtle.ConstantTimeCompare(got, want) != 1 {
			return fmt.Errorf("%w: %s %s needs the admin bearer token", ErrUnauthorized, r.Method, r.URL.Path)
		}
		return nil
	}
}

// payloadEndpoint guards an endpoint that serves payloads (see AdminPayloads).
func (a *admin) payloadEndpoint(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.payloads {
			writeAdminError(w, http.StatusForbidden, fmt.Errorf("%s serves stored payloads and is off (turn it on with ds.AdminPayloads)", r.URL.Path))
			return
		}
		if a.authorize != nil {
			if err := a.authorize(r); err != nil {
				w.Header().Set("WWW-Authenticate", `Bearer realm="strata"`)
				writeAdminError(w, http.StatusUnauthorized, err)
				return
			}
		}
		h(w, r)
	}
}

// badRequest marks an error in the request's parameters.
type badRequest struct{ err error }

func (e badRequest) Error() string { return e.err.Error() }
func (e badRequest) Unwrap() error { return e.err }

func badParam(format string, args ...any) error {
	return badRequest{fmt.Errorf(format, args...)}
}

// adminStatus is the HTTP status of an error.
func adminStatus(err error) int {
	var br badRequest
	switch {
	case errors.As(err, &br), errors.Is(err, ErrInvalidFilter), errors.Is(err, ErrInvalidTopic):
		return http.StatusBadRequest
	case errors.Is(err, ErrShardNotFound), errors.Is(err, ErrGenerationNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrClosed), errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// AdminError is the body of an error response of AdminHandler.
type AdminError struct {
	Error string `json:"error"`
}

func writeAdminError(w http.ResponseWriter, status int, err error) {
	writeAdminJSON(w, status, AdminError{Error: err.Error()})
}

func writeAdminJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(AdminError{Error: err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// reply writes v, or the error with its status.
func reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		writeAdminError(w, adminStatus(err), err)
		return
	}
	writeAdminJSON(w, http.StatusOK, v)
}

// manifest returns the DB's manifest: the directory's when known, else what the DB knows.
func (a *admin) manifest() (Manifest, error) {
	if a.dir != "" {
		return ReadManifest(a.dir)
	}
	m := Manifest{Format: formatVersion, NShards: a.db.NShards()}
	if e, ok := a.db.backend.(*embedded); ok {
		m.PebblePerShard = e.opts.Expert.PebblePerShard
	}
	return m, nil
}

func (a *admin) info(w http.ResponseWriter, r *http.Request) {
	m, err := a.manifest()
	if err != nil {
		reply(w, nil, err)
		return
	}
	met, err := a.db.Metrics()
	if err != nil {
		reply(w, nil, err)
		return
	}
	v, err := InfoOf(a.db, m, met.DiskBytes)
	if _, ok := a.db.backend.(*embedded); !ok && a.dir == "" {
		v.Storage = "backend"
		if k, ok := a.db.backend.(StorageKinder); ok {
			v.Storage = k.StorageKind()
		}
	}
	reply(w, v, err)
}

func (a *admin) generations(w http.ResponseWriter, r *http.Request) {
	v, err := GenerationsOf(a.db)
	reply(w, v, err)
}

func filterParam(r *http.Request) string {
	if f, ok := r.URL.Query()["filter"]; ok && len(f) > 0 {
		return f[0]
	}
	return "#"
}

func (a *admin) streams(w http.ResponseWriter, r *http.Request) {
	v, err := StreamsOf(a.db, filterParam(r))
	reply(w, v, err)
}

func (a *admin) trie(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sh, err := strconv.ParseUint(q.Get("shard"), 10, 16)
	if err != nil {
		reply(w, nil, badParam("shard=%q: want a shard number (see /v1/generations)", q.Get("shard")))
		return
	}
	gen, err := strconv.ParseUint(q.Get("gen"), 10, 32)
	if err != nil {
		reply(w, nil, badParam("gen=%q: want a generation number (see /v1/generations)", q.Get("gen")))
		return
	}
	v, err := TrieOf(a.db, ShardID(sh), GenerationID(gen))
	reply(w, v, err)
}

func (a *admin) messages(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var since time.Time
	if s := q.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			reply(w, nil, badParam("since=%q: want RFC 3339: %v", s, err))
			return
		}
		since = t
	}
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			reply(w, nil, badParam("limit=%q: want a number >= 0 (0: no limit)", s))
			return
		}
		limit = n
	}
	v, err := MessagesOf(a.db, filterParam(r), since, limit)
	reply(w, v, err)
}

// RecordView is one record of a shard (GET /v1/records). Key and Value are base64 in JSON.
type RecordView struct {
	Shard   ShardID `json:"shard"`
	Key     []byte  `json:"key"`
	Value   []byte  `json:"value"`
	Version uint64  `json:"version"`
}

func (a *admin) records(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sh, err := strconv.ParseUint(q.Get("shard"), 10, 16)
	if err != nil {
		reply(w, nil, badParam("shard=%q: want a shard number", q.Get("shard")))
		return
	}
	limit := 0
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			reply(w, nil, badParam("limit=%q: want a number >= 0 (0: no limit)", s))
			return
		}
		limit = n
	}
	out := []RecordView{}
	err = a.db.ScanRecords(r.Context(), ShardID(sh), []byte(q.Get("prefix")), func(k, v []byte, version uint64) bool {
		out = append(out, RecordView{Shard: ShardID(sh), Key: bytes.Clone(k), Value: bytes.Clone(v), Version: version})
		return limit == 0 || len(out) < limit
	})
	reply(w, out, err)
}

// metrics writes db.Metrics in the Prometheus text exposition format (version 0.0.4).
func (a *admin) metrics(w http.ResponseWriter, r *http.Request) {
	m, err := a.db.Metrics()
	if err != nil {
		reply(w, nil, err)
		return
	}
	b := bytes.NewBufferString(PrometheusText(m))
	for _, write := range a.extraMetrics {
		if err := write(b); err != nil {
			reply(w, nil, fmt.Errorf("metrics: %w", err))
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}

// PrometheusText renders m in the Prometheus text exposition format, with the metric names
// AdminHandler documents.
func PrometheusText(m Metrics) string {
	var b strings.Builder
	head := func(name, typ, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, promEscapeHelp(help), name, typ)
	}
	perShard := func(name, typ, help string, value func(ShardMetrics) string) {
		head(name, typ, help)
		for _, s := range m.Shards {
			fmt.Fprintf(&b, "%s{shard=\"%s\"} %s\n", name, promEscapeLabel(strconv.Itoa(int(s.Shard))), value(s))
		}
	}
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	perShard("strata_messages_stored_total", "counter", "Messages stored since the DB was opened.",
		func(s ShardMetrics) string { return u(s.Messages) })
	perShard("strata_bytes_stored_total", "counter", "Message bytes stored since the DB was opened.",
		func(s ShardMetrics) string { return u(s.Bytes) })
	perShard("strata_commits_total", "counter", "Group commits since the DB was opened.",
		func(s ShardMetrics) string { return u(s.Batches) })
	perShard("strata_queue_depth", "gauge", "Store calls waiting for the shard's writer.",
		func(s ShardMetrics) string { return strconv.FormatInt(s.QueueDepth, 10) })
	perShard("strata_generations", "gauge", "Generations the shard holds.",
		func(s ShardMetrics) string { return strconv.Itoa(s.Generations) })
	perShard("strata_streams", "gauge", "Streams of the shard's current generation.",
		func(s ShardMetrics) string { return strconv.Itoa(s.Streams) })
	perShard("strata_messages_held", "gauge", "Messages in the shard's generations (stored, not yet expired or dropped).",
		func(s ShardMetrics) string { return u(s.Held) })
	perShard("strata_shard_disk_bytes", "gauge", "Pebble's estimate of the bytes the shard's generations take on disk.",
		func(s ShardMetrics) string { return u(s.DiskBytes) })
	perShard("strata_shard_available", "gauge", "1 if the shard can be read here (a replicated site holds an open replica), else 0.",
		func(s ShardMetrics) string { return strconv.Itoa(boolInt(!s.Unavailable)) })

	const lat = "strata_commit_latency_seconds"
	head(lat, "histogram", "Commit latency, from the start of a group commit to durability.")
	for _, s := range m.Shards {
		label := promEscapeLabel(strconv.Itoa(int(s.Shard)))
		var cum uint64
		for i, bound := range shard.LatencyBuckets {
			if i < len(s.CommitLatency) {
				cum += s.CommitLatency[i]
			}
			fmt.Fprintf(&b, "%s_bucket{shard=\"%s\",le=\"%s\"} %d\n", lat, label, promFloat(bound.Seconds()), cum)
		}
		for i := len(shard.LatencyBuckets); i < len(s.CommitLatency); i++ {
			cum += s.CommitLatency[i]
		}
		fmt.Fprintf(&b, "%s_bucket{shard=\"%s\",le=\"+Inf\"} %d\n", lat, label, cum)
		fmt.Fprintf(&b, "%s_sum{shard=\"%s\"} %s\n", lat, label, promFloat(s.CommitTotal.Seconds()))
		fmt.Fprintf(&b, "%s_count{shard=\"%s\"} %d\n", lat, label, cum)
	}

	const batch = "strata_batch_messages"
	head(batch, "histogram", "Messages per group commit.")
	for _, s := range m.Shards {
		label := promEscapeLabel(strconv.Itoa(int(s.Shard)))
		var cum uint64
		for i, bound := range shard.BatchBuckets {
			if i < len(s.BatchSize) {
				cum += s.BatchSize[i]
			}
			fmt.Fprintf(&b, "%s_bucket{shard=\"%s\",le=\"%d\"} %d\n", batch, label, bound, cum)
		}
		for i := len(shard.BatchBuckets); i < len(s.BatchSize); i++ {
			cum += s.BatchSize[i]
		}
		fmt.Fprintf(&b, "%s_bucket{shard=\"%s\",le=\"+Inf\"} %d\n", batch, label, cum)
		fmt.Fprintf(&b, "%s_sum{shard=\"%s\"} %d\n", batch, label, s.Messages)
		fmt.Fprintf(&b, "%s_count{shard=\"%s\"} %d\n", batch, label, cum)
	}

	head("strata_disk_bytes", "gauge", "Size of the storage's files.")
	fmt.Fprintf(&b, "strata_disk_bytes %d\n", m.DiskBytes)
	head("strata_bytes_written_total", "counter", "Bytes the storage wrote since it was opened (WAL, flushes, compactions).")
	fmt.Fprintf(&b, "strata_bytes_written_total %d\n", m.BytesWritten)
	sm := m.Subscriptions
	for _, g := range []struct {
		name, kind, help string
		v                string
	}{
		{"strata_subscriptions", "gauge", "Open subscriptions.", strconv.FormatInt(sm.Subscriptions, 10)},
		{"strata_subscriptions_tail", "gauge", "Subscriptions fed from commits on every shard.", strconv.FormatInt(sm.Tail, 10)},
		{"strata_subscriptions_parked", "gauge", "Subscription Next calls waiting for an Ack.", strconv.FormatInt(sm.Parked, 10)},
		{"strata_subscription_lag_seconds", "gauge", "Largest distance of a subscription behind a shard's read limit.", promFloat(float64(sm.MaxLag) / 1e6)},
		{"strata_subscription_delivered_total", "counter", "Messages returned by Subscription.Next.", strconv.FormatUint(sm.Delivered, 10)},
		{"strata_subscription_reads_total", "counter", "Storage reads by subscriptions behind the tail.", strconv.FormatUint(sm.Reads, 10)},
		{"strata_subscription_fed_total", "counter", "Messages the shards' feeds handed to groups of tail subscriptions.", strconv.FormatUint(sm.Fed, 10)},
		{"strata_subscription_demoted_total", "counter", "Tail subscriptions sent back to reading the storage.", strconv.FormatUint(sm.Demoted, 10)},
		{"strata_subscription_losses_total", "counter", "Losses by retention reported to subscriptions.", strconv.FormatUint(sm.Losses, 10)},
	} {
		head(g.name, g.kind, g.help)
		fmt.Fprintf(&b, "%s %s\n", g.name, g.v)
	}
	return b.String()
}

func promFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// promEscapeLabel escapes a label value: backslash, double quote and newline.
func promEscapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// promEscapeHelp escapes a HELP text: backslash and newline.
func promEscapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
