package ds_test

// Randomized model test of subscriptions (Subscribe, Next, Ack, Position, Close, loss by
// retention), in the style of model_test.go: a seeded random sequence of operations runs
// against a real DB (Pebble on disk) and a brute-force reference, and every answer of the DB is
// checked against the reference.
//
// The operations: stores of batches from several publishers (hence shards), with topics of a
// small vocabulary at varying depths, "$sys" ones included, so that LTS with small
// WildcardThresholds learns '+' streams while subscriptions read; bursts of one publisher, so
// that a commit overflows a small Buffer; Subscribe with random filters ('#', '+/b/#', literal
// topics, '$sys/#', filters derived from recurring topics) from StartPosition (zero, a past
// timestamp, a future one), TailPosition or a saved Position; Next with random max, also
// waiting in a goroutine while the Store that wakes it runs; random partial, out-of-order and
// invalid Acks; Close and resume from Position, now or later; AddGeneration; DropGeneration of
// the oldest sealed generation (as retention does) or, in one config, of any sealed one;
// reopen of the DB with every session resumed; clock jumps back and forth.
//
// The reference knows every stored message (shard, timestamp, topic, client, payload) and the
// generations of every shard (since, until, dropped), hence each message's generation. A
// subscription lifetime (one Subscribe until its Close) is modelled by its filter, its start
// position and what it was given: the messages it delivered, the ones acknowledged, the losses
// it reported. The checks:
//
//   - every delivered message is a stored one, with its topic, client and payload, matches the
//     filter (MQTT rules, '$' included) and is at or after the start position of its shard;
//   - per shard, deliveries strictly increase in timestamp, so none comes twice in a lifetime;
//   - Next returns at most max messages and never more than MaxUnacked wait for Ack; a
//     subscription with MaxUnacked outstanding parks;
//   - Ack of delivered messages succeeds, of anything else fails with ErrNotDelivered;
//   - completeness: draining delivers every matching message from the start position of every
//     generation that was not dropped — the ones of dropped generations may be missing, and
//     each missing one lies in a LossError range reported by the lifetime;
//   - a LossError names a shard with a dropped generation, a non-empty range at or after the
//     start position that overlaps no surviving generation, and no later delivery of the
//     lifetime lies in the range;
//   - Position (before Close, after Close, across a DB close) is at or after the start, is at or
//     before the oldest matching message that was not acknowledged (nothing missed), and has no
//     acknowledged message between it and that one (duplicates after a resume only for messages
//     acknowledged after the first unacknowledged one); a position survives MarshalBinary and
//     UnmarshalPosition. A resumed lifetime starts at the position, so the completeness check
//     of the new lifetime is "nothing missed across the resume";
//   - Metrics: open subscriptions and delivered messages.
//
// Waits are deterministic: Next gets the generous waitFor only when the reference says that
// something must come; a short 20 ms timeout is used only to collect what may come (optional
// messages of dropped generations, LossErrors) and to check that a parked subscription stays
// parked.
//
// Reproduce a failure with: go test -run 'TestSubscriptionModel/^<config>$' -submodel.seed=<seed> ./ds/

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

var (
	subModelSeedFlag = flag.Uint64("submodel.seed", 0, "run TestSubscriptionModel with this seed only (0: the default seeds)")
	subModelOpsFlag  = flag.Int("submodel.ops", 0, "operations per TestSubscriptionModel run (0: the default)")
)

// smConfig is one configuration the random sequence runs under.
type smConfig struct {
	name       string
	layout     ds.LayoutKind
	thresholds []int
	perShard   bool
	maxBatch   int // Options.MaxBatchMessages; 0: the default (small values split a Store)
	// dropAny drops any sealed generation, not only the oldest one as retention does.
	dropAny bool
}

func TestSubscriptionModel(t *testing.T) {
	configs := []smConfig{
		{name: "lts", layout: ds.LayoutLTS, thresholds: []int{4, 2}},
		{name: "lts-pershard-smallcommits", layout: ds.LayoutLTS, thresholds: []int{2, 1}, perShard: true, maxBatch: 3},
		{name: "reference", layout: ds.LayoutReference},
		{name: "lts-dropany", layout: ds.LayoutLTS, thresholds: []int{4, 2}, dropAny: true},
	}
	seeds := []uint64{1, 2, uint64(time.Now().UnixNano())}
	if *subModelSeedFlag != 0 {
		seeds = []uint64{*subModelSeedFlag}
	}
	ops := 200
	if testing.Short() {
		ops = 100
	}
	if *subModelOpsFlag > 0 {
		ops = *subModelOpsFlag
	}
	for ci, cfg := range configs {
		for _, seed := range seeds {
			t.Run(fmt.Sprintf("%s/seed=%d", cfg.name, seed), func(t *testing.T) {
				t.Parallel()
				t.Logf("seed %d (rerun with -run 'TestSubscriptionModel/^%s$' -submodel.seed=%d)", seed, cfg.name, seed)
				r := newSMRun(t, cfg, seed, uint64(ci))
				r.run(ops)
			})
		}
	}
}

// smMsg is one stored message as the reference knows it.
type smMsg struct {
	ref     ds.Ref
	gen     ds.GenerationID
	topic   string
	client  string
	payload []byte
}

type smGen struct {
	id           ds.GenerationID
	since, until uint64 // until 0 while current
	dropped      bool
	msgs         []*smMsg // in timestamp order
}

// end returns the exclusive end of the generation's timestamps (MaxUint64 while current).
func (g *smGen) end() uint64 {
	if g.until == 0 {
		return math.MaxUint64
	}
	return g.until
}

type smShard struct {
	gens   []*smGen // by ID, dropped ones included
	lastTS uint64
}

