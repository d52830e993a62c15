package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/strata-mq/strata/raftgroup"
)

// cluster prints a replicated site's view of its cluster (raftgroup.Site.AdminHandler's
// /v1/cluster): the sites with their health (up, down, lost, left), every Raft group's
// leader, this site's replicas with their last log and applied indexes, and the replica
// transitions in progress.
func (c *command) cluster(args []string) int {
	c.flags()
	if !c.parse(args) {
		return exitUsage
	}
	if c.url == "" {
		c.errorf("cluster works only with -url (a replicated site's admin handler)")
		return exitUsage
	}
	src, err := newURLSource(c.url)
	if err != nil {
		c.errorf("-url %v", err)
		return exitUsage
	}
	var v raftgroup.ClusterView
	if code, ok := c.failed(src.get("/v1/cluster", nil, &v)); !ok {
		return code
	}
	if c.json {
		c.printJSON(v)
		return exitOK
	}
	meta := "fresh (through the meta leader)"
	if !v.MetaFresh {
		meta = "STALE: this site's local copy (no meta quorum reachable)"
	}
	fmt.Fprintf(c.stdout, "site %s (raft %s); meta %s; placement %s\n\n", v.Site, v.RaftAddress, meta, v.Placement)
	tw := c.table()
	fmt.Fprintln(tw, "SLOT\tSITE\tADDRESS\tSERVICE\tSTATE\tHEALTH\tUNREACHABLE SINCE\tSHARD REPLICAS")
	for _, s := range v.Sites {
		since, service := "-", s.Service
		if s.DownSince != nil {
			since = s.DownSince.UTC().Format(time.RFC3339)
		}
		if service == "" {
			service = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", s.Slot, s.ID, s.Addr, service, s.State, s.Health, since, s.ShardReplicas)
	}
	tw.Flush()
	fmt.Fprintln(c.stdout)
	tw = c.table()
	fmt.Fprintln(tw, "GROUP\tSHARD\tPLACED ON SLOTS\tLEADER\tLEADER SLOT\tTERM\tREPLICA HERE\tLAST INDEX\tAPPLIED\tAPPLY LAG")
	for _, g := range v.Groups {
		name, shard, leader, slot := "shard", fmt.Sprint(g.Shard), "none", "-"
		if g.Meta {
			name, shard = "meta", "-"
		}
		if g.Leader != 0 {
			leader = fmt.Sprint(g.Leader)
		}
		if g.LeaderSlot != 0 {
			slot = fmt.Sprint(g.LeaderSlot)
		}
		last, applied, lag := "-", "-", "-"
		if g.Replica != 0 && g.LastIndex != 0 {
			last = fmt.Sprint(g.LastIndex)
		}
		if !g.Meta && g.Replica != 0 {
			applied = fmt.Sprint(g.Applied)
			lag = fmt.Sprint(g.ApplyLag)
		}
		fmt.Fprintf(tw, "%s %d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", name, g.Group, shard, placedOn(v.Replicas, g.Group), leader, slot, g.Term, g.Replica, last, applied, lag)
	}
	tw.Flush()
	fmt.Fprintln(c.stdout)
	var moving []raftgroup.ReplicaView
	for _, r := range v.Replicas {
		if r.Transition != "" {
			moving = append(moving, r)
		}
	}
	if len(moving) == 0 {
		fmt.Fprintln(c.stdout, "replica transitions: none")
		return exitOK
	}
	tw = c.table()
	fmt.Fprintln(tw, "GROUP\tREPLICA\tSLOT\tVOTER\tMEMBER\tTRANSITION")
	for _, r := range moving {
		member := r.Member
		if member == "" {
			member = "-"
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%v\t%s\t%s\n", r.Group, r.ReplicaID, r.Slot, r.Voter, member, r.Transition)
	}
	tw.Flush()
	return exitOK
}

// placedOn lists the slots holding a replica of group, by slot: "2" a voter, "2n" non-voting,
// "2+" being added or promoted, "2-" being removed.
func placedOn(replicas []raftgroup.ReplicaView, group uint64) string {
	var out []string
	for _, r := range replicas {
		if r.Group != group {
			continue
		}
		mark := ""
		switch {
		case r.Transition == "removing":
			mark = "-"
		case r.Transition != "":
			mark = "+"
		case !r.Voter:
			mark = "n"
		}
		out = append(out, fmt.Sprintf("%d%s", r.Slot, mark))
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}
