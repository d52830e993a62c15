package raftgroup

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/lni/dragonboat/v4/config"
	"github.com/strata-mq/strata/ds"
)

// LogDB names the storage of the Raft log.
type LogDB string

const (
	// LogDBPebble is dragonboat's default LogDB, a key-value store (its own Pebble): every entry
	// goes through a WAL record, a memtable insert, a flush and compactions before a snapshot
	// lets it be deleted. The default before LogDBSegments, and what sites created before
	// Strata recorded the LogDB in SITE keep.
	LogDBPebble LogDB = "pebble"
	// LogDBTan is dragonboat's tan log (an append-only log per NodeHost).
	LogDBTan LogDB = "tan"
	// LogDBSegments is Strata's own Raft log (raftgroup/internal/raftlog), the default:
	// append-only segment files, one write and one fdatasync per round of the site's groups,
	// entries read back by offset, no memtable, flush or compaction; it counts its fsyncs
	// (Site.LogStats, strata_raft_log_fsyncs_total).
	LogDBSegments LogDB = "segments"
)

// LogDBMemory sizes the LogDB's write buffers: dragonboat's default is sized for machines with
// many GiB to spare, so a site picks explicitly.
type LogDBMemory string

const (
	LogDBTiny   LogDBMemory = "tiny"   // up to ~256 MiB
	LogDBSmall  LogDBMemory = "small"  // up to ~1 GiB; default
	LogDBMedium LogDBMemory = "medium" // up to ~4 GiB
	LogDBLarge  LogDBMemory = "large"  // up to ~8 GiB
)

// TLS names the PEM files of mutual TLS between sites. Every site presents CertFile, signed by
// the CA in CAFile, and accepts only peers that do the same.
type TLS struct {
	CAFile, CertFile, KeyFile string
}

