package raftgroup

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/raftgroup/internal/wire"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// forwarder sends this site's calls for the shards it holds no replica of (PlacementVoters) to
// a site that holds one, through that site's service (service.go). It keeps one connection
// per site and, per shard, the site that answered last, so that a shard's calls keep going to
// one site (its reads then follow one replica's applied state) until that site fails.
//
// A call that did nothing at a site (no connection; or the site answered that it holds no
// caught-up replica, or could not do it and stored nothing, e.g. cut off from its quorum) is
// tried on the next one. A Store that may have reached a site is not sent again: if its
// answer is lost, it fails with ErrOutcomeUnknown (the called site's proposer retries across
// leader changes itself, with its own de-duplication).
type forwarder struct {
	site *Site
	mu   struct {
		sync.Mutex
		clients map[string]*rpc.Client    // by service address
		prefer  map[stream.ShardID]string // the site that answered last, per shard
		dialing map[string]chan struct{}  // one dial per address at a time
		// suspect: sites that did not answer a call in time (hung, or cut off without a
		// reset), since when; they are tried last until they answer again or suspectFor passed.
		suspect map[string]time.Time
		// unanswered counts, per connection, the reads given up on it since its last answer:
		// net/rpc keeps each pending until an answer comes or the connection closes, so a
		// peer that accepts and never answers would make them pile up.
		unanswered map[*rpc.Client]int
		// feeding: per shard without a replica here, the site whose ring the tail feed
		// follows (watch), for the tests.
		feeding map[stream.ShardID]string
		closed  bool
	}
	maxUnanswered int // a connection with this many reads given up in a row is closed
	// hideHolders, set by tests, makes targets answer as a site whose meta view knows no
	// holder of a shard yet (as right after the cluster started) while it returns true.
	hideHolders atomic.Pointer[func(stream.ShardID) bool]
}

func newForwarder(s *Site) *forwarder {
	f := &forwarder{site: s}
	f.mu.clients = map[string]*rpc.Client{}
	f.mu.prefer = map[stream.ShardID]string{}
	f.mu.dialing = map[string]chan struct{}{}
	f.mu.suspect = map[string]time.Time{}
	f.mu.unanswered = map[*rpc.Client]int{}
	f.mu.feeding = map[stream.ShardID]string{}
	f.maxUnanswered = 64
	return f
}

