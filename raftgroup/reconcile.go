package raftgroup

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

func marshalMeta(c *metaCmd) ([]byte, error) { return json.Marshal(c) }

// runReconcile makes this site run the replicas the meta group allocates to it, and, while
// this site leads the meta group, carries out the allocation's membership changes.
func (s *Site) runReconcile() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.reconcileOnce()
		}
	}
}

// mySlot returns this site's slot in st: by ID, or, for an initial site that has not
// registered its ID yet, by address.
func (s *Site) mySlot(st *MetaState) (int, bool) {
	for _, si := range st.Sites {
		if si.ID == s.file.ID {
			return si.Slot, true
		}
	}
	if len(s.file.Bootstrap) > 0 {
		for _, si := range st.Sites {
			if si.Addr == s.cfg.RaftAddress && si.ID == (SiteID{}) {
				return si.Slot, false
			}
		}
	}
	return 0, false
}

func (s *Site) reconcileOnce() {
	st, err := s.localMeta()
	if err != nil || st.Schema == nil {
		return
	}
	slot, registered := s.mySlot(st)
	if slot == 0 {
		return
	}
	if !registered {
		ctx, cancel := context.WithTimeout(s.ctx, time.Second)
		s.proposeMeta(ctx, &metaCmd{Op: opRegister, ID: s.file.ID, Addr: s.cfg.RaftAddress})
		cancel()
	}
	if me, _ := st.Site(slot); registered && me.Service != s.Service() && s.Service() != "" {
		// Record where this site serves forwarded calls (it may change at every start).
		ctx, cancel := context.WithTimeout(s.ctx, time.Second)
		s.proposeMeta(ctx, &metaCmd{Op: opService, ID: s.file.ID, Service: s.Service()})
		cancel()
	}
	mine := map[uint64]ReplicaInfo{}
	for _, r := range st.Replicas {
		if r.Slot != slot {
			continue
		}
		// Two records of one group on this site: a demoted voter being removed and its
		// non-voting replacement. Keep running the one that is still a member until the
		// group has removed it: stopping it earlier would take a voter away from the quorum.
		if cur, ok := mine[r.Group]; ok && cur.Member != memberNone && r.Member == memberNone {
			continue
		}
		mine[r.Group] = r
	}
	if m := mine[metaGroup]; m.Member == memberVoter && !s.file.MetaVoter {
		// Remember that this site's meta replica votes: a joiner's meta replica restarts as a
		// voter then (its role at start must match the group's membership).
		f := s.file
		f.MetaVoter = true
		if writeSiteFile(s.cfg.Dir, f) == nil {
			s.file.MetaVoter = true
		}
	}
	for g, r := range mine {
		if s.stopping() {
			return
		}
		s.mu.Lock()
		s.mu.seen[g] = r.ReplicaID
		running, ok := s.mu.running[g]
		s.mu.Unlock()
		if ok && running != r.ReplicaID {
			s.stopReplica(g, running) // replaced (a demoted voter leaves, a new non-voting one joins)
			ok = false
		}
		if !ok {
			if err := s.startReplica(r); err != nil {
				s.cfg.DB.Logger.Warn("start replica", "group", g, "replica", r.ReplicaID, "err", err)
			}
		}
	}
	s.mu.Lock()
	var gone [][2]uint64
	for g, rid := range s.mu.running {
		if _, ok := mine[g]; !ok && s.mu.seen[g] == rid {
			gone = append(gone, [2]uint64{g, rid})
		}
	}
	s.mu.Unlock()
	for _, x := range gone {
		s.stopReplica(x[0], x[1])
	}
	for g, r := range mine {
		if r.Transition() != "catching up" {
			continue
		}
		if sm := s.servingSM(stream.ShardID(g - shardGroupBase)); sm == nil || sm.replicaID != r.ReplicaID {
			continue
		}
		// A joined replica that should vote has caught up: say so, so that it is promoted.
		ctx, cancel := context.WithTimeout(s.ctx, time.Second)
		s.proposeMeta(ctx, &metaCmd{Op: opCaughtUp, Group: g, ReplicaID: r.ReplicaID})
		cancel()
	}
	if me, _ := st.Site(slot); me.State == SiteLeaving && !me.Drained && len(mine) == 1 {
		s.mu.Lock()
		running := len(s.mu.running)
		s.mu.Unlock()
		if running == 1 { // only the meta replica is left
			ctx, cancel := context.WithTimeout(s.ctx, time.Second)
			s.proposeMeta(ctx, &metaCmd{Op: opDrained, ID: s.file.ID})
			cancel()
		}
	}
	s.drive(st)
}

