package raftgroup

import (
	"errors"
	"fmt"
	"io"
	"math/rand"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/strata-mq/strata/internal/datadriven"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// TestMetaPlanner runs the meta group's commands (MetaState.apply, which ends with plan)
// from testdata/meta/*.txt and prints the state after each. Commands (sites are named by their
// address; a site's ID is derived from its name):
//
//	bootstrap sites=a,b,c shards=2 rf=3 [placement=voters|every-site] [noregister]
//	                                                    the bootstrap, then each site's register
//	                                                    (placement: voters unless given)
//	register site=a                                     an initial site records its ID
//	add-site site=d [addr=x]                            a site joins (its address is its name)
//	leave site=b                                        a site is asked to leave
//	drained site=b                                      a leaving site stopped its shard replicas
//	set-rf rf=2                                         the replication factor changes
//	member group=meta|<shard> replica=7 member=voter|nonvoting|none
//	                                                    the reconciler reports a change
//	settle [down=c,...] [rounds=N] [trace]              models the reconciler (see settle);
//	                                                    trace prints each report it makes
//	raw op=x                                            a command with op x
//	placement to=voters|every-site [rf=N]               not a command: sets Schema.Placement
//	                                                    (and the replication factor) and plans
//	                                                    (a cluster switched over)
//	reset                                               back to an empty state
//
// A rejected command prints its error and the sentinel a proposer gets back (metaRejection),
// and leaves the state as it was, as metaSM.Update does. Otherwise the state is printed: the
// sites (slot, name, state), the next replica ID, and one line per group with a token per
// replica:
//
//	<site>:<replica ID>:<want>/<member>
//	want:   V a voter, N non-voting, X to be removed
//	member: V voter, N non-voting, - not a member
//
// (a joining site's meta replica ID, with its top bit set, is printed J<low bits>).
// Run with -rewrite to regenerate the expected outputs; review the diff.
func TestMetaPlanner(t *testing.T) {
	files, err := filepath.Glob("testdata/meta/*.txt")
	require.NoError(t, err, "no test files: %v", err)
	require.NotEmpty(t, files, "no test files: %v", err)
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			st := &MetaState{}
			datadriven.Run(t, f, func(t *testing.T, c *datadriven.Case) string {
				return runMetaCase(t, &st, c)
			})
		})
	}
}

// testSiteID is the site ID of the site named name (up to 8 bytes, right-aligned).
func testSiteID(name string) SiteID {
	var id SiteID
	copy(id[len(id)-min(len(name), len(id)):], name)
	return id
}

