package raftgroup

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/inspect"
)

// This file is the read-only inspection of a stopped site's directory, for operators' tools
// (ds-info -dir). A site keeps each shard in the Pebble of its replica of the shard's group:
//
//	<site>/SITE                              the site's ID, deployment and Raft address
//	       nodehost/                         dragonboat's NodeHost; the Raft log (raftlog/ segments) (not read here)
//	       replicas/shard-0003-r7/CURRENT    names the replica's live Pebble ("db-000002")
//	                              db-000002/ the live Pebble: shard 3, no shard key prefix
//
// Inspect picks one replica directory per shard, follows its CURRENT and opens the stores
// through inspect.OpenReplicas, which opens Pebble read-only over a filesystem that refuses
// writes: nothing in the directory changes, and a running site (which holds its stores'
// Pebble locks) is refused with inspect.ErrInUse.

// SiteInspector is a read-only view of a stopped site's directory: every method of
// inspect.Inspector (generations, streams, tries, messages, Check) reads the shard replicas the
// site holds, and Replicas says which replica directory each shard was read from. Close
// releases the stores. It is not safe for concurrent use.
type SiteInspector struct {
	*inspect.Inspector
	Dir         string // the site's directory, as given to Inspect
	Site        SiteID
	RaftAddress string
	Replicas    []InspectedReplica // by shard, one per shard of the Inspector
}

// InspectedReplica is where a SiteInspector reads one shard.
type InspectedReplica struct {
	Shard ds.ShardID
	// ReplicaID is the replica the shard is read from; 0 when the site holds no replica
	// directory of the shard (the shard is then listed as not loaded).
	ReplicaID uint64
	Dir       string // the replica's directory, <site>/replicas/shard-XXXX-rN
	Store     string // the live Pebble directory its CURRENT names (db-NNNNNN), under Dir
	Applied   uint64 // the last Raft log index the store applied
	// Ignored are the shard's other replica directories on this site: a removed replica whose
	// data was not deleted, a replica whose creation was interrupted, or a damaged one.
	Ignored []IgnoredReplica
}

// IgnoredReplica is a replica directory that Inspect did not read, and why.
type IgnoredReplica struct {
	ReplicaID uint64
	Dir       string
	Reason    string
	// Err is set when the directory is damaged (a CURRENT that does not name a store, which
	// wraps ds.ErrCorruption, or a store that does not open); SiteInspector.Check reports it.
	Err error
}

// maxCurrentBytes bounds the CURRENT file read: it holds one short name.
const maxCurrentBytes = 256

// IsSiteDir reports whether dir is a replicated site's directory (it holds a SITE file).
func IsSiteDir(dir string) bool {
	st, err := os.Stat(filepath.Join(dir, siteFileName))
	return err == nil && st.Mode().IsRegular()
}