// ledGroups returns the groups whose local replica leads them.
func (s *Site) ledGroups() map[uint64]bool {
	s.mu.Lock()
	running := make(map[uint64]uint64, len(s.mu.running))
	for g, rid := range s.mu.running {
		running[g] = rid
	}
	s.mu.Unlock()
	led := map[uint64]bool{}
	for g, rid := range running {
		if leader, _, ok, err := s.nh.GetLeaderID(g); err == nil && ok && leader == rid {
			led[g] = true
		}
	}
	return led
}

// drive carries out the next membership change of every group this site leads whose replicas
// are not where the plan wants them, and records each in the meta group: the site that leads
// a group changes its membership (through its leading replica), and the meta group's leader
// the meta group's, so that no site needs a replica of every group (PlacementVoters).
// Additions and promotions come before removals, and a voter is removed only while enough
// other voters remain, so a group never drops below its quorum because of a move.
func (s *Site) drive(local *MetaState) {
	led := s.ledGroups()
	pending := false
	for _, r := range local.Replicas {
		pending = pending || led[r.Group] && r.Transition() != ""
	}
	if mySlot, _ := s.mySlot(local); led[metaGroup] {
		if me, ok := local.Site(mySlot); ok && me.State != SiteActive {
			pending = true
		}
	}
	if !pending {
		return
	}
	// Decide on the meta group's current state, not this replica's (it may lag: a change
	// already made and recorded would be redone).
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
	st, err := s.Meta(ctx)
	cancel()
	if err != nil {
		return
	}
	want := min(st.Schema.ReplicationFactor, st.activeSites())
	busy := map[uint64]bool{} // one change per group per round
	mySlot, _ := s.mySlot(st)
	var stuck []uint64 // groups with a change to make but no member replica here to make it through
	for _, r := range st.Replicas {
		if !led[r.Group] || busy[r.Group] || s.stopping() {
			continue
		}
		t := r.Transition()
		if t == "" || t == "catching up" { // its site reports when it has caught up
			continue
		}
		mine, isMember := s.memberHere(st, mySlot, r.Group)
		if !isMember {
			busy[r.Group] = true
			stuck = append(stuck, r.Group)
			continue
		}
		if t == "removing" && r.ReplicaID == mine {
			// This site's own replica leaves: it must not remove itself (a replica removed
			// from its group may never learn that the removal committed), so it hands the
			// group over, once the removal is due — until then it goes on making the group's
			// other changes (with RF 1, adding and promoting the replica that replaces it).
			if st.removable(r, want) {
				busy[r.Group] = true
				stuck = append(stuck, r.Group)
			}
			continue
		}
		site, _ := st.Site(r.Slot)
		ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
		var err error
		member := r.Member
		switch t {
		case "adding":
			err = s.nh.SyncRequestAddNonVoting(ctx, r.Group, r.ReplicaID, site.Addr, 0)
			member = memberNonVoting
		case "promoting":
			err = s.nh.SyncRequestAddReplica(ctx, r.Group, r.ReplicaID, site.Addr, 0)
			member = memberVoter
		case "removing":
			if r.Group == metaGroup && !site.Drained && !s.drainGivenUp(st, r.Slot) {
				// A leaving site learns that its shard replicas were removed through its meta
				// replica: remove that one last, once the site reported them stopped — or
				// once it had time to and did not (it is down or was never started).
				cancel()
				continue
			}
			if !st.removable(r, want) {
				cancel()
				continue // wait for a promotion to take its place
			}
			err = s.nh.SyncRequestDeleteReplica(ctx, r.Group, r.ReplicaID, 0)
			member = memberNone
		}
		if err != nil && s.membershipIs(r, t) {
			// The change was made, but its answer was lost (a timeout, a leader change), or
			// it was made before and not recorded: record what the group holds.
			err = nil
		}
		cancel()
		busy[r.Group] = true
		if err != nil {
			s.cfg.DB.Logger.Debug("membership change", "group", r.Group, "replica", r.ReplicaID, "change", t, "err", err)
			continue
		}
		s.cfg.DB.Logger.Info("membership changed", "group", r.Group, "replica", r.ReplicaID, "slot", r.Slot, "change", t)
		ctx, cancel = context.WithTimeout(s.ctx, 5*time.Second)
		if err := s.proposeMeta(ctx, &metaCmd{Op: opMember, Group: r.Group, ReplicaID: r.ReplicaID, Member: member}); err != nil {
			s.cfg.DB.Logger.Warn("record membership change", "group", r.Group, "replica", r.ReplicaID, "err", err)
		}
		cancel()
	}
	for _, g := range stuck {
		if g == metaGroup {
			continue
		}
		// This site leads a group it is leaving: another staying voter takes over.
		for _, r := range st.GroupReplicas(g) {
			site, _ := st.Site(r.Slot)
			if r.Slot != mySlot && r.Member == memberVoter && !r.Remove && site.State == SiteActive {
				s.cfg.DB.Logger.Info("handing group leadership over", "group", g, "to", r.ReplicaID)
				if err := s.nh.RequestLeaderTransfer(g, r.ReplicaID); err != nil {
					s.cfg.DB.Logger.Debug("group leadership transfer", "group", g, "err", err)
				}
				break
			}
		}
	}
	if me, ok := st.Site(mySlot); led[metaGroup] && (slices.Contains(stuck, metaGroup) || ok && me.State != SiteActive) {
		s.handOver(st, nil)
	}
}

