package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/strata-mq/strata/ds"
)

// source is where a subcommand reads: a data directory (-dir, through ds.Inspect) or a
// running node's admin handler (-url, ds.AdminHandler). Both give the same rows. An error may
// come with a partial result (shards that did not load); a usageError means the request was
// wrong (bad filter, unknown shard or generation) and comes with nothing.
type source interface {
	info() (ds.InfoView, error)
	generations() ([]ds.GenerationView, error)
	streams(filter string) ([]ds.StreamView, error)
	trie(sh int, gen int64) (ds.TrieView, error)
	messages(filter string, since time.Time, limit int) ([]ds.MessageView, error)
	close()
}

// usageError is an error of the request: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// remoteError is an error response of the admin handler: no data came with it.
type remoteError struct {
	status int
	msg    string
}

func (e remoteError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.msg, e.status) }

// dirSource reads a data directory.
type dirSource struct{ in *ds.Inspector }

func asUsage(err error) error {
	if errors.Is(err, ds.ErrInvalidFilter) || errors.Is(err, ds.ErrGenerationNotFound) || errors.Is(err, ds.ErrShardNotFound) {
		return usageError{err}
	}
	return err
}

func (d dirSource) close() { d.in.Close() }

func (d dirSource) info() (ds.InfoView, error) {
	return ds.InfoOf(d.in, d.in.Manifest(), d.in.DiskBytes())
}

func (d dirSource) generations() ([]ds.GenerationView, error) { return ds.GenerationsOf(d.in) }

func (d dirSource) streams(filter string) ([]ds.StreamView, error) {
	rows, err := ds.StreamsOf(d.in, filter)
	if errors.Is(err, ds.ErrInvalidFilter) {
		return nil, usageError{err}
	}
	return rows, err
}

func (d dirSource) trie(sh int, gen int64) (ds.TrieView, error) {
	if sh >= d.in.NShards() {
		return ds.TrieView{}, usageError{fmt.Errorf("shard %d does not exist: the directory has %d shards", sh, d.in.NShards())}
	}
	v, err := ds.TrieOf(d.in, ds.ShardID(sh), ds.GenerationID(gen))
	return v, asUsage(err)
}

func (d dirSource) messages(filter string, since time.Time, limit int) ([]ds.MessageView, error) {
	rows, err := ds.MessagesOf(d.in, filter, since, limit)
	if errors.Is(err, ds.ErrInvalidFilter) {
		return nil, usageError{err}
	}
	return rows, err
}

// urlSource reads a node's admin handler.
type urlSource struct {
	base   string // without a trailing slash
	client *http.Client
}

func newURLSource(raw string) (*urlSource, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("%q: want http://host:port/prefix", raw)
	}
	u.RawQuery, u.Fragment = "", ""
	return &urlSource{base: strings.TrimRight(u.String(), "/"), client: &http.Client{Timeout: time.Minute}}, nil
}

func (s *urlSource) close() {}

// get fetches path?query into v.
func (s *urlSource) get(path string, query url.Values, v any) error {
	u := s.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	resp, err := s.client.Get(u)
	if err != nil {
		return usageError{fmt.Errorf("cannot reach the node: %w", err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e ds.AdminError
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("GET %s: %s", u, strings.TrimSpace(string(body)))
		}
		err := remoteError{resp.StatusCode, e.Error}
		if resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusNotFound {
			return usageError{err}
		}
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	return nil
}

func (s *urlSource) info() (v ds.InfoView, err error) {
	return v, s.get("/v1/info", nil, &v)
}

func (s *urlSource) generations() (v []ds.GenerationView, err error) {
	return v, s.get("/v1/generations", nil, &v)
}

func (s *urlSource) streams(filter string) (v []ds.StreamView, err error) {
	return v, s.get("/v1/streams", url.Values{"filter": {filter}}, &v)
}

func (s *urlSource) trie(sh int, gen int64) (v ds.TrieView, err error) {
	return v, s.get("/v1/trie", url.Values{"shard": {strconv.Itoa(sh)}, "gen": {strconv.FormatInt(gen, 10)}}, &v)
}

func (s *urlSource) messages(filter string, since time.Time, limit int) (v []ds.MessageView, err error) {
	q := url.Values{"filter": {filter}, "limit": {strconv.Itoa(limit)}}
	if !since.IsZero() {
		q.Set("since", since.Format(time.RFC3339Nano))
	}
	return v, s.get("/v1/messages", q, &v)
}
