package raftgroup

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/raftgroup/internal/wire"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// The site service answers the calls other sites forward to this one (forward.go): Stores
// and reads of the shards they hold no replica of (PlacementVoters). It is net/rpc over TCP
// (mutual TLS when Config.TLS is set), one connection per pair of sites, calls multiplexed on
// it. Messages travel in shard.Command's encoding (the one Raft entries carry); everything
// else is gob. The service answers only for shards it holds a replica of, so a call is never
// forwarded twice: a site that lost its replica answers errNotHeld, and the caller tries the
// next site.
//
// Errors cross the wire as a wire.Error: a code for each sentinel a caller tests with
// errors.Is, and the text.

// serviceName is the net/rpc service name.
const serviceName = "Strata"

// errNotHeld: the called site holds no open replica of the shard.
var errNotHeld = errors.New("strata: shard not held by the called site")

func toWire(err error) wire.Error {
	if err == nil {
		return wire.Error{}
	}
	code := wire.CodeOther
	switch {
	case errors.Is(err, shard.ErrOutcomeUnknown):
		code = wire.CodeOutcomeUnknown
	case errors.Is(err, ErrNoQuorum):
		code = wire.CodeNoQuorum
	case errors.Is(err, errNotHeld):
		code = wire.CodeNotHeld
	case errors.Is(err, shard.ErrUnavailable), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		code = wire.CodeUnavailable
	case errors.Is(err, shard.ErrQuotaExceeded):
		code = wire.CodeQuota
	case errors.Is(err, shard.ErrClosed):
		code = wire.CodeClosed
	case errors.Is(err, shard.ErrGenerationNotFound):
		code = wire.CodeGenerationNotFound
	case errors.Is(err, shard.ErrCurrentGeneration):
		code = wire.CodeCurrentGeneration
	case errors.Is(err, shard.ErrEndOfStream):
		code = wire.CodeEndOfStream
	case errors.Is(err, topic.ErrInvalidTopic):
		code = wire.CodeInvalidTopic
	case errors.Is(err, topic.ErrInvalidFilter):
		code = wire.CodeInvalidFilter
	case errors.Is(err, shard.ErrStreamNotFound):
		code = wire.CodeStreamNotFound
	case errors.Is(err, shard.ErrCorruption):
		code = wire.CodeCorruption
	case errors.Is(err, stream.ErrInvalid):
		code = wire.CodeInvalidIterator
	case errors.Is(err, shard.ErrFailed):
		code = wire.CodeFailed
	}
	return wire.Error{Code: code, Text: err.Error()}
}

// err returns the error w stands for, wrapping the sentinels of its code.
func fromWire(w wire.Error) error {
	var sentinels []error
	switch w.Code {
	case wire.CodeNone:
		return nil
	case wire.CodeOutcomeUnknown:
		sentinels = []error{shard.ErrUnavailable, shard.ErrOutcomeUnknown}
	case wire.CodeNoQuorum:
		sentinels = []error{shard.ErrUnavailable, ErrNoQuorum}
	case wire.CodeUnavailable:
		sentinels = []error{shard.ErrUnavailable}
	case wire.CodeNotHeld:
		sentinels = []error{shard.ErrUnavailable, errNotHeld}
	case wire.CodeQuota:
		sentinels = []error{shard.ErrQuotaExceeded}
	case wire.CodeClosed:
		// The called site is closing: for the caller, the shard is unavailable there.
		sentinels = []error{shard.ErrUnavailable}
	case wire.CodeGenerationNotFound:
		sentinels = []error{shard.ErrGenerationNotFound}
	case wire.CodeCurrentGeneration:
		sentinels = []error{shard.ErrCurrentGeneration}
	case wire.CodeEndOfStream:
		sentinels = []error{shard.ErrEndOfStream}
	case wire.CodeInvalidTopic:
		sentinels = []error{topic.ErrInvalidTopic}
	case wire.CodeInvalidFilter:
		sentinels = []error{topic.ErrInvalidFilter}
	case wire.CodeStreamNotFound:
		sentinels = []error{shard.ErrStreamNotFound}
	case wire.CodeCorruption:
		sentinels = []error{shard.ErrCorruption}
	case wire.CodeInvalidIterator:
		sentinels = []error{stream.ErrInvalid}
	case wire.CodeFailed:
		sentinels = []error{shard.ErrFailed}
	}
	return remoteError{text: w.Text, sentinels: sentinels}
}

// remoteError is an error a called site returned.
type remoteError struct {
	text      string
	sentinels []error
}

func (e remoteError) Error() string   { return e.text }
func (e remoteError) Unwrap() []error { return e.sentinels }