func runMetaCase(t *testing.T, stp **MetaState, c *datadriven.Case) string {
	st := *stp
	var cmds []*metaCmd
	switch c.Cmd {
	case "bootstrap":
		sites := strings.Split(c.Arg("sites", ""), ",")
		shards, _ := strconv.Atoi(c.Arg("shards", "2"))
		rf, _ := strconv.Atoi(c.Arg("rf", "3"))
		placement := Placement(c.Arg("placement", string(PlacementVoters)))
		if placement != PlacementVoters && placement != PlacementEverySite {
			c.Fatalf(t, "placement: %q", placement)
		}
		cmds = append(cmds, &metaCmd{Op: opBootstrap, Sites: sites,
			Schema: &Schema{NShards: shards, ReplicationFactor: rf, Layout: stream.LayoutLTS, Placement: placement}})
		if !c.Has("noregister") {
			for _, s := range sites {
				cmds = append(cmds, &metaCmd{Op: opRegister, ID: testSiteID(s), Addr: s})
			}
		}
	case "register":
		s := c.Arg("site", "")
		cmds = append(cmds, &metaCmd{Op: opRegister, ID: testSiteID(s), Addr: c.Arg("addr", s)})
	case "add-site":
		s := c.Arg("site", "")
		cmds = append(cmds, &metaCmd{Op: opAddSite, ID: testSiteID(s), Addr: c.Arg("addr", s)})
	case "leave", "drained":
		cmds = append(cmds, &metaCmd{Op: c.Cmd, ID: testSiteID(c.Arg("site", ""))})
	case "set-rf":
		rf, err := strconv.Atoi(c.Arg("rf", ""))
		if err != nil {
			c.Fatalf(t, "rf: %v", err)
		}
		cmds = append(cmds, &metaCmd{Op: opSetRF, RF: rf})
	case "member":
		g := metaGroup
		if s := c.Arg("group", ""); s != "meta" {
			n, err := strconv.Atoi(s)
			if err != nil {
				c.Fatalf(t, "group: %v", err)
			}
			g = shardGroup(stream.ShardID(n))
		}
		id, err := strconv.ParseUint(c.Arg("replica", ""), 10, 64)
		if err != nil {
			c.Fatalf(t, "replica: %v", err)
		}
		m := Membership(c.Arg("member", ""))
		if m == "none" {
			m = memberNone
		}
		cmds = append(cmds, &metaCmd{Op: opMember, Group: g, ReplicaID: id, Member: m})
	case "reset":
		*stp = &MetaState{}
		return "ok"
	case "raw":
		cmds = append(cmds, &metaCmd{Op: c.Arg("op", "")})
	case "placement":
		next := st.clone()
		next.Schema.Placement = Placement(c.Arg("to", ""))
		if rf, err := strconv.Atoi(c.Arg("rf", "")); err == nil {
			next.Schema.ReplicationFactor = rf
		}
		next.plan()
		checkPlanInvariants(t, c, next)
		*stp = next
		return formatMeta(next)
	case "settle":
		var down []string
		if d := c.Arg("down", ""); d != "" {
			down = strings.Split(d, ",")
		}
		rounds, _ := strconv.Atoi(c.Arg("rounds", "100"))
		var b strings.Builder
		var trace io.Writer
		if c.Has("trace") {
			trace = &b
		}
		n, done := settle(t, stp, down, rounds, trace)
		switch {
		case done && stuckOnDown(*stp, down):
			// What is left waits for a site that is down (a joined replica to catch up).
			fmt.Fprintf(&b, "waiting for a down site after %d rounds\n", n)
		case done:
			checkSettled(t, c, *stp)
			fmt.Fprintf(&b, "settled in %d rounds\n", n)
		default:
			fmt.Fprintf(&b, "not settled after %d rounds\n", n)
		}
		b.WriteString(formatMeta(*stp))
		return b.String()
	default:
		c.Fatalf(t, "unknown command")
	}
	for _, cmd := range cmds {
		next := st.clone()
		if err := next.apply(cmd); err != nil {
			// The proposer gets metaResultError(metaRejection(err), err.Error()).
			back := metaResultError(metaRejection(err), []byte(err.Error()))
			sentinel := "none"
			for _, s := range metaSentinels {
				if errors.Is(back, s) {
					sentinel = s.Error()
				}
			}
			return fmt.Sprintf("rejected %s: %v\nsentinel: %s", cmd.Op, err, sentinel)
		}
		checkPlanInvariants(t, c, next)
		st = next
	}
	*stp = st
	return formatMeta(st)
}