// targets returns the service addresses of the other sites that hold a member replica of the
// shard (not one being removed), the preferred one first, then from a place that rotates with
// the shard and this site, so that sites spread their calls.
func (f *forwarder) targets(id stream.ShardID) ([]string, error) {
	if hide := f.hideHolders.Load(); hide != nil && (*hide)(id) {
		return nil, fmt.Errorf("%w: no replica of shard %d on site %s, and no other site holds one and offers a service address (test)", shard.ErrUnavailable, id, f.site.cfg.RaftAddress)
	}
	st, err := f.site.localMeta()
	if err != nil {
		return nil, fmt.Errorf("%w: no replica of shard %d on site %s, and no meta state to find one elsewhere (not in the cluster?): %w", shard.ErrUnavailable, id, f.site.cfg.RaftAddress, err)
	}
	var addrs []string
	for _, r := range st.GroupReplicas(shardGroup(id)) {
		if addr, ok := f.serviceOf(st, r.Slot); ok && r.Member != memberNone && !r.Remove {
			addrs = append(addrs, addr)
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%w: no replica of shard %d on site %s, and no other site holds one and offers a service address", shard.ErrUnavailable, id, f.site.cfg.RaftAddress)
	}
	slot, _ := f.site.mySlot(st)
	k := (int(id) + slot) % len(addrs)
	return f.order(id, append(addrs[k:], addrs[:k]...)), nil
}

// order puts the site preferred for the shard first and the suspects last.
func (f *forwarder) order(id stream.ShardID, addrs []string) []string {
	f.mu.Lock()
	p := f.mu.prefer[id]
	if i := slices.Index(addrs, p); i > 0 {
		addrs = append(append([]string{p}, addrs[:i]...), addrs[i+1:]...)
	}
	// Sites that did not answer lately go last: a write is not sent again once it may have
	// reached a site, so without this every write would go to a hung site first, and fail.
	for addr, since := range f.mu.suspect {
		if time.Since(since) > suspectFor {
			delete(f.mu.suspect, addr)
		}
	}
	if len(f.mu.suspect) > 0 {
		slices.SortStableFunc(addrs, func(a, b string) int {
			_, sa := f.mu.suspect[a]
			_, sb := f.mu.suspect[b]
			switch {
			case sa == sb:
				return 0
			case sb:
				return -1
			}
			return 1
		})
	}
	f.mu.Unlock()
	return addrs
}

// suspectFor is how long a site that did not answer in time is tried last (unless it answers).
const suspectFor = 30 * time.Second

// suspect marks addr as not answering; answered clears it.
func (f *forwarder) suspect(addr string) {
	f.mu.Lock()
	f.mu.suspect[addr] = time.Now()
	f.mu.Unlock()
}

func (f *forwarder) suspected(addr string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.mu.suspect[addr]
	return ok
}

func (f *forwarder) answered(addr string) {
	f.mu.Lock()
	delete(f.mu.suspect, addr)
	f.mu.Unlock()
}

// client returns the connection to addr, dialing it if needed.
func (f *forwarder) client(ctx context.Context, addr string) (*rpc.Client, error) {
	for {
		f.mu.Lock()
		if f.mu.closed {
			f.mu.Unlock()
			return nil, shard.ErrClosed
		}
		if c, ok := f.mu.clients[addr]; ok {
			f.mu.Unlock()
			return c, nil
		}
		wait, busy := f.mu.dialing[addr]
		if !busy {
			wait = make(chan struct{})
			f.mu.dialing[addr] = wait
		}
		f.mu.Unlock()
		if busy {
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		c, err := f.dial(ctx, addr)
		f.mu.Lock()
		delete(f.mu.dialing, addr)
		close(wait)
		if err == nil {
			if f.mu.closed {
				c.Close()
				err = shard.ErrClosed
			} else {
				f.mu.clients[addr] = c
			}
		}
		f.mu.Unlock()
		return c, err
	}
}

func (f *forwarder) dial(ctx context.Context, addr string) (*rpc.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, f.site.attemptTimeout())
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	var conn net.Conn = deadlineConn{Conn: raw, d: f.site.attemptTimeout()}
	if f.site.cfg.TLS != nil {
		tc, err := f.site.tlsConfig()
		if err != nil {
			conn.Close()
			return nil, err
		}
		if host, _, err := net.SplitHostPort(addr); err == nil {
			tc.ServerName = host
		}
		tconn := tls.Client(conn, tc)
		if err := tconn.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, err
		}
		conn = tconn
	}
	return rpc.NewClient(conn), nil
}

// deadlineConn bounds every write: net/rpc writes a request (or a reply) while holding its
// send lock, so a peer that stopped reading (hung, or cut off without a reset) would
// otherwise block every call on the connection, whatever their ctxs. The deadline applies to
// each chunk of deadlineChunk bytes, so that a large reply over a slow but live link is not
// cut off, and a write that fails closes the connection: net/rpc's server only logs a failed
// reply and goes on reading requests it can no longer answer, and a half-written message
// leaves the stream unusable anyway.
type deadlineConn struct {
	net.Conn
	d time.Duration
}

const deadlineChunk = 64 << 10

func (c deadlineConn) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		chunk := b[n:min(len(b), n+deadlineChunk)]
		err := c.Conn.SetWriteDeadline(time.Now().Add(c.d))
		if err == nil {
			var k int
			k, err = c.Conn.Write(chunk)
			n += k
		}
		if err != nil {
			c.Conn.Close()
			return n, err
		}
	}
	return n, nil
}

// drop forgets a broken connection.
func (f *forwarder) drop(addr string, c *rpc.Client) {
	f.mu.Lock()
	if f.mu.clients[addr] == c {
		delete(f.mu.clients, addr)
	}
	delete(f.mu.unanswered, c)
	f.mu.Unlock()
	c.Close()
}