// wireMessages encodes messages as they cross the wire (Read replies, Tail steps): in
// shard.Command's encoding, which carries no timestamps, and their timestamps beside it.
func wireMessages(msgs []*message.Message) (body []byte, ts []uint64) {
	if len(msgs) == 0 {
		return nil, nil
	}
	ts = make([]uint64, len(msgs))
	for i, m := range msgs {
		ts[i] = m.Timestamp
	}
	return (&shard.Command{Messages: msgs}).AppendBinary(nil), ts
}

// unwireMessages decodes what wireMessages encoded, as messages of shard id with their
// timestamps set; an answer that does not decode, or whose timestamps do not match its
// messages, is an error.
func unwireMessages(id stream.ShardID, body []byte, ts []uint64) ([]*message.Message, error) {
	if len(body) == 0 {
		if len(ts) != 0 {
			return nil, fmt.Errorf("%d timestamps without messages", len(ts))
		}
		return nil, nil
	}
	cmd, err := shard.DecodeCommand(body)
	if err != nil {
		return nil, err
	}
	if len(cmd.Messages) != len(ts) || len(cmd.Txns) != 0 {
		return nil, fmt.Errorf("%d messages, %d timestamps, %d txns", len(cmd.Messages), len(ts), len(cmd.Txns))
	}
	for i, m := range cmd.Messages {
		m.Timestamp, m.Shard = ts[i], uint16(id)
	}
	return cmd.Messages, nil
}

// maxScanPage bounds the records one ScanRecords call returns.
const maxScanPage = 1024

// maxReadReplyBytes bounds the messages one Read reply carries (at least one).
const maxReadReplyBytes = 16 << 20

// siteService is the receiver of the net/rpc service.
type siteService struct{ s *Site }

// held returns the local shard of a call, or errNotHeld.
func (v siteService) held(id stream.ShardID) (*siteShard, error) {
	s := v.s
	if int(id) >= len(s.proposers) {
		return nil, fmt.Errorf("%w: shard %d", shard.ErrUnavailable, id)
	}
	if s.servingSM(id) == nil {
		return nil, fmt.Errorf("%w: shard %d, site %s", errNotHeld, id, s.cfg.RaftAddress)
	}
	return &siteShard{site: s, p: s.proposers[id]}, nil
}

// callCtx bounds a forwarded call by the caller's time left and by the site's life.
func (v siteService) callCtx(wait time.Duration) (context.Context, context.CancelFunc) {
	if wait <= 0 || wait > v.s.cfg.ProposalTimeout {
		wait = v.s.cfg.ProposalTimeout
	}
	return context.WithTimeout(v.s.ctx, wait)
}

func (v siteService) Submit(a *wire.Submit, reply *wire.SubmitReply) error {
	reply.Err = toWire(v.submit(a, reply))
	return nil
}

func (v siteService) submit(a *wire.Submit, reply *wire.SubmitReply) error {
	sh, err := v.held(a.Shard)
	if err != nil {
		return err
	}
	cmd, err := shard.DecodeCommand(a.Cmd)
	if err != nil {
		return err
	}
	if cmd.AddGeneration || len(cmd.Drop) > 0 {
		return fmt.Errorf("%w: a forwarded batch adds or drops generations", shard.ErrInvalidCommand)
	}
	bytes := 0
	for _, m := range cmd.Messages {
		if err := topic.ValidateName(m.Topic); err != nil {
			return err
		}
		bytes += message.Size(m)
	}
	for _, t := range cmd.Txns {
		for _, m := range t.Messages {
			if err := topic.ValidateName(m.Topic); err != nil {
				return err
			}
			bytes += message.Size(m)
		}
	}
	if bytes > 0 && v.s.quotaExceeded() {
		return v.s.quotaError(int(a.Shard))
	}
	ctx, cancel := v.callCtx(a.Wait)
	defer cancel()
	// Proposed through this site's replica, never forwarded again.
	r := &request{msgs: cmd.Messages, txns: cmd.Txns, bytes: bytes, here: true}
	if err := sh.p.submit(ctx, r); err != nil {
		return err
	}
	if err := r.wait(); err != nil {
		return err
	}
	if len(cmd.Messages) > 0 {
		reply.FirstTS = cmd.Messages[0].Timestamp
	}
	for _, t := range cmd.Txns {
		reply.Txns = append(reply.Txns, t.Result)
	}
	reply.Leader, _ = v.s.fwd.leaderService(a.Shard)
	return nil
}

func (v siteService) Propose(a *wire.Propose, reply *wire.ProposeReply) error {
	reply.Err = toWire(v.propose(a, reply))
	return nil
}