// Inspect opens the directory of a stopped site read-only.
//
// The site is known by its SITE file (a directory without one fails with an error wrapping
// os.ErrNotExist; a SITE that does not decode, ds.ErrCorruption). Each shard is read from one
// of the site's replica directories of it, chosen so that the choice does not depend on the
// order of directory entries:
//
//  1. a directory is usable when its CURRENT names a store (db-NNNNNN) that exists;
//  2. among the usable ones, the store that applied the most of the shard's Raft log (the
//     highest applied index: the log is the group's, so indexes compare across replicas);
//  3. on a tie, the highest replica ID (IDs are never reused: the newest replica).
//
// Normally a site has one replica directory per shard; there are more when a removed
// replica's data could not be deleted (its directory is left in place) or a replica's
// creation was interrupted before its CURRENT was written. The others are listed in
// InspectedReplica.Ignored; a damaged one (a CURRENT that does not name an existing store) is
// also reported by Check. A shard with replica directories of which none is usable fails the
// call: with ds.ErrCorruption when a CURRENT is damaged, else with os.ErrNotExist. A site
// directory without any replica directory fails too (os.ErrNotExist).
//
// The number of shards is the cluster's, which a site records in its SITE file once it knows
// the schema. For a directory written before that was recorded it is one more than the
// highest shard that has a replica directory. A shard without a usable directory (a site still
// receiving its replicas, or one that left) is listed as not loaded (its error wraps
// ds.ErrShardNotFound). A replica directory of a shard beyond NShards is an error.
//
// The guarantees are inspect.OpenReplicas': nothing in dir is written, and a store whose Pebble
// lock is held — the site is running — fails the call with inspect.ErrInUse.
func Inspect(dir string) (*SiteInspector, error) {
	f, err := readSiteFile(dir)
	if err != nil {
		return nil, err
	}
	cands, nShards, err := findReplicaDirs(dir)
	if err != nil {
		return nil, err
	}
	if f.NShards > 0 {
		if nShards > f.NShards {
			return nil, fmt.Errorf("%w: site %s: a replica directory of shard %d, but the cluster has %d shards", ds.ErrCorruption, dir, nShards-1, f.NShards)
		}
		nShards = f.NShards
	}
	si := &SiteInspector{Dir: dir, Site: f.ID, RaftAddress: f.RaftAddress, Replicas: make([]InspectedReplica, nShards)}
	var stores []inspect.ReplicaStore
	for sh := range nShards {
		r, err := chooseReplica(ds.ShardID(sh), cands[ds.ShardID(sh)])
		if err != nil {
			return nil, err
		}
		si.Replicas[sh] = r
		if r.ReplicaID != 0 {
			stores = append(stores, inspect.ReplicaStore{Shard: r.Shard, Path: filepath.Join(r.Dir, r.Store)})
		}
	}
	in, err := inspect.OpenReplicas(nShards, stores)
	if err != nil {
		return nil, fmt.Errorf("site %s: %w", dir, err)
	}
	si.Inspector = in
	for i, r := range si.Replicas {
		if r.ReplicaID != 0 {
			// An applied index that does not decode is reported by Check; 0 shows it here.
			si.Replicas[i].Applied, _ = in.AppliedIndex(r.Shard)
		}
	}
	return si, nil
}

// readSiteFile reads dir/SITE without changing anything.
func readSiteFile(dir string) (siteFile, error) {
	var f siteFile
	path := filepath.Join(dir, siteFileName)
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return f, fmt.Errorf("%s: no %s file, not a replicated site's directory: %w", dir, siteFileName, err)
		}
		return f, err
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("%w: %s: %v", ds.ErrCorruption, path, err)
	}
	return f, nil
}

// replicaCandidate is one replica directory of a shard.
type replicaCandidate struct {
	replica uint64
	dir     string
}

// findReplicaDirs lists the replica directories under dir/replicas by shard, and returns
// one more than the highest shard among them. Entries of another form are not replicas and
// are skipped.
func findReplicaDirs(dir string) (map[ds.ShardID][]replicaCandidate, int, error) {
	root := filepath.Join(dir, replicasDir)
	entries, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, 0, err
	}
	cands := map[ds.ShardID][]replicaCandidate{}
	nShards := 0
	for _, e := range entries {
		sh, id, ok := parseReplicaDir(e.Name())
		if !ok || !e.IsDir() {
			continue
		}
		cands[sh] = append(cands[sh], replicaCandidate{id, filepath.Join(root, e.Name())})
		nShards = max(nShards, int(sh)+1)
	}
	if nShards == 0 {
		return nil, 0, fmt.Errorf("site %s holds no shard replica (no replica directory under %s): %w", dir, root, os.ErrNotExist)
	}
	return cands, nShards, nil
}

// readCurrent returns the store a replica directory's CURRENT names, checking that it exists.
// A missing CURRENT is an error wrapping os.ErrNotExist; a damaged one, ds.ErrCorruption.
func readCurrent(dir string) (string, error) {
	path := filepath.Join(dir, currentFile)
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCurrentBytes+1))
	if err != nil {
		return "", err
	}
	name := strings.TrimSpace(string(b))
	if _, ok := parseStoreName(name); len(b) > maxCurrentBytes || !ok {
		return "", fmt.Errorf("%w: %s: names %q, not a store (db-NNNNNN)", ds.ErrCorruption, path, truncate(name, 40))
	}
	st, err := os.Stat(filepath.Join(dir, name))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("%w: %s names %s, which does not exist", ds.ErrCorruption, path, name)
	case err != nil:
		return "", err
	case !st.IsDir():
		return "", fmt.Errorf("%w: %s names %s, which is not a directory", ds.ErrCorruption, path, name)
	}
	return name, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// chooseReplica picks the replica directory shard sh is read from (see Inspect). With more
