package raftgroup

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	sm "github.com/lni/dragonboat/v4/statemachine"
	"github.com/strata-mq/strata/stream"
)

// The meta group is a Raft group of its own, with one replica on every site. Its state machine
// holds the cluster's schema, the site table, and every replica of every group (the meta group
// included): where it lives, whether it should vote, and what the group's Raft membership
// currently says about it. Where shard replicas live follows Schema.Placement: on every active
// site (PlacementEverySite, non-voting where they do not vote), or only ReplicationFactor voters
// per shard, spread evenly over the sites (PlacementVoters). Admin operations (bootstrap, add a
// site, make a site leave, change the replication factor) are commands on it; a deterministic
// planner turns each into desired replica records, and the site that leads the meta group
// carries them out one membership change at a time (see reconcile.go), reporting each back as
// a command.

// Group IDs: the meta group, and one per shard.
const (
	metaGroup      uint64 = 1
	shardGroupBase uint64 = 1000
)

func shardGroup(id stream.ShardID) uint64 { return shardGroupBase + uint64(id) }

// Schema is fixed when the cluster is bootstrapped, except ReplicationFactor.
type Schema struct {
	NShards            int               `json:"nshards"`
	ReplicationFactor  int               `json:"replication_factor"`
	Layout             stream.LayoutKind `json:"layout"`
	WildcardThresholds []int             `json:"wildcard_thresholds"`
	Retention          time.Duration     `json:"retention"`
	GenerationSpan     time.Duration     `json:"generation_span"`
	// Placement says which sites hold a shard's replicas. Empty in clusters bootstrapped
	// before it existed: PlacementEverySite.
	Placement Placement `json:"placement,omitempty"`
}

// Placement says which sites hold replicas of a shard.
type Placement string

const (
	// PlacementVoters: a shard's replicas are its ReplicationFactor voters, spread evenly over
	// the active sites (a joining site takes replicas over, a leaving one hands them on);
	// the other sites forward the shard's Stores and reads to a site that holds it
	// (forward.go). Capacity grows with the sites. Default for a new cluster.
	PlacementVoters Placement = "voters"
	// PlacementEverySite: every active site holds a replica of every shard, a non-voting one
	// where it does not vote, so every read is local (Config.ReadReplicas).
	PlacementEverySite Placement = "every-site"
)

// everySite reports whether every active site holds a replica of every shard.
func (s Schema) everySite() bool { return s.Placement != PlacementVoters }

// SiteState is a site's place in the cluster.
type SiteState string

const (
	SiteActive  SiteState = "active"
	SiteLeaving SiteState = "leaving" // its replicas are being moved away
	SiteLeft    SiteState = "left"    // holds nothing; its slot and IDs are never reused
)

// SiteInfo is one row of the site table.
type SiteInfo struct {
	Slot        int       `json:"slot"` // 1-based, never reused
	ID          SiteID    `json:"id"`   // zero until the site registered (initial sites)
	Addr        string    `json:"addr"`
	MetaReplica uint64    `json:"meta_replica"`
	State       SiteState `json:"state"`
	// Service is where the site serves forwarded calls (Config.ServiceAddress), as it last
	// recorded it; empty until it did.
	Service string `json:"service,omitempty"`
	// Drained: a leaving site reported that it stopped all its shard replicas; only then is
	// its meta replica removed (it learns of its other removals through it).
	Drained bool `json:"drained,omitempty"`
}

// Membership is a replica's place in its group's Raft configuration, as the reconciler last
// changed it.
type Membership string

const (
	memberNone      Membership = ""          // not a member (yet, or any more)
	memberNonVoting Membership = "nonvoting" // a non-voting member
	memberVoter     Membership = "voter"     // a voter
)