func (s *smShard) current() *smGen { return s.gens[len(s.gens)-1] }

func (s *smShard) gen(id ds.GenerationID) *smGen {
	for _, g := range s.gens {
		if g.id == id {
			return g
		}
	}
	return nil
}

// smSub is one lifetime of a subscription session: from Subscribe to Close. A session goes on
// across Close and DB reopen by resuming from the lifetime's Position.
type smSub struct {
	session, life int
	filter        string
	opts          ds.SubscribeOptions
	maxUnacked    int // opts.MaxUnacked with its default
	s             *ds.Subscription
	start         []uint64 // per shard
	last          []uint64 // per shard: the last delivered timestamp
	delivered     map[ds.Ref]bool
	unacked       []ds.Ref // delivered, not acknowledged, in delivery order
	acked         map[ds.Ref]bool
	losses        []*ds.LossError
}

func (s *smSub) String() string {
	return fmt.Sprintf("sub %d.%d %q", s.session, s.life, s.filter)
}

func (s *smSub) room() int { return s.maxUnacked - len(s.unacked) }

// smSaved is a closed session waiting to be resumed.
type smSaved struct {
	session, life int
	filter        string
	pos           ds.Position
}

type smRun struct {
	t     *testing.T
	ctx   context.Context
	rng   *rand.Rand
	cfg   smConfig
	dir   string
	opts  ds.Options
	clock *modelClock
	db    *ds.DB

	shards  []*smShard
	byRef   map[ds.Ref]*smMsg
	clients [][]string // per shard: client IDs that map to it

	live        []*smSub
	saved       []*smSaved
	nextSession int
	nextMsg     int
	hot         []string
	matchCache  map[[2]string]bool

	// Since the DB was opened, for Metrics.
	deliveredSinceOpen uint64

	opLog []string
	stats map[string]int
}

func newSMRun(t *testing.T, cfg smConfig, seed, stream uint64) *smRun {
	r := &smRun{
		t:          t,
		ctx:        context.Background(),
		rng:        rand.New(rand.NewPCG(seed, stream^0x5bd1e9955bd1e995)),
		cfg:        cfg,
		dir:        t.TempDir(),
		clock:      &modelClock{},
		byRef:      map[ds.Ref]*smMsg{},
		matchCache: map[[2]string]bool{},
		stats:      map[string]int{},
	}
	r.clock.us.Store(time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC).UnixMicro())
	r.opts = ds.Options{
		NShards:            1 + r.rng.IntN(4),
		Retention:          ds.RetainForever,
		GenerationSpan:     100000 * time.Hour, // rotation and drops only by the test
		Layout:             cfg.layout,
		WildcardThresholds: cfg.thresholds,
		Durability:         ds.NoSync,
		MaxBatchMessages:   cfg.maxBatch,
		Expert: ds.ExpertOptions{
			PebblePerShard: cfg.perShard,
			MemTableBytes:  4 << 20,
			CacheBytes:     4 << 20,
			Now:            r.clock.now,
		},
	}
	t.Cleanup(func() {
		if t.Failed() {
			n := min(len(r.opLog), 60)
			t.Logf("last %d of %d operations:\n%s", n, len(r.opLog), strings.Join(r.opLog[len(r.opLog)-n:], "\n"))
		}
		if r.db != nil {
			r.db.Close()
		}
	})
	r.open()
	n := r.opts.NShards
	r.clients = make([][]string, n)
	for i := 0; ; i++ {
		c := fmt.Sprintf("c%d", i)
		sh := ds.ShardOf(c, n)
		if len(r.clients[sh]) < 3 {
			r.clients[sh] = append(r.clients[sh], c)
		}
		if !slices.ContainsFunc(r.clients, func(cs []string) bool { return len(cs) < 3 }) {
			break
		}
	}
	gens, err := r.db.Generations()
	require.NoError(t, err)
	require.Len(t, gens, n)
	for i := range n {
		g := gens[i]
		r.shards = append(r.shards, &smShard{gens: []*smGen{{id: g.ID, since: g.Since}}, lastTS: g.Since - 1})
	}
	return r
}

func (r *smRun) logf(format string, args ...any) {
	r.opLog = append(r.opLog, fmt.Sprintf(format, args...))
}

func (r *smRun) count(what string, n int) { r.stats[what] += n }

func (r *smRun) open() {
	db, err := ds.Open(r.dir, &r.opts)
	require.NoError(r.t, err)
	r.db = db
	r.deliveredSinceOpen = 0
}

func (r *smRun) run(ops int) {
	type op struct {
		weight int
		fn     func()
	}
	table := []op{
		{24, r.opStore},
		{5, r.opSubscribe},
		{22, r.opNext},
		{10, r.opAck},
		{5, r.opDrain},
		{4, r.opNextWhileStoring},
		{3, r.opPosition},
		{4, r.opClose},
		{3, r.opResumeSaved},
		{4, r.opAddGeneration},
		{3, r.opDropGeneration},
		{1, r.opReopen},
		{2, r.opParked},
		{2, r.opClockJump},
		{1, r.opMetrics},
	}
	total := 0
	for _, o := range table {
		total += o.weight
	}
	for i := 0; i < ops && !r.t.Failed(); i++ {
		n := r.rng.IntN(total)
		for _, o := range table {
			if n < o.weight {
				o.fn()
				break
			}
			n -= o.weight
		}
	}
	// The end: every session drained, closed, resumed and drained again; then the same across
	// a reopen, after which every session settles: nothing more comes, every loss is reported.
	r.logf("final drain")
	for _, sub := range slices.Clone(r.live) {
		r.drain(sub, false)
	}
	for _, sub := range slices.Clone(r.live) {
		r.closeSub(sub, false)
	}
	for len(r.saved) > 0 {
		r.resume(0)
	}
	for _, sub := range slices.Clone(r.live) {
		r.drain(sub, false)
	}
	r.opReopen()
	for len(r.saved) > 0 {
		r.resume(0)
	}
	for _, sub := range slices.Clone(r.live) {
		r.drain(sub, true)
	}
	r.opMetrics()
	r.t.Logf("%d shards; stats: %v", len(r.shards), r.stats)
}

