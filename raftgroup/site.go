package raftgroup

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/plugin/tan"
	sm "github.com/lni/dragonboat/v4/statemachine"
	"github.com/strata-mq/strata/raftgroup/internal/raftlog"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// Site is one process's part of a replicated Strata cluster: one dragonboat NodeHost with a
// replica of the meta group and of every shard (a voter on ReplicationFactor sites, a
// non-voting replica on the others), the proposers that turn Store calls into Raft entries, and
// the loops that start and stop replicas as the meta group's allocation changes.
//
// Its DB (Site.DB) is a *ds.DB like an embedded one: writes are accepted on every site and
// acknowledged once a quorum of the shard's voters holds them; reads are served by the local
// replica.
type Site struct {
	cfg         Config
	file        siteFile
	nh          *dragonboat.NodeHost
	cache       *pebble.Cache
	schema      Schema
	incarnation [8]byte

	mu struct {
		sync.Mutex
		sms     map[uint64]*shardSM // group → local shard state machine (while started)
		running map[uint64]uint64   // group → replica ID started here
		seen    map[uint64]uint64   // group → replica ID seen allocated to this site in meta
		// drainSince: when this site (leading the meta group) first saw a leaving site
		// whose shard replicas are all removed (see drainGivenUp).
		drainSince map[int]time.Time
	}
	health    *peerHealth // reachability of the other sites (admin view)
	quota     siteQuota
	onChange  atomic.Pointer[func()]
	onDurable atomic.Pointer[func(shard.Durable)]
	proposers []*proposer
	// The calls other sites forward here (service.go), and this site's forwarding of the
	// shards it holds no replica of (forward.go).
	service      net.Listener
	serviceConns connSet
	applied      applyNotifier
	fwd          *forwarder
	tails        *tailLog                    // the last steps of the replicas here, for sites without one (tail.go)
	raftLog      atomic.Pointer[raftlog.Log] // the Raft log, if LogDBSegments (for its counters)
	stop         chan struct{}
	ctx          context.Context // cancelled when the site closes: bounds the loops' calls
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	closeOnce    sync.Once
	dbState
}

