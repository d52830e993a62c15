package raftgroup

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrNoQuorum is wrapped (with shard.ErrUnavailable) by the error of a Store that failed
// fast because the shard cannot commit: this site has seen too few of the shard's voters
// for longer than an election timeout, or the shard has had no leader for noLeaderAfter.
var ErrNoQuorum = errors.New("strata: no quorum")

// electionTimeout is the groups' election timeout.
func (s *Site) electionTimeout() time.Duration {
	return time.Duration(s.cfg.ElectionRTT) * s.cfg.RTT
}

// noLeaderAfter is how long a proposer retries while its shard has no leader before it
// fails fast (ErrNoQuorum): ten election timeouts, at least 5 s, so that an election on a
// loaded machine does not fail writes (with 2 s, five sites on two cores failed a write of
// ds-bench during an election).
func (s *Site) noLeaderAfter() time.Duration {
	return max(10*s.electionTimeout(), 5*time.Second)
}

// quorumLost reports, with the reason, whether fewer than a majority of group's voting
// members are reachable from this site: a voter counts as unreachable once this site has
// failed to reach its Raft address for longer than an election timeout (the prober checks
// every probeInterval). This site's own replica counts as reachable.
func (s *Site) quorumLost(group uint64) (string, bool) {
	st, err := s.localMeta()
	if err != nil || st == nil {
		return "", false
	}
	me, _ := s.mySlot(st)
	var voters, reachable int
	var down []string
	for _, r := range st.Replicas {
		if r.Group != group || r.Member != memberVoter {
			continue
		}
		voters++
		if r.Slot == me || r.Slot < 1 || r.Slot > len(st.Sites) {
			reachable++
			continue
		}
		addr := st.Sites[r.Slot-1].Addr
		if d := s.health.unreachableFor(addr); d > s.electionTimeout() {
			down = append(down, fmt.Sprintf("%s for %v", addr, d.Round(100*time.Millisecond)))
			continue
		}
		reachable++
	}
	if voters == 0 || reachable > voters/2 {
		return "", false
	}
	return fmt.Sprintf("%d of its %d voters reachable from this site (unreachable: %s)", reachable, voters, strings.Join(down, ", ")), true
}