// drainGivenUp reports whether a leaving site, all of whose shard replicas are removed, has
// had drainTimeout to report itself drained (counted from when this site first saw it so).
func (s *Site) drainGivenUp(st *MetaState, slot int) bool {
	for _, r := range st.Replicas {
		if r.Slot == slot && r.Group != metaGroup {
			return false
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.drainSince == nil {
		s.mu.drainSince = map[int]time.Time{}
	}
	since, ok := s.mu.drainSince[slot]
	if !ok {
		s.mu.drainSince[slot] = time.Now()
		return false
	}
	return time.Since(since) > max(5*time.Second, 20*s.cfg.ReconcileInterval)
}

// memberHere returns the replica of group this site runs, and whether it is a member of the
// group: a membership change is requested, and its outcome checked, through the local
// replica. One that is itself to be removed still makes the group's other changes, but never
// its own removal (drive hands the group over first).
func (s *Site) memberHere(st *MetaState, slot int, group uint64) (uint64, bool) {
	s.mu.Lock()
	rid, ok := s.mu.running[group]
	s.mu.Unlock()
	if !ok {
		return 0, false
	}
	for _, r := range st.GroupReplicas(group) {
		if r.ReplicaID == rid && r.Slot == slot {
			return rid, r.Member != memberNone
		}
	}
	return 0, false
}

// handOver transfers the meta group's leadership to another active site whose meta replica
// votes and stays (preferring one with member replicas of the groups in stuck), because this
// site cannot make the meta group's membership changes: it is leaving the cluster, or its
// meta replica is being removed.
func (s *Site) handOver(st *MetaState, stuck []uint64) {
	if best := handOverTarget(st, s.file.ID, stuck); best != 0 {
		s.cfg.DB.Logger.Info("handing meta leadership over", "to", best, "groups", stuck)
		if err := s.nh.RequestLeaderTransfer(metaGroup, best); err != nil {
			s.cfg.DB.Logger.Debug("meta leadership transfer", "err", err)
		}
	}
}

// handOverTarget returns the meta replica ID of the active site, other than self, whose meta
// replica votes and stays, with member replicas (not being removed) of the most groups in
// stuck; 0 if there is none.
func handOverTarget(st *MetaState, self SiteID, stuck []uint64) uint64 {
	staying := func(r ReplicaInfo, slot int) bool { return r.Slot == slot && r.Member != memberNone && !r.Remove }
	best, bestN := uint64(0), -1
	for _, site := range st.Sites {
		if site.State != SiteActive || site.ID == self {
			continue
		}
		voter := false
		for _, r := range st.GroupReplicas(metaGroup) {
			if staying(r, site.Slot) && r.Member == memberVoter {
				voter = true
			}
		}
		if !voter {
			continue
		}
		n := 0
		for _, g := range stuck {
			for _, r := range st.GroupReplicas(g) {
				if staying(r, site.Slot) {
					n++
				}
			}
		}
		if n > bestN {
			best, bestN = site.MetaReplica, n
		}
	}
	return best
}

// membershipIs reports whether group r.Group's membership already shows transition t of r done.
func (s *Site) membershipIs(r ReplicaInfo, t string) bool {
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
	defer cancel()
	m, err := s.nh.SyncGetShardMembership(ctx, r.Group)
	if err != nil {
		return false
	}
	_, voter := m.Nodes[r.ReplicaID]
	_, nonVoting := m.NonVotings[r.ReplicaID]
	switch t {
	case "adding":
		return nonVoting || voter
	case "promoting":
		return voter
	case "removing":
		return !voter && !nonVoting
	}
	return false
}

// runMaintenance rotates and expires generations of the shards this site leads, as Raft
// entries, so every replica holds the same generations. A rotation carries the generation it
// seals (IfCurrent): if two sites both decide to rotate (a leader change in between), the
// second entry is skipped.
func (s *Site) runMaintenance() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.DB.Expert.MaintenanceInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.maintainOnce()
		}
	}
}