// Config configures one site. Dir and RaftAddress are required, and either InitialSites or
// Join. Every zero field means its documented default.
type Config struct {
	// Dir holds the site's ID, its Raft log and its replicas. A site's data belongs to one
	// cluster: the ID is written on first start and never changes.
	Dir string
	// RaftAddress is host:port where this site listens for and is reached by the other sites.
	// It must stay the same across restarts.
	RaftAddress string
	// InitialSites bootstraps a cluster: the RaftAddress of every initial site (this one
	// included), the same list on each. Ignored once the site has state.
	InitialSites []string
	// Join starts a site that joins an existing cluster: it waits until a member adds it
	// (Site.AddSite with this site's ID and address), then receives its replicas.
	Join bool
	// DeploymentID keeps clusters apart: sites with another ID are refused. Default 1.
	DeploymentID uint64
	// TLS, when set, makes all traffic between sites mutual TLS (Raft and forwarded calls).
	TLS *TLS
	// ServiceAddress is host:port where this site serves the calls other sites forward to it:
	// Stores and reads of shards they hold no replica of (see ReadReplicas). Default:
	// RaftAddress's host with a port the system picks. The meta group records each site's
	// address at every start, so it may change across restarts.
	ServiceAddress string
	// ReadReplicas, at bootstrap, gives every site a replica of every shard, a non-voting one
	// where it does not vote (PlacementEverySite): every read is local, and every site stores
	// and applies every message. Default false (PlacementVoters): a shard lives on its
	// ReplicationFactor voters only, so capacity grows with the sites, and a site without a
	// replica of a shard forwards that shard's Stores and reads to one that has it. Ignored
	// once the cluster is bootstrapped (the placement is part of the schema).
	ReadReplicas bool

	// RTT is the round trip the Raft timers count in. Default 10ms. ElectionRTT (default 50)
	// and HeartbeatRTT (default 5) are multiples of it: on a loaded 2-core machine an election
	// timeout of 100ms caused leader churn, 500ms did not.
	RTT          time.Duration
	ElectionRTT  uint64
	HeartbeatRTT uint64
	// LogDB is the Raft log's storage of a new site. Default LogDBSegments. A site keeps the one
	// it was created with (recorded in its SITE file; sites created before it was recorded use
	// LogDBPebble).
	LogDB LogDB
	// LogDBMemory sizes LogDBPebble's write buffers. Default LogDBSmall.
	LogDBMemory LogDBMemory
	// LogShards is how many workers step this site's Raft groups and persist their logs
	// (dragonboat's engine execution shards and LogDB shards, the same number). Default 1:
	// the entries of every group that the site persists in one round go to disk in one
	// write with one fsync, so fsyncs do not grow with NShards. Fixed once the site has
	// state (recorded in its SITE file); a directory written before this setting existed
	// keeps dragonboat's 16.
	LogShards int
	// SnapshotEntries: every this many entries a replica syncs its state and lets the log be
	// compacted (an on-disk state machine's snapshot carries no data). Default 10000.
	SnapshotEntries uint64
	// CompactionOverhead is how many entries stay in the log after a compaction, so that a
	// briefly lagging replica catches up from the log instead of a full snapshot. Default 5000.
	CompactionOverhead uint64

	// ReplicationFactor is the number of voting replicas per shard, used when the cluster is
	// bootstrapped (later: Site.SetReplicationFactor). Default 3, at most the number of sites.
	ReplicationFactor int
	// DB are the DB's options. At bootstrap NShards (default 16), Layout, WildcardThresholds,
	// Retention and GenerationSpan become the cluster's schema, stored in the meta group;
	// later starts use the stored schema. MaxMessageBytes, MaxBatchMessages, MaxBatchBytes,
	// QueueLength, Logger and Expert.Now/MaintenanceInterval/MemTableBytes (per replica)
	// apply per site. Durability is Raft's (a message is acknowledged once a quorum holds it
	// in its log). StorageQuota applies per site to its replica stores (not the Raft log):
	// while they are over it, Stores through the site fail with ErrQuotaExceeded and nothing
	// is proposed (see siteQuota). Expert.FS is not supported in replicated mode.
	DB *ds.Options

	// MaxInFlight is how many proposals of one shard a site keeps in flight. Default 2: more
	// in flight means fewer messages per entry, and the Raft log's fsyncs bound entries per
	// second (measured: 2 gave 22k msgs/s, 8 gave 19k, 4 shards × 3 sites).
	MaxInFlight int
	// LeaderBatching sends every Store batch of a shard this site holds a replica of but does
	// not lead to the site that leads it, whose proposer puts the batches of all sites in one
	// entry per round; otherwise (default) the batch is proposed through the local replica,
	// which passes it to the leader in its own entry. Batches of shards the site holds no
	// replica of always go to a site that holds one (the leader when it is known).
	LeaderBatching bool
	// ProposalTimeout bounds how long a Store keeps retrying a proposal (no leader, lost
	// quorum) when its ctx has no earlier deadline. Default 10s.
	ProposalTimeout time.Duration
	// ReconcileInterval is how often a site compares the meta group's allocation with the
	// replicas it runs. Default 100ms.
	ReconcileInterval time.Duration
	// LostAfter is how long another site must have been unreachable from this one before the
	// admin view calls it lost rather than down (see HealthLost). Default 5 minutes.
	LostAfter time.Duration

	// transport replaces dragonboat's TCP transport (tests inject faults with it).
	transport config.TransportFactory
}

