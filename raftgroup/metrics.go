package raftgroup

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector returns a prometheus.Collector of this site's replication metrics, for a broker
// to register in its own registry beside inspect.Collector(db) (AdminHandler serves both).
// Per shard (label shard="N"):
//
//	strata_raft_leader           1 if this site's replica leads, else 0
//	strata_raft_term             the group's term as this site knows it
//	strata_raft_applied_index    this site's replica's applied index
//	strata_raft_last_index       the last entry in this site's replica's log
//	strata_raft_apply_lag        store entries in that log not applied yet (persisted,
//	                             possibly uncommitted)
//
// strata_raft_meta_leader (1 if this site leads the meta group), and per other site (labels
// slot, address):
//
//	strata_raft_peer_reachable            reached at the last probe (every second) or Raft
//	                                      connection (1/0)
//	strata_raft_peer_unreachable_seconds  how long it has been unreachable
//
// With LogDBSegments, the site's Raft log (one per site, all groups):
//
//	strata_raft_log_fsyncs_total        fdatasyncs of the log (one per round of the site's
//	                                    groups, whatever their number)
//	strata_raft_log_fsync_seconds_total time spent in them
//	strata_raft_log_bytes_total         bytes written
//	strata_raft_log_segments            segment files on disk
//
// Replication lag across sites is a query over all sites' metrics, e.g. in PromQL
// max by (shard) (strata_raft_applied_index) - on (shard) group_right strata_raft_applied_index.
// These names and labels are stable.
func (s *Site) Collector() prometheus.Collector { return siteCollector{s} }

type siteCollector struct{ s *Site }

var (
	shardLabel     = []string{"shard"}
	peerLabels     = []string{"slot", "address"}
	raftLeader     = prometheus.NewDesc("strata_raft_leader", "1 if this site's replica leads the shard's Raft group.", shardLabel, nil)
	raftTerm       = prometheus.NewDesc("strata_raft_term", "The shard's Raft term as this site knows it.", shardLabel, nil)
	raftApplied    = prometheus.NewDesc("strata_raft_applied_index", "The last Raft log index this site's replica applied.", shardLabel, nil)
	raftLast       = prometheus.NewDesc("strata_raft_last_index", "The last entry in this site's replica's Raft log.", shardLabel, nil)
	raftApplyLag   = prometheus.NewDesc("strata_raft_apply_lag", "Entries in this site's replica's Raft log its store has not applied yet.", shardLabel, nil)
	raftMetaLeader = prometheus.NewDesc("strata_raft_meta_leader", "1 if this site leads the meta group.", nil, nil)
	peerReachable  = prometheus.NewDesc("strata_raft_peer_reachable", "1 if this site reached the site at the last probe or Raft connection, else 0.", peerLabels, nil)
	peerDown       = prometheus.NewDesc("strata_raft_peer_unreachable_seconds", "How long this site has failed to reach the site (0 when it reaches it).", peerLabels, nil)
	logFsyncs      = prometheus.NewDesc("strata_raft_log_fsyncs_total", "fdatasyncs of this site's Raft log.", nil, nil)
	logFsyncTime   = prometheus.NewDesc("strata_raft_log_fsync_seconds_total", "Time this site's Raft log spent in fdatasync.", nil, nil)
	logBytes       = prometheus.NewDesc("strata_raft_log_bytes_total", "Bytes written to this site's Raft log.", nil, nil)
	logSegments    = prometheus.NewDesc("strata_raft_log_segments", "Segment files of this site's Raft log.", nil, nil)
)

func (c siteCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{raftLeader, raftTerm, raftApplied, raftLast, raftApplyLag, raftMetaLeader, peerReachable, peerDown, logFsyncs, logFsyncTime, logBytes, logSegments} {
		ch <- d
	}
}

func (c siteCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, g := range s.Groups() {
		leads := boolGauge(g.LeaderHere)
		if g.Meta {
			gauge(raftMetaLeader, leads)
			continue
		}
		shard := strconv.Itoa(int(g.Shard))
		gauge(raftLeader, leads, shard)
		gauge(raftTerm, float64(g.Term), shard)
		applied, ok := s.appliedIndex(g.Shard)
		if ok {
			gauge(raftApplied, float64(applied), shard)
		}
		if last, ok := s.lastIndex(g.Group); ok {
			gauge(raftLast, float64(last), shard)
		}
		if ok {
			if lag, ok := s.applyLag(g.Group, applied); ok {
				gauge(raftApplyLag, float64(lag), shard)
			}
		}
	}
	if ls, ok := s.LogStats(); ok {
		counter := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
		}
		counter(logFsyncs, float64(ls.Fsyncs))
		counter(logFsyncTime, ls.FsyncTime.Seconds())
		counter(logBytes, float64(ls.Bytes))
		gauge(logSegments, float64(ls.Segments))
	}
	st, err := s.localMeta()
	if err != nil {
		return
	}
	for _, si := range st.Sites {
		if si.State == SiteLeft || si.ID == s.file.ID {
			continue
		}
		slot := strconv.Itoa(si.Slot)
		if r, ok := s.health.lastReached(si.Addr); ok {
			gauge(peerReachable, boolGauge(r), slot, si.Addr)
		}
		gauge(peerDown, s.health.unreachableFor(si.Addr).Seconds(), slot, si.Addr)
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// LogStats are the counters of a site's Raft log since the site opened (LogDBSegments only).
type LogStats struct {
	Fsyncs    uint64        // fdatasyncs: one per round of the site's groups that persisted anything
	FsyncTime time.Duration // spent in them
	Frames    uint64        // atomic writes (a round, a snapshot record, a removal)
	Bytes     uint64        // bytes written
	Moved     uint64        // of which entries of quiet groups written again to free old segments
	Segments  int           // segment files now
	Entries   int           // entries retained now, all groups
}

// LogStats returns the counters of the site's Raft log; ok is false unless the site runs
// LogDBSegments (dragonboat's own LogDBs expose none).
func (s *Site) LogStats() (st LogStats, ok bool) {
	l := s.raftLog.Load()
	if l == nil {
		return LogStats{}, false
	}
	ls := l.Stats()
	return LogStats{Fsyncs: ls.Fsyncs, FsyncTime: ls.SyncTime, Frames: ls.Frames, Bytes: ls.Bytes, Moved: ls.Moved, Segments: ls.Segments, Entries: ls.Entries}, true
}