func (v siteService) propose(a *wire.Propose, reply *wire.ProposeReply) error {
	if _, err := v.held(a.Shard); err != nil {
		return err
	}
	e, err := decodeProposal(0, a.Proposal)
	if err != nil {
		return err
	}
	if e.Seq == 0 || e.Cmd.AddGeneration || len(e.Cmd.Drop) > 0 {
		// Without a sequence it would not be applied once; admin commands are proposed
		// where they are made.
		return fmt.Errorf("%w: a forwarded proposal without a sequence, or one that adds or drops generations", shard.ErrInvalidCommand)
	}
	ctx, cancel := v.callCtx(a.Wait)
	defer cancel()
	reply.Value, reply.Data, err = v.s.proposeAgain(ctx, a.Shard, a.Proposal)
	return err
}

func (v siteService) Admin(a *wire.Admin, reply *wire.ErrReply) error {
	sh, err := v.held(a.Shard)
	if err == nil {
		ctx, cancel := v.callCtx(a.Wait)
		if a.Add {
			err = sh.AddGeneration(ctx)
		} else {
			err = sh.DropGeneration(ctx, a.Drop)
		}
		cancel()
	}
	reply.Err = toWire(err)
	return nil
}

// validFilter checks filter levels that came over the wire, as the DB checks its callers'.
func validFilter(levels []string) error {
	return topic.ValidateFilter(strings.Join(levels, "/"))
}

func (v siteService) Streams(a *wire.Streams, reply *wire.StreamsReply) error {
	sh, err := v.held(a.Shard)
	if err == nil {
		err = validFilter(a.Filter)
	}
	if err == nil {
		reply.Streams, err = sh.Streams(a.Filter, a.Since)
	}
	reply.Err = toWire(err)
	return nil
}

func (v siteService) Read(a *wire.Read, reply *wire.ReadReply) error {
	sh, err := v.held(a.It.Stream.Shard)
	if err == nil {
		err = validFilter(a.Filter)
	}
	if err == nil && a.It.Filter != "" {
		err = topic.ValidateFilter(a.It.Filter)
	}
	if err == nil {
		var msgs []message.Message
		msgs, reply.Next, err = sh.Read(a.It, a.Filter, min(max(a.Max, 1), 1<<16), nil)
		// Bound the reply's bytes (gob refuses huge messages, which would break the connection
		// for every call on it): the caller reads on from the first message left out.
		size := 0
		for i := range msgs {
			if size += message.Size(&msgs[i]); size > maxReadReplyBytes && i > 0 {
				reply.Next, msgs, err = msgs[i].Timestamp, msgs[:i], nil
				break
			}
		}
		ptrs := make([]*message.Message, len(msgs))
		for i := range msgs {
			ptrs[i] = &msgs[i]
		}
		reply.Msgs, reply.TS = wireMessages(ptrs)
	}
	reply.Err = toWire(err)
	return nil
}

func (v siteService) ReadLimit(a *wire.Limit, reply *wire.LimitReply) error {
	sh, err := v.held(a.Shard)
	if err == nil {
		reply.Limit, err = sh.ReadLimit()
	}
	reply.Err = toWire(err)
	return nil
}

// Tail answers with the shard's durable steps from a.Seq on (tail.go), once there is one or
// a Reset to send, or once a.Wait passed: the tail feed of a site without a replica.
func (v siteService) Tail(a *wire.Tail, reply *wire.TailReply) error {
	if _, err := v.held(a.Shard); err != nil {
		reply.Err = toWire(err)
		return nil
	}
	wait := min(max(a.Wait, 0), 30*time.Second)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		ch := v.s.applied.wait(a.Shard)
		pos, err := v.s.replicaPos(a.Shard)
		if err != nil {
			reply.Err = toWire(err)
			return nil
		}
		if v.s.tails.read(a, pos, reply) {
			return nil
		}
		select {
		case <-ch:
		case <-timer.C:
			reply.Next = a.Seq
			return nil
		case <-v.s.stop:
			reply.Err = toWire(shard.ErrClosed)
			return nil
		}
	}
}

func (v siteService) Generations(a *wire.Shard, reply *wire.GenerationsReply) error {
	sh, err := v.held(a.Shard)
	if err == nil {
		reply.Generations, err = sh.Generations()
	}
	reply.Err = toWire(err)
	return nil
}

func (v siteService) GenerationUsage(a *wire.Usage, reply *wire.UsageReply) error {
	sh, err := v.held(a.Shard)
	if err == nil {
		reply.Usage, err = sh.GenerationUsage(a.Generation)
	}
	reply.Err = toWire(err)
	return nil
}

