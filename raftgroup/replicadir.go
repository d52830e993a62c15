package raftgroup

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/stream"
)

// The names of a site's replica directories, encoded and decoded here only:
//
//	<Dir>/replicas/shard-NNNN-rID/     one per shard replica the site ran (NNNN: the shard,
//	                                   4 digits or more; ID: the replica ID, decimal)
//	                  CURRENT          the name of the store in use, and a newline
//	                  db-NNNNNN/       a store (a Pebble directory), NNNNNN 6 digits or more;
//	                                   a snapshot's recovery writes the next number, then
//	                                   switches CURRENT to it
const (
	replicasDir = "replicas"
	currentFile = "CURRENT"
	firstStore  = 1
)

// replicaDir returns the directory of a shard replica under the site's directory.
func replicaDir(siteDir string, id stream.ShardID, replica uint64) string {
	return filepath.Join(siteDir, replicasDir, fmt.Sprintf("shard-%04d-r%d", id, replica))
}

// parseReplicaDir decodes a replica directory's name (its base name).
func parseReplicaDir(name string) (id stream.ShardID, replica uint64, ok bool) {
	rest, ok := strings.CutPrefix(name, "shard-")
	if !ok {
		return 0, 0, false
	}
	sh, r, ok := strings.Cut(rest, "-r")
	if !ok || len(sh) < 4 || len(sh) > 5 || !digits(sh) || len(r) < 1 || len(r) > 20 || !digits(r) {
		return 0, 0, false
	}
	n, err1 := strconv.Atoi(sh)
	rep, err2 := strconv.ParseUint(r, 10, 64)
	if err1 != nil || err2 != nil || n >= ds.MaxShards || rep == 0 {
		return 0, 0, false
	}
	return stream.ShardID(n), rep, true
}

// storeName returns the name of a replica's store number seq.
func storeName(seq int) string { return fmt.Sprintf("db-%06d", seq) }

// parseStoreName decodes a store's name; ok is false for anything storeName does not write.
func parseStoreName(name string) (seq int, ok bool) {
	d, ok := strings.CutPrefix(name, "db-")
	if !ok || len(d) < 6 || len(d) > 18 || !digits(d) {
		return 0, false
	}
	n, err := strconv.Atoi(d)
	return n, err == nil
}

func digits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}
