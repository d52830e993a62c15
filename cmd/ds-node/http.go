package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/inspect"
	"github.com/strata-mq/strata/raftgroup"
	"github.com/strata-mq/strata/stream"
)

// The JSON shapes of the HTTP API (see the package doc).
type (
	storeMessage struct {
		ClientID   string `json:"client_id"`
		Topic      string `json:"topic"`
		PayloadB64 string `json:"payload_b64"`
	}
	refJSON struct {
		Shard ds.ShardID `json:"shard"`
		TS    uint64     `json:"ts"`
	}
	storeResponse struct {
		Refs []refJSON `json:"refs"`
	}
	readMessage struct {
		Shard      ds.ShardID `json:"shard"`
		TS         uint64     `json:"ts"`
		ClientID   string     `json:"client_id"`
		Topic      string     `json:"topic"`
		PayloadB64 string     `json:"payload_b64"`
	}
	digestJSON struct {
		Shard   ds.ShardID `json:"shard"`
		Applied uint64     `json:"applied"`
		Sum     string     `json:"sum,omitempty"`
		Keys    int        `json:"keys"`
		Error   string     `json:"error,omitempty"`
	}
	statusResponse struct {
		SiteID      string                  `json:"site_id"`
		RaftAddress string                  `json:"raft_address"`
		Groups      []raftgroup.GroupStatus `json:"groups"`
		Shards      []digestJSON            `json:"shards"`
	}
	addSiteRequest struct {
		ID          string `json:"id"`
		RaftAddress string `json:"raft_address"`
	}
	// errorResponse is inspect's ErrorBody (the convention of every Strata handler), with
	// the refs of a store that failed part way.
	errorResponse struct {
		inspect.ErrorBody
		Refs []refJSON `json:"refs,omitempty"`
	}
)

// maxBody bounds a request body.
const maxBody = 64 << 20

type api struct {
	site         *raftgroup.Site
	db           *ds.DB
	log          *slog.Logger
	storeTimeout time.Duration
}

// apiConfig is what newAPI needs besides the site.
type apiConfig struct {
	storeTimeout time.Duration
	adminToken   string // the admin handler's payload endpoints: off if empty
	access       access // POST /store, GET /read, POST /sites
}

// access says who may use the endpoints that write or read payloads or change the membership
// (POST /store, GET /read, POST /sites): nobody (the zero value), the requests carrying a
// bearer token, or, with open, anyone who reaches the HTTP API.
type access struct {
	authorize func(*http.Request) error // inspect.BearerToken(token); nil: no token
	open      bool                      // -api-insecure-no-auth
}

// tokenAccess admits the requests with "Authorization: Bearer <token>".
func tokenAccess(token string) access { return access{authorize: inspect.BearerToken(token)} }

// String describes the access for the logs.
func (ac access) String() string {
	switch {
	case ac.open:
		return "open"
	case ac.authorize != nil:
		return "token"
	}
	return "off"
}

// guard serves h only to the requests ac admits: 403 when the endpoint is off, 401 (with
// WWW-Authenticate) without the right token.
func (ac access) guard(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch {
		case ac.open:
		case ac.authorize == nil:
			inspect.WriteErrorStatus(w, http.StatusForbidden, fmt.Errorf(
				"%s %s is off: start ds-node with -api-token, -api-token-file or $STRATA_API_TOKEN to turn it on for requests with that bearer token (or -api-insecure-no-auth for anyone)",
				r.Method, r.URL.Path))
			return
		case ac.authorize(r) != nil:
			inspect.WriteError(w, fmt.Errorf("%w: %s %s needs the API token: send Authorization: Bearer <the -api-token of ds-node>",
				inspect.ErrUnauthorized, r.Method, r.URL.Path))
			return
		}
		h(w, r)
	}
}

// newAPI serves the JSON API above and, on every other path, the site's admin handler
// (raftgroup.Site.AdminHandler: /metrics, /v1/..., what ds-info -url reads).
func newAPI(site *raftgroup.Site, db *ds.DB, log *slog.Logger, cfg apiConfig) (http.Handler, error) {
	var opts []inspect.Option
	if cfg.adminToken != "" {
		opts = append(opts, inspect.WithPayloads(inspect.BearerToken(cfg.adminToken)))
	}
	admin, err := site.AdminHandler(opts...)
	if err != nil {
		return nil, err
	}
	a := &api{site: site, db: db, log: log, storeTimeout: cfg.storeTimeout}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /store", cfg.access.guard(a.store))
	mux.HandleFunc("GET /read", cfg.access.guard(a.read))
	mux.HandleFunc("GET /status", a.status)
	mux.HandleFunc("POST /sites", cfg.access.guard(a.addSite))
	mux.Handle("/", admin)
	return mux, nil
}

// writeError answers err as every Strata handler does (inspect.StatusOf: 503 and retryable for
// what may succeed later, 400 for a bad request, 500 for the rest), with refs if any.
func writeError(w http.ResponseWriter, err error, refs []refJSON) {
	status, retryable := inspect.StatusOf(err)
	inspect.WriteJSON(w, status, errorResponse{ErrorBody: inspect.ErrorBody{Error: err.Error(), Retryable: retryable}, Refs: refs})
}