// ReplicaInfo is one replica of one group.
type ReplicaInfo struct {
	Group     uint64 `json:"group"`
	ReplicaID uint64 `json:"replica_id"`
	Slot      int    `json:"slot"`
	// Voter is the desired role; Member is what the group's membership says (as last
	// changed by the reconciler); Remove asks for the replica's removal. Initial replicas
	// were members from the group's first configuration.
	Voter   bool       `json:"voter"`
	Member  Membership `json:"member"`
	Remove  bool       `json:"remove,omitempty"`
	Initial bool       `json:"initial,omitempty"`
	// CaughtUp: the replica's site reported that it caught up with its group after joining
	// (shard groups): a non-voting replica that should vote is promoted only then, so that a
	// move onto a site that is down or still receiving the snapshot does not swap a voter
	// that holds the data for one that does not.
	CaughtUp bool `json:"caught_up,omitempty"`
}

// Transition describes what is still to be done to a replica, or "" when it is where the plan
// wants it. A replica marked for removal is "removing" even if the records say it was never
// made a member (its site left or was lost right after joining): the reconciler's removal of a
// non-member is recorded as done once the group's membership shows it absent, where adding it
// first only to remove it cost two membership changes per group.
func (r ReplicaInfo) Transition() string {
	switch {
	case r.Remove:
		return "removing"
	case r.Member == memberNone:
		return "adding"
	case r.Voter && r.Member != memberVoter && r.Group != metaGroup && !r.CaughtUp:
		return "catching up" // to be promoted once its site reports it caught up
	case r.Voter && r.Member != memberVoter:
		return "promoting"
	}
	return ""
}

// removable reports whether replica r, marked for removal, may leave its group now: a voter
// only while at least want other voters that stay are members, so that a move never takes a
// group below its quorum (the reconciler's rule).
func (st *MetaState) removable(r ReplicaInfo, want int) bool {
	if r.Member != memberVoter {
		return true
	}
	others := 0
	for _, o := range st.GroupReplicas(r.Group) {
		if o.ReplicaID != r.ReplicaID && !o.Remove && o.Member == memberVoter {
			others++
		}
	}
	return others >= want
}

// MetaState is the meta group's state. Replicas holds one record per replica of every group:
// under PlacementEverySite every active site holds one of every group; under PlacementVoters
// every active site holds one of the meta group and shards only where they vote (see plan).
type MetaState struct {
	Schema        *Schema       `json:"schema,omitempty"`
	Sites         []SiteInfo    `json:"sites"`
	Replicas      []ReplicaInfo `json:"replicas"` // by group, then replica ID
	NextReplicaID uint64        `json:"next_replica_id"`
	Applied       uint64        `json:"applied"` // commands applied (for waiting on changes)
}

func (m *MetaState) clone() *MetaState {
	c := *m
	c.Sites = slices.Clone(m.Sites)
	c.Replicas = slices.Clone(m.Replicas)
	if m.Schema != nil {
		s := *m.Schema
		s.WildcardThresholds = slices.Clone(s.WildcardThresholds)
		c.Schema = &s
	}
	return &c
}

// Site returns the site in slot.
func (m *MetaState) Site(slot int) (SiteInfo, bool) {
	if slot < 1 || slot > len(m.Sites) {
		return SiteInfo{}, false
	}
	return m.Sites[slot-1], true
}

// SiteByID returns the site with id.
func (m *MetaState) SiteByID(id SiteID) (SiteInfo, bool) {
	for _, s := range m.Sites {
		if s.ID == id {
			return s, true
		}
	}
	return SiteInfo{}, false
}

// GroupReplicas returns the replicas of group.
func (m *MetaState) GroupReplicas(group uint64) []ReplicaInfo {
	var out []ReplicaInfo
	for _, r := range m.Replicas {
		if r.Group == group {
			out = append(out, r)
		}
	}
	return out
}

func (m *MetaState) groups() []uint64 {
	gs := []uint64{metaGroup}
	if m.Schema != nil {
		for i := range m.Schema.NShards {
			gs = append(gs, shardGroup(stream.ShardID(i)))
		}
	}
	return gs
}