// Topics: a few first levels (and "$sys", which wildcard-first filters must not match) and a
// small alphabet deeper, so that the LTS trie with small thresholds folds levels into '+'.
var (
	smFirstLevels = []string{"a", "b", "c", "d", "e", "f"}
	smDeepLevels  = []string{"a", "b", "c", "x", "y1", "y2", "y3", "y4", ""}
	smFilters     = []string{"#", "a/+/c", "+/b/#", "a/#", "+", "+/+", "+/+/+", "$sys/#", "$sys/+",
		"$sys/x", "a/b/c", "a", "b/+", "+/y1/#", "c/#", "+/#", "d/+/+/x", "$sys/+/#"}
)

func (r *smRun) randomTopic() string {
	n := 1 + r.rng.IntN(4)
	levels := make([]string, n)
	levels[0] = smFirstLevels[r.rng.IntN(len(smFirstLevels))]
	if r.rng.IntN(10) == 0 {
		levels[0] = "$sys"
	}
	for i := 1; i < n; i++ {
		levels[i] = smDeepLevels[r.rng.IntN(len(smDeepLevels))]
	}
	return strings.Join(levels, "/")
}

// hotTopic returns one of a few recurring topics, now and then replacing one.
func (r *smRun) hotTopic() string {
	if len(r.hot) < 6 || r.rng.IntN(20) == 0 {
		t := r.randomTopic()
		if len(r.hot) < 6 {
			r.hot = append(r.hot, t)
		} else {
			r.hot[r.rng.IntN(len(r.hot))] = t
		}
		return t
	}
	return r.hot[r.rng.IntN(len(r.hot))]
}

func (r *smRun) randomFilter() string {
	if r.rng.IntN(2) == 0 {
		return smFilters[r.rng.IntN(len(smFilters))]
	}
	levels := strings.Split(r.hotTopic(), "/")
	for i := range levels {
		if r.rng.IntN(3) == 0 {
			levels[i] = "+"
		}
	}
	if r.rng.IntN(3) == 0 {
		levels = append(levels[:r.rng.IntN(len(levels))], "#")
	}
	return strings.Join(levels, "/")
}

// topicFor returns a random topic that filter matches.
func (r *smRun) topicFor(filter string) string {
	for range 100 {
		var out []string
		for i, l := range strings.Split(filter, "/") {
			switch l {
			case "+":
				if i == 0 {
					out = append(out, smFirstLevels[r.rng.IntN(len(smFirstLevels))])
				} else {
					out = append(out, smDeepLevels[r.rng.IntN(len(smDeepLevels))])
				}
			case "#":
				k := r.rng.IntN(3)
				if i == 0 && k == 0 {
					k = 1
				}
				for j := range k {
					if i+j == 0 {
						out = append(out, smFirstLevels[r.rng.IntN(len(smFirstLevels))])
					} else {
						out = append(out, smDeepLevels[r.rng.IntN(len(smDeepLevels))])
					}
				}
			default:
				out = append(out, l)
			}
		}
		if t := strings.Join(out, "/"); t != "" && r.match(filter, t) {
			return t
		}
	}
	require.Failf(r.t, "no topic found", "no topic found for filter %q", filter)
	return ""
}

// match is modelMatch (the reference's own MQTT matcher), cached.
func (r *smRun) match(filter, topic string) bool {
	k := [2]string{filter, topic}
	m, ok := r.matchCache[k]
	if !ok {
		m = modelMatch(filter, topic)
		r.matchCache[k] = m
	}
	return m
}

func (r *smRun) randomMessage(client, topic string) ds.Message {
	r.nextMsg++
	if client == "" {
		sh := r.rng.IntN(len(r.clients))
		client = r.clients[sh][r.rng.IntN(len(r.clients[sh]))]
	}
	if topic == "" {
		topic = r.randomTopic()
		if r.rng.IntN(2) == 0 {
			topic = r.hotTopic()
		}
	}
	return ds.Message{ClientID: client, Topic: topic, QoS: 1, Payload: fmt.Appendf(nil, "m%d", r.nextMsg)}
}

// store stores msgs and adds them to the reference.
func (r *smRun) store(msgs []ds.Message) []ds.Ref {
	t := r.t
	refs, err := r.db.Store(r.ctx, msgs...)
	r.logf("store %d messages: %v", len(msgs), err)
	require.NoError(t, err)
	require.Len(t, refs, len(msgs))
	r.count("stored", len(msgs))
	for i, ref := range refs {
		sh := ds.ShardOf(msgs[i].ClientID, len(r.shards))
		require.Equal(t, sh, ref.Shard)
		s := r.shards[sh]
		require.Greater(t, ref.Timestamp, s.lastTS, "shard %d: timestamps must increase", sh)
		cur := s.current()
		require.GreaterOrEqual(t, ref.Timestamp, cur.since)
		s.lastTS = ref.Timestamp
		m := &smMsg{ref: ref, gen: cur.id, topic: msgs[i].Topic, client: msgs[i].ClientID, payload: msgs[i].Payload}
		cur.msgs = append(cur.msgs, m)
		r.byRef[ref] = m
	}
	return refs
}

