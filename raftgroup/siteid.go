package raftgroup

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-mq/strata/internal/fsutil"
)

// SiteID identifies a site for its whole life: 8 random bytes chosen on first start and kept
// in the site's directory. Addresses may be reconfigured; the ID never changes.
type SiteID [8]byte

func (id SiteID) String() string { return hex.EncodeToString(id[:]) }

// ParseSiteID parses the 16 hex digits of SiteID.String.
func ParseSiteID(s string) (SiteID, error) {
	var id SiteID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("%w: site ID %q is not 16 hex digits", ErrInvalidConfig, s)
	}
	copy(id[:], b)
	return id, nil
}

// MarshalText and UnmarshalText make a SiteID hex in JSON.
func (id SiteID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

func (id *SiteID) UnmarshalText(b []byte) error {
	v, err := ParseSiteID(string(b))
	*id = v
	return err
}

// metaReplicaID is the site's replica ID in the meta group when it joined after bootstrap:
// derived from the site ID, so a joining site knows it before it can read the meta group, and
// with the top bit set, so it never equals an ID from the meta group's counter (initial
// sites have IDs 1..N).
func (id SiteID) metaReplicaID() uint64 { return binary.BigEndian.Uint64(id[:]) | 1<<63 }

// siteFile is the SITE file in a site's directory.
type siteFile struct {
	ID           SiteID `json:"id"`
	DeploymentID uint64 `json:"deployment_id"`
	RaftAddress  string `json:"raft_address"`
	// MetaReplica is the site's replica ID in the meta group.
	MetaReplica uint64 `json:"meta_replica"`
	// Bootstrap: the site was one of the initial sites (it starts its first replicas with the
	// initial membership).
	Bootstrap []string `json:"bootstrap,omitempty"`
	// MetaVoter: the site's meta replica was seen promoted to a voter (a joiner's starts
	// non-voting); it must restart as what the membership says.
	MetaVoter bool `json:"meta_voter,omitempty"`
	// NShards is the cluster's number of shards, recorded once the site knows the schema, so
	// that an inspection of the stopped site's directory (Inspect) knows it without reading
	// the meta group's Raft log. 0 in directories written before it was recorded.
	NShards int `json:"nshards,omitempty"`
	// LogShards is Config.LogShards as the site was created with (dragonboat refuses another
	// value later). 0 in directories written before it was recorded: they use 16.
	LogShards int `json:"log_shards,omitempty"`
	// LogDB is Config.LogDB as the site was created with (dragonboat refuses another LogDB
	// in its directory). Empty in directories written before it was recorded: LogDBPebble.
	LogDB LogDB `json:"log_db,omitempty"`
}

// logDB is the Raft log storage the site's NodeHost must use.
func (f siteFile) logDB() LogDB {
	if f.LogDB == "" {
		return LogDBPebble
	}
	return f.LogDB
}

// legacyLogShards is dragonboat's default, which sites created before Config.LogShards used.
const legacyLogShards = 16

// logShards is the number of engine and LogDB shards the site's NodeHost must use.
func (f siteFile) logShards() int {
	if f.LogShards == 0 {
		return legacyLogShards
	}
	return f.LogShards
}

const siteFileName = "SITE"

// loadOrCreateSite reads dir/SITE, or creates it (with a new random ID) for a new site.
func loadOrCreateSite(cfg *Config) (siteFile, bool, error) {
	f, err := readSiteFile(cfg.Dir)
	if err == nil {
		if f.DeploymentID != cfg.DeploymentID {
			return f, false, fmt.Errorf("%w: %s belongs to deployment %d, configured %d", ErrInvalidConfig, cfg.Dir, f.DeploymentID, cfg.DeploymentID)
		}
		if f.RaftAddress != cfg.RaftAddress {
			return f, false, fmt.Errorf("%w: %s was started with RaftAddress %s, configured %s (addresses cannot change yet)", ErrInvalidConfig, cfg.Dir, f.RaftAddress, cfg.RaftAddress)
		}
		return f, true, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return siteFile{}, false, err
	}
	if !cfg.Join && len(cfg.InitialSites) == 0 {
		return siteFile{}, false, fmt.Errorf("%w: %s holds no site: set InitialSites to bootstrap or Join to join", ErrInvalidConfig, cfg.Dir)
	}
	f = siteFile{DeploymentID: cfg.DeploymentID, RaftAddress: cfg.RaftAddress, LogShards: cfg.LogShards, LogDB: cfg.LogDB}
	if _, err := rand.Read(f.ID[:]); err != nil {
		return f, false, err
	}
	if cfg.Join {
		f.MetaReplica = f.ID.metaReplicaID()
	} else {
		f.Bootstrap = sortedCopy(cfg.InitialSites)
		f.MetaReplica = uint64(slotOf(f.Bootstrap, cfg.RaftAddress))
	}
	if err := fsutil.MkdirAllSynced(vfs.Default, cfg.Dir); err != nil {
		return f, false, err
	}
	if err := writeSiteFile(cfg.Dir, f); err != nil {
		return f, false, err
	}
	return f, false, nil
}

func writeSiteFile(dir string, f siteFile) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(vfs.Default, filepath.Join(dir, siteFileName), b)
}

// PrepareSite creates the site directory of cfg (its ID) without starting the site, or reads
// it if it exists, and returns the site's ID: an operator adds a joining site with this ID
// (AddSite on a member) before or after starting it.
func PrepareSite(cfg Config) (SiteID, error) {
	cfg.ensureDefaults()
	if err := cfg.validate(); err != nil {
		return SiteID{}, err
	}
	f, _, err := loadOrCreateSite(&cfg)
	return f.ID, err
}