// settle models the reconciler of the site leading the meta group (Site.drive) on the meta
// state alone: each round, for every group, the first replica (in record order) with a change
// that drive would make now gets it, reported with a member command: an addition makes it
// non-voting, a promotion a voter, a removal not a member. Like drive, a voter is removed only
// while min(ReplicationFactor, active sites) other member voters remain, and a leaving site's
// meta replica only once the site is drained. A leaving site reports itself drained once its
// meta replica is all it has left, as its reconcile loop does, unless it is down; a down site's
// meta replica is removed without that report (drive gives up waiting for it). It returns the
// rounds run and whether nothing was left to do.
func settle(t *testing.T, stp **MetaState, down []string, maxRounds int, trace io.Writer) (int, bool) {
	t.Helper()
	apply := func(c *metaCmd) {
		next := (*stp).clone()
		require.NoError(t, next.apply(c), "settle: %s %+v", c.Op, c)
		checkPlanInvariants(t, nil, next)
		*stp = next
	}
	for round := range maxRounds {
		st := *stp
		var cmds []*metaCmd
		for _, s := range st.Sites {
			if s.State != SiteLeaving || s.Drained || slices.Contains(down, s.Addr) {
				continue
			}
			if !slices.ContainsFunc(st.Replicas, func(r ReplicaInfo) bool { return r.Slot == s.Slot && r.Group != metaGroup }) {
				cmds = append(cmds, &metaCmd{Op: opDrained, ID: s.ID})
			}
		}
		want := min(st.Schema.ReplicationFactor, st.activeSites())
		busy := map[uint64]bool{}
		for _, r := range st.Replicas {
			tr := r.Transition()
			if busy[r.Group] || tr == "" {
				continue
			}
			member := memberNone
			switch tr {
			case "catching up":
				// Its site reports it caught up (drive promotes it in a later round).
				if site, _ := st.Site(r.Slot); slices.Contains(down, site.Addr) {
					continue
				}
				busy[r.Group] = true
				cmds = append(cmds, &metaCmd{Op: opCaughtUp, Group: r.Group, ReplicaID: r.ReplicaID})
				continue
			case "adding":
				member = memberNonVoting
			case "promoting":
				member = memberVoter
			case "removing":
				site, _ := st.Site(r.Slot)
				if r.Group == metaGroup && !site.Drained && !slices.Contains(down, site.Addr) {
					continue
				}
				if r.Group == metaGroup && !site.Drained &&
					slices.ContainsFunc(st.Replicas, func(o ReplicaInfo) bool { return o.Slot == r.Slot && o.Group != metaGroup }) {
					continue // drive gives up waiting only once the site has no shard replica left
				}
				if !st.removable(r, want) {
					continue
				}
			}
			busy[r.Group] = true
			cmds = append(cmds, &metaCmd{Op: opMember, Group: r.Group, ReplicaID: r.ReplicaID, Member: member})
		}
		if len(cmds) == 0 {
			return round, true
		}
		for _, c := range cmds {
			if trace != nil {
				fmt.Fprintf(trace, "round %d: %s\n", round+1, formatCmd(st, c))
			}
			apply(c)
		}
	}
	return maxRounds, false
}

// stuckOnDown reports whether a replica on a site in down still has a transition to make.
func stuckOnDown(st *MetaState, down []string) bool {
	for _, r := range st.Replicas {
		if site, _ := st.Site(r.Slot); r.Transition() != "" && slices.Contains(down, site.Addr) {
			return true
		}
	}
	return false
}