func (r *smRun) opStore() {
	n := 1 + r.rng.IntN(12)
	client := ""
	if r.rng.IntN(5) == 0 {
		// A burst of one publisher: one shard commit with more matching messages than a small
		// Buffer holds.
		sh := r.rng.IntN(len(r.clients))
		client = r.clients[sh][0]
		n = 5 + r.rng.IntN(20)
	}
	msgs := make([]ds.Message, n)
	topic := ""
	if client != "" && r.rng.IntN(2) == 0 {
		topic = r.hotTopic()
	}
	for i := range msgs {
		msgs[i] = r.randomMessage(client, topic)
	}
	r.store(msgs)
}

func (r *smRun) randomSubOpts() ds.SubscribeOptions {
	var o ds.SubscribeOptions
	switch r.rng.IntN(5) {
	case 0: // the defaults
	case 1:
		o.MaxUnacked = 1 + r.rng.IntN(3)
	case 2:
		o.MaxUnacked = 1 + r.rng.IntN(10)
		o.Buffer = 1 + r.rng.IntN(4)
	case 3:
		o.MaxUnacked = 20 + r.rng.IntN(30)
	default:
		o.MaxUnacked = 3 + r.rng.IntN(5)
		o.Buffer = 3 + r.rng.IntN(10)
	}
	if r.rng.IntN(2) == 0 {
		o.ReadBuffer = 1 + r.rng.IntN(4)
	}
	return o
}

// randomPastTS returns a timestamp of the shards' history: a stored message's, just after one,
// or a generation's start.
func (r *smRun) randomPastTS() uint64 {
	s := r.shards[r.rng.IntN(len(r.shards))]
	g := s.gens[r.rng.IntN(len(s.gens))]
	if len(g.msgs) == 0 || r.rng.IntN(4) == 0 {
		return g.since
	}
	return g.msgs[r.rng.IntN(len(g.msgs))].ref.Timestamp + uint64(r.rng.IntN(2))
}

// checkStartPosition checks StartPosition at ts: per shard, ts, or the start of the oldest
// generation left if that is later (what retention dropped before is no loss to it).
func (r *smRun) checkStartPosition(pos ds.Position, ts uint64) {
	for i, s := range r.shards {
		want := ts
		for _, g := range s.gens {
			if !g.dropped {
				want = max(ts, g.since)
				break
			}
		}
		require.Equal(r.t, want, pos.Shard(ds.ShardID(i)), "StartPosition(%d) of shard %d", ts, i)
	}
}

func (r *smRun) opSubscribe() {
	t := r.t
	if len(r.live) >= 6 {
		r.opClose()
		return
	}
	filter := r.randomFilter()
	var pos ds.Position
	var what string
	switch k := r.rng.IntN(10); {
	case k < 2:
		pos, what = r.db.StartPosition(time.Time{}), "start"
		r.checkStartPosition(pos, 0)
	case k < 5:
		ts := r.randomPastTS()
		pos, what = r.db.StartPosition(ds.Time(ts)), fmt.Sprintf("time %d", ts)
		r.checkStartPosition(pos, ts)
	case k < 9:
		var err error
		pos, err = r.db.TailPosition()
		require.NoError(t, err)
		what = "tail"
		for i, s := range r.shards {
			require.Greater(t, pos.Shard(ds.ShardID(i)), s.lastTS, "TailPosition of shard %d is not after its last message", i)
		}
	default:
		var ts uint64
		for _, s := range r.shards {
			ts = max(ts, s.lastTS)
		}
		ts += uint64(1 + r.rng.IntN(200))
		pos, what = r.db.StartPosition(ds.Time(ts)), fmt.Sprintf("future %d", ts)
	}
	r.nextSession++
	r.subscribe(r.nextSession, 0, filter, pos, what)
}

// subscribe starts a lifetime of session from pos.
func (r *smRun) subscribe(session, life int, filter string, pos ds.Position, what string) *smSub {
	t := r.t
	opts := r.randomSubOpts()
	var po *ds.SubscribeOptions
	if opts != (ds.SubscribeOptions{}) || r.rng.IntN(2) == 0 {
		po = &opts
	}
	s, err := r.db.Subscribe(filter, pos, po)
	r.logf("subscribe %d.%d %q from %s %v opts %+v: %v", session, life, filter, what, pos, opts, err)
	require.NoError(t, err)
	require.Equal(t, filter, s.Filter())
	sub := &smSub{
		session: session, life: life, filter: filter, opts: opts, maxUnacked: opts.MaxUnacked, s: s,
		start: make([]uint64, len(r.shards)), last: make([]uint64, len(r.shards)),
		delivered: map[ds.Ref]bool{}, acked: map[ds.Ref]bool{},
	}
	if sub.maxUnacked == 0 {
		sub.maxUnacked = 1000
	}
	for i := range r.shards {
		sub.start[i] = pos.Shard(ds.ShardID(i))
	}
	r.live = append(r.live, sub)
	r.count("subscriptions", 1)
	return sub
}

// wanted reports whether m is for sub: it matches the filter and is at or after the start.
func (r *smRun) wanted(sub *smSub, m *smMsg) bool {
	return m.ref.Timestamp >= sub.start[m.ref.Shard] && r.match(sub.filter, m.topic)
}

// missing returns the messages sub must still deliver: wanted, of generations not dropped, not
// delivered.
func (r *smRun) missing(sub *smSub) []*smMsg {
	var out []*smMsg
	for i, s := range r.shards {
		for _, g := range s.gens {
			if g.dropped || g.end() <= sub.start[i] {
				continue
			}
			for _, m := range g.msgs {
				if !sub.delivered[m.ref] && r.wanted(sub, m) {
					out = append(out, m)
				}
			}
		}
	}
	return out
}

