package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"

	"github.com/strata-mq/strata/ds"
	strmochi "github.com/strata-mq/strata/integrations/mochi"
	"github.com/strata-mq/strata/session"
)

// The two brokers compared.
const (
	plainMochi = "mochi"        // mochi-mqtt v2 alone, in-memory sessions, default capabilities
	onStrata   = "mochi+strata" // the same with the Strata hook over an embedded ds.DB
)

var variants = []string{plainMochi, onStrata}

// broker is an in-process mochi server on its own TCP port of 127.0.0.1, with (onStrata) or
// without (plainMochi) the Strata hook.
type broker struct {
	kind string
	dir  string // the DB's directory (onStrata)
	addr string // "tcp://127.0.0.1:PORT"

	srv   *mqtt.Server
	db    *ds.DB
	store *session.Store
	ln    net.Listener
	conns sync.WaitGroup // the accept loop and one per connection
}

// startBroker starts a broker of kind; for onStrata, the DB is opened (or created) in dir.
//
// The TCP listener is our own (as in the hook's end-to-end tests) rather than mochi's
// listeners.TCP so that Close can wait for every connection's EstablishConnection to return
// — by then the hook's OnDisconnect has run — before the session store and DB are closed.
func startBroker(kind, dir string, log *slog.Logger) (_ *broker, err error) {
	b := &broker{kind: kind, dir: dir}
	defer func() {
		if err != nil {
			b.closeStorage()
		}
	}()
	b.srv = mqtt.New(&mqtt.Options{Logger: log})
	if err := b.srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, err
	}
	switch kind {
	case plainMochi:
	case onStrata:
		if b.db, err = ds.Open(dir, &ds.Options{Logger: log}); err != nil {
			return nil, fmt.Errorf("open DB %s: %w", dir, err)
		}
		if b.store, err = session.Open(context.Background(), b.db, &session.Options{Owner: "strata-mqtt-bench", Logger: log}); err != nil {
			return nil, fmt.Errorf("open sessions: %w", err)
		}
		h, err := strmochi.New(strmochi.Options{Server: b.srv, DB: b.db, Store: b.store, Logger: log})
		if err != nil {
			return nil, err
		}
		if err := b.srv.AddHook(h, nil); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown broker kind %q", kind)
	}
	if err := b.srv.Serve(); err != nil {
		return nil, err
	}
	if b.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		b.srv.Close()
		return nil, err
	}
	b.addr = "tcp://" + b.ln.Addr().String()
	b.conns.Add(1)
	go func() {
		defer b.conns.Done()
		for {
			c, err := b.ln.Accept()
			if err != nil {
				return
			}
			b.conns.Add(1)
			go func() {
				defer b.conns.Done()
				_ = b.srv.EstablishConnection("tcp", c)
			}()
		}
	}()
	return b, nil
}

// Close stops the server (disconnecting its clients), waits for the connections to end,
// then closes the session store and the DB. The DB's directory is left in place.
func (b *broker) Close() error {
	b.ln.Close()
	b.srv.Close()
	b.conns.Wait()
	return b.closeStorage()
}

func (b *broker) closeStorage() error {
	var errs []error
	if b.store != nil {
		errs = append(errs, b.store.Close())
		b.store = nil
	}
	if b.db != nil {
		errs = append(errs, b.db.Close())
		b.db = nil
	}
	return errors.Join(errs...)
}

// restart closes the broker and starts a new one of the same kind: on the same directory
// for onStrata; for plainMochi a new, empty server (mochi alone persists nothing).
func (b *broker) restart(log *slog.Logger) (*broker, error) {
	if err := b.Close(); err != nil {
		return nil, err
	}
	return startBroker(b.kind, b.dir, log)
}

// drops is what mochi itself counted as dropped: messages not queued to a client's
// connection (write queue full) and QoS>0 messages refused because the client's inflight
// store was full (MaximumInflight, 8192 by default).
func (b *broker) drops() int64 {
	return atomic.LoadInt64(&b.srv.Info.MessagesDropped) + atomic.LoadInt64(&b.srv.Info.InflightDropped)
}