// givenUp counts a read given up on c; the connection is closed once maxUnanswered pile up.
func (f *forwarder) givenUp(addr string, c *rpc.Client) {
	f.mu.Lock()
	f.mu.unanswered[c]++
	full := f.mu.unanswered[c] >= f.maxUnanswered
	f.mu.Unlock()
	if full {
		f.drop(addr, c)
	}
}

func (f *forwarder) close() {
	f.mu.Lock()
	f.mu.closed = true
	clients := f.mu.clients
	f.mu.clients = map[string]*rpc.Client{}
	f.mu.Unlock()
	for _, c := range clients {
		c.Close()
	}
}

// call calls method on a site that holds shard id. A write (once) is not sent again once it
// may have reached a site; a read is tried on every site in turn. ctx bounds the whole call.
func (f *forwarder) call(ctx context.Context, id stream.ShardID, method string, args any, reply wire.Reply, once bool) error {
	addrs, err := f.targets(id)
	if err != nil {
		return err
	}
	return f.callTo(ctx, id, addrs, method, args, reply, once, 0)
}

// poll is call for a read that the called site may hold for up to wait (a long poll): each
// attempt waits that much longer for the answer. It asks first (unless it is a suspect) the
// site at, and returns the one that answered: the tail feed stays with one holder, whose ring
// positions it knows, instead of following the shard's preference (which Stores move to the
// leader), as each change of holder costs its readers a Reset.
func (f *forwarder) poll(ctx context.Context, id stream.ShardID, at, method string, args any, reply wire.Reply, wait time.Duration) (string, error) {
	addrs, err := f.targets(id)
	if err != nil {
		return "", err
	}
	if i := slices.Index(addrs, at); i > 0 && !f.suspected(at) {
		addrs = append(append([]string{at}, addrs[:i]...), addrs[i+1:]...)
	}
	return f.callAt(ctx, id, addrs, method, args, reply, false, wait)
}

// errNotSent is wrapped by a call's error when the call did nothing at any site: none could be
// connected, or each answered that it holds no replica or could not do it (nothing stored).
var errNotSent = errors.New("strata: the call was done by no site")

// callTo is call with the sites to try, in order. A read waits at most an attempt timeout
// (plus wait, for a long poll) for each site: a hung site, stopped or cut off without a
// reset, must not keep the others from being asked. A site that does not answer in time
// loses its preference and is tried last for a while (suspect); its connection is kept, as
// other calls may be in flight on it (closing it would make their outcome unknown): a
// connection that is really dead fails on its own (write deadlines, resets).
func (f *forwarder) callTo(ctx context.Context, id stream.ShardID, addrs []string, method string, args any, reply wire.Reply, once bool, wait time.Duration) error {
	_, err := f.callAt(ctx, id, addrs, method, args, reply, once, wait)
	return err
}