func (v siteService) Record(a *wire.Record, reply *wire.RecordReply) error {
	sh, err := v.held(a.Shard)
	if err == nil {
		ctx, cancel := v.callCtx(0)
		reply.Value, reply.Version, err = sh.Record(ctx, a.Key)
		cancel()
	}
	reply.Err = toWire(err)
	return nil
}

func (v siteService) ScanRecords(a *wire.Scan, reply *wire.ScanReply) error {
	sh, err := v.held(a.Shard)
	if err == nil {
		ctx, cancel := v.callCtx(0)
		n := min(max(a.Max, 1), maxScanPage)
		err = sh.ScanRecords(ctx, a.Prefix, func(key, value []byte, version uint64) bool {
			if a.After != nil && string(key) <= string(a.After) {
				return true
			}
			if len(reply.Keys) == n {
				reply.More = true
				return false
			}
			reply.Keys = append(reply.Keys, append([]byte(nil), key...))
			reply.Values = append(reply.Values, append([]byte(nil), value...))
			reply.Versions = append(reply.Versions, version)
			return true
		})
		cancel()
	}
	reply.Err = toWire(err)
	return nil
}

// startService listens on Config.ServiceAddress and serves forwarded calls until the site
// stops; Service returns the address it listens on.
func (s *Site) startService() error {
	srv := rpc.NewServer()
	if err := srv.RegisterName(serviceName, siteService{s}); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", s.cfg.ServiceAddress)
	if err != nil {
		return fmt.Errorf("strata: site %s: service address: %w", s.cfg.RaftAddress, err)
	}
	if s.cfg.TLS != nil {
		tc, err := s.tlsConfig()
		if err != nil {
			ln.Close()
			return err
		}
		tc.ClientAuth = tls.RequireAndVerifyClientCert
		ln = tls.NewListener(ln, tc)
	}
	s.service = ln
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed by shutdown
			}
			s.serviceConns.add(c)
			go func() {
				defer s.serviceConns.remove(c)
				// A peer gets an attempt timeout to complete the TLS handshake: a client that
				// connects and says nothing (or cannot authenticate) must not hold a
				// connection and a goroutine until the site stops.
				if tc, ok := c.(*tls.Conn); ok {
					ctx, cancel := context.WithTimeout(s.ctx, s.attemptTimeout())
					err := tc.HandshakeContext(ctx)
					cancel()
					if err != nil {
						c.Close()
						return
					}
				}
				// Replies are written under net/rpc's send lock: a caller that stopped
				// reading must not block the other replies on its connection for good.
				srv.ServeConn(deadlineConn{Conn: c, d: s.attemptTimeout()})
			}()
		}
	}()
	return nil
}

// Service returns the address where the site serves forwarded calls.
func (s *Site) Service() string {
	if s.service == nil {
		return ""
	}
	return s.service.Addr().String()
}

// tlsConfig is the mutual TLS of Config.TLS, for both ends of a service connection.
func (s *Site) tlsConfig() (*tls.Config, error) {
	t := s.cfg.TLS
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: TLS: %w", ErrInvalidConfig, err)
	}
	pem, err := os.ReadFile(t.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: TLS: %w", ErrInvalidConfig, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%w: TLS: no certificate in %s", ErrInvalidConfig, t.CAFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// applyNotifier wakes Tail calls when a shard's replica here made entries readable.
type applyNotifier struct {
	mu sync.Mutex
	ch map[stream.ShardID]chan struct{}
}

// wait returns a channel closed at the shard's next apply.
func (n *applyNotifier) wait(id stream.ShardID) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch == nil {
		n.ch = map[stream.ShardID]chan struct{}{}
	}
	c, ok := n.ch[id]
	if !ok {
		c = make(chan struct{})
		n.ch[id] = c
	}
	return c
}

func (n *applyNotifier) notify(id stream.ShardID) {
	n.mu.Lock()
	c, ok := n.ch[id]
	delete(n.ch, id)
	n.mu.Unlock()
	if ok {
		close(c)
	}
}

// connSet tracks the service's open connections, closed when the site stops.
type connSet struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func (cs *connSet) add(c net.Conn) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		c.Close()
		return
	}
	if cs.conns == nil {
		cs.conns = map[net.Conn]struct{}{}
	}
	cs.conns[c] = struct{}{}
}

func (cs *connSet) remove(c net.Conn) {
	cs.mu.Lock()
	delete(cs.conns, c)
	cs.mu.Unlock()
}

func (cs *connSet) closeAll() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.closed = true
	for c := range cs.conns {
		c.Close()
	}
}
