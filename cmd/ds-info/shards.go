package main

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/strata-mq/strata/inspect"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/raftgroup"
)

// shardRow is one line of `ds-info shards`: what the shard holds and, on a replicated site
// read with -url, its Raft group as that site sees it.
type shardRow struct {
	Shard             ds.ShardID      `json:"shard"`
	Generations       int             `json:"generations"`
	CurrentGeneration ds.GenerationID `json:"current_generation"`
	OldestSince       string          `json:"oldest_since,omitempty"` // start of the oldest generation held
	Streams           int             `json:"streams"`                // of the current generation
	Messages          uint64          `json:"messages"`               // in all its counted generations
	Uncounted         int             `json:"uncounted,omitempty"`    // generations created before counts existed
	DiskBytes         uint64          `json:"disk_bytes"`             // estimate, as for generations

	Raft *shardRaft `json:"raft,omitempty"`
}

// shardRaft is a shard's Raft group as one site sees it (from GET /v1/cluster).
type shardRaft struct {
	Group      uint64         `json:"group"`
	Leader     uint64         `json:"leader"`      // replica ID; 0 if none known
	LeaderSlot int            `json:"leader_slot"` // 0 if unknown
	Term       uint64         `json:"term"`
	LastIndex  uint64         `json:"last_index"` // of this site's replica's log
	Applied    uint64         `json:"applied"`    // by this site's replica
	ApplyLag   uint64         `json:"apply_lag"`
	Replicas   []shardReplica `json:"replicas"`
}

// shardReplica is one replica of a shard: where it is, its role, what is being done to it.
type shardReplica struct {
	Slot       int    `json:"slot"`
	ReplicaID  uint64 `json:"replica_id"`
	Member     string `json:"member"` // voter, nonvoting, or "" (not a member yet)
	Transition string `json:"transition,omitempty"`
}

// shards prints one line per shard: generation count and span, streams, messages, disk bytes,
// and for a replicated site's admin handler its leader, term, this site's log and applied
// indexes and the replicas.
func (c *command) shards(args []string) int {
	c.flags()
	if !c.parse(args) {
		return exitUsage
	}
	return show(c, c.shardRows, c.printShards)
}

// shardRows reads the generations of src into rows, and on a replicated site's admin
// handler adds each shard's Raft group.
func (c *command) shardRows(src source) ([]shardRow, error) {
	gens, err := src.generations()
	if noData(err) {
		return nil, err
	}
	rows := shardRows(gens)
	if us, ok := src.(*urlSource); ok {
		var v raftgroup.ClusterView
		switch cerr := us.get("/v1/cluster", nil, &v); {
		case cerr == nil:
			addRaft(rows, v)
		case isNotFound(cerr):
			// An embedded node: no Raft groups to show.
		default:
			// The rows are printed, then this error: not one that comes without data.
			err = errors.Join(err, withData{cerr})
		}
	}
	return rows, err
}

// withData hides what an error is from noData: it came with data to print.
type withData struct{ error }

// printShards prints shards' table.
func (c *command) printShards(rows []shardRow) {
	tw := c.table()
	replicated := len(rows) > 0 && rows[0].Raft != nil
	head := "SHARD\tGENS\tCURRENT\tOLDEST SINCE\tSTREAMS\tMESSAGES\tDISK BYTES"
	if replicated {
		head += "\tLEADER SLOT\tTERM\tLAST INDEX\tAPPLIED\tAPPLY LAG\tREPLICAS (slot:id:role)"
	}
	fmt.Fprintln(tw, head)
	for _, r := range rows {
		oldest := r.OldestSince
		if oldest == "" {
			oldest = "-"
		}
		msgs := fmt.Sprint(r.Messages)
		if r.Uncounted > 0 {
			msgs += "+?" // and those of generations created before counts existed
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%d\t%s\t%d", r.Shard, r.Generations, r.CurrentGeneration, oldest, r.Streams, msgs, r.DiskBytes)
		if g := r.Raft; g != nil {
			slot := "-"
			if g.LeaderSlot != 0 {
				slot = fmt.Sprint(g.LeaderSlot)
			}
			var reps []string
			for _, rp := range g.Replicas {
				role := rp.Member
				if role == "" {
					role = "none"
				}
				if rp.Transition != "" {
					role += "→" + rp.Transition
				}
				reps = append(reps, fmt.Sprintf("%d:%d:%s", rp.Slot, rp.ReplicaID, role))
			}
			fmt.Fprintf(tw, "\t%s\t%d\t%d\t%d\t%d\t%s", slot, g.Term, g.LastIndex, g.Applied, g.ApplyLag, strings.Join(reps, " "))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

// shardRows folds the generation list (by shard, then ID) into one row per shard.
func shardRows(gens []inspect.GenerationView) []shardRow {
	var rows []shardRow
	for _, g := range gens {
		if len(rows) == 0 || rows[len(rows)-1].Shard != g.Shard {
			rows = append(rows, shardRow{Shard: g.Shard, OldestSince: g.Since})
		}
		r := &rows[len(rows)-1]
		r.Generations++
		r.Messages += g.Messages
		if g.Uncounted {
			r.Uncounted++
		}
		r.DiskBytes += g.DiskBytes
		if g.State == "current" {
			r.CurrentGeneration, r.Streams = g.Generation, g.Streams
		}
	}
	return rows
}

// addRaft adds to rows each shard's Raft group from a site's cluster view.
func addRaft(rows []shardRow, v raftgroup.ClusterView) {
	byShard := map[ds.ShardID]*shardRow{}
	for i := range rows {
		byShard[rows[i].Shard] = &rows[i]
	}
	for _, g := range v.Groups {
		r := byShard[g.Shard]
		if g.Meta || r == nil {
			continue
		}
		r.Raft = &shardRaft{Group: g.Group, Leader: g.Leader, LeaderSlot: g.LeaderSlot, Term: g.Term,
			LastIndex: g.LastIndex, Applied: g.Applied, ApplyLag: g.ApplyLag}
		for _, rp := range v.Replicas {
			if rp.Group == g.Group {
				r.Raft.Replicas = append(r.Raft.Replicas, shardReplica{Slot: rp.Slot, ReplicaID: rp.ReplicaID, Member: string(rp.Member), Transition: rp.Transition})
			}
		}
		sort.Slice(r.Raft.Replicas, func(i, j int) bool { return r.Raft.Replicas[i].Slot < r.Raft.Replicas[j].Slot })
	}
}

func isNotFound(err error) bool {
	var re remoteError
	return errors.As(err, &re) && re.status == http.StatusNotFound
}