func (s *Site) maintainOnce() {
	now := uint64(max(s.cfg.DB.Expert.Now().UnixMicro(), 0))
	for i, p := range s.proposers {
		g := shardGroup(stream.ShardID(i))
		s.mu.Lock()
		rid, sm := s.mu.running[g], s.mu.sms[g]
		s.mu.Unlock()
		if sm == nil {
			continue
		}
		if leader, _, ok, err := s.nh.GetLeaderID(g); err != nil || !ok || leader != rid {
			continue
		}
		var cur stream.GenerationID
		var due bool
		var expired []stream.GenerationID
		sm.withReplica(func(st *replicaStore) error {
			cur, due = st.r.Rotation(now, s.schema.GenerationSpan)
			expired = st.r.Expired(now, s.schema.Retention)
			return nil
		})
		var reqs []*request
		if due {
			reqs = append(reqs, &request{cmd: &shard.Command{AddGeneration: true}, ifCurrent: cur, noDedup: true})
		}
		for _, id := range expired {
			reqs = append(reqs, &request{cmd: &shard.Command{Drop: []stream.GenerationID{id}}, noDedup: true})
		}
		for _, r := range reqs {
			ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
			err := p.submit(ctx, r)
			if err == nil {
				err = r.wait()
			}
			cancel()
			if err != nil && !errors.Is(err, errSkipped) && !errors.Is(err, shard.ErrGenerationNotFound) {
				s.cfg.DB.Logger.Warn("generation maintenance", "shard", i, "err", err)
			}
		}
	}
}