// lostUncovered returns the wanted messages of dropped generations that sub did not deliver
// and that no LossError of the lifetime covers.
func (r *smRun) lostUncovered(sub *smSub) []*smMsg {
	var out []*smMsg
	for _, s := range r.shards {
		for _, g := range s.gens {
			if !g.dropped {
				continue
			}
			for _, m := range g.msgs {
				if !sub.delivered[m.ref] && r.wanted(sub, m) && !sub.inLoss(m.ref) {
					out = append(out, m)
				}
			}
		}
	}
	return out
}

func (s *smSub) inLoss(ref ds.Ref) bool {
	for _, l := range s.losses {
		if l.Shard == ref.Shard && l.From <= ref.Timestamp && ref.Timestamp < l.Until {
			return true
		}
	}
	return false
}

// next calls Next once with max and timeout and checks the outcome. It returns the number of
// messages delivered and whether Next timed out.
func (r *smRun) next(sub *smSub, max int, timeout time.Duration) (int, bool) {
	ctx, cancel := context.WithTimeout(r.ctx, timeout)
	defer cancel()
	room := sub.room()
	msgs, err := sub.s.Next(ctx, max)
	return r.checkNext(sub, max, room, msgs, err)
}

// checkNext checks what Next(max) returned to sub, which had room for room more unacknowledged
// messages, and records it.
func (r *smRun) checkNext(sub *smSub, max, room int, msgs []ds.Message, err error) (int, bool) {
	t := r.t
	r.logf("%s: next(%d), room %d: %d messages, %v", sub, max, room, len(msgs), err)
	var loss *ds.LossError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		require.Empty(t, msgs)
		return 0, true
	case errors.As(err, &loss):
		require.Empty(t, msgs)
		r.checkLoss(sub, loss)
		return 0, false
	}
	require.NoError(t, err, "%s: Next", sub)
	require.NotEmpty(t, msgs, "%s: Next returned no message and no error", sub)
	require.LessOrEqual(t, len(msgs), max, "%s: Next(%d) returned %d messages", sub, max, len(msgs))
	require.LessOrEqual(t, len(msgs), room, "%s: Next returned %d messages with room for %d (MaxUnacked %d)", sub, len(msgs), room, sub.maxUnacked)
	for _, m := range msgs {
		ref := ds.RefOf(m)
		require.Less(t, int(ref.Shard), len(r.shards), "%s: message of shard %d", sub, ref.Shard)
		want, ok := r.byRef[ref]
		require.True(t, ok, "%s: delivered %+v, which was never stored", sub, ref)
		require.Equal(t, want.topic, m.Topic, "%s: topic of %+v", sub, ref)
		require.Equal(t, want.client, m.ClientID, "%s: client of %+v", sub, ref)
		require.True(t, bytes.Equal(want.payload, m.Payload), "%s: payload of %+v", sub, ref)
		require.True(t, r.match(sub.filter, m.Topic), "%s: delivered %q, which the filter does not match", sub, m.Topic)
		require.GreaterOrEqual(t, ref.Timestamp, sub.start[ref.Shard], "%s: delivered %+v before the start position %d of its shard", sub, ref, sub.start[ref.Shard])
		require.False(t, sub.delivered[ref], "%s: delivered %+v (%q) twice", sub, ref, m.Topic)
		require.Greater(t, ref.Timestamp, sub.last[ref.Shard], "%s: shard %d out of order: %d after %d", sub, ref.Shard, ref.Timestamp, sub.last[ref.Shard])
		require.False(t, sub.inLoss(ref), "%s: delivered %+v inside a range it reported lost: %v", sub, ref, sub.losses)
		sub.last[ref.Shard] = ref.Timestamp
		sub.delivered[ref] = true
		sub.unacked = append(sub.unacked, ref)
	}
	r.deliveredSinceOpen += uint64(len(msgs))
	r.count("delivered", len(msgs))
	return len(msgs), false
}

// checkLoss checks a LossError against the reference and records it.
func (r *smRun) checkLoss(sub *smSub, loss *ds.LossError) {
	t := r.t
	r.count("losses", 1)
	require.ErrorIs(t, loss, ds.ErrMessagesLost)
	require.Less(t, int(loss.Shard), len(r.shards), "%s: %v", sub, loss)
	s := r.shards[loss.Shard]
	require.True(t, slices.ContainsFunc(s.gens, func(g *smGen) bool { return g.dropped }),
		"%s: %v, but shard %d dropped no generation", sub, loss, loss.Shard)
	require.Less(t, loss.From, loss.Until, "%s: %v: an empty range", sub, loss)
	require.GreaterOrEqual(t, loss.From, sub.start[loss.Shard], "%s: %v: before the start position", sub, loss)
	for _, g := range s.gens {
		require.False(t, !g.dropped && loss.From < g.end() && g.since < loss.Until,
			"%s: %v overlaps generation %d [%d, %d), which was not dropped", sub, loss, g.id, g.since, g.until)
	}
	if loss.Generation != 0 {
		g := s.gen(loss.Generation)
		require.NotNil(t, g, "%s: %v: unknown generation", sub, loss)
		require.True(t, g.dropped, "%s: %v: generation %d was not dropped", sub, loss, g.id)
		if loss.Messages != 0 {
			require.EqualValues(t, len(g.msgs), loss.Messages, "%s: %v: messages of generation %d", sub, loss, g.id)
		}
	}
	sub.losses = append(sub.losses, loss)
}

func (r *smRun) pickLive() *smSub {
	if len(r.live) == 0 {
		return nil
	}
	return r.live[r.rng.IntN(len(r.live))]
}

func (r *smRun) randomMax() int {
	if r.rng.IntN(4) == 0 {
		return 1000
	}
	return 1 + r.rng.IntN(6)
}

