// Command ds-node runs one site of a replicated Strata cluster (package raftgroup) and serves a
// small JSON API over HTTP, for multi-process and Docker tests and for operators trying a
// cluster.
//
// Three sites on one machine (each in its own terminal; the same -initial list on every one;
// the API token from the environment, see Access below):
//
//	export STRATA_API_TOKEN=$(head -c 24 /dev/urandom | base64)
//	ds-node -dir /tmp/s1 -raft-addr 127.0.0.1:7001 -http-addr 127.0.0.1:8001 -initial 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//	ds-node -dir /tmp/s2 -raft-addr 127.0.0.1:7002 -http-addr 127.0.0.1:8002 -initial 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//	ds-node -dir /tmp/s3 -raft-addr 127.0.0.1:7003 -http-addr 127.0.0.1:8003 -initial 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//	curl -H "Authorization: Bearer $STRATA_API_TOKEN" 'http://127.0.0.1:8001/read?filter=%23'
//
// A site bootstraps with -initial (ignored once its -dir holds state: restart it with the same
// flags) or joins an existing cluster with -join: it then waits until a member adds it (POST
// /sites on any member, with the ID the joining site logs and the member's API token).
// -raft-addr must stay the same across restarts.
//
// ds-node logs through log/slog, as text on stderr. Once the site has started and the HTTP
// server listens it logs one line with msg=ready and the addresses actually bound (so -http-addr
// may use port 0), then who may use the payload endpoints (api=token, open or off) and whether
// the API is served over HTTPS (http_tls=off, on or mutual):
//
//	time=... level=INFO msg=ready http=127.0.0.1:8001 raft=127.0.0.1:7001 site=3f0c... started_in=... api=token http_tls=off
//
// SIGTERM or SIGINT stops it cleanly (the HTTP server, then the site). -log-level debug also
// shows dragonboat's logs.
//
// # HTTP API
//
// Every response is JSON. An error is inspect's ErrorBody, the convention of every Strata
// handler: {"error": "...", "retryable": true} with status 503 when retrying later may succeed
// (ds.IsRetryable: no quorum, no leader yet, this site cut off from the majority; also while
// the node shuts down); {"error": "..."} (retryable false, left out) with 400 for a bad
// request, 401 or 403 for a request refused (see Access), 404 for an unknown shard or
// generation, and 500 otherwise (inspect.StatusOf).
//
//	POST /store   body: {"client_id": "c1", "topic": "a/b", "payload_b64": "aGk="}, or an
//	              array of those (stored with one Store call). 200: {"refs": [{"shard": 2,
//	              "ts": 1712345678901234}, ...]}, one per message in order. A message is
//	              acknowledged only by a 200. On an error no message of a failed shard was
//	              stored, but with an array other shards' messages may have been: the error
//	              response then also carries "refs", with ts 0 for those not stored. A 503 whose
//	              error says "outcome unknown" means the messages may still be stored.
//	GET /read?filter=#
//	              every message matching the MQTT filter (default #) in this site's replicas,
//	              grouped by shard and in timestamp order within a shard: [{"shard": 0, "ts":
//	              ..., "client_id": "c1", "topic": "a/b", "payload_b64": "aGk="}, ...]. 503 while
//	              this site runs no replica of some shard (e.g. just after a restart). Reads are
//	              local: a lagging replica returns fewer messages.
//	GET /status   {"site_id", "raft_address", "groups": [{"group", "shard", "meta", "leader",
//	              "term", "replica", "leader_here"}], "shards": [{"shard", "applied", "sum",
//	              "keys", "error"}]}: the leader of every Raft group as this site knows it
//	              (replica IDs; "replica" is this site's, 0 if none runs here) and a digest of
//	              every local shard replica (applied index, hex SHA-256 of its keys and values).
//	              Replicas at the same applied index have the same sum.
//	POST /sites   body: {"id": "<16 hex digits>", "raft_address": "host:port"}: adds a site
//	              started with -join (Site.AddSite). 200: {}.
//
// Every other path is the site's admin handler (raftgroup.Site.AdminHandler): /metrics
// (Prometheus), /v1/cluster and ds's /v1/... views, so that `ds-info -url http://HOST:PORT`
// works against a node. Its payload endpoints (/v1/messages, /v1/records) are off unless
// -admin-token is given, and then answer only requests with that bearer token (ds-info sends
// $STRATA_ADMIN_TOKEN).
//
// # Access
//
// POST /store, GET /read and POST /sites write or read payloads or change the cluster's
// membership, so they are off unless the operator turns them on, in one of two ways:
//
//   - with an API token: -api-token TOKEN, -api-token-file FILE (its content, surrounding
//     whitespace trimmed) or, when neither flag is given, $STRATA_API_TOKEN; the two latter
//     keep the token off the command line, which other users of the machine may see. Those
//     endpoints then answer only requests with "Authorization: Bearer TOKEN" (compared in
//     constant time, inspect.BearerToken), the others 401 with WWW-Authenticate: Bearer;
//   - with -api-insecure-no-auth: open to anyone who reaches the HTTP address, for local
//     experiments and tests (or behind -http-tls-client-ca, which already limits who connects).
//     A token and -api-insecure-no-auth exclude each other.
//
// Without either they answer 403 with an error naming these flags. GET /status, /metrics and
// the admin views without payloads are always open: they show no message content. The API
// token and -admin-token are separate (each is off when not given).
//
// The token travels in the clear over plain HTTP: beyond the local machine serve the API over
// HTTPS with -http-tls-cert and -http-tls-key (PEM; read at start, a new certificate takes a
// restart), and with -http-tls-client-ca only to clients with a certificate signed by that CA
// (mutual TLS). These are separate from -tls-ca, -tls-cert and -tls-key, which secure the Raft
// transport between sites.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/raftgroup"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ds-node:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		dir          = flag.String("dir", "", "the site's directory (required)")
		raftAddr     = flag.String("raft-addr", "", "host:port where this site listens for and is reached by the other sites (required; fixed for the site's life)")
		httpAddr     = flag.String("http-addr", "127.0.0.1:8080", "host:port of the HTTP API (port 0: any free port, logged in the ready line)")
		initial      = flag.String("initial", "", "bootstrap: comma-separated raft addresses of every initial site, this one included; the same list on every site")
		serviceAddr  = flag.String("service-addr", "", "host:port where this site serves the Stores and reads other sites forward for shards they hold no replica of (default: the -raft-addr host, any free port; recorded in the cluster at every start)")
		readReplicas = flag.Bool("read-replicas", false, "at bootstrap: every site holds a replica of every shard (non-voting where it does not vote), so every read is local; default: a shard lives on its -rf voters only, and other sites forward to them")
		join         = flag.Bool("join", false, "join an existing cluster: wait until a member adds this site (POST /sites)")
		shards       = flag.Int("shards", 16, "number of shards (at bootstrap)")
		rf           = flag.Int("rf", 3, "replication factor: voters per shard (at bootstrap)")
		deployment   = flag.Uint64("deployment-id", 1, "deployment ID: sites of other deployments are refused")
		tlsCA        = flag.String("tls-ca", "", "mutual TLS of the Raft transport between sites (not the HTTP API: see -http-tls-*): CA certificate (PEM)")
		tlsCert      = flag.String("tls-cert", "", "mutual TLS of the Raft transport between sites: this site's certificate (PEM)")
		tlsKey       = flag.String("tls-key", "", "mutual TLS of the Raft transport between sites: this site's key (PEM)")
		httpCert     = flag.String("http-tls-cert", "", "serve the HTTP API over HTTPS with this certificate (PEM, with -http-tls-key); the -tls-* flags are the Raft transport's")
		httpKey      = flag.String("http-tls-key", "", "the key of -http-tls-cert (PEM)")
		httpClientCA = flag.String("http-tls-client-ca", "", "HTTPS: accept only clients with a certificate signed by this CA (PEM): mutual TLS for the HTTP API")
		apiToken     = flag.String("api-token", "", "turn on POST /store, GET /read and POST /sites for requests with this bearer token (shows in ps: prefer -api-token-file or $"+apiTokenEnv+"); without a token or -api-insecure-no-auth they are off")
		apiTokenFile = flag.String("api-token-file", "", "read the -api-token from this file (surrounding whitespace trimmed)")
		apiInsecure  = flag.Bool("api-insecure-no-auth", false, "turn on POST /store, GET /read and POST /sites for anyone who reaches the HTTP API, without a token (local experiments and tests)")
		proposalTO   = flag.Duration("proposal-timeout", 0, "how long a store keeps retrying without quorum before it fails with 503 (0: raftgroup's default, 10s)")
		openTimeout  = flag.Duration("open-timeout", 0, "give up starting after this long (0: wait until stopped)")
		logLevel     = flag.String("log-level", "info", "debug, info, warn or error (debug includes dragonboat's logs)")
		storeTimeout = flag.Duration("store-timeout", 0, "bound on one POST /store (0: the proposal timeout plus 5s)")
		adminToken   = flag.String("admin-token", "", "turn on the admin handler's payload endpoints (/v1/messages, /v1/records) for requests with this bearer token; empty: off")
	)
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: ds-node -dir DIR -raft-addr HOST:PORT (-initial A,B,C | -join) [flags]\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	if *dir == "" || *raftAddr == "" {
		flag.Usage()
		return errors.New("-dir and -raft-addr are required")
	}
	cfg := raftgroup.Config{
		Dir:               *dir,
		RaftAddress:       *raftAddr,
		ServiceAddress:    *serviceAddr,
		ReadReplicas:      *readReplicas,
		Join:              *join,
		DeploymentID:      *deployment,
		ReplicationFactor: *rf,
		ProposalTimeout:   *proposalTO,
		DB:                &ds.Options{NShards: *shards, Logger: log},
	}
	for _, a := range strings.Split(*initial, ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.InitialSites = append(cfg.InitialSites, a)
		}
	}
	apiAcc, tokenSource, err := apiAccess(*apiToken, *apiTokenFile, *apiInsecure)
	if err != nil {
		return err
	}
	httpTLS, err := httpTLSConfig(*httpCert, *httpKey, *httpClientCA)
	if err != nil {
		return err
	}
	if *tlsCA != "" || *tlsCert != "" || *tlsKey != "" {
		cfg.TLS = &raftgroup.TLS{CAFile: *tlsCA, CertFile: *tlsCert, KeyFile: *tlsKey}
	}
	if *storeTimeout == 0 {
		pt := *proposalTO
		if pt == 0 {
			pt = 10 * time.Second
		}
		*storeTimeout = pt + 5*time.Second
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	openCtx := ctx
	if *openTimeout > 0 {
		var cancel context.CancelFunc
		openCtx, cancel = context.WithTimeout(ctx, *openTimeout)
		defer cancel()
	}

	log.Info("starting", "dir", *dir, "raft", *raftAddr, "initial", cfg.InitialSites, "join", *join,
		"api", apiAcc.String(), "api_token_from", tokenSource, "http_tls", tlsMode(httpTLS))
	if apiAcc.open {
		log.Warn("-api-insecure-no-auth: POST /store, GET /read and POST /sites are open to anyone who reaches the HTTP API")
	}
	if *join {
		// A joining site waits in Open until a member adds it: say which ID to add.
		id, err := raftgroup.PrepareSite(cfg)
		if err != nil {
			return fmt.Errorf("prepare site: %w", err)
		}
		log.Info("joining: add this site with POST /sites on a member, with its API token (no-op if it was added before)", "id", id.String(), "raft_address", *raftAddr)
	}
	start := time.Now()
	site, err := raftgroup.Open(openCtx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped before the site started", "err", err)
			return nil
		}
		return fmt.Errorf("open site: %w", err)
	}
	defer func() {
		site.Close()
		log.Info("stopped")
	}()
	db, err := site.DB()
	if err != nil {
		return fmt.Errorf("open DB: %w", err)
	}

	l, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return fmt.Errorf("-http-addr: %w", err)
	}
	api, err := newAPI(site, db, log, apiConfig{storeTimeout: *storeTimeout, adminToken: *adminToken, access: apiAcc})
	if err != nil {
		l.Close()
		return fmt.Errorf("HTTP API: %w", err)
	}
	srv := &http.Server{
		Handler:           api,
		TLSConfig:         httpTLS,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() {
		if httpTLS != nil {
			served <- srv.ServeTLS(l, "", "") // the certificate is in TLSConfig
		} else {
			served <- srv.Serve(l)
		}
	}()
	log.Info("ready", "http", l.Addr().String(), "raft", site.RaftAddress(), "site", site.ID().String(),
		"started_in", time.Since(start).Round(time.Millisecond), "api", apiAcc.String(), "http_tls", tlsMode(httpTLS))

	select {
	case <-ctx.Done():
		stop() // a second signal kills
		log.Info("stopping")
	case err := <-served:
		return fmt.Errorf("HTTP server: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return nil
}