// Open starts a site. A bootstrapping or restarting site returns once it knows the cluster's
// schema; a joining one once a member added it (Site.AddSite) and its meta replica caught up.
// ctx bounds that wait.
func Open(ctx context.Context, cfg Config) (*Site, error) {
	cfg.ensureDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	routeDragonboatLogs(cfg.DB.Logger)
	file, existed, err := loadOrCreateSite(&cfg)
	if err != nil {
		return nil, err
	}
	s := &Site{cfg: cfg, file: file, stop: make(chan struct{}), health: newPeerHealth(time.Now)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mu.sms, s.mu.running, s.mu.seen = map[uint64]*shardSM{}, map[uint64]uint64{}, map[uint64]uint64{}
	rand.Read(s.incarnation[:])
	if err := s.startNodeHost(); err != nil {
		return nil, err
	}
	s.cache = pebble.NewCache(cfg.DB.Expert.CacheBytes)
	s.fwd = newForwarder(s)
	s.tails = newTailLog()
	if err := s.start(ctx, existed); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Site) startNodeHost() error {
	c := s.cfg
	nhc := config.NodeHostConfig{
		DeploymentID:   c.DeploymentID,
		NodeHostDir:    filepath.Join(c.Dir, "nodehost"),
		RTTMillisecond: uint64(max(c.RTT.Milliseconds(), 1)),
		RaftAddress:    c.RaftAddress,
		// The admin view follows the transport's connection events (health.go).
		SystemEventListener: systemEvents{s.health},
	}
	if c.TLS != nil {
		nhc.MutualTLS, nhc.CAFile, nhc.CertFile, nhc.KeyFile = true, c.TLS.CAFile, c.TLS.CertFile, c.TLS.KeyFile
	}
	switch c.LogDBMemory {
	case LogDBTiny:
		nhc.Expert.LogDB = config.GetTinyMemLogDBConfig()
	case LogDBSmall:
		nhc.Expert.LogDB = config.GetSmallMemLogDBConfig()
	case LogDBMedium:
		nhc.Expert.LogDB = config.GetMediumMemLogDBConfig()
	default:
		nhc.Expert.LogDB = config.GetLargeMemLogDBConfig()
	}
	// One round's entries of all groups in one LogDB write and fsync (Config.LogShards).
	n := uint64(s.file.logShards())
	nhc.Expert.Engine = config.GetDefaultEngineConfig()
	nhc.Expert.Engine.ExecShards = n
	nhc.Expert.LogDB.Shards = n
	if c.transport != nil {
		nhc.Expert.TransportFactory = c.transport
	}
	switch s.file.logDB() {
	case LogDBTan:
		nhc.Expert.LogDBFactory = tan.Factory
	case LogDBSegments:
		nhc.Expert.LogDBFactory = raftlog.Factory{Opened: func(l *raftlog.Log) { s.raftLog.Store(l) }}
	}
	nh, err := dragonboat.NewNodeHost(nhc)
	if err != nil {
		return fmt.Errorf("strata: site %s: start Raft: %w", c.RaftAddress, err)
	}
	s.nh = nh
	return nil
}

// start starts the meta replica (and, at bootstrap, the initial shard replicas), waits for
// the schema and starts the proposers and the site's loops.
func (s *Site) start(ctx context.Context, existed bool) error {
	boot := len(s.file.Bootstrap) > 0
	local := Schema{
		NShards: s.cfg.DB.NShards, ReplicationFactor: s.cfg.ReplicationFactor, Layout: s.cfg.DB.Layout,
		WildcardThresholds: s.cfg.DB.WildcardThresholds, Retention: s.cfg.DB.Retention, GenerationSpan: s.cfg.DB.GenerationSpan,
		Placement: PlacementVoters,
	}
	if s.cfg.ReadReplicas {
		local.Placement = PlacementEverySite
	}
	fresh := boot && !existed
	if fresh {
		// The initial shard replicas start before the meta group agreed on the schema, so
		// they use this site's; Open fails below if another initial site's won.
		s.schema = local
	}
	meta := ReplicaInfo{Group: metaGroup, ReplicaID: s.file.MetaReplica, Initial: boot, Member: memberVoter}
	if !boot && !s.file.MetaVoter {
		meta.Member = memberNonVoting
	}
	if err := s.startReplica(meta); err != nil {
		return err
	}
	if fresh {
		n := len(s.file.Bootstrap)
		slot := slotOf(s.file.Bootstrap, s.cfg.RaftAddress)
		for i := range s.cfg.DB.NShards {
			g := shardGroup(stream.ShardID(i))
			for _, v := range bootstrapVoters(g, n, s.cfg.ReplicationFactor) {
				if v == slot {
					if err := s.startReplica(ReplicaInfo{Group: g, ReplicaID: uint64(slot), Slot: slot, Voter: true, Member: memberVoter, Initial: true}); err != nil {
						return err
					}
				}
			}
		}
	}
	// Wait for the schema in the local meta replica (a bootstrapping site proposes it).
	waitStart := time.Now()
	for {
		st, err := s.localMeta()
		if err == nil && st.Schema != nil {
			if fresh {
				if !sameSchema(*st.Schema, local) {
					return fmt.Errorf("%w: the cluster was bootstrapped with %+v, this site is configured with %+v: give every initial site the same NShards, ReplicationFactor, Layout, WildcardThresholds, Retention, GenerationSpan and ReadReplicas",
						ErrInvalidConfig, *st.Schema, local)
				}
			} else {
				s.schema = *st.Schema // no shard replica runs yet: nothing reads it concurrently
			}
			break
		}
		// Propose the schema when the local meta replica is initialized without one: at once on
		// a fresh site; on a restarted one only if its own log did not bring the schema within
		// an attempt timeout (it crashed during the bootstrap). Wait at most one attempt: the
		// loop looks at the local replica again after each.
		if boot && err == nil && (fresh || time.Since(waitStart) > s.attemptTimeout()) {
			pctx, cancel := context.WithTimeout(ctx, s.attemptTimeout())
			s.proposeMeta(pctx, &metaCmd{Op: opBootstrap, Schema: &local, Sites: s.file.Bootstrap})
			cancel()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: site %s: waiting for the cluster's schema: %w", shard.ErrUnavailable, s.cfg.RaftAddress, ctx.Err())
		case <-time.After(s.cfg.ReconcileInterval):
		}
	}
	if s.file.NShards != s.schema.NShards {
		f := s.file
		f.NShards = s.schema.NShards
		if err := writeSiteFile(s.cfg.Dir, f); err != nil {
			return err
		}
		s.file.NShards = f.NShards
	}
	for i := range s.schema.NShards {
		s.proposers = append(s.proposers, newProposer(s, stream.ShardID(i)))
	}
	// Serve forwarded calls (they need the proposers); reconcileOnce records the address.
	if err := s.startService(); err != nil {
		return err
	}
	// Start the replicas the meta group allocates here now, so that the DB reads from them
	// as soon as Open returns.
	s.reconcileOnce()
	for i := range s.proposers {
		s.wg.Add(1)
		go s.fwd.watch(stream.ShardID(i))
	}
	s.wg.Add(3)
	go s.runReconcile()
	go s.runMaintenance()
	go s.runProber()
	return nil
}

// attemptTimeout is how long one proposal attempt waits: two election timeouts, at least 1s.
func (s *Site) attemptTimeout() time.Duration {
	return max(2*time.Duration(s.cfg.ElectionRTT)*s.cfg.RTT, time.Second)
}

func sameSchema(a, b Schema) bool {
	return a.NShards == b.NShards && a.ReplicationFactor == b.ReplicationFactor && a.Layout == b.Layout &&
		slices.Equal(a.WildcardThresholds, b.WildcardThresholds) && a.Retention == b.Retention && a.GenerationSpan == b.GenerationSpan &&
		a.Placement == b.Placement
}

func (s *Site) ID() SiteID { return s.file.ID }

// RaftAddress returns the site's Raft address.
func (s *Site) RaftAddress() string { return s.cfg.RaftAddress }

// Schema returns the cluster's schema as this site knows it.
func (s *Site) Schema() Schema { return s.schema }

func (s *Site) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// groupConfig is the Raft configuration of one replica.
func (s *Site) groupConfig(r ReplicaInfo) config.Config {
	return config.Config{
		ShardID: r.Group, ReplicaID: r.ReplicaID,
		CheckQuorum: true, PreVote: true,
		ElectionRTT: s.cfg.ElectionRTT, HeartbeatRTT: s.cfg.HeartbeatRTT,
		SnapshotEntries: s.cfg.SnapshotEntries, CompactionOverhead: s.cfg.CompactionOverhead,
		IsNonVoting: r.Member != memberVoter,
		WaitReady:   true,
	}
}

// startReplica starts r on this site: from its own state if it has any, with the initial
// membership if it is one of a group's first replicas, or else as a joiner that waits for the
// leader to send it the state.
func (s *Site) startReplica(r ReplicaInfo) error {
	s.mu.Lock()
	_, running := s.mu.running[r.Group]
	s.mu.Unlock()
	if running {
		return nil
	}
	var members map[uint64]dragonboat.Target
	join := false
	switch {
	case s.nh.HasNodeInfo(r.Group, r.ReplicaID):
	case r.Initial:
		members = map[uint64]dragonboat.Target{}
		n := len(s.file.Bootstrap)
		for _, slot := range bootstrapVoters(r.Group, n, s.cfg.ReplicationFactor) {
			members[uint64(slot)] = s.file.Bootstrap[slot-1]
		}
	default:
		join = true
	}
	caught := true
	cfg := s.groupConfig(r)
	if join {
		// The group added this replica as non-voting (the reconciler always adds so, and
		// promotes afterwards): it must start so, even if this site learns of the replica
		// only after its promotion; replaying the addition as a voter panics dragonboat.
		cfg.IsNonVoting = true
	}
	var err error
	if r.Group == metaGroup {
		err = s.nh.StartReplica(members, join, newMetaSM, cfg)
	} else {
		id := stream.ShardID(r.Group - shardGroupBase)
		// A replica serves reads once it has caught up with its group; that is remembered
		// in its directory, so that a joiner restarted before it caught up does not serve
		// the empty or partial store it has (dragonboat restarts it as a member, not a
		// joiner). A group's first replicas held everything from the start.
		_, statErr := os.Stat(filepath.Join(replicaDir(s.cfg.Dir, id, r.ReplicaID), caughtUpFile))
		caught = !join && (r.Initial || statErr == nil)
		create := func(group, replica uint64) sm.IOnDiskStateMachine {
			m := &shardSM{site: s, shard: id, replicaID: replica,
				dir: replicaDir(s.cfg.Dir, id, replica)}
			m.caughtUp.Store(caught)
			s.mu.Lock()
			s.mu.sms[group] = m
			s.mu.Unlock()
			return m
		}
		err = s.nh.StartOnDiskReplica(members, join, create, cfg)
	}
	if err != nil && !errors.Is(err, dragonboat.ErrShardAlreadyExist) {
		return fmt.Errorf("strata: start replica %d of group %d: %w", r.ReplicaID, r.Group, err)
	}
	s.mu.Lock()
	s.mu.running[r.Group] = r.ReplicaID
	s.mu.Unlock()
	if !caught && r.Group != metaGroup && err == nil {
		s.wg.Add(1)
		go s.awaitCaughtUp(r.Group, r.ReplicaID)
	}
	s.cfg.DB.Logger.Debug("replica started", "group", r.Group, "replica", r.ReplicaID, "join", join, "initial", members != nil)
	return nil
}

// stopReplica stops a replica that the cluster removed from this site and deletes its data.
func (s *Site) stopReplica(group, replica uint64) {
	if err := s.nh.StopReplica(group, replica); err != nil && !errors.Is(err, dragonboat.ErrShardNotFound) {
		s.cfg.DB.Logger.Warn("stop replica", "group", group, "replica", replica, "err", err)
		return
	}
	s.mu.Lock()
	sm := s.mu.sms[group]
	delete(s.mu.sms, group)
	delete(s.mu.running, group)
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	if err := s.nh.SyncRemoveData(ctx, group, replica); err != nil {
		// Keep the directory: the LogDB may still refer to it. It is harmless (replica IDs
		// are never reused) and reported.
		s.cfg.DB.Logger.Warn("remove replica data; its directory is left in place", "group", group, "replica", replica, "err", err)
		return
	}
	if sm != nil {
		os.RemoveAll(sm.dir)
	}
	s.cfg.DB.Logger.Info("replica removed from this site", "group", group, "replica", replica)
}

// shardSM returns the local state machine of a shard, if it runs here.
func (s *Site) shardSM(id stream.ShardID) *shardSM {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.sms[shardGroup(id)]
}

// servingSM returns the local state machine of a shard if the site serves the shard from it
// (it runs here and has caught up with its group; see shardSM.caughtUp).
func (s *Site) servingSM(id stream.ShardID) *shardSM {
	if sm := s.shardSM(id); sm != nil && sm.caughtUp.Load() {
		return sm
	}
	return nil
}

// caughtUpFile, in a replica's directory, says that it caught up with its group once.
const caughtUpFile = "CAUGHT-UP"

// awaitCaughtUp marks a joining replica caught up once a ReadIndex through its group's leader
// completed on it: its state machine then holds everything committed before the request.
func (s *Site) awaitCaughtUp(group, replica uint64) {
	defer s.wg.Done()
	backoff := 50 * time.Millisecond
	for !s.stopping() {
		s.mu.Lock()
		sm, running := s.mu.sms[group], s.mu.running[group]
		s.mu.Unlock()
		if sm == nil || running != replica {
			return // stopped or replaced meanwhile
		}
		if rs, err := s.nh.ReadIndex(group, s.attemptTimeout()); err == nil {
			var res dragonboat.RequestResult
			select {
			case res = <-rs.ResultC():
			case <-s.stop:
				rs.Release()
				return
			}
			rs.Release()
			if res.Completed() {
				if err := os.WriteFile(filepath.Join(sm.dir, caughtUpFile), nil, 0o644); err != nil {
					s.cfg.DB.Logger.Warn("record that a replica caught up", "group", group, "replica", replica, "err", err)
				}
				sm.caughtUp.Store(true)
				s.cfg.DB.Logger.Info("joined replica caught up: serving the shard here", "group", group, "replica", replica)
				return
			}
		}
		select {
		case <-s.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// replicaDurable is the OnDurable of the replicas here: their steps go to this site's DB (once
// the replica serves) and to the sites that hold no replica of the shard (tail.go).
func (s *Site) replicaDurable(d shard.Durable) {
	s.tails.add(d)
	s.report(d, true)
}

// replicaPos returns where the serving replica of a shard here stands: its read limit and last
// record version; errNotHeld without one.
func (s *Site) replicaPos(id stream.ShardID) (stepPos, error) {
	sm := s.servingSM(id)
	if sm == nil {
		return stepPos{}, fmt.Errorf("%w: shard %d, site %s", errNotHeld, id, s.cfg.RaftAddress)
	}
	var p stepPos
	err := sm.withReplica(func(st *replicaStore) error {
		p = stepPos{st.r.ReadLimit(), st.r.RecordVersion()}
		return nil
	})
	return p, err
}

func (s *Site) notifyDurable(d shard.Durable) {
	s.applied.notify(d.Shard)
	if f := s.onDurable.Load(); f != nil {
		(*f)(d)
	}
}

func (s *Site) notifyChanged() {
	if f := s.onChange.Load(); f != nil {
		(*f)()
	}
}

// localMeta returns the meta group's state as this site's replica has applied it (possibly
// behind the leader's).
func (s *Site) localMeta() (*MetaState, error) {
	v, err := s.nh.StaleRead(metaGroup, nil)
	if err != nil {
		return nil, err
	}
	return v.(*MetaState), nil
}

// Meta returns the meta group's state, linearizably (a ReadIndex through the meta leader).
func (s *Site) Meta(ctx context.Context) (*MetaState, error) {
	v, err := s.nh.SyncRead(ctx, metaGroup, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: meta group: %w", shard.ErrUnavailable, err)
	}
	return v.(*MetaState).clone(), nil
}

// proposeMeta proposes c to the meta group and returns the command's error.
func (s *Site) proposeMeta(ctx context.Context, c *metaCmd) error {
	b, err := marshalMeta(c)
	if err != nil {
		return err
	}
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w: meta group: %w", shard.ErrUnavailable, err)
		}
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		res, err := s.nh.SyncPropose(actx, s.nh.GetNoOPSession(metaGroup), b)
		cancel()
		if err == nil {
			if res.Value != 1 {
				return metaResultError(res.Value, res.Data)
			}
			return nil
		}
		if !retryable(err) {
			return fmt.Errorf("meta group: %w", err)
		}
		if ctx.Err() != nil || s.stopping() {
			return fmt.Errorf("%w: meta group: %w", shard.ErrUnavailable, err)
		}
		select {
		case <-ctx.Done():
		case <-s.stop:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Close closes the site's DB (if DB was called; that waits for the calls in progress) and
// stops the site: its loops, proposers (queued writes fail with ErrClosed) and replicas.
// Safe to call more than once.
func (s *Site) Close() error {
	s.dbOnce.Do(func() {}) // no DB from now on; one made before is closed here
	if s.db != nil {
		s.db.Close() // calls shutdown
	}
	return s.shutdown()
}

func (s *Site) shutdown() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.cancel()
		if s.service != nil {
			s.service.Close()
		}
		s.serviceConns.closeAll()
		s.fwd.close()
		s.wg.Wait()
		for _, p := range s.proposers {
			p.close()
		}
		s.nh.Close()
		if s.cache != nil {
			s.cache.Unref()
		}
	})
	return nil
}