func (r *smRun) opNext() {
	sub := r.pickLive()
	if sub == nil {
		r.opSubscribe()
		return
	}
	if sub.room() <= 0 {
		r.ack(sub, false)
		return
	}
	if len(r.missing(sub)) > 0 {
		r.mustNext(sub, r.randomMax())
		return
	}
	if r.rng.IntN(6) == 0 {
		// Nothing must come, but a LossError or a message of a dropped generation may.
		r.next(sub, r.randomMax(), 20*time.Millisecond)
	}
}

// mustNext calls Next when something must come: a message, or first a LossError.
func (r *smRun) mustNext(sub *smSub, max int) {
	if _, timedOut := r.next(sub, max, waitFor); timedOut {
		miss := r.missing(sub)
		require.Failf(r.t, "Next timed out", "%s: %d messages not delivered, the first %+v (%q); position %v",
			sub, len(miss), miss[0].ref, miss[0].topic, sub.s.Position())
	}
}

// ack acknowledges a random part of sub's unacknowledged messages, in random order (all of them
// with all), now and then with refs that must fail with ErrNotDelivered.
func (r *smRun) ack(sub *smSub, all bool) {
	t := r.t
	if len(sub.unacked) == 0 {
		return
	}
	perm := r.rng.Perm(len(sub.unacked))
	k := len(perm)
	if !all {
		k = 1 + r.rng.IntN(len(perm))
	}
	var refs []ds.Ref
	for _, i := range perm[:k] {
		refs = append(refs, sub.unacked[i])
	}
	bad := false
	if !all && r.rng.IntN(6) == 0 {
		bad = true
		var b ds.Ref
		switch r.rng.IntN(3) {
		case 0:
			b = ds.Ref{Shard: ds.ShardID(len(r.shards) + r.rng.IntN(3)), Timestamp: 1}
		case 1:
			b = ds.Ref{Shard: ds.ShardID(r.rng.IntN(len(r.shards))), Timestamp: 1 + uint64(r.rng.IntN(5))}
		default:
			for ref := range sub.acked {
				b = ref // acknowledged already
				break
			}
			if b == (ds.Ref{}) {
				b = ds.Ref{Shard: 0, Timestamp: 7}
			}
		}
		refs = slices.Insert(refs, r.rng.IntN(len(refs)+1), b)
	}
	err := sub.s.Ack(refs...)
	r.logf("%s: ack %d of %d (bad %v): %v", sub, k, len(sub.unacked), bad, err)
	if bad {
		require.ErrorIs(t, err, ds.ErrNotDelivered, "%s: Ack of a message not delivered", sub)
	} else {
		require.NoError(t, err, "%s: Ack", sub)
	}
	for _, i := range perm[:k] {
		sub.acked[sub.unacked[i]] = true
	}
	sub.unacked = slices.DeleteFunc(sub.unacked, func(ref ds.Ref) bool { return sub.acked[ref] })
	r.count("acked", k)
	if r.rng.IntN(8) == 0 {
		// Acknowledged already: refused, nothing changes.
		err := sub.s.Ack(refs[0])
		require.ErrorIs(t, err, ds.ErrNotDelivered, "%s: second Ack of %+v", sub, refs[0])
	}
}

func (r *smRun) opAck() {
	if sub := r.pickLive(); sub != nil {
		r.ack(sub, r.rng.IntN(4) == 0)
	}
}

// drain delivers everything sub must deliver, acknowledging as it goes (randomly, enough to
// keep going). With settle, or when messages of dropped generations are missing and not yet
// reported, it then collects with a short timeout what may still come and checks that every
// missing message lies in a reported LossError.
func (r *smRun) drain(sub *smSub, settle bool) {
	r.logf("%s: drain (settle %v)", sub, settle)
	for range 100000 {
		if len(r.missing(sub)) == 0 {
			break
		}
		if sub.room() <= 0 || r.rng.IntN(3) == 0 {
			r.ack(sub, r.rng.IntN(2) == 0)
		}
		if sub.room() <= 0 {
			continue
		}
		r.mustNext(sub, r.randomMax())
	}
	if !settle && len(r.lostUncovered(sub)) == 0 {
		return
	}
	r.settle(sub)
}

// settle acknowledges everything and calls Next with a short timeout until it times out, then
// checks the losses.
func (r *smRun) settle(sub *smSub) {
	t := r.t
	for _, timeout := range []time.Duration{20 * time.Millisecond, 200 * time.Millisecond} {
		for {
			r.ack(sub, true)
			if _, timedOut := r.next(sub, r.randomMax(), timeout); timedOut {
				break
			}
		}
		if len(r.lostUncovered(sub)) == 0 {
			break
		}
	}
	require.Empty(t, r.missing(sub), "%s: messages not delivered", sub)
	if lost := r.lostUncovered(sub); len(lost) > 0 {
		require.Failf(t, "loss not reported", "%s: %d messages of dropped generations neither delivered nor in a reported loss, the first %+v (%q, generation %d); losses %v",
			sub, len(lost), lost[0].ref, lost[0].topic, lost[0].gen, sub.losses)
	}
	r.count("settled", 1)
}

func (r *smRun) opDrain() {
	if sub := r.pickLive(); sub != nil {
		r.drain(sub, r.rng.IntN(8) == 0)
	}
}