// bootstrapVoters returns the slots of the initial voters of group among n initial sites: all
// of them for the meta group, and rf consecutive slots, starting at a slot that rotates with
// the shard, for shard groups, so that leaders and load spread evenly. Each initial voter's
// replica ID is its slot. Sites compute this locally at first start, before the meta group
// can be read, so it depends on nothing else.
func bootstrapVoters(group uint64, n, rf int) []int {
	if group == metaGroup {
		out := make([]int, n)
		for i := range out {
			out[i] = i + 1
		}
		return out
	}
	k := min(rf, n)
	out := make([]int, k)
	for j := range k {
		out[j] = (int(group-shardGroupBase)+j)%n + 1
	}
	slices.Sort(out)
	return out
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// slotOf returns the 1-based position of addr in the sorted bootstrap list, or 0.
func slotOf(sorted []string, addr string) int {
	i, ok := slices.BinarySearch(sorted, addr)
	if !ok {
		return 0
	}
	return i + 1
}

// metaCmd is a command of the meta group (JSON: admin operations are rare and small).
type metaCmd struct {
	Op        string     `json:"op"`
	Schema    *Schema    `json:"schema,omitempty"`
	Sites     []string   `json:"sites,omitempty"`
	ID        SiteID     `json:"id,omitzero"`
	Addr      string     `json:"addr,omitempty"`
	RF        int        `json:"rf,omitempty"`
	Group     uint64     `json:"group,omitempty"`
	ReplicaID uint64     `json:"replica_id,omitempty"`
	Member    Membership `json:"member,omitempty"`
	Service   string     `json:"service,omitempty"`
}

const (
	opBootstrap = "bootstrap" // Schema, Sites; applied once
	opRegister  = "register"  // an initial site records its ID: ID, Addr
	opAddSite   = "add-site"  // ID, Addr
	opLeave     = "leave"     // ID
	opSetRF     = "set-rf"    // RF
	opMember    = "member"    // Group, ReplicaID, Member: a membership change was made
	opDrained   = "drained"   // ID: a leaving site stopped its shard replicas
	opService   = "service"   // ID, Service: a site records its service address
	opCaughtUp  = "caught-up" // Group, ReplicaID: a joined replica caught up with its group
)

// Errors of admin operations.
var (
	ErrNotBootstrapped = errors.New("strata: cluster not bootstrapped")
	ErrSiteExists      = errors.New("strata: site already in the cluster")
	ErrSiteNotFound    = errors.New("strata: site not found")
	ErrTooFewSites     = errors.New("strata: too few active sites")
)

// metaSentinels are the errors a meta command is rejected with; a rejection's result value is
// metaRejected + the index of the sentinel it wraps (metaRejected alone for none), so that the
// proposing site returns an error that errors.Is matches.
var metaSentinels = []error{ErrNotBootstrapped, ErrSiteExists, ErrSiteNotFound, ErrTooFewSites, ErrInvalidConfig}

// Result values of meta commands: 1 applied, metaRejected+i rejected (see metaSentinels).
const metaRejected = 16

func metaRejection(err error) uint64 {
	for i, s := range metaSentinels {
		if errors.Is(err, s) {
			return metaRejected + 1 + uint64(i)
		}
	}
	return metaRejected
}

// metaResultError turns a rejected meta command's result back into an error.
func metaResultError(value uint64, text []byte) error {
	if i := int(value) - metaRejected - 1; i >= 0 && i < len(metaSentinels) {
		return rejection{text: string(text), sentinel: metaSentinels[i]}
	}
	return errors.New(string(text))
}

// rejection is a meta command's error text with the sentinel it wraps on the applying replica.
type rejection struct {
	text     string
	sentinel error
}

func (r rejection) Error() string { return r.text }
func (r rejection) Unwrap() error { return r.sentinel }

// metaSM is the meta group's state machine (in memory; snapshots are its JSON).
type metaSM struct {
	mu sync.RWMutex
	st *MetaState
}

func newMetaSM(uint64, uint64) sm.IStateMachine { return &metaSM{st: &MetaState{}} }

func (m *metaSM) Update(e sm.Entry) (sm.Result, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var c metaCmd
	if err := json.Unmarshal(e.Cmd, &c); err != nil {
		return sm.Result{Data: []byte("undecodable command")}, nil
	}
	st := m.st.clone()
	if err := st.apply(&c); err != nil {
		return sm.Result{Value: metaRejection(err), Data: []byte(err.Error())}, nil
	}
	st.Applied++
	m.st = st
	return sm.Result{Value: 1}, nil
}

func (m *metaSM) Lookup(any) (any, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.st, nil // never modified in place: Update replaces it
}

func (m *metaSM) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	m.mu.RLock()
	b, err := json.Marshal(m.st)
	m.mu.RUnlock()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func (m *metaSM) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	st := &MetaState{}
	if err := json.Unmarshal(b, st); err != nil {
		return err
	}
	m.mu.Lock()
	m.st = st
	m.mu.Unlock()
	return nil
}