// callAt is callTo that also returns the site that answered.
func (f *forwarder) callAt(ctx context.Context, id stream.ShardID, addrs []string, method string, args any, reply wire.Reply, once bool, wait time.Duration) (string, error) {
	var errs []error
	unprefer := func(addr string) {
		f.mu.Lock()
		if f.mu.prefer[id] == addr {
			delete(f.mu.prefer, id)
		}
		f.mu.Unlock()
	}
	for _, addr := range addrs {
		c, err := f.client(ctx, addr)
		if err != nil {
			if errors.Is(err, shard.ErrClosed) {
				return "", err
			}
			if ctx.Err() == nil {
				f.suspect(addr)
			}
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		// Each attempt decodes into a reply of its own, copied out only once it is complete:
		// gob leaves the fields a reply does not carry as they were (a reply reused after a
		// "not held" kept that code, and the batch went to a third site), and a call given up
		// may still be decoded into by net/rpc later.
		attempt := reflect.New(reflect.TypeOf(reply).Elem()).Interface().(wire.Reply)
		call := c.Go(serviceName+"."+method, args, attempt, make(chan *rpc.Call, 1))
		// net/rpc ends a call with ErrShutdown both when the connection was closed before the
		// call was sent (then inside Go, before it returns) and when this side closed the
		// connection with the call pending (later: the call went out, and the called site may
		// have done it). Only the first is "not sent".
		refused := false
		select {
		case <-call.Done:
			refused = errors.Is(call.Error, rpc.ErrShutdown)
		default:
			var timeout <-chan time.Time
			if !once {
				timeout = time.After(f.site.attemptTimeout() + wait) // collected once it fires or is dropped
			}
			select {
			case <-call.Done:
			case <-timeout:
				f.suspect(addr)
				unprefer(addr)
				f.givenUp(addr, c)
				errs = append(errs, fmt.Errorf("%s: no answer within %v", addr, f.site.attemptTimeout()+wait))
				continue
			case <-ctx.Done():
				if once && errors.Is(ctx.Err(), context.DeadlineExceeded) {
					// No answer for as long as a write could wait (a read's own timer judges it).
					f.suspect(addr)
				}
				unprefer(addr)
				if once {
					return "", fmt.Errorf("%w: %w: shard %d: forwarded to %s, no answer: %w", shard.ErrUnavailable, shard.ErrOutcomeUnknown, id, addr, ctx.Err())
				}
				return "", fmt.Errorf("%w: shard %d: forwarded to %s, no answer: %w", shard.ErrUnavailable, id, addr, ctx.Err())
			}
		}
		if err := call.Error; err != nil {
			if _, ok := err.(rpc.ServerError); !ok {
				f.drop(addr, c) // the connection broke (a ServerError leaves it usable)
				f.suspect(addr)
				unprefer(addr)
			}
			if once && !refused {
				return "", fmt.Errorf("%w: %w: shard %d: forwarded to %s: %w", shard.ErrUnavailable, shard.ErrOutcomeUnknown, id, addr, err)
			}
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		f.answered(addr)
		f.mu.Lock()
		delete(f.mu.unanswered, c)
		f.mu.Unlock()
		reflect.ValueOf(reply).Elem().Set(reflect.ValueOf(attempt).Elem())
		w := reply.Failure()
		switch w.Code {
		case wire.CodeNotHeld, wire.CodeUnavailable, wire.CodeNoQuorum, wire.CodeClosed:
			// Nothing was done there (ErrUnavailable without ErrOutcomeUnknown says nothing was
			// stored): another site holding the shard may do it, e.g. one on the majority
			// side of a partition that cut the first one off. The next call starts elsewhere.
			errs = append(errs, fmt.Errorf("%s: %w", addr, fromWire(w)))
			unprefer(addr)
			continue
		}
		f.mu.Lock()
		f.mu.prefer[id] = addr
		f.mu.Unlock()
		return addr, fromWire(w)
	}
	return "", fmt.Errorf("%w: %w: shard %d: no site holding it did it (nothing stored): %w", shard.ErrUnavailable, errNotSent, id, errors.Join(errs...))
}

// readCtx bounds a forwarded read: an attempt timeout for each of up to three sites.
func (f *forwarder) readCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(f.site.ctx, 3*f.site.attemptTimeout())
}

// calledWait is how long a called site may take for a write due by deadline: an attempt less,
// so that its answer arrives in time (half the time left when less is left: the called site
// must give up first all the same).
func (f *forwarder) calledWait(deadline time.Time) time.Duration {
	if wait := time.Until(deadline) - f.site.attemptTimeout(); wait > 0 {
		return wait
	}
	return max(time.Until(deadline)/2, time.Millisecond)
}

// proposeAgain proposes a proposal made here (its identity and sequence kept) through a site
// that holds the shard, and returns the entry's result. Safe to send to several sites: the
// replicas apply a sequence once.
func (f *forwarder) proposeAgain(id stream.ShardID, proposal []byte, deadline time.Time) (uint64, []byte, error) {
	addrs, err := f.targets(id)
	if err != nil {
		return 0, nil, err
	}
	ctx, cancel := context.WithDeadline(f.site.ctx, deadline)
	defer cancel()
	wait := f.calledWait(deadline)
	var reply wire.ProposeReply
	err = f.callTo(ctx, id, addrs, "Propose", &wire.Propose{Shard: id, Proposal: proposal, Wait: wait}, &reply, false, wait)
	return reply.Value, reply.Data, err
}

// submitBatch sends a proposer's batch (body: shard.Command's encoding) to a site that holds
// the shard when this one holds none (the leader's when known), or, with
// Config.LeaderBatching, to the site that leads it when that is another; the called site's
// proposer puts it in its next entry with everything queued there. forwarded false: propose
// here instead (this site holds the shard and leads it, or the leader is unknown, or the
// batch reached no site). A batch that may have reached a site is not sent again: if
// the answer is lost, or every caller of the batch gave up before it came, the error wraps
// ErrOutcomeUnknown.
func (f *forwarder) submitBatch(p *proposer, batch []*request, body []byte, deadline time.Time) (firstTS uint64, txns []shard.TxnResult, forwarded bool, err error) {
	// A replica still joining (not a member yet, or not caught up) cannot be counted on to
	// reach the leader: forward, as from a site without one.
	held := f.site.servingSM(p.id) != nil
	var addrs []string
	if held && !f.site.cfg.LeaderBatching {
		return 0, nil, false, nil
	}
	if held {
		addr, ok := f.leaderService(p.id)
		if !ok {
			return 0, nil, false, nil
		}
		addrs = []string{addr}
	} else {
		backoff := 5 * time.Millisecond
		for {
			if addrs, err = f.targets(p.id); err == nil {
				break
			}
			if f.site.shardSM(p.id) != nil {
				// No other site holds the shard, but a replica here is joining (with RF 1,
				// the shard's only one after a move): propose through it.
				return 0, nil, false, nil
			}
			// No holder known (this site's view of the meta group lags, as right after the
			// cluster started, before the others' service addresses reached it): nothing was
			// sent; look again until the deadline or every caller gave up.
			if time.Now().Add(backoff).After(deadline) || allGone(batch) {
				return 0, nil, true, err
			}
			select {
			case <-f.site.stop:
				return 0, nil, true, err
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 200*time.Millisecond)
		}
	}
	ctx, cancel := callersCtx(f.site.ctx, deadline, batch)
	defer cancel()
	var reply wire.SubmitReply
	wait := f.calledWait(deadline)
	args := &wire.Submit{Shard: p.id, Cmd: body, Wait: wait}
	err = f.callTo(ctx, p.id, addrs, "Submit", args, &reply, true, 0)
	if held && errors.Is(err, errNotSent) {
		return 0, nil, false, nil
	}
	if err != nil {
		return 0, nil, true, err
	}
	if reply.Leader != "" && !held {
		f.mu.Lock()
		f.mu.prefer[p.id] = reply.Leader
		f.mu.Unlock()
	}
	return reply.FirstTS, reply.Txns, true, nil
}

// callersCtx returns a ctx that ends at deadline, with parent, or once the ctx of every request
// of batch has ended: a forwarded batch is not waited for longer than its callers wait (as a
// proposal through a local replica is given up once allGone).
func callersCtx(parent context.Context, deadline time.Time, batch []*request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithDeadline(parent, deadline)
	go func() {
		for _, r := range batch {
			select {
			case <-r.ctx.Done():
			case <-ctx.Done():
				return
			}
		}
		cancel()
	}()
	return ctx, cancel
}

// leaderService returns the service address of the site whose replica leads the shard, if
// that is known and is another site.
func (f *forwarder) leaderService(id stream.ShardID) (string, bool) {
	g := shardGroup(id)
	leader, _, ok, err := f.site.nh.GetLeaderID(g)
	if err != nil || !ok {
		return "", false
	}
	f.site.mu.Lock()
	mine := f.site.mu.running[g]
	f.site.mu.Unlock()
	if leader == mine {
		return "", false
	}
	st, err := f.site.localMeta()
	if err != nil {
		return "", false
	}
	for _, r := range st.Replicas {
		if r.Group == g && r.ReplicaID == leader {
			return f.serviceOf(st, r.Slot)
		}
	}
	return "", false
}

// serviceOf returns the service address of the site in slot, if it is another site, has not
// left and offers one.
func (f *forwarder) serviceOf(st *MetaState, slot int) (string, bool) {
	site, ok := st.Site(slot)
	if !ok || site.State == SiteLeft || site.Service == "" || site.ID == f.site.file.ID {
		return "", false
	}
	return site.Service, true
}

func (f *forwarder) admin(ctx context.Context, id stream.ShardID, a *wire.Admin) error {
	a.Shard = id
	if d, ok := ctx.Deadline(); ok {
		a.Wait = time.Until(d)
	}
	var reply wire.ErrReply
	return f.call(ctx, id, "Admin", a, &reply, true)
}

func (f *forwarder) streams(id stream.ShardID, filter []string, since uint64) ([]stream.Stream, error) {
	ctx, cancel := f.readCtx()
	defer cancel()
	var reply wire.StreamsReply
	err := f.call(ctx, id, "Streams", &wire.Streams{Shard: id, Filter: filter, Since: since}, &reply, false)
	return reply.Streams, err
}

func (f *forwarder) read(it stream.Iterator, filter []string, max int, out []message.Message) ([]message.Message, uint64, error) {
	ctx, cancel := f.readCtx()
	defer cancel()
	var reply wire.ReadReply
	if err := f.call(ctx, it.Stream.Shard, "Read", &wire.Read{It: it, Filter: filter, Max: max}, &reply, false); err != nil {
		return out, it.Next, err
	}
	msgs, err := unwireMessages(it.Stream.Shard, reply.Msgs, reply.TS)
	if err == nil && len(msgs) > max {
		err = fmt.Errorf("%d messages, at most %d asked for", len(msgs), max)
	}
	if err != nil {
		return out, it.Next, fmt.Errorf("%w: shard %d: a forwarded read returned an undecodable answer: %v", shard.ErrUnavailable, it.Stream.Shard, err)
	}
	for _, m := range msgs {
		out = append(out, *m)
	}
	return out, reply.Next, nil
}

func (f *forwarder) readLimit(id stream.ShardID) (uint64, error) {
	ctx, cancel := f.readCtx()
	defer cancel()
	var reply wire.LimitReply
	err := f.call(ctx, id, "ReadLimit", &wire.Limit{Shard: id}, &reply, false)
	return reply.Limit, err
}

func (f *forwarder) generations(id stream.ShardID) ([]generation.Info, error) {
	ctx, cancel := f.readCtx()
	defer cancel()
	var reply wire.GenerationsReply
	err := f.call(ctx, id, "Generations", &wire.Shard{Shard: id}, &reply, false)
	return reply.Generations, err
}

func (f *forwarder) generationUsage(id stream.ShardID, gen stream.GenerationID) (shard.GenerationUsage, error) {
	ctx, cancel := f.readCtx()
	defer cancel()
	var reply wire.UsageReply
	err := f.call(ctx, id, "GenerationUsage", &wire.Usage{Shard: id, Generation: gen}, &reply, false)
	return reply.Usage, err
}

func (f *forwarder) record(ctx context.Context, id stream.ShardID, key []byte) ([]byte, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*f.site.attemptTimeout())
	defer cancel()
	var reply wire.RecordReply
	err := f.call(ctx, id, "Record", &wire.Record{Shard: id, Key: key}, &reply, false)
	return reply.Value, reply.Version, err
}