// opNextWhileStoring calls Next in a goroutine while the test stores messages that the
// subscription wants: a Next waiting at the tail must be woken by them (the broker's usual way).
func (r *smRun) opNextWhileStoring() {
	t := r.t
	var cands []*smSub
	for _, sub := range r.live {
		if sub.room() > 0 {
			cands = append(cands, sub)
		}
	}
	if len(cands) == 0 {
		return
	}
	sub := cands[r.rng.IntN(len(cands))]
	// A shard where a new message is wanted (not before a future start position).
	var shards []int
	for i, s := range r.shards {
		if sub.start[i] <= s.lastTS+1 {
			shards = append(shards, i)
		}
	}
	if len(shards) == 0 {
		return
	}
	sh := shards[r.rng.IntN(len(shards))]
	n := 1 + r.rng.IntN(4)
	if r.rng.IntN(3) == 0 {
		n = 5 + r.rng.IntN(15) // more than a small Buffer, in one commit
	}
	client := r.clients[sh][r.rng.IntN(len(r.clients[sh]))]
	msgs := make([]ds.Message, n)
	for i := range msgs {
		topic := r.topicFor(sub.filter)
		if r.rng.IntN(4) == 0 {
			topic = "" // random: maybe not matching
		}
		msgs[i] = r.randomMessage(client, topic)
	}
	msgs[r.rng.IntN(n)].Topic = r.topicFor(sub.filter)
	type result struct {
		msgs []ds.Message
		err  error
	}
	max, room := r.randomMax(), sub.room()
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(r.ctx, waitFor)
		defer cancel()
		m, err := sub.s.Next(ctx, max)
		done <- result{m, err}
	}()
	r.store(msgs)
	res := <-done
	_, timedOut := r.checkNext(sub, max, room, res.msgs, res.err)
	require.False(t, timedOut, "%s: a Next waiting while %d messages it wants were stored in shard %d was not woken (opts %+v)",
		sub, n, sh, sub.opts)
	r.count("next while storing", 1)
}

// checkPosition checks a position of sub (see the file's doc).
func (r *smRun) checkPosition(sub *smSub, p ds.Position, when string) {
	if problem := r.positionProblem(sub, p, when); problem != "" {
		require.Fail(r.t, problem)
	}
	r.count("positions checked", 1)
}

// positionProblem returns what is wrong with a position of sub, or "".
func (r *smRun) positionProblem(sub *smSub, p ds.Position, when string) string {
	if p.NShards() != len(r.shards) {
		return fmt.Sprintf("%s: position %s %v of %d shards, the DB has %d", sub, when, p, p.NShards(), len(r.shards))
	}
	for i, s := range r.shards {
		sh := ds.ShardID(i)
		ps := p.Shard(sh)
		if ps < sub.start[i] {
			return fmt.Sprintf("%s: position %s of shard %d is %d, before the start %d", sub, when, i, ps, sub.start[i])
		}
		// gap: the oldest wanted message not acknowledged (a message of a dropped generation
		// that was not delivered is lost, not waiting).
		gap := uint64(math.MaxUint64)
		var gapMsg *smMsg
	gens:
		for _, g := range s.gens {
			for _, m := range g.msgs {
				if !r.wanted(sub, m) || sub.acked[m.ref] || g.dropped && !sub.delivered[m.ref] {
					continue
				}
				gap, gapMsg = m.ref.Timestamp, m
				break gens
			}
		}
		if ps > gap {
			return fmt.Sprintf("%s: position %s of shard %d is %d, after %+v (%q, delivered %v) which was not acknowledged: a resume would skip it",
				sub, when, i, ps, gapMsg.ref, gapMsg.topic, sub.delivered[gapMsg.ref])
		}
		for ref := range sub.acked {
			if ref.Shard == sh && ref.Timestamp >= ps && ref.Timestamp < gap {
				return fmt.Sprintf("%s: position %s of shard %d is %d: %+v, acknowledged before the first unacknowledged message (%d), would come again",
					sub, when, i, ps, ref, gap)
			}
		}
	}
	return ""
}

// roundTrip marshals and unmarshals p, sometimes.
func (r *smRun) roundTrip(p ds.Position) ds.Position {
	if r.rng.IntN(2) == 0 {
		return p
	}
	b, err := p.MarshalBinary()
	require.NoError(r.t, err)
	q, err := ds.UnmarshalPosition(b)
	require.NoError(r.t, err)
	require.Equal(r.t, p.String(), q.String())
	return q
}

func (r *smRun) opPosition() {
	if sub := r.pickLive(); sub != nil {
		r.checkPosition(sub, sub.s.Position(), "now")
	}
}

// closeSub closes sub and returns its resume position, checked; resume now (a new lifetime
// of the session) or save it for later.
func (r *smRun) closeSub(sub *smSub, resumeNow bool) {
	t := r.t
	if r.rng.IntN(2) == 0 {
		r.checkPosition(sub, sub.s.Position(), "before Close")
	}
	require.NoError(t, sub.s.Close())
	after := sub.s.Position()
	r.logf("%s: close (position %v)", sub, after)
	r.checkPosition(sub, after, "after Close")
	if r.rng.IntN(4) == 0 {
		_, err := sub.s.Next(r.ctx, 1)
		require.ErrorIs(t, err, ds.ErrSubscriptionClosed)
	}
	r.live = slices.DeleteFunc(r.live, func(s *smSub) bool { return s == sub })
	pos := r.roundTrip(after)
	if resumeNow {
		r.subscribe(sub.session, sub.life+1, sub.filter, pos, "position")
		return
	}
	r.saved = append(r.saved, &smSaved{session: sub.session, life: sub.life + 1, filter: sub.filter, pos: pos})
}

func (r *smRun) opClose() {
	if sub := r.pickLive(); sub != nil {
		r.closeSub(sub, r.rng.IntN(2) == 0)
	}
}

func (r *smRun) resume(i int) {
	sv := r.saved[i]
	r.saved = slices.Delete(r.saved, i, i+1)
	r.subscribe(sv.session, sv.life, sv.filter, sv.pos, "saved position")
}

func (r *smRun) opResumeSaved() {
	if len(r.saved) > 0 && len(r.live) < 6 {
		r.resume(r.rng.IntN(len(r.saved)))
	}
}