func (m *metaSM) Close() error { return nil }

// apply changes st by c; st is a private copy.
func (st *MetaState) apply(c *metaCmd) error {
	if c.Op != opBootstrap && st.Schema == nil {
		return ErrNotBootstrapped
	}
	switch c.Op {
	case opBootstrap:
		if st.Schema != nil {
			return nil // another initial site was first
		}
		sites := sortedCopy(c.Sites)
		st.Schema = c.Schema
		for i, a := range sites {
			st.Sites = append(st.Sites, SiteInfo{Slot: i + 1, Addr: a, MetaReplica: uint64(i + 1), State: SiteActive})
		}
		st.NextReplicaID = uint64(len(sites) + 1)
		for _, g := range st.groups() {
			for _, slot := range bootstrapVoters(g, len(sites), c.Schema.ReplicationFactor) {
				st.Replicas = append(st.Replicas, ReplicaInfo{Group: g, ReplicaID: uint64(slot), Slot: slot,
					Voter: true, Member: memberVoter, Initial: true})
			}
		}
	case opRegister:
		for i := range st.Sites {
			if st.Sites[i].Addr == c.Addr && st.Sites[i].ID == (SiteID{}) {
				st.Sites[i].ID = c.ID
			}
		}
		return nil
	case opAddSite:
		if s, ok := st.SiteByID(c.ID); ok {
			if s.State == SiteActive && s.Addr == c.Addr {
				return nil // a retried request
			}
			return fmt.Errorf("%w: %s in slot %d (%s)", ErrSiteExists, c.ID, s.Slot, s.State)
		}
		for _, s := range st.Sites {
			if s.Addr == c.Addr && s.State != SiteLeft {
				return fmt.Errorf("%w: address %s is site %s", ErrSiteExists, c.Addr, s.ID)
			}
		}
		st.Sites = append(st.Sites, SiteInfo{Slot: len(st.Sites) + 1, ID: c.ID, Addr: c.Addr,
			MetaReplica: c.ID.metaReplicaID(), State: SiteActive})
	case opLeave:
		s, ok := st.SiteByID(c.ID)
		if !ok {
			return fmt.Errorf("%w: %s", ErrSiteNotFound, c.ID)
		}
		if s.State != SiteActive {
			return nil // a retried request: leaving or left already
		}
		if st.activeSites()-1 < 1 {
			return fmt.Errorf("%w: the last site cannot leave", ErrTooFewSites)
		}
		st.Sites[s.Slot-1].State = SiteLeaving
	case opDrained:
		s, ok := st.SiteByID(c.ID)
		if !ok || s.State == SiteActive {
			return fmt.Errorf("%w: %s is not leaving", ErrSiteNotFound, c.ID)
		}
		st.Sites[s.Slot-1].Drained = true
	case opCaughtUp:
		for i := range st.Replicas {
			if st.Replicas[i].Group == c.Group && st.Replicas[i].ReplicaID == c.ReplicaID {
				st.Replicas[i].CaughtUp = true
			}
		}
		return nil
	case opService:
		s, ok := st.SiteByID(c.ID)
		if !ok {
			return fmt.Errorf("%w: %s", ErrSiteNotFound, c.ID)
		}
		st.Sites[s.Slot-1].Service = c.Service
		return nil
	case opSetRF:
		if c.RF < 1 || c.RF > 7 {
			return fmt.Errorf("%w: replication factor %d", ErrInvalidConfig, c.RF)
		}
		st.Schema.ReplicationFactor = c.RF
	case opMember:
		i := slices.IndexFunc(st.Replicas, func(r ReplicaInfo) bool { return r.Group == c.Group && r.ReplicaID == c.ReplicaID })
		if i < 0 {
			return nil // a retried report of a removal that was recorded
		}
		st.Replicas[i].Member = c.Member
		// A replica out of its group is gone for good (its ID is never reused), also if the
		// plan took its removal back meanwhile: the plan adds a new one where one is needed.
		if c.Member == memberNone {
			st.Replicas = slices.Delete(st.Replicas, i, i+1)
		}
	default:
		return fmt.Errorf("unknown op %q", c.Op)
	}
	st.plan()
	return nil
}

