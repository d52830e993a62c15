package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/strata-mq/strata/inspect"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/raftgroup"
	"github.com/strata-mq/strata/session"
)

// source is where a subcommand reads: a data directory (-dir, through inspect.Open, or
// raftgroup.Inspect for a replicated site's directory) or a running node's admin handler
// (-url, inspect.Handler). All give the same rows. An error may come with a partial result
// (shards that did not load); a usageError means the request was wrong (bad filter, unknown
// shard or generation) and comes with nothing.
type source interface {
	info() (infoView, error)
	generations() ([]inspect.GenerationView, error)
	streams(filter string) ([]inspect.StreamView, error)
	trie(sh int, gen int64) (inspect.TrieView, error)
	messages(filter string, since time.Time, limit int) ([]inspect.MessageView, error)
	sessions() ([]session.SessionView, error)
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

// infoView is inspect.InfoView, and for a replicated site's directory what the site is and where
// each shard was read from. The embedded struct's fields come first and unchanged in JSON.
type infoView struct {
	inspect.InfoView
	Site    *siteView       `json:"site,omitempty"`
	Cluster *clusterSummary `json:"cluster,omitempty"` // -url on a replicated site
}

// clusterSummary is info's digest of a replicated site's /v1/cluster (ds-info cluster and
// shards show the details).
type clusterSummary struct {
	Site        raftgroup.SiteID `json:"site"`
	RaftAddress string           `json:"raft_address"`
	MetaFresh   bool             `json:"meta_fresh"`
	// Sites counts the sites by health (up, down, lost, left); NotUp lists the slots of
	// those down or lost.
	Sites      map[raftgroup.Health]int `json:"sites"`
	NotUp      []int                    `json:"not_up,omitempty"`
	Leaderless []int                    `json:"leaderless_shards,omitempty"` // shards with no known leader
	// Transitions counts replica transitions in progress (join, leave, RF change).
	Transitions int `json:"transitions"`
}

func summarizeCluster(v raftgroup.ClusterView) *clusterSummary {
	s := &clusterSummary{Site: v.Site, RaftAddress: v.RaftAddress, MetaFresh: v.MetaFresh, Sites: map[raftgroup.Health]int{}}
	for _, si := range v.Sites {
		s.Sites[si.Health]++
		if si.Health == raftgroup.HealthDown || si.Health == raftgroup.HealthLost {
			s.NotUp = append(s.NotUp, si.Slot)
		}
	}
	for _, g := range v.Groups {
		if !g.Meta && g.Leader == 0 {
			s.Leaderless = append(s.Leaderless, int(g.Shard))
		}
	}
	for _, r := range v.Replicas {
		if r.Transition != "" {
			s.Transitions++
		}
	}
	return s
}

// siteView describes a replicated site's directory (ds-info info -dir SITE_DIR).
type siteView struct {
	ID          string        `json:"id"`
	RaftAddress string        `json:"raft_address"`
	Replicas    []replicaView `json:"replicas"` // by shard
}

// replicaView is the replica directory one shard was read from (raftgroup.InspectedReplica).
type replicaView struct {
	Shard        int           `json:"shard"`
	ReplicaID    uint64        `json:"replica_id"` // 0: the site holds no replica of the shard
	Store        string        `json:"store"`      // the Pebble directory read, relative to the site's directory
	AppliedIndex uint64        `json:"applied_index"`
	Ignored      []ignoredView `json:"ignored,omitempty"`
}

// ignoredView is another replica directory of the shard, not read.
type ignoredView struct {
	ReplicaID uint64 `json:"replica_id"`
	Dir       string `json:"dir"` // relative to the site's directory
	Reason    string `json:"reason"`
}

// storageSite is InfoView.Storage for a replicated site's directory.
const storageSite = "replicated site"

func newSiteView(si *raftgroup.SiteInspector) *siteView {
	rel := func(p string) string {
		if r, err := filepath.Rel(si.Dir, p); err == nil {
			return r
		}
		return p
	}
	v := &siteView{ID: si.Site.String(), RaftAddress: si.RaftAddress, Replicas: []replicaView{}}
	for _, r := range si.Replicas {
		rv := replicaView{Shard: int(r.Shard), ReplicaID: r.ReplicaID, AppliedIndex: r.Applied}
		if r.ReplicaID != 0 {
			rv.Store = rel(filepath.Join(r.Dir, r.Store))
		}
		for _, ig := range r.Ignored {
			reason := ig.Reason
			if ig.Err != nil {
				reason += ": " + clean(ig.Err.Error())
			}
			rv.Ignored = append(rv.Ignored, ignoredView{ReplicaID: ig.ReplicaID, Dir: rel(ig.Dir), Reason: reason})
		}
		v.Replicas = append(v.Replicas, rv)
	}
	return v
}

// dirInspector is what -dir opens: a *inspect.Inspector, or a *raftgroup.SiteInspector (which
// embeds one and adds its own Check).
type dirInspector interface {
	inspect.Source
	Manifest() ds.Manifest
	NShards() int
	DiskBytes() uint64
	Check(maxProblems int) *inspect.CheckReport
	ScanRecords(sh ds.ShardID, prefix []byte, f func(key, value []byte, version uint64) bool) error
	Close() error
}

// dirSource reads a data directory; site is set for a replicated site's directory.
type dirSource struct {
	in   dirInspector
	site *raftgroup.SiteInspector
}

func asUsage(err error) error {
	if errors.Is(err, ds.ErrInvalidFilter) || errors.Is(err, ds.ErrGenerationNotFound) || errors.Is(err, ds.ErrShardNotFound) {
		return usageError{err}
	}
	return err
}

func (d dirSource) close() { d.in.Close() }

func (d dirSource) info() (infoView, error) {
	v, err := inspect.InfoOf(d.in, d.in.Manifest(), d.in.DiskBytes())
	out := infoView{InfoView: v}
	if d.site != nil {
		out.Storage = storageSite
		out.Site = newSiteView(d.site)
	}
	return out, err
}

func (d dirSource) generations() ([]inspect.GenerationView, error) {
	return inspect.GenerationsOf(d.in)
}

func (d dirSource) streams(filter string) ([]inspect.StreamView, error) {
	rows, err := inspect.StreamsOf(d.in, filter)
	if errors.Is(err, ds.ErrInvalidFilter) {
		return nil, usageError{err}
	}
	return rows, err
}

func (d dirSource) trie(sh int, gen int64) (inspect.TrieView, error) {
	if sh >= d.in.NShards() {
		return inspect.TrieView{}, usageError{fmt.Errorf("shard %d does not exist: the directory has %d shards", sh, d.in.NShards())}
	}
	v, err := inspect.TrieOf(d.in, ds.ShardID(sh), ds.GenerationID(gen))
	return v, asUsage(err)
}

func (d dirSource) messages(filter string, since time.Time, limit int) ([]inspect.MessageView, error) {
	rows, err := inspect.MessagesOf(d.in, filter, since, limit)
	if errors.Is(err, ds.ErrInvalidFilter) {
		return nil, usageError{err}
	}
	return rows, err
}

// urlSource reads a node's admin handler.
type urlSource struct {
	base   string // without a trailing slash
	client *http.Client
	token  string // $STRATA_ADMIN_TOKEN: sent as a bearer token (inspect.BearerToken)
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
	return &urlSource{base: strings.TrimRight(u.String(), "/"), client: &http.Client{Timeout: time.Minute},
		token: os.Getenv("STRATA_ADMIN_TOKEN")}, nil
}

func (s *urlSource) close() {}

// get fetches path?query into v.
func (s *urlSource) get(path string, query url.Values, v any) error {
	u := s.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return usageError{err}
	}
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return usageError{fmt.Errorf("cannot reach the node: %w", err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e inspect.ErrorBody
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

func (s *urlSource) info() (infoView, error) {
	var v inspect.InfoView
	if err := s.get("/v1/info", nil, &v); err != nil {
		return infoView{}, err
	}
	out := infoView{InfoView: v}
	var cv raftgroup.ClusterView
	switch err := s.get("/v1/cluster", nil, &cv); {
	case err == nil:
		out.Cluster = summarizeCluster(cv)
	case isNotFound(err): // an embedded node
	default:
		return out, err
	}
	return out, nil
}

func (s *urlSource) generations() (v []inspect.GenerationView, err error) {
	return v, s.get("/v1/generations", nil, &v)
}

func (s *urlSource) streams(filter string) (v []inspect.StreamView, err error) {
	return v, s.get("/v1/streams", url.Values{"filter": {filter}}, &v)
}

func (s *urlSource) trie(sh int, gen int64) (v inspect.TrieView, err error) {
	return v, s.get("/v1/trie", url.Values{"shard": {strconv.Itoa(sh)}, "gen": {strconv.FormatInt(gen, 10)}}, &v)
}

func (s *urlSource) messages(filter string, since time.Time, limit int) (v []inspect.MessageView, err error) {
	q := url.Values{"filter": {filter}, "limit": {strconv.Itoa(limit)}}
	if !since.IsZero() {
		q.Set("since", since.Format(time.RFC3339Nano))
	}
	return v, s.get("/v1/messages", q, &v)
}
