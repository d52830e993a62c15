package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/inspect"
	"github.com/strata-mq/strata/raftgroup"
	"github.com/strata-mq/strata/session"
)

// replicatedFlags are the flags of replicated mode (those of cmd/ds-node).
type replicatedFlags struct {
	raftAddr    string
	initial     string
	join        bool
	shards      int
	rf          int
	deployment  uint64
	tlsCA       string
	tlsCert     string
	tlsKey      string
	proposalTO  time.Duration
	openTimeout time.Duration
	serviceAddr string
	readReplica bool
}

func (f *replicatedFlags) register(fs interface {
	StringVar(*string, string, string, string)
	BoolVar(*bool, string, bool, string)
	IntVar(*int, string, int, string)
	Uint64Var(*uint64, string, uint64, string)
	DurationVar(*time.Duration, string, time.Duration, string)
}) {
	fs.StringVar(&f.raftAddr, "raft-addr", "", "replicated mode: host:port where this site listens for and is reached by the other sites (fixed for the site's life); empty: embedded DB")
	fs.StringVar(&f.initial, "initial", "", "replicated mode, bootstrap: comma-separated -raft-addr of every initial site, this one included; the same list on every site")
	fs.BoolVar(&f.join, "join", false, "replicated mode: join an existing cluster; waits until a member adds this site (POST /v1/sites on a member's -admin, with the ID this site prints)")
	fs.IntVar(&f.shards, "shards", 16, "replicated mode: number of shards (at bootstrap)")
	fs.IntVar(&f.rf, "rf", 3, "replicated mode: replication factor, voters per shard (at bootstrap)")
	fs.Uint64Var(&f.deployment, "deployment-id", 1, "replicated mode: deployment ID; sites of other deployments are refused")
	fs.StringVar(&f.tlsCA, "tls-ca", "", "replicated mode: mutual TLS between sites, CA certificate (PEM)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "replicated mode: mutual TLS between sites, this site's certificate (PEM)")
	fs.StringVar(&f.tlsKey, "tls-key", "", "replicated mode: mutual TLS between sites, this site's key (PEM)")
	fs.DurationVar(&f.proposalTO, "proposal-timeout", 0, "replicated mode: how long a write keeps retrying without quorum before it fails (0: raftgroup's default, 10s)")
	fs.StringVar(&f.serviceAddr, "service-addr", "", "replicated mode: host:port where this site serves the Stores and reads other sites forward for shards they hold no replica of (default: the -raft-addr host, any free port)")
	fs.BoolVar(&f.readReplica, "read-replicas", false, "replicated mode, at bootstrap: every site holds a replica of every shard (non-voting where it does not vote); default: a shard lives on its -rf voters only and other sites forward to them")
	fs.DurationVar(&f.openTimeout, "open-timeout", 0, "replicated mode: give up starting after this long (0: wait until stopped)")
}

// storage is the DB the broker runs over: an embedded ds.DB, or a replicated site's.
type storage struct {
	db      *ds.DB
	site    *raftgroup.Site // replicated mode only
	dataDir string
}

// openStorage opens the embedded DB in dataDir, or with -raft-addr starts the site whose
// directory is dataDir and returns its DB. In replicated mode it waits until the site knows
// the cluster (see raftgroup.Open): bootstrapping sites wait for each other, a joining site
// until a member adds it. stdout gets "site ID" (and, joining, how to add it).
func openStorage(ctx context.Context, rf *replicatedFlags, dataDir string, log *slog.Logger, stdout io.Writer) (*storage, error) {
	if rf.raftAddr == "" {
		if rf.initial != "" || rf.join {
			return nil, errors.New("-initial and -join need -raft-addr")
		}
		db, err := ds.Open(dataDir, &ds.Options{Logger: log})
		if err != nil {
			return nil, fmt.Errorf("open DB %s: %w", dataDir, err)
		}
		return &storage{db: db, dataDir: dataDir}, nil
	}
	cfg := raftgroup.Config{
		Dir:               dataDir,
		RaftAddress:       rf.raftAddr,
		ServiceAddress:    rf.serviceAddr,
		ReadReplicas:      rf.readReplica,
		Join:              rf.join,
		DeploymentID:      rf.deployment,
		ReplicationFactor: rf.rf,
		ProposalTimeout:   rf.proposalTO,
		DB:                &ds.Options{NShards: rf.shards, Logger: log},
	}
	for _, a := range strings.Split(rf.initial, ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.InitialSites = append(cfg.InitialSites, a)
		}
	}
	if rf.tlsCA != "" || rf.tlsCert != "" || rf.tlsKey != "" {
		cfg.TLS = &raftgroup.TLS{CAFile: rf.tlsCA, CertFile: rf.tlsCert, KeyFile: rf.tlsKey}
	}
	id, err := raftgroup.PrepareSite(cfg)
	if err != nil {
		return nil, fmt.Errorf("prepare site %s: %w", dataDir, err)
	}
	fmt.Fprintf(stdout, "site %s raft %s\n", id, rf.raftAddr)
	if rf.join {
		log.Info("joining: add this site with POST /v1/sites on a member's admin endpoint (no-op if it was added before)",
			"id", id.String(), "raft_address", rf.raftAddr)
	}
	openCtx := ctx
	if rf.openTimeout > 0 {
		var cancel context.CancelFunc
		openCtx, cancel = context.WithTimeout(ctx, rf.openTimeout)
		defer cancel()
	}
	log.Info("starting the site", "dir", dataDir, "raft", rf.raftAddr, "initial", cfg.InitialSites, "join", rf.join)
	start := time.Now()
	site, err := raftgroup.Open(openCtx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open site %s: %w", dataDir, err)
	}
	db, err := site.DB()
	if err != nil {
		site.Close()
		return nil, fmt.Errorf("open the site's DB: %w", err)
	}
	log.Info("site started", "site", id.String(), "started_in", time.Since(start).Round(time.Millisecond))
	return &storage{db: db, site: site, dataDir: dataDir}, nil
}

