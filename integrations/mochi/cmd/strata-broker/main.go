// Command strata-broker is an MQTT broker: mochi-mqtt v2 with durable sessions kept in a
// Strata DB (package mochi of this module), embedded or replicated.
//
// One broker, over an embedded DB in -data:
//
//	strata-broker -listen :1883 -data ./strata-data
//
// Three brokers sharing a replicated DB (package raftgroup): each is a site, -data its
// directory, -raft-addr where the other sites reach it; each in its own terminal, with the same
// -initial list on every one:
//
//	strata-broker -listen :1883 -admin 127.0.0.1:8001 -data /tmp/b1 -raft-addr 127.0.0.1:7001 -initial 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//	strata-broker -listen :1884 -admin 127.0.0.1:8002 -data /tmp/b2 -raft-addr 127.0.0.1:7002 -initial 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//	strata-broker -listen :1885 -admin 127.0.0.1:8003 -data /tmp/b3 -raft-addr 127.0.0.1:7003 -initial 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//
// A broker starts serving MQTT once its site knows the cluster (the initial sites wait for a
// majority of each other). A client may connect to any of them: its session, subscriptions
// and undelivered messages follow it from broker to broker, and a message acknowledged by one
// broker (PUBACK/PUBREC) is held by a majority of the sites. In replicated mode every QoS 1
// and 2 message is stored (-store all): a new subscription is known to the other brokers only
// once their sites applied it (milliseconds after the SUBACK, longer under load or after a
// restart), and with -store wanted a message published through another broker before then
// would be acknowledged without being stored for it. Restart a broker with the same
// flags (-initial is ignored once -data holds state; -raft-addr must not change). A broker
// started with -join instead of -initial joins a running cluster: it prints its site ID and
// waits until a member adds it:
//
//	curl -X POST -H "Authorization: Bearer $STRATA_ADMIN_TOKEN" -d '{"id": "<site ID>", "raft_address": "127.0.0.1:7004"}' http://127.0.0.1:8001/v1/sites
//
// (the members run with -admin-token, or $STRATA_ADMIN_TOKEN set: without a token the admin
// endpoint's payload views and POST /v1/sites are off).
//
// In replicated mode -owner defaults to "site-" and the site's ID, and the admin endpoint
// also serves GET /v1/cluster (raftgroup.Site.AdminHandler: sites, every group's leader) and
// the Raft metrics.
//
// MQTT 3.1.1 clean session = false and MQTT 5 session expiry > 0 clients get sessions that
// survive the broker's restart; QoS 1 and 2 messages they want are written to the DB before
// the PUBACK/PUBREC. Every client is allowed (mochi's auth.AllowHook): put it behind a
// network boundary you trust. What the hook does and does not do is in README.md.
//
// It prints "listening on ADDRESS" (the real address, so -listen 127.0.0.1:0 works) and,
// with -admin, "admin on ADDRESS" to stdout (in replicated mode first "site ID raft ADDRESS"),
// logs to stderr, and stops cleanly on SIGINT or SIGTERM: the MQTT server, then the sessions,
// then the DB (or site).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	strmochi "github.com/strata-mq/strata/integrations/mochi"
	"github.com/strata-mq/strata/session"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "strata-broker:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	host, _ := os.Hostname()
	fs := flag.NewFlagSet("strata-broker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		listen   = fs.String("listen", ":1883", "MQTT TCP listen address")
		dataDir  = fs.String("data", "./strata-data", "directory of the Strata DB (created if missing)")
		owner    = fs.String("owner", "", "session Owner: a stable name of this broker, unique among the brokers sharing a DB (default: the hostname; replicated: site-<site ID>)")
		admin    = fs.String("admin", "", "HTTP address of the admin and metrics endpoint (/metrics, /v1/...); empty: off")
		adminTok = fs.String("admin-token", os.Getenv("STRATA_ADMIN_TOKEN"), "bearer token that turns on the admin endpoint's payload views (/v1/messages, /v1/records) and POST /v1/sites (default $STRATA_ADMIN_TOKEN); empty: they are off")
		expiry3  = fs.Duration("expiry3", strmochi.DefaultExpiry, "session expiry of MQTT 3.1.1 clean session = false clients")
		storeSel = fs.String("store", "", "which QoS 1/2 messages are stored: wanted (by some durable session) or all (default: wanted; replicated: all, since a broker learns of subscriptions made through other brokers with a delay)")
		logLevel = fs.String("log-level", "info", "debug, info, warn or error")
		repl     replicatedFlags
	)
	repl.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	storeAll := repl.raftAddr != ""
	switch *storeSel {
	case "":
	case "all":
		storeAll = true
	case "wanted":
		storeAll = false
	default:
		return fmt.Errorf("-store %q: want wanted or all", *storeSel)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	stg, err := openStorage(ctx, &repl, *dataDir, log, stdout)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped before the DB opened", "error", err)
			return nil
		}
		return err
	}
	defer func() {
		if err := stg.close(); err != nil {
			log.Warn("closing the DB", "error", err)
		}
	}()
	db := stg.db
	if *owner == "" {
		if *owner = stg.defaultOwner(host); *owner == "" {
			return errors.New("-owner is empty (and the hostname is unknown)")
		}
	}
	store, err := session.Open(ctx, db, &session.Options{Owner: *owner, Logger: log})
	if err != nil {
		return fmt.Errorf("open sessions: %w", err)
	}
	// Closed after the server (below), before the DB: deferred calls run in reverse.
	defer func() {
		if err := store.Close(); err != nil {
			log.Warn("closing the sessions", "error", err)
		}
	}()

	srv := mqtt.New(&mqtt.Options{Logger: log})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return err
	}
	h, err := strmochi.New(strmochi.Options{Server: srv, DB: db, Store: store, Expiry3: *expiry3, StoreAll: storeAll, Logger: log})
	if err != nil {
		return err
	}
	if err := srv.AddHook(h, nil); err != nil {
		return err
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "tcp", Address: *listen})
	if err := srv.AddListener(tcp); err != nil { // listens now
		return fmt.Errorf("-listen %s: %w", *listen, err)
	}
	if err := srv.Serve(); err != nil {
		srv.Close()
		return err
	}
	defer srv.Close() // disconnects the clients: their sessions are disconnected by the hook

	var (
		hsrv      *http.Server
		adminAddr string
		served    = make(chan error, 1)
	)
	if *admin != "" {
		l, err := net.Listen("tcp", *admin)
		if err != nil {
			return fmt.Errorf("-admin %s: %w", *admin, err)
		}
		handler, err := stg.adminHandler(store, *adminTok)
		if err != nil {
			l.Close()
			return err
		}
		hsrv = &http.Server{
			Handler:           handler,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		go func() { served <- hsrv.Serve(l) }()
		adminAddr = l.Addr().String()
		fmt.Fprintf(stdout, "admin on %s\n", adminAddr)
	}
	fmt.Fprintf(stdout, "listening on %s\n", tcp.Address())
	log.Info("ready", "mqtt", tcp.Address(), "admin", adminAddr, "data", *dataDir, "owner", *owner, "raft", repl.raftAddr)

	var runErr error
	select {
	case <-ctx.Done():
		stop() // a second signal kills
		log.Info("stopping")
	case err := <-served:
		runErr = fmt.Errorf("admin HTTP server: %w", err)
	}
	if hsrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hsrv.Shutdown(sctx); err != nil {
			hsrv.Close()
		}
	}
	return runErr
}