func (st *MetaState) activeSites() int {
	n := 0
	for _, s := range st.Sites {
		if s.State == SiteActive {
			n++
		}
	}
	return n
}

// plan updates the desired replica records after a change. The meta group has one replica on
// every active site, min(ReplicationFactor, active sites) of them voters (non-voting on the
// other sites), chosen on the sites with the fewest voters so far; it never demotes: its replica
// IDs are tied to the sites. Shard groups follow Schema.Placement:
//
//   - PlacementEverySite: every active site holds one replica of every shard (a non-voting one
//     where it is not a voter, so that every site reads locally and can propose to every
//     shard); each shard has min(ReplicationFactor, active sites) voters, chosen on the sites
//     with the fewest voters so far; a voter too many is removed and its site gets a new
//     non-voting replica (Raft cannot demote).
//   - PlacementVoters: a shard's replicas are its min(ReplicationFactor, active sites) voters
//     and nothing else (see planVoters): missing ones are added on the least-loaded sites,
//     surplus ones removed from the most-loaded, and shards move one replica at a time from
//     the most- to the least-loaded sites until the sites' loads differ by at most one.
//
// Replicas on sites that are not active are to be removed in both; a leaving site is left once
// it holds nothing. Deterministic: the same state gives the same plan on every replica.
func (st *MetaState) plan() {
	active := map[int]bool{}
	for _, s := range st.Sites {
		if s.State == SiteActive {
			active[s.Slot] = true
		}
	}
	want := min(st.Schema.ReplicationFactor, len(active))
	voters := map[int]int{} // slot → voter replicas it holds (desired)
	for _, r := range st.Replicas {
		if r.Voter && !r.Remove {
			voters[r.Slot]++
		}
	}
	everySite := st.Schema.everySite()
	for _, g := range st.groups() {
		if g != metaGroup && !everySite {
			continue // planVoters, below
		}
		has := map[int]bool{}
		for i := range st.Replicas {
			r := &st.Replicas[i]
			if r.Group != g || r.Remove {
				continue
			}
			if !active[r.Slot] {
				r.Remove = true
				if r.Voter {
					voters[r.Slot]--
				}
				continue
			}
			has[r.Slot] = true
		}
		for _, s := range st.Sites {
			if s.State == SiteActive && !has[s.Slot] {
				id := st.NextReplicaID
				if g == metaGroup {
					id = s.MetaReplica
				} else {
					st.NextReplicaID++
				}
				st.Replicas = append(st.Replicas, ReplicaInfo{Group: g, ReplicaID: id, Slot: s.Slot})
			}
		}
		live := func(voter bool) []int {
			var idx []int
			for i, r := range st.Replicas {
				if r.Group == g && !r.Remove && r.Voter == voter {
					idx = append(idx, i)
				}
			}
			return idx
		}
		for v := live(true); len(v) < want; v = live(true) {
			cands := live(false)
			if len(cands) == 0 {
				break
			}
			best := slices.MinFunc(cands, func(a, b int) int {
				ra, rb := st.Replicas[a], st.Replicas[b]
				if c := voters[ra.Slot] - voters[rb.Slot]; c != 0 {
					return c
				}
				return ra.Slot - rb.Slot
			})
			st.Replicas[best].Voter = true
			voters[st.Replicas[best].Slot]++
		}
		if g == metaGroup {
			continue
		}
		for v := live(true); len(v) > want; v = live(true) {
			worst := slices.MaxFunc(v, func(a, b int) int {
				ra, rb := st.Replicas[a], st.Replicas[b]
				if c := voters[ra.Slot] - voters[rb.Slot]; c != 0 {
					return c
				}
				return ra.Slot - rb.Slot
			})
			r := &st.Replicas[worst]
			r.Remove = true
			voters[r.Slot]--
			// Raft cannot demote a voter: it leaves, and the site gets a new non-voting one.
			st.Replicas = append(st.Replicas, ReplicaInfo{Group: g, ReplicaID: st.NextReplicaID, Slot: r.Slot})
			st.NextReplicaID++
		}
	}
	if !everySite {
		st.planVoters(want)
	}
	slices.SortFunc(st.Replicas, func(a, b ReplicaInfo) int {
		if a.Group != b.Group {
			return int(a.Group) - int(b.Group)
		}
		if a.ReplicaID < b.ReplicaID {
			return -1
		}
		if a.ReplicaID > b.ReplicaID {
			return 1
		}
		return 0
	})
	for i, s := range st.Sites {
		if s.State != SiteLeaving {
			continue
		}
		if !slices.ContainsFunc(st.Replicas, func(r ReplicaInfo) bool { return r.Slot == s.Slot }) {
			st.Sites[i].State = SiteLeft
		}
	}
}