func (c *Config) ensureDefaults() {
	if c.DeploymentID == 0 {
		c.DeploymentID = 1
	}
	if c.RTT == 0 {
		c.RTT = 10 * time.Millisecond
	}
	if c.ElectionRTT == 0 {
		c.ElectionRTT = 50
	}
	if c.HeartbeatRTT == 0 {
		c.HeartbeatRTT = 5
	}
	if c.LogDB == "" {
		c.LogDB = LogDBSegments
	}
	if c.LogDBMemory == "" {
		c.LogDBMemory = LogDBSmall
	}
	if c.LogShards == 0 {
		c.LogShards = 1
	}
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = 10000
	}
	if c.CompactionOverhead == 0 {
		c.CompactionOverhead = 5000
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = 3
	}
	if c.DB == nil {
		c.DB = &ds.Options{}
	} else {
		c.DB = c.DB.Clone()
	}
	if c.DB.NShards == 0 {
		c.DB.NShards = 16
	}
	if c.DB.Expert.MemTableBytes == 0 {
		c.DB.Expert.MemTableBytes = 16 << 20
	}
	c.DB.EnsureDefaults()
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 2
	}
	if c.ProposalTimeout == 0 {
		c.ProposalTimeout = 10 * time.Second
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = 100 * time.Millisecond
	}
	if c.LostAfter == 0 {
		c.LostAfter = 5 * time.Minute
	}
	if c.ServiceAddress == "" {
		if host, _, err := net.SplitHostPort(c.RaftAddress); err == nil {
			c.ServiceAddress = net.JoinHostPort(host, "0")
		}
	}
}

// ErrInvalidConfig is wrapped by every configuration error.
var ErrInvalidConfig = errors.New("strata: invalid site configuration")

func (c *Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Dir == "" {
		bad("Dir is empty")
	}
	if _, _, err := net.SplitHostPort(c.RaftAddress); err != nil {
		bad("RaftAddress %q: %v", c.RaftAddress, err)
	}
	if c.Join && len(c.InitialSites) > 0 {
		bad("both Join and InitialSites are set")
	}
	seen := map[string]bool{}
	for _, a := range c.InitialSites {
		if _, _, err := net.SplitHostPort(a); err != nil {
			bad("InitialSites: %q: %v", a, err)
		}
		if seen[a] {
			bad("InitialSites: %q twice", a)
		}
		seen[a] = true
	}
	if len(c.InitialSites) > 0 && !seen[c.RaftAddress] {
		bad("InitialSites does not include RaftAddress %q", c.RaftAddress)
	}
	if c.ElectionRTT <= 2*c.HeartbeatRTT {
		bad("ElectionRTT %d must exceed 2×HeartbeatRTT %d", c.ElectionRTT, c.HeartbeatRTT)
	}
	if c.LogDB != LogDBTan && c.LogDB != LogDBPebble && c.LogDB != LogDBSegments {
		bad("LogDB %q", c.LogDB)
	}
	switch c.LogDBMemory {
	case LogDBTiny, LogDBSmall, LogDBMedium, LogDBLarge:
	default:
		bad("LogDBMemory %q", c.LogDBMemory)
	}
	if c.LogShards < 1 || c.LogShards > 64 {
		bad("LogShards %d not in [1, 64]", c.LogShards)
	}
	if c.ReplicationFactor < 1 || c.ReplicationFactor > 7 {
		bad("ReplicationFactor %d not in [1, 7]", c.ReplicationFactor)
	}
	if c.MaxInFlight < 1 || c.MaxInFlight > 1024 {
		bad("MaxInFlight %d not in [1, 1024]", c.MaxInFlight)
	}
	if c.ProposalTimeout < 0 || c.ReconcileInterval < 0 || c.LostAfter < 0 {
		bad("negative duration (ProposalTimeout %v, ReconcileInterval %v, LostAfter %v)", c.ProposalTimeout, c.ReconcileInterval, c.LostAfter)
	}
	if c.ServiceAddress != "" {
		if _, _, err := net.SplitHostPort(c.ServiceAddress); err != nil {
			bad("ServiceAddress %q: %v", c.ServiceAddress, err)
		}
	}
	if c.TLS != nil && (c.TLS.CAFile == "" || c.TLS.CertFile == "" || c.TLS.KeyFile == "") {
		bad("TLS needs CAFile, CertFile and KeyFile")
	}
	if err := c.DB.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
