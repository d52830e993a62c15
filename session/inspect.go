package session

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/inspect"
)

// This file decodes the session records for operators' tools (ds-info sessions), which read
// them with inspect.Inspector.ScanRecords from a stopped node's directory, or with
// ds.DB.ScanRecords from a running DB. Package ds cannot import this package (it imports ds),
// so the tool passes the scan in.

// RecordScan reads the records of one shard whose key starts with prefix, in key order, as
// inspect.Inspector.ScanRecords and (with a context) ds.DB.ScanRecords do.
type RecordScan func(sh ds.ShardID, prefix []byte, f func(key, value []byte, version uint64) bool) error

// SessionView is one durable session as its records show it (InspectSessions; ds-info
// sessions prints it, -json as is).
type SessionView struct {
	ClientID string     `json:"client_id"`
	Shard    ds.ShardID `json:"shard"`
	// Version is the session record's version; 0 with NoSession.
	Version uint64 `json:"version"`
	// NoSession: the client has inbound QoS 2 records but no session record (a client
	// without a durable session may publish QoS 2: Store.StoreQoS2); only InboundQoS2 is set.
	NoSession bool   `json:"no_session,omitempty"`
	Epoch     uint64 `json:"epoch"`
	Owner     string `json:"owner"` // the Options.Owner of the Store it last connected through
	// Connected: the record says connected (a Store whose process stopped leaves it so
	// until another Store of the same Owner opens and expires it).
	Connected      bool      `json:"connected"`
	DisconnectedAt time.Time `json:"disconnected_at,omitzero"`
	ExpirySeconds  uint64    `json:"expiry_seconds"`
	// ExpiresAt is DisconnectedAt + the expiry interval; zero while connected.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// Clean: the state was written by a Disconnect (its sent positions are exact).
	Clean         bool               `json:"clean"`
	Subscriptions []SubscriptionView `json:"subscriptions"`
	// QoS2 are the outbound QoS 2 deliveries in flight: awaiting PUBREC (sent) or PUBCOMP
	// (received).
	QoS2 []QoS2View `json:"qos2_inflight"`
	// InboundQoS2 are the packet IDs of inbound QoS 2 messages stored and awaiting PUBREL.
	InboundQoS2 []uint16 `json:"inbound_qos2"`
	// Error says why the session record (or, for a key this package does not write, the
	// record; ClientID is then the escaped key) did not decode; the fields above are then
	// partial.
	Error string `json:"error,omitempty"`
}

// SubscriptionView is one subscription of a SessionView.
type SubscriptionView struct {
	Filter            string `json:"filter"`
	QoS               byte   `json:"qos"`
	NoLocal           bool   `json:"no_local,omitempty"`
	RetainAsPublished bool   `json:"retain_as_published,omitempty"`
	SubscriptionID    uint32 `json:"subscription_id,omitempty"`
}

// QoS2View is one outbound QoS 2 delivery in flight.
type QoS2View struct {
	PacketID uint16 `json:"packet_id"`
	// State is "sent" (awaiting PUBREC) or "received" (PUBREC came; awaiting PUBCOMP).
	State string     `json:"state"`
	Shard ds.ShardID `json:"shard"`
	// Timestamp is the message's, in µs since the epoch.
	Timestamp uint64 `json:"timestamp"`
	Topic     string `json:"topic,omitempty"` // while sent
	// Unsubscribed: the subscription it was delivered for is gone.
	Unsubscribed bool `json:"unsubscribed,omitempty"`
}

// Record kinds, for DecodeRecord.
const (
	RecordSession = "session"      // 'S' | clientID
	RecordInbound = "inbound_qos2" // 'Q' | clientID | 0x00 | packetID
)

// DecodeRecord decodes one record key of this package (and, for a session record, its value
// into a SessionView with ClientID, Version and the state's fields; Shard is left 0). kind is
// RecordSession or RecordInbound; pid is the packet ID of an inbound record. A key that is
// not this package's is an error wrapping ErrCorruptState, as is a session value that does
// not decode (view is then nil).
func DecodeRecord(key, value []byte, version uint64) (kind string, clientID string, pid uint16, view *SessionView, err error) {
	if len(key) == 0 {
		return "", "", 0, nil, fmt.Errorf("%w: empty record key", ErrCorruptState)
	}
	switch key[0] {
	case keySession:
		s, err := decodeState(value)
		if err != nil {
			return RecordSession, string(key[1:]), 0, nil, err
		}
		return RecordSession, string(key[1:]), 0, viewOf(string(key[1:]), version, s), nil
	case keyInbound:
		i := bytes.IndexByte(key, 0)
		if i < 0 || len(key) != i+3 {
			return RecordInbound, "", 0, nil, fmt.Errorf("%w: inbound QoS 2 key %q", ErrCorruptState, key)
		}
		return RecordInbound, string(key[1:i]), binary.BigEndian.Uint16(key[i+1:]), nil, nil
	}
	return "", "", 0, nil, fmt.Errorf("%w: unknown record key %q", ErrCorruptState, key)
}

