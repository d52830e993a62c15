package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// opTimeout bounds every single MQTT operation (connect, subscribe, one publish's PUBACK).
const opTimeout = 60 * time.Second

// clientOptions are the paho (MQTT 3.1.1) options of every client: no automatic reconnect
// (a lost connection is a failure to report, not to hide) and in-order message handling.
func clientOptions(addr, id string, clean bool, handler paho.MessageHandler) *paho.ClientOptions {
	return paho.NewClientOptions().AddBroker(addr).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(opTimeout).SetKeepAlive(60 * time.Second).SetPingTimeout(30 * time.Second).
		SetOrderMatters(true).SetDefaultPublishHandler(handler)
}

// connect connects one client and returns it with the CONNACK's session present flag.
func connect(o *paho.ClientOptions) (paho.Client, bool, error) {
	c := paho.NewClient(o)
	tok := c.Connect()
	if err := waitToken(tok); err != nil {
		return nil, false, fmt.Errorf("connect %s: %w", o.ClientID, err)
	}
	return c, tok.(*paho.ConnectToken).SessionPresent(), nil
}

func waitToken(tok paho.Token) error {
	if !tok.WaitTimeout(opTimeout) {
		return errors.New("timed out")
	}
	return tok.Error()
}

// connectMany connects n clean-session clients named prefix-0 … prefix-(n-1), at most
// parallel at a time.
func connectMany(addr, prefix string, n, parallel int) ([]paho.Client, error) {
	clients := make([]paho.Client, n)
	errs := make([]error, n)
	parallelDo(n, parallel, func(i int) {
		clients[i], _, errs[i] = connect(clientOptions(addr, fmt.Sprintf("%s-%d", prefix, i), true, nil))
	})
	if err := errors.Join(errs...); err != nil {
		disconnectAll(clients, 32)
		return nil, err
	}
	return clients, nil
}

// disconnectAll disconnects the (non-nil) clients, at most parallel at a time.
func disconnectAll(clients []paho.Client, parallel int) {
	parallelDo(len(clients), parallel, func(i int) {
		if c := clients[i]; c != nil {
			c.Disconnect(100)
		}
	})
}

// parallelDo calls f(0) … f(n-1) on at most parallel goroutines and waits for them.
func parallelDo(n, parallel int, f func(i int)) {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range min(n, max(parallel, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// newPayload returns a payload of size bytes (at least 8) carrying the publisher's id and
// the message's sequence number.
func newPayload(size int, pub, seq uint32) []byte {
	p := make([]byte, max(size, 8))
	for i := 8; i < len(p); i++ {
		p[i] = byte(i)
	}
	setPayload(p, pub, seq)
	return p
}

func setPayload(p []byte, pub, seq uint32) {
	binary.BigEndian.PutUint32(p[0:], pub)
	binary.BigEndian.PutUint32(p[4:], seq)
}

// publishWindowed publishes count QoS 1 messages from publisher pub to topic with up to
// window of them awaiting their PUBACK, and waits for every PUBACK.
func publishWindowed(c paho.Client, topic string, size int, pub uint32, count, window int) error {
	toks := make([]paho.Token, 0, window)
	for seq := range count {
		if len(toks) == window {
			if err := waitToken(toks[0]); err != nil {
				return fmt.Errorf("publish %d/%d: %w", pub, seq-window, err)
			}
			toks = toks[1:]
		}
		// A payload per message: paho keeps it until the message is written.
		toks = append(toks, c.Publish(topic, 1, false, newPayload(size, pub, uint32(seq))))
	}
	for _, tok := range toks {
		if err := waitToken(tok); err != nil {
			return fmt.Errorf("publish %d: %w", pub, err)
		}
	}
	return nil
}

// tracker checks the messages subscribers receive: each payload carries its publisher's id
// and sequence number. A message seen before is a duplicate; a new message with a lower
// sequence number than one already seen from its publisher is out of order.
type tracker struct {
	mu        sync.Mutex
	pubs      map[uint32]*pubSeen
	received  int64 // every delivery, duplicates included
	unique    int64
	dups      int64
	ooo       int64
	malformed int64
	first     time.Time // of the first and last delivery
	last      time.Time
	progress  chan struct{} // signalled (non-blocking) after each delivery
}

type pubSeen struct {
	seen []uint64 // bitset of the sequence numbers seen
	max  int64    // highest sequence number seen, -1: none
}

func newTracker() *tracker {
	return &tracker{pubs: map[uint32]*pubSeen{}, progress: make(chan struct{}, 1)}
}

// handler is the subscribers' paho message handler.
func (t *tracker) handler(_ paho.Client, m paho.Message) { t.record(m.Payload()) }

func (t *tracker) record(p []byte) {
	now := time.Now()
	t.mu.Lock()
	t.received++
	if t.first.IsZero() {
		t.first = now
	}
	t.last = now
	if len(p) < 8 {
		t.malformed++
	} else {
		pub, seq := binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])
		ps := t.pubs[pub]
		if ps == nil {
			ps = &pubSeen{max: -1}
			t.pubs[pub] = ps
		}
		w, bit := int(seq/64), uint64(1)<<(seq%64)
		if w >= len(ps.seen) {
			ps.seen = slices.Grow(ps.seen, w+1-len(ps.seen))[:w+1]
		}
		switch {
		case ps.seen[w]&bit != 0:
			t.dups++
		default:
			ps.seen[w] |= bit
			t.unique++
			if int64(seq) < ps.max {
				t.ooo++
			}
			ps.max = max(ps.max, int64(seq))
		}
	}
	t.mu.Unlock()
	select {
	case t.progress <- struct{}{}:
	default:
	}
}

// counts is a snapshot of a tracker.
type counts struct {
	Received, Unique, Dups, OutOfOrder, Malformed int64
	First, Last                                   time.Time
}

func (t *tracker) counts() counts {
	t.mu.Lock()
	defer t.mu.Unlock()
	return counts{t.received, t.unique, t.dups, t.ooo, t.malformed, t.first, t.last}
}

// waitFor waits until want distinct messages were received, or nothing arrived for idle,
// or limit passed; it reports whether want was reached.
func (t *tracker) waitFor(want int64, idle, limit time.Duration) bool {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	quiet := time.NewTimer(idle)
	defer quiet.Stop()
	for {
		if t.counts().Unique >= want {
			return true
		}
		select {
		case <-t.progress:
			quiet.Reset(idle)
		case <-quiet.C:
			return t.counts().Unique >= want
		case <-deadline.C:
			return t.counts().Unique >= want
		}
	}
}

// percentile returns the p-th percentile (0-100) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)) * p / 100)
	return sorted[min(i, len(sorted)-1)]
}