// planVoters plans the shard groups under PlacementVoters, where a shard's replicas are its
// want voters only. The load of an active site is the number of live (not to be removed) shard
// replicas it holds (counting voters only until the left-over non-voting ones, which are not
// to stay, are removed). For each shard group, in group order:
//
//   - replicas on sites that are not active are to be removed;
//   - while the group has fewer than want live voters, a live non-voting replica (left over
//     from a placement switch) is promoted, on the least-loaded site first; then a new voter
//     is added on the least-loaded active site without a live replica of the group (ties:
//     lowest slot);
//   - the remaining live non-voting replicas are to be removed;
//   - while it has more than want, the voter on the most-loaded site (ties: highest slot) is
//     to be removed, with no non-voting replacement.
//
// Then it rebalances: each shard group with nothing in progress (no replica with a Transition)
// moves one replica from its most-loaded site (ties: highest slot) to the least-loaded active
// site without one (ties: lowest slot) if their loads differ by two or more: a new voter there,
// and the old one to be removed, which the reconciler does only once the new one is a voting
// member (removable), so the group never drops below want voters. Every move lowers the sum of
// the squared loads, so moves stop, and they stop only once the loads differ by at most one
// (a group on the most-loaded site and not on the least-loaded one exists otherwise).
func (st *MetaState) planVoters(want int) {
	var active []int // slots, ascending
	for _, s := range st.Sites {
		if s.State == SiteActive {
			active = append(active, s.Slot)
		}
	}
	// load: live shard voters per site. Live non-voting replicas (left over) are removed below
	// unless promoted, so from then on it counts every live shard replica.
	load := map[int]int{}
	for i := range st.Replicas {
		r := &st.Replicas[i]
		if r.Group == metaGroup || r.Remove {
			continue
		}
		if !slices.Contains(active, r.Slot) {
			r.Remove = true
			continue
		}
		if r.Voter {
			load[r.Slot]++
		}
	}
	// live returns the indexes of g's live replicas.
	live := func(g uint64) []int {
		var idx []int
		for i, r := range st.Replicas {
			if r.Group == g && !r.Remove {
				idx = append(idx, i)
			}
		}
		return idx
	}
	// byLoad orders replica indexes by their site's load, then slot.
	byLoad := func(a, b int) int {
		ra, rb := st.Replicas[a], st.Replicas[b]
		if c := load[ra.Slot] - load[rb.Slot]; c != 0 {
			return c
		}
		return ra.Slot - rb.Slot
	}
	// emptiest returns the least-loaded active site without a live replica of g (ties: lowest
	// slot), or 0. A site where a replica of g is still being removed comes only after the
	// others: the site runs one replica of a group at a time, so a new voter there would not
	// start before the old one has left.
	emptiest := func(g uint64) int {
		best, bestRemoving := 0, false
		for _, slot := range active {
			held, removing := false, false
			for _, r := range st.Replicas {
				if r.Group == g && r.Slot == slot {
					held = held || !r.Remove
					removing = removing || r.Remove
				}
			}
			if held {
				continue
			}
			if best == 0 || bestRemoving && !removing || bestRemoving == removing && load[slot] < load[best] {
				best, bestRemoving = slot, removing
			}
		}
		return best
	}
	add := func(g uint64, slot int) {
		st.Replicas = append(st.Replicas, ReplicaInfo{Group: g, ReplicaID: st.NextReplicaID, Slot: slot, Voter: true})
		st.NextReplicaID++
		load[slot]++
	}
	remove := func(i int) {
		st.Replicas[i].Remove = true
		if st.Replicas[i].Voter {
			load[st.Replicas[i].Slot]--
		}
	}
	split := func(g uint64) (voters, others []int) {
		for _, i := range live(g) {
			if st.Replicas[i].Voter {
				voters = append(voters, i)
			} else {
				others = append(others, i)
			}
		}
		return voters, others
	}
	var shards []uint64
	for _, g := range st.groups() {
		if g != metaGroup {
			shards = append(shards, g)
		}
	}
	for _, g := range shards {
		voters, others := split(g)
		// A voter whose removal is pending (a move away from its site) stays after all when the
		// group lacks voters (the move's target left): its site runs one replica of the group
		// at a time, so a new one there would wait for the old to leave, which waits for the
		// new one to vote — a deadlock.
		for i := range st.Replicas {
			r := &st.Replicas[i]
			if len(voters) >= want {
				break
			}
			if r.Group == g && r.Remove && r.Voter && r.Member == memberVoter && slices.Contains(active, r.Slot) &&
				!slices.ContainsFunc(st.Replicas, func(o ReplicaInfo) bool { return o.Group == g && o.Slot == r.Slot && !o.Remove }) {
				r.Remove = false
				load[r.Slot]++
				voters, others = split(g)
			}
		}
		for len(voters) < want && len(others) > 0 {
			best := slices.MinFunc(others, byLoad)
			st.Replicas[best].Voter = true
			load[st.Replicas[best].Slot]++
			voters, others = split(g)
		}
		for len(voters) < want {
			slot := emptiest(g)
			if slot == 0 {
				break // cannot happen: want is at most the active sites
			}
			add(g, slot)
			voters, others = split(g)
		}
		for _, i := range others {
			remove(i)
		}
		for len(voters) > want {
			remove(slices.MaxFunc(voters, byLoad))
			voters, _ = split(g)
		}
	}
	for _, g := range shards {
		if slices.ContainsFunc(st.Replicas, func(r ReplicaInfo) bool { return r.Group == g && r.Transition() != "" }) {
			continue // a move or another change in progress: one at a time
		}
		idx := live(g)
		if len(idx) == 0 {
			continue
		}
		hi := slices.MaxFunc(idx, byLoad)
		lo := emptiest(g)
		if lo == 0 || load[st.Replicas[hi].Slot]-load[lo] < 2 {
			continue
		}
		add(g, lo)
		remove(hi)
	}
}
