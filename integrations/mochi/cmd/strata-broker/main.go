// Command strata-broker is an MQTT broker: mochi-mqtt v2 with durable sessions kept in an
// embedded Strata DB (package mochi of this module).
//
//	strata-broker -listen :1883 -data ./strata-data
//
// MQTT 3.1.1 clean session = false and MQTT 5 session expiry > 0 clients get sessions that
// survive the broker's restart; QoS 1 and 2 messages they want are written to the DB before
// the PUBACK/PUBREC. Every client is allowed (mochi's auth.AllowHook): put it behind a
// network boundary you trust. What the hook does and does not do is in README.md.
//
// It prints "listening on ADDRESS" (the real address, so -listen 127.0.0.1:0 works) and,
// with -admin, "admin on ADDRESS" to stdout, logs to stderr, and stops cleanly on SIGINT or
// SIGTERM.
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

	"github.com/strata-mq/strata/ds"
	strmochi "github.com/strata-mq/strata/integrations/mochi"
	"github.com/strata-mq/strata/session"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
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
		owner    = fs.String("owner", host, "session Owner: a stable name of this broker, unique among the brokers sharing a DB")
		admin    = fs.String("admin", "", "HTTP address of the admin and metrics endpoint (/metrics, /v1/...); empty: off")
		expiry3  = fs.Duration("expiry3", strmochi.DefaultExpiry, "session expiry of MQTT 3.1.1 clean session = false clients")
		logLevel = fs.String("log-level", "info", "debug, info, warn or error")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *owner == "" {
		return errors.New("-owner is empty (and the hostname is unknown)")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	db, err := ds.Open(*dataDir, &ds.Options{Logger: log})
	if err != nil {
		return fmt.Errorf("open DB %s: %w", *dataDir, err)
	}
	defer func() {
		if err := db.Close(); err != nil {
			log.Warn("closing the DB", "error", err)
		}
	}()
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
	h, err := strmochi.New(strmochi.Options{Server: srv, DB: db, Store: store, Expiry3: *expiry3, Logger: log})
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
		hsrv = &http.Server{
			Handler:           ds.AdminHandler(db, ds.AdminDataDir(*dataDir), ds.AdminMetrics(store.WriteMetrics)),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		go func() { served <- hsrv.Serve(l) }()
		adminAddr = l.Addr().String()
		fmt.Fprintf(stdout, "admin on %s\n", adminAddr)
	}
	fmt.Fprintf(stdout, "listening on %s\n", tcp.Address())
	log.Info("ready", "mqtt", tcp.Address(), "admin", adminAddr, "data", *dataDir, "owner", *owner)

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