func (a *api) store(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeError(w, inspect.BadRequestf("read body: %w", err), nil)
		return
	}
	var in []storeMessage
	if b := bytes.TrimSpace(body); len(b) > 0 && b[0] == '[' {
		err = json.Unmarshal(b, &in)
	} else {
		in = make([]storeMessage, 1)
		err = json.Unmarshal(b, &in[0])
	}
	if err != nil {
		writeError(w, inspect.BadRequestf("decode body: %w", err), nil)
		return
	}
	if len(in) == 0 {
		inspect.WriteJSON(w, http.StatusOK, storeResponse{Refs: []refJSON{}})
		return
	}
	msgs := make([]ds.Message, len(in))
	for i, m := range in {
		p, err := base64.StdEncoding.DecodeString(m.PayloadB64)
		if err != nil {
			writeError(w, inspect.BadRequestf("message %d: payload_b64: %w", i, err), nil)
			return
		}
		msgs[i] = ds.Message{ClientID: m.ClientID, Topic: m.Topic, Payload: p}
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.storeTimeout)
	defer cancel()
	refs, err := a.db.Store(ctx, msgs...)
	out := make([]refJSON, len(refs))
	for i, ref := range refs {
		out[i] = refJSON{Shard: ref.Shard, TS: ref.Timestamp}
	}
	if err != nil {
		a.log.Debug("store failed", "messages", len(msgs), "err", err)
		if len(msgs) == 1 {
			out = nil
		}
		writeError(w, err, out)
		return
	}
	inspect.WriteJSON(w, http.StatusOK, storeResponse{Refs: out})
}

func (a *api) read(w http.ResponseWriter, r *http.Request) {
	filter := r.URL.Query().Get("filter")
	if filter == "" {
		filter = "#"
	}
	// A shard this site holds no (caught-up) replica of is read through a site that holds one;
	// where none answers, the read fails with ErrUnavailable (503), never a partial answer.
	msgs, err := readAll(r.Context(), a.db, filter)
	if err != nil {
		writeError(w, err, nil)
		return
	}
	out := make([]readMessage, len(msgs))
	for i, m := range msgs {
		out[i] = readMessage{Shard: ds.ShardID(m.Shard), TS: m.Timestamp, ClientID: m.ClientID, Topic: m.Topic,
			PayloadB64: base64.StdEncoding.EncodeToString(m.Payload)}
	}
	inspect.WriteJSON(w, http.StatusOK, out)
}

// readAll reads every message matching filter: every stream to its end, shard by shard, each
// shard's messages merged into timestamp order (a shard's streams, one per learned topic
// pattern, interleave in time).
func readAll(ctx context.Context, db *ds.DB, filter string) ([]ds.Message, error) {
	streams, err := db.Streams(filter, time.Time{})
	if err != nil {
		return nil, err
	}
	perShard := make([][]ds.Message, db.NShards())
	for _, s := range streams {
		it, err := db.Iterator(s, filter, time.Time{})
		if err != nil {
			return nil, err
		}
		for {
			msgs, next, err := db.Next(ctx, it, 1000)
			if errors.Is(err, ds.ErrGenerationNotFound) {
				break // dropped by retention while we read
			}
			if err != nil && !errors.Is(err, ds.ErrEndOfStream) {
				return nil, fmt.Errorf("shard %d: %w", s.Shard, err)
			}
			perShard[s.Shard] = append(perShard[s.Shard], msgs...)
			if len(msgs) == 0 || err != nil {
				break
			}
			it = next
		}
	}
	var out []ds.Message
	for _, msgs := range perShard {
		slices.SortStableFunc(msgs, func(a, b ds.Message) int {
			switch {
			case a.Timestamp < b.Timestamp:
				return -1
			case a.Timestamp > b.Timestamp:
				return 1
			}
			return 0
		})
		out = append(out, msgs...)
	}
	return out, nil
}

func (a *api) status(w http.ResponseWriter, r *http.Request) {
	st := statusResponse{SiteID: a.site.ID().String(), RaftAddress: a.site.RaftAddress(), Groups: a.site.Groups()}
	for i := range a.db.NShards() {
		d := digestJSON{Shard: stream.ShardID(i)}
		dg, err := a.site.Digest(stream.ShardID(i))
		if err != nil {
			d.Error = err.Error()
		} else {
			d.Applied, d.Sum, d.Keys = dg.Applied, hex.EncodeToString(dg.Sum[:]), dg.Keys
		}
		st.Shards = append(st.Shards, d)
	}
	inspect.WriteJSON(w, http.StatusOK, st)
}

func (a *api) addSite(w http.ResponseWriter, r *http.Request) {
	var req addSiteRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, inspect.BadRequestf("decode body: %w", err), nil)
		return
	}
	id, err := raftgroup.ParseSiteID(req.ID)
	if err != nil {
		writeError(w, inspect.BadRequest(err), nil)
		return
	}
	if req.RaftAddress == "" {
		writeError(w, inspect.BadRequestf("raft_address is empty"), nil)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := a.site.AddSite(ctx, id, req.RaftAddress); err != nil {
		writeError(w, err, nil)
		return
	}
	inspect.WriteJSON(w, http.StatusOK, struct{}{})
}
