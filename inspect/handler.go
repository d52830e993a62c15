package inspect

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/strata-mq/strata/ds"
)

// Handler returns an HTTP handler with the operator's view of a running DB, for a broker to
// mount, e.g. mux.Handle("/strata/", http.StripPrefix("/strata", inspect.Handler(db))).
// Every route is GET and read-only:
//
//	/metrics                          Prometheus exposition of Collector(db) and the
//	                                  collectors given with WithCollectors
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
// messages): they are off unless WithPayloads turns them on, and answer 403 until then, so
// that mounting the handler for its metrics and views exposes no payload by accident.
//
// The JSON is what `ds-info <cmd> -json` prints for a data directory, and `ds-info -url`
// reads it. Errors follow the convention of every Strata handler (WriteError): an ErrorBody
// with 400 for a bad filter or parameter, 401/403 for a payload endpoint refused, 404 for an
// unknown shard or generation, 503 when the DB is closed or unavailable, 500 otherwise.
func Handler(db *ds.DB, opts ...Option) http.Handler {
	a := &admin{db: db, registry: prometheus.NewRegistry()}
	for _, o := range opts {
		o(a)
	}
	a.registry.MustRegister(Collector(db))
	for _, c := range a.collectors {
		a.registry.MustRegister(c)
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
			WriteErrorStatus(w, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: only GET", r.Method, r.URL.Path))
			return
		}
		WriteErrorStatus(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// Option configures Handler.
type Option func(*admin)

// WithDataDir tells the handler the DB's directory (the one given to ds.Open), so that
// /v1/info reports its manifest (the creation time). Without it, info reports what the DB
// knows.
func WithDataDir(dir string) Option {
	return func(a *admin) { a.dir = dir }
}

// WithCollectors adds collectors to /metrics, beside the DB's (Collector): package session's
// (Store.Collector), a replicated site's. Their metric names must not repeat the DB's (the
// handler panics when built, as prometheus.MustRegister does).
func WithCollectors(cs ...prometheus.Collector) Option {
	return func(a *admin) { a.collectors = append(a.collectors, cs...) }
}

type admin struct {
	db         *ds.DB
	dir        string
	registry   *prometheus.Registry
	collectors []prometheus.Collector
	payloads   bool
	authorize  func(*http.Request) error
}

// WithPayloads turns on /v1/messages and /v1/records, the endpoints that serve stored
// payloads. authorize, if not nil, is asked for each of their requests; an error answers 401
// with it (BearerToken checks a token). With a nil authorize they are open to whoever reaches
// the handler.
func WithPayloads(authorize func(*http.Request) error) Option {
	return func(a *admin) { a.payloads, a.authorize = true, authorize }
}

// payloadEndpoint guards an endpoint that serves payloads (see WithPayloads).
func (a *admin) payloadEndpoint(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.payloads {
			WriteErrorStatus(w, http.StatusForbidden, fmt.Errorf("%s serves stored payloads and is off (turn it on with inspect.WithPayloads)", r.URL.Path))
			return
		}
		if a.authorize != nil {
			if err := a.authorize(r); err != nil {
				WriteError(w, err)
				return
			}
		}
		h(w, r)
	}
}

// reply writes v, or the error (WriteError).
func reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, v)
}

// manifest returns the DB's manifest: the directory's when known, else what the DB knows.
func (a *admin) manifest() (ds.Manifest, error) {
	if a.dir != "" {
		return ds.ReadManifest(a.dir)
	}
	return a.db.Manifest(), nil
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
	if a.dir == "" {
		v.Storage = a.db.Storage() // a replicated site's backend names itself
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
		reply(w, nil, BadRequestf("shard=%q: want a shard number (see /v1/generations)", q.Get("shard")))
		return
	}
	gen, err := strconv.ParseUint(q.Get("gen"), 10, 32)
	if err != nil {
		reply(w, nil, BadRequestf("gen=%q: want a generation number (see /v1/generations)", q.Get("gen")))
		return
	}
	v, err := TrieOf(a.db, ds.ShardID(sh), ds.GenerationID(gen))
	reply(w, v, err)
}

func (a *admin) messages(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var since time.Time
	if s := q.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			reply(w, nil, BadRequestf("since=%q: want RFC 3339: %v", s, err))
			return
		}
		since = t
	}
	limit, err := limitParam(q, 100)
	if err != nil {
		reply(w, nil, err)
		return
	}
	v, err := MessagesOf(a.db, filterParam(r), since, limit)
	reply(w, v, err)
}

// limitParam reads the limit parameter: a number >= 0 (0: no limit), def when absent.
func limitParam(q url.Values, def int) (int, error) {
	s := q.Get("limit")
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, BadRequestf("limit=%q: want a number >= 0 (0: no limit)", s)
	}
	return n, nil
}

// RecordView is one record of a shard (GET /v1/records). Key and Value are base64 in JSON.
type RecordView struct {
	Shard   ds.ShardID `json:"shard"`
	Key     []byte     `json:"key"`
	Value   []byte     `json:"value"`
	Version uint64     `json:"version"`
}

func (a *admin) records(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sh, err := strconv.ParseUint(q.Get("shard"), 10, 16)
	if err != nil {
		reply(w, nil, BadRequestf("shard=%q: want a shard number", q.Get("shard")))
		return
	}
	limit, err := limitParam(q, 0)
	if err != nil {
		reply(w, nil, err)
		return
	}
	out := []RecordView{}
	err = a.db.ScanRecords(r.Context(), ds.ShardID(sh), []byte(q.Get("prefix")), func(k, v []byte, version uint64) bool {
		out = append(out, RecordView{Shard: ds.ShardID(sh), Key: bytes.Clone(k), Value: bytes.Clone(v), Version: version})
		return limit == 0 || len(out) < limit
	})
	reply(w, out, err)
}

// metrics serves the registry's exposition, in the format the request negotiates (the text
// format by default). A collector that fails fails the request with its error's status (a
// closed DB: 503), and nothing of the metrics is sent.
func (a *admin) metrics(w http.ResponseWriter, r *http.Request) {
	families, err := a.registry.Gather()
	if err != nil {
		var errs prometheus.MultiError
		if errors.As(err, &errs) && len(errs) > 0 {
			err = errs[0] // the collector's error, wrapped (%w) with its metric's name
		}
		WriteError(w, fmt.Errorf("metrics: %w", err))
		return
	}
	format := expfmt.Negotiate(r.Header)
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, format)
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			WriteError(w, fmt.Errorf("metrics: %w", err))
			return
		}
	}
	w.Header().Set("Content-Type", string(format))
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}
