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
// currently says about it. Admin operations (bootstrap, add a site, make a site leave, change
// the replication factor) are commands on it; a deterministic planner turns each into desired
// replica records, and the site that leads the meta group carries them out one membership
// change at a time (see reconcile.go), reporting each back as a command.

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
}

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

// MetaState is the meta group's state.
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
}

const (
	opBootstrap = "bootstrap" // Schema, Sites; applied once
	opRegister  = "register"  // an initial site records its ID: ID, Addr
	opAddSite   = "add-site"  // ID, Addr
	opLeave     = "leave"     // ID
	opSetRF     = "set-rf"    // RF
	opMember    = "member"    // Group, ReplicaID, Member: a membership change was made
	opDrained   = "drained"   // ID: a leaving site stopped its shard replicas
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
		if st.Replicas[i].Remove && c.Member == memberNone {
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

// plan updates the desired replica records after a change: every active site holds one
// replica of every group (a non-voting one where it is not a voter, so that every site reads
// locally and can propose to every shard); replicas on other sites are to be removed; each
// group has min(ReplicationFactor, active sites) voters, chosen on the sites with the fewest
// voters so far. The meta group never demotes: its replica IDs are tied to the sites.
// Deterministic: the same state gives the same plan on every replica.
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
	for _, g := range st.groups() {
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