// checkPlanInvariants checks what plan promises after every applied command: replicas sorted
// by group and ID with unique IDs per group; at most one replica not being removed per site and
// group, on active sites only, and one on every active site (for shard groups under
// PlacementVoters: none but their voters); min(ReplicationFactor, active sites) desired voters
// per shard group (at least that many in the meta group, which never demotes); IDs below
// NextReplicaID except joiners' meta replicas; a site left only when it holds nothing.
func checkPlanInvariants(t *testing.T, c *datadriven.Case, st *MetaState) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		if c != nil {
			c.Fatalf(t, "invariant: "+format, args...)
		}
		require.Failf(t, "settle: invariant", format, args...)
	}
	for i := 1; i < len(st.Replicas); i++ {
		a, b := st.Replicas[i-1], st.Replicas[i]
		if a.Group > b.Group || a.Group == b.Group && a.ReplicaID >= b.ReplicaID {
			fail("replicas out of order or duplicated: %+v, %+v", a, b)
		}
	}
	want := min(st.Schema.ReplicationFactor, st.activeSites())
	for _, g := range st.groups() {
		per := map[int]int{}
		voters := 0
		for _, r := range st.GroupReplicas(g) {
			if r.ReplicaID >= st.NextReplicaID && r.ReplicaID&(1<<63) == 0 {
				fail("group %d: replica %d not below next ID %d", g, r.ReplicaID, st.NextReplicaID)
			}
			if r.Remove {
				continue
			}
			per[r.Slot]++
			if r.Voter {
				voters++
			}
			if s, _ := st.Site(r.Slot); s.State != SiteActive {
				fail("group %d: replica %d kept on %s site %s", g, r.ReplicaID, s.State, s.Addr)
			}
		}
		everySite := g == metaGroup || st.Schema.everySite()
		for _, s := range st.Sites {
			if s.State == SiteActive && (per[s.Slot] > 1 || everySite && per[s.Slot] != 1) {
				fail("group %d: %d replicas on site %s", g, per[s.Slot], s.Addr)
			}
		}
		if n := len(per); !everySite && n != voters {
			fail("group %d: %d replicas but %d voters", g, n, voters)
		}
		if g == metaGroup && voters < want || g != metaGroup && voters != want {
			fail("group %d: %d voters, want %d", g, voters, want)
		}
	}
	for _, s := range st.Sites {
		holds := slices.ContainsFunc(st.Replicas, func(r ReplicaInfo) bool { return r.Slot == s.Slot })
		if s.State == SiteLeft && holds {
			fail("site %s left but holds replicas", s.Addr)
		}
	}
}

// formatCmd prints a command settle applies on st.
func formatCmd(st *MetaState, c *metaCmd) string {
	if c.Op != opMember && c.Op != opCaughtUp {
		s, _ := st.SiteByID(c.ID)
		return fmt.Sprintf("%s %s", c.Op, s.Addr)
	}
	name := "meta"
	if c.Group != metaGroup {
		name = fmt.Sprintf("shard %d", c.Group-shardGroupBase)
	}
	site := "?"
	for _, r := range st.GroupReplicas(c.Group) {
		if r.ReplicaID == c.ReplicaID {
			s, _ := st.Site(r.Slot)
			site = s.Addr
		}
	}
	if c.Op == opCaughtUp {
		return fmt.Sprintf("caught-up %s %s:%s", name, site, formatReplicaID(c.ReplicaID))
	}
	m := string(c.Member)
	if m == "" {
		m = "none"
	}
	return fmt.Sprintf("member %s %s:%s %s", name, site, formatReplicaID(c.ReplicaID), m)
}

func formatReplicaID(id uint64) string {
	if id&(1<<63) != 0 {
		return fmt.Sprintf("J%d", id&^(1<<63))
	}
	return strconv.FormatUint(id, 10)
}

// formatMeta prints st as described at TestMetaPlanner.
func formatMeta(st *MetaState) string {
	var b strings.Builder
	b.WriteString("sites:")
	for _, s := range st.Sites {
		fmt.Fprintf(&b, " %d:%s", s.Slot, s.Addr)
		if s.ID == (SiteID{}) {
			b.WriteString("(unregistered)")
		}
		fmt.Fprintf(&b, " %s", s.State)
		if s.Drained {
			b.WriteString("(drained)")
		}
		if s.MetaReplica&(1<<63) != 0 {
			fmt.Fprintf(&b, "(meta %s)", formatReplicaID(s.MetaReplica))
		}
	}
	if st.Schema != nil {
		fmt.Fprintf(&b, "\nrf %d, next replica ID %d", st.Schema.ReplicationFactor, st.NextReplicaID)
	}
	for _, g := range st.groups() {
		name := "meta"
		if g != metaGroup {
			name = fmt.Sprintf("shard %d", g-shardGroupBase)
		}
		fmt.Fprintf(&b, "\n%s:", name)
		for _, r := range st.GroupReplicas(g) {
			site, _ := st.Site(r.Slot)
			want := "N"
			switch {
			case r.Remove:
				want = "X"
			case r.Voter:
				want = "V"
			}
			member := map[Membership]string{memberNone: "-", memberNonVoting: "N", memberVoter: "V"}[r.Member]
			fmt.Fprintf(&b, " %s:%s:%s/%s", site.Addr, formatReplicaID(r.ReplicaID), want, member)
		}
	}
	return b.String()
}