// scanRecords pages through the records: each page is one call (a page may come from another
// site than the previous one, each page's records are durable).
func (f *forwarder) scanRecords(ctx context.Context, id stream.ShardID, prefix []byte, fn func(key, value []byte, version uint64) bool) error {
	var after []byte
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*f.site.attemptTimeout())
		var reply wire.ScanReply
		err := f.call(pctx, id, "ScanRecords", &wire.Scan{Shard: id, Prefix: prefix, After: after, Max: maxScanPage}, &reply, false)
		cancel()
		if err != nil {
			return err
		}
		if len(reply.Keys) != len(reply.Values) || len(reply.Keys) != len(reply.Versions) {
			return fmt.Errorf("%w: shard %d: a forwarded scan returned an inconsistent answer", shard.ErrUnavailable, id)
		}
		for i, k := range reply.Keys {
			if !fn(k, reply.Values[i], reply.Versions[i]) {
				return nil
			}
		}
		if !reply.More || len(reply.Keys) == 0 {
			return nil
		}
		after = reply.Keys[len(reply.Keys)-1]
	}
}

// watch feeds this site's DB with the durable steps of a shard it holds no replica of, as its
// replicas' steps feed it for the shards it holds: it long-polls a holder's ring (tail.go's
// Tail) and reports each step (report keeps them in order, once each), so that tail
// subscriptions, watchers and record watchers here are served from memory. Where the ring
// cannot say what happened (first call, another holder, a step evicted), it reports a Reset:
// readers look again, through forwarded reads. It idles while the shard has a replica here
// (that replica reports its own steps).
func (f *forwarder) watch(id stream.ShardID) {
	defer f.site.wg.Done()
	var epoch, seq uint64
	var holder string             // the site whose ring this site follows
	known := map[streamKey]bool{} // streams reported here; a new one is a change (OnChange)
	poll := f.site.cfg.ReconcileInterval
	pause := func() bool {
		select {
		case <-f.site.stop:
			return false
		case <-time.After(poll):
			return true
		}
	}
	for !f.site.stopping() {
		if f.site.servingSM(id) != nil {
			epoch, seq, holder = 0, 0, ""
			clear(known)
			if !pause() {
				return
			}
			continue
		}
		// Each attempt waits for the long poll plus an attempt timeout: room for two holders.
		wait := 5 * time.Second
		ctx, cancel := context.WithTimeout(f.site.ctx, 2*(wait+f.site.attemptTimeout()))
		var reply wire.TailReply
		var err error
		holder, err = f.poll(ctx, id, holder, "Tail", &wire.Tail{Shard: id, Epoch: epoch, Seq: seq, Wait: wait, MaxBytes: tailReplyBytes}, &reply, wait)
		cancel()
		f.mu.Lock()
		f.mu.feeding[id] = holder
		f.mu.Unlock()
		if err != nil {
			if !pause() {
				return
			}
			continue
		}
		epoch, seq = reply.Epoch, reply.Next
		changed := false
		if reply.Reset {
			_, changed = f.site.report(shard.Durable{Shard: id, From: reply.Limit, Until: reply.Limit,
				FromVersion: reply.Version, UntilVersion: reply.Version, Reset: true}, false)
		}
		for i := range reply.Steps {
			d, ok := decodeTailStep(id, &reply.Steps[i])
			if !ok {
				// Undecodable: readers look again from the storage, and the ring is asked anew.
				st := &reply.Steps[i]
				f.site.report(shard.Durable{Shard: id, From: st.Until, Until: st.Until,
					FromVersion: st.UntilVersion, UntilVersion: st.UntilVersion, Reset: true}, false)
				epoch, changed = 0, true
				break
			}
			d, ok = f.site.report(d, false)
			if !ok {
				continue
			}
			changed = changed || d.Reset
			for _, t := range d.Streams {
				if k := (streamKey{t.Generation, t.Key}); !known[k] {
					known[k], changed = true, true
				}
			}
		}
		if len(known) > 1<<16 {
			clear(known) // a bound: streams forgotten are only reported as changes again
		}
		if changed {
			f.site.notifyChanged()
		}
	}
}

// feedingHolder returns the site whose ring the tail feed of shard id follows ("" before the
// first answer).
func (f *forwarder) feedingHolder(id stream.ShardID) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.feeding[id]
}

// streamKey is a stream of a shard: its generation and key.
type streamKey struct {
	Generation stream.GenerationID
	Key        uint64
}

// tailReplyBytes bounds the messages and records of one Tail reply.
const tailReplyBytes = 4 << 20