// defaultOwner is the session Owner when -owner is not given: the hostname, or in replicated
// mode the site's ID (stable, and unique among the brokers sharing the DB).
func (s *storage) defaultOwner(host string) string {
	if s.site != nil {
		return "site-" + s.site.ID().String()
	}
	return host
}

// close closes the DB, or the site (with its DB).
func (s *storage) close() error {
	if s.site != nil {
		return s.site.Close()
	}
	return s.db.Close()
}

// adminHandler serves inspect.Handler (embedded) or Site.AdminHandler (replicated: adds GET
// /v1/cluster and the Raft metrics) with the sessions' metrics, and in replicated mode
//
//	POST /v1/sites  body {"id": "<16 hex digits>", "raft_address": "host:port"}: adds a site
//	                started with -join (Site.AddSite). 200 {} once the cluster recorded it.
//
// With a token, the payload endpoints (/v1/messages, /v1/records) and POST /v1/sites answer
// only requests with that bearer token; without one they are off (403). Errors follow
// inspect's convention (inspect.WriteError).
func (s *storage) adminHandler(store *session.Store, token string) (http.Handler, error) {
	opts := []inspect.Option{inspect.WithCollectors(store.Collector())}
	authorize := inspect.BearerToken(token)
	if token != "" {
		opts = append(opts, inspect.WithPayloads(authorize))
	}
	if s.site == nil {
		return inspect.Handler(s.db, append(opts, inspect.WithDataDir(s.dataDir))...), nil
	}
	h, err := s.site.AdminHandler(opts...)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sites", func(w http.ResponseWriter, r *http.Request) {
		if token == "" {
			inspect.WriteErrorStatus(w, http.StatusForbidden, errors.New("POST /v1/sites is off: start the broker with -admin-token"))
			return
		}
		if err := authorize(r); err != nil {
			inspect.WriteError(w, err)
			return
		}
		var req struct {
			ID          string `json:"id"`
			RaftAddress string `json:"raft_address"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
			inspect.WriteError(w, inspect.BadRequestf("decode body: %w", err))
			return
		}
		id, err := raftgroup.ParseSiteID(req.ID)
		if err != nil {
			inspect.WriteError(w, inspect.BadRequest(err))
			return
		}
		if req.RaftAddress == "" {
			inspect.WriteError(w, inspect.BadRequestf("raft_address is empty"))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		if err := s.site.AddSite(ctx, id, req.RaftAddress); err != nil {
			inspect.WriteError(w, err)
			return
		}
		inspect.WriteJSON(w, http.StatusOK, struct{}{})
	})
	mux.Handle("/", h)
	return mux, nil
}