// checkSettled checks, under PlacementVoters, what a settled cluster looks like: every shard
// group has exactly min(ReplicationFactor, active sites) replicas, each a voter and a voting
// member, and no other (none left to remove either); and the active sites' loads (shard
// replicas held) differ by at most one.
func checkSettled(t *testing.T, c *datadriven.Case, st *MetaState) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		if c != nil {
			c.Fatalf(t, "settled: "+format, args...)
		}
		require.Failf(t, "settled", format, args...)
	}
	if st.Schema == nil || st.Schema.everySite() {
		return
	}
	want := min(st.Schema.ReplicationFactor, st.activeSites())
	load := map[int]int{}
	for _, g := range st.groups() {
		if g == metaGroup {
			continue
		}
		rs := st.GroupReplicas(g)
		if len(rs) != want {
			fail("group %d has %d replicas, want %d", g, len(rs), want)
		}
		for _, r := range rs {
			if !r.Voter || r.Member != memberVoter || r.Remove {
				fail("group %d: replica %+v is not a voting member", g, r)
			}
			load[r.Slot]++
		}
	}
	lo, hi := -1, -1
	for _, s := range st.Sites {
		if s.State != SiteActive {
			continue
		}
		if lo < 0 || load[s.Slot] < lo {
			lo = load[s.Slot]
		}
		hi = max(hi, load[s.Slot])
	}
	if hi-lo > 1 {
		fail("site loads from %d to %d", lo, hi)
	}
}

// TestPlanVotersRandom runs random admin operations under PlacementVoters, each followed by
// some rounds of the modelled reconciler (settle), sometimes with a site down: the plan's
// invariants hold after every command, and the cluster settles, balanced, at the end.
func TestPlanVotersRandom(t *testing.T) {
	for seed := range int64(200) {
		rng := rand.New(rand.NewSource(seed))
		st := &MetaState{}
		apply := func(c *metaCmd) {
			next := st.clone()
			if err := next.apply(c); err != nil {
				return // e.g. the last site cannot leave
			}
			checkPlanInvariants(t, nil, next)
			st = next
		}
		n := 1 + rng.Intn(6)
		var sites []string
		for i := range n {
			sites = append(sites, fmt.Sprintf("s%d", i))
		}
		apply(&metaCmd{Op: opBootstrap, Sites: sites, Schema: &Schema{NShards: 1 + rng.Intn(12),
			ReplicationFactor: 1 + rng.Intn(5), Layout: stream.LayoutLTS, Placement: PlacementVoters}})
		for _, s := range sites {
			apply(&metaCmd{Op: opRegister, ID: testSiteID(s), Addr: s})
		}
		next := n
		for range 12 {
			var down []string
			switch rng.Intn(4) {
			case 0:
				s := fmt.Sprintf("s%d", next)
				next++
				apply(&metaCmd{Op: opAddSite, ID: testSiteID(s), Addr: s})
			case 1:
				s := st.Sites[rng.Intn(len(st.Sites))]
				apply(&metaCmd{Op: opLeave, ID: s.ID})
				if rng.Intn(3) == 0 {
					down = []string{s.Addr}
				}
			case 2:
				apply(&metaCmd{Op: opSetRF, RF: 1 + rng.Intn(5)})
			}
			settle(t, &st, down, rng.Intn(4), nil)
		}
		_, done := settle(t, &st, nil, 200, nil)
		require.True(t, done, "seed %d: not settled\n%s", seed, formatMeta(st))
		checkSettled(t, nil, st)
	}
}