func viewOf(clientID string, version uint64, s *state) *SessionView {
	v := &SessionView{ClientID: clientID, Version: version, Epoch: s.Epoch, Owner: s.Owner, Connected: s.Disconnected == 0,
		ExpirySeconds: uint64(s.Expiry / time.Second), Clean: s.Clean,
		Subscriptions: []SubscriptionView{}, QoS2: []QoS2View{}, InboundQoS2: []uint16{}}
	if s.Disconnected != 0 {
		v.DisconnectedAt = time.UnixMicro(int64(s.Disconnected)).UTC()
		v.ExpiresAt = v.DisconnectedAt.Add(s.Expiry)
	}
	for _, sb := range s.Subs {
		v.Subscriptions = append(v.Subscriptions, SubscriptionView{Filter: sb.Filter, QoS: sb.QoS, NoLocal: sb.NoLocal,
			RetainAsPublished: sb.RetainAsPub, SubscriptionID: sb.SubscriptionID})
	}
	for _, e := range s.Window {
		q := QoS2View{PacketID: pidOf(e.Seq), State: "sent", Shard: e.Ref.Shard, Timestamp: e.Ref.Timestamp, Unsubscribed: e.Sub == 0}
		if e.Received {
			q.State = "received"
		} else if e.Msg != nil {
			q.Topic = e.Msg.Topic
		}
		v.QoS2 = append(v.QoS2, q)
	}
	return v
}

// InspectSessions returns the durable sessions of the nShards shards that scan reads, by
// shard then client ID (a session lives in the shard of its client ID). A session record that
// does not decode is listed with its Error; a client with inbound QoS 2 records but no session
// record is listed with NoSession. The error returned joins those of the scans (a shard that
// could not be read) and says how many records did not decode, wrapping ErrCorruptState.
func InspectSessions(nShards int, scan RecordScan) ([]SessionView, error) {
	out := []SessionView{}
	var errs []error
	bad := 0
	for sh := range nShards {
		byID := map[string]*SessionView{}
		var order []string
		get := func(id string) *SessionView {
			v := byID[id]
			if v == nil {
				v = &SessionView{ClientID: id, Subscriptions: []SubscriptionView{}, QoS2: []QoS2View{}, InboundQoS2: []uint16{}}
				byID[id] = v
				order = append(order, id)
			}
			return v
		}
		// Only this package's keys: other users of a shard's records are not judged here.
		// Inbound keys ('Q') come first; both are collected, then ordered by client ID.
		f := func(key, value []byte, version uint64) bool {
			kind, id, pid, view, err := DecodeRecord(key, value, version)
			switch {
			case kind == RecordInbound && err == nil:
				v := get(id)
				v.InboundQoS2 = append(v.InboundQoS2, pid)
			case kind == RecordSession && err == nil:
				v := get(id)
				inbound := v.InboundQoS2
				*v = *view
				v.InboundQoS2 = inbound
			case kind == RecordSession:
				bad++
				v := get(id)
				v.Version, v.Error = version, err.Error()
			default:
				bad++
				v := get(inspect.EscapeBytes(key))
				v.Error = err.Error()
			}
			return true
		}
		for _, prefix := range []byte{keyInbound, keySession} {
			if err := scan(ds.ShardID(sh), []byte{prefix}, f); err != nil {
				errs = append(errs, fmt.Errorf("shard %d: %w", sh, err))
			}
		}
		slices.SortFunc(order, cmpString)
		for _, id := range order {
			v := byID[id]
			v.Shard = ds.ShardID(sh)
			v.NoSession = v.Version == 0 && v.Error == ""
			out = append(out, *v)
		}
	}
	if bad > 0 {
		errs = append(errs, fmt.Errorf("%w: %d record(s) did not decode", ErrCorruptState, bad))
	}
	return out, errors.Join(errs...)
}