func (r *smRun) opAddGeneration() {
	t := r.t
	err := r.db.AddGeneration(r.ctx)
	r.logf("add generation: %v", err)
	require.NoError(t, err)
	gens, err := r.db.Generations()
	require.NoError(t, err)
	for sh, s := range r.shards {
		prev := s.current()
		var added ds.GenerationInfo
		for _, g := range gens {
			if g.Shard == ds.ShardID(sh) && g.Current() {
				added = g
			}
		}
		require.Greater(t, added.ID, prev.id)
		require.Greater(t, added.Since, s.lastTS)
		prev.until = added.Since
		s.gens = append(s.gens, &smGen{id: added.ID, since: added.Since})
		s.lastTS = added.Since - 1
	}
	r.count("rotations", 1)
}

func (r *smRun) opDropGeneration() {
	t := r.t
	type cand struct {
		shard ds.ShardID
		gen   *smGen
	}
	var cands []cand
	// The oldest generation left of a shard if sealed, as retention drops them; with dropAny,
	// any sealed one.
	for sh, s := range r.shards {
		for _, g := range s.gens {
			if g.dropped {
				continue
			}
			if g.until == 0 {
				break // the current one
			}
			cands = append(cands, cand{ds.ShardID(sh), g})
			if !r.cfg.dropAny {
				break
			}
		}
	}
	if len(cands) == 0 {
		r.opAddGeneration()
		return
	}
	c := cands[r.rng.IntN(len(cands))]
	err := r.db.DropGeneration(r.ctx, c.shard, c.gen.id)
	r.logf("drop shard %d generation %d [%d, %d) of %d messages: %v", c.shard, c.gen.id, c.gen.since, c.gen.until, len(c.gen.msgs), err)
	require.NoError(t, err)
	c.gen.dropped = true
	r.count("drops", 1)
}

// opReopen closes the DB, which closes every subscription, and reopens it; the sessions resume
// from their positions, taken before or after the close, or are saved for later.
func (r *smRun) opReopen() {
	t := r.t
	before := map[*smSub]ds.Position{}
	for _, sub := range r.live {
		if r.rng.IntN(2) == 0 {
			before[sub] = sub.s.Position()
			r.checkPosition(sub, before[sub], "before DB Close")
		}
	}
	require.NoError(t, r.db.Close())
	r.logf("reopen")
	r.count("reopens", 1)
	live := r.live
	r.live = nil
	var resumeNow []*smSaved
	for _, sub := range live {
		_, err := sub.s.Next(r.ctx, 1)
		require.ErrorIs(t, err, ds.ErrSubscriptionClosed, "%s: Next after the DB closed", sub)
		after := sub.s.Position()
		p, took := before[sub]
		r.checkPosition(sub, after, "after DB Close")
		require.NoError(t, sub.s.Close())
		if earlier := r.rng.IntN(2) == 0; took && earlier {
			after = p // an earlier position is as good, only further back
		}
		sv := &smSaved{session: sub.session, life: sub.life + 1, filter: sub.filter, pos: r.roundTrip(after)}
		if r.rng.IntN(4) == 0 {
			r.saved = append(r.saved, sv)
		} else {
			resumeNow = append(resumeNow, sv)
		}
	}
	r.open()
	gens, err := r.db.Generations()
	require.NoError(t, err)
	var want []string
	for sh, s := range r.shards {
		for _, g := range s.gens {
			if !g.dropped {
				want = append(want, fmt.Sprintf("%d/%d/%d", sh, g.id, g.since))
			}
		}
	}
	var got []string
	for _, g := range gens {
		got = append(got, fmt.Sprintf("%d/%d/%d", g.Shard, g.ID, g.Since))
	}
	require.Equal(t, want, got, "generations across the reopen")
	for _, sv := range resumeNow {
		r.subscribe(sv.session, sv.life, sv.filter, sv.pos, "position across reopen")
	}
}

// opParked checks that a subscription with MaxUnacked messages waiting for Ack parks: Next
// returns nothing (a LossError may still come); and, when messages are due, that an Ack wakes
// a Next parked in a goroutine.
func (r *smRun) opParked() {
	t := r.t
	for _, sub := range r.live {
		if sub.room() > 0 {
			continue
		}
		_, timedOut := r.next(sub, r.randomMax(), 20*time.Millisecond)
		if !timedOut {
			require.NotEmpty(t, sub.losses, "%s: parked Next returned", sub)
		}
		r.count("parked", 1)
		if sub.room() > 0 || len(r.missing(sub)) == 0 {
			return
		}
		type result struct {
			msgs []ds.Message
			err  error
		}
		max := r.randomMax()
		done := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(r.ctx, waitFor)
			defer cancel()
			m, err := sub.s.Next(ctx, max)
			done <- result{m, err}
		}()
		r.ack(sub, false)
		res := <-done
		_, timedOut = r.checkNext(sub, max, sub.room(), res.msgs, res.err)
		require.False(t, timedOut, "%s: a Next parked at MaxUnacked was not woken by an Ack", sub)
		r.count("parked woken by Ack", 1)
		return
	}
}

func (r *smRun) opClockJump() {
	d := int64(r.rng.IntN(2_000_000))
	if r.rng.IntN(2) == 0 {
		d = -d
	}
	r.clock.us.Add(d)
	r.logf("clock %+dµs", d)
}

func (r *smRun) opMetrics() {
	t := r.t
	m, err := r.db.Metrics()
	require.NoError(t, err)
	require.EqualValues(t, len(r.live), m.Subscriptions.Subscriptions, "open subscriptions")
	require.EqualValues(t, r.deliveredSinceOpen, m.Subscriptions.Delivered, "messages delivered since Open")
}