// than one usable directory it opens each store read-only to read its applied index.
func chooseReplica(sh ds.ShardID, cands []replicaCandidate) (InspectedReplica, error) {
	if len(cands) == 0 {
		return InspectedReplica{Shard: sh}, nil
	}
	type usable struct {
		replicaCandidate
		store   string
		applied uint64
	}
	var ok []usable
	var ignored []IgnoredReplica
	var damaged, lastErr error
	for _, c := range cands {
		store, err := readCurrent(c.dir)
		switch {
		case err == nil:
			ok = append(ok, usable{replicaCandidate: c, store: store})
		case errors.Is(err, os.ErrNotExist):
			ignored = append(ignored, IgnoredReplica{ReplicaID: c.replica, Dir: c.dir, Reason: "no CURRENT file (its creation was interrupted)"})
			lastErr = fmt.Errorf("shard %d: replica directory %s has no CURRENT file: %w", sh, c.dir, err)
		case errors.Is(err, ds.ErrCorruption):
			ignored = append(ignored, IgnoredReplica{ReplicaID: c.replica, Dir: c.dir, Reason: "damaged CURRENT file", Err: err})
			damaged = fmt.Errorf("shard %d: %w", sh, err)
		default:
			return InspectedReplica{}, fmt.Errorf("shard %d: replica directory %s: %w", sh, c.dir, err)
		}
	}
	if len(ok) == 0 {
		if damaged != nil {
			return InspectedReplica{}, damaged
		}
		return InspectedReplica{}, lastErr
	}
	if len(ok) > 1 {
		// A store that does not open is left aside like a damaged CURRENT (a leftover must
		// not block the inspection of the others), unless the site is running.
		var opened []usable
		var openErr error
		for _, o := range ok {
			a, err := appliedIndexOf(sh, filepath.Join(o.dir, o.store))
			switch {
			case errors.Is(err, inspect.ErrInUse):
				return InspectedReplica{}, err
			case err != nil:
				ignored = append(ignored, IgnoredReplica{ReplicaID: o.replica, Dir: o.dir, Reason: "its store does not open", Err: err})
				openErr = err
				continue
			}
			o.applied = a
			opened = append(opened, o)
		}
		if len(opened) == 0 {
			return InspectedReplica{}, openErr
		}
		ok = opened
	}
	// Highest applied index, then highest replica ID.
	slices.SortFunc(ok, func(a, b usable) int {
		if c := cmp.Compare(b.applied, a.applied); c != 0 {
			return c
		}
		return cmp.Compare(b.replica, a.replica)
	})
	for _, o := range ok[1:] {
		ignored = append(ignored, IgnoredReplica{ReplicaID: o.replica, Dir: o.dir,
			Reason: fmt.Sprintf("not chosen: applied index %d (chosen: replica %d at %d)", o.applied, ok[0].replica, ok[0].applied)})
	}
	slices.SortFunc(ignored, func(a, b IgnoredReplica) int { return cmp.Compare(a.ReplicaID, b.ReplicaID) })
	return InspectedReplica{Shard: sh, ReplicaID: ok[0].replica, Dir: ok[0].dir, Store: ok[0].store, Ignored: ignored}, nil
}

// appliedIndexOf opens one replica store read-only and returns its applied index; an index
// that does not decode counts as 0 (Check reports it if the store is the one chosen).
func appliedIndexOf(sh ds.ShardID, path string) (uint64, error) {
	in, err := inspect.OpenReplicas(int(sh)+1, []inspect.ReplicaStore{{Shard: sh, Path: path}})
	if err != nil {
		return 0, fmt.Errorf("shard %d: %w", sh, err)
	}
	defer in.Close()
	a, _ := in.AppliedIndex(sh)
	return a, nil
}

// Check runs inspect.Inspector.Check over the stores read, and reports as well every ignored
// replica directory whose CURRENT is damaged (IgnoredReplica.Err).
func (si *SiteInspector) Check(maxProblems int) *inspect.CheckReport {
	if maxProblems <= 0 {
		maxProblems = 100
	}
	r := si.Inspector.Check(maxProblems)
	for _, rep := range si.Replicas {
		for _, ig := range rep.Ignored {
			if ig.Err != nil && len(r.Problems) < maxProblems {
				r.Problems = append(r.Problems, inspect.CheckProblem{Shard: int(rep.Shard), Path: ig.Dir, Err: ig.Err})
			}
		}
	}
	return r
}
