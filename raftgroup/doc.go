// Package raftgroup replicates Strata's shards with multi-Raft (dragonboat v4), so that a
// cluster of sites loses no acknowledged message when a site dies, and offers the replicated
// store through the same *ds.DB API as the embedded one (Site.DB).
//
// # Model
//
// A site is one process with one dragonboat NodeHost, identified by 8 random bytes written in
// its directory on first start (SITE). Every site runs a replica of the meta group. Where the
// shard groups' replicas live is the cluster's placement (Schema.Placement, chosen at
// bootstrap by Config.ReadReplicas):
//
//   - PlacementVoters (default): a shard's replicas are its ReplicationFactor voters, spread
//     evenly over the sites (shard i starts on RF consecutive sites from slot i; a joining
//     site takes replicas over, a leaving one hands them on, one move per shard at a time: a
//     new voter is added, caught up by snapshot and promoted, then the old one removed). So
//     capacity grows with the sites. A site without a replica of a shard forwards that
//     shard's Stores and reads to a site that holds one (forward.go, over the site service of
//     service.go: net/rpc on Config.ServiceAddress, mutual TLS with Config.TLS), and is fed
//     the shard's durable steps by a holder (tail.go) so that subscriptions and record
//     watchers there are served as on a holder.
//   - PlacementEverySite: every site also holds a non-voting replica of every shard where it
//     does not vote, so every read is local and every site applies every message.
//
// A Store on a site holding the shard is proposed through its local replica (which forwards
// it to the leader).
//
//	site ── NodeHost ─┬─ meta group (group 1): schema, sites, replicas, replica-ID counter
//	                  ├─ shard 0 (group 1000): shardSM ── shard.Replica ── own Pebble
//	                  ├─ shard 3 (group 1003): …            (the shards placed here)
//	                  ├─ proposers (one per shard): group commit → Raft entries
//	                  └─ site service ◄──► other sites' forwarders (shards not placed here)
//
// # The meta group
//
// An in-memory state machine (snapshots are its JSON). Admin operations are its commands:
// bootstrap (applied once; the initial sites and the schema), register (an initial site's ID),
// add-site, leave, set-rf, and member (a membership change was made). After each, a
// deterministic planner updates the replica records: min(ReplicationFactor, active sites)
// voters per group chosen on the sites with the fewest, removal of replicas on leaving sites,
// and either (PlacementVoters) no other replica and moves that even out the sites' loads, or
// (PlacementEverySite) a non-voting replica on every other site and demotion by
// remove-and-re-add with a new ID.
// Replica IDs come from a counter and are never reused; initial sites have IDs 1..N (their
// slot), and a joining site's meta replica ID derives from its site ID (top bit set), so a
// joiner knows it before it can read the meta group.
//
// Every site's reconcile loop starts the replicas the meta group allocates to it (from its own
// state when it has one, with the initial membership at bootstrap, else as a joiner that waits
// for the leader's snapshot) and stops and deletes the ones removed. The site that leads a
// group carries out its membership changes (the meta group's leader the meta group's), one
// per group per round, deciding on a linearizable read of the meta state: a new replica is added
// as non-voting and, if it should vote, promoted once its site reported it caught up (a
// ReadIndex completed on it); a voter is removed only while
// enough other voters remain; a demoted voter keeps running until the group removed it (its
// non-voting replacement starts then); a leaving site's meta replica goes last, once the
// site reported its shard replicas stopped (it learns of their removal through it). A change
// whose answer was lost is recognised from the group's membership and recorded.
//
// # The shard state machine
//
// shardSM (dragonboat's IOnDiskStateMachine) drives a shard.Replica in its own Pebble:
//
//	<dir>/replicas/shard-0003-r7/CURRENT     names the live Pebble directory
//	                            db-000002/   the live Pebble
//	                            snap-…/      a checkpoint being streamed to another replica
//	                            db-000003/   a snapshot being received (until CURRENT names it)
//
// Update applies a run of entries as one Pebble batch together with the applied index and the
// de-duplication records (shard.Replica.ApplyEntries), without fsync, and makes them readable
// at once (a committed entry is on a quorum's logs). Pebble's WAL stays on: the Raft log is
// the durable record, so its fsync is not needed per batch, but with the WAL Sync (called by
// dragonboat before it compacts the log) is one fsync instead of a memtable flush, and a
// killed process recovers its applied state from the page cache instead of replaying the
// log. Turning the WAL off measured no faster here (the Raft log's fsyncs dominate).
//
// The Raft log of every group a site holds is one log per site (Config.LogShards 1), by
// default Strata's own (Config.LogDB "segments", package raftgroup/internal/raftlog: segment
// files under <dir>/nodehost/…/raftlog/, one frame and one fdatasync per round, format and
// invariants in its doc.go); sites created before keep dragonboat's Pebble LogDB, as their
// SITE file says. Site.LogStats counts its fsyncs.
//
// Snapshots (to a new or lagging replica): a Pebble checkpoint, streamed file by file through
// zstd (format in snapshot.go). The receiver writes it beside the live store, opens it, then
// switches CURRENT atomically and swaps the handle; readers hold a read lock, so they finish
// on the old store before it is closed. Leftovers of an interrupted transfer are removed when
// the replica opens.
//
// # Proposals
//
// Each site has a proposer per shard: it takes a pipeline slot (MaxInFlight per shard and
// site), then everything queued meanwhile (up to MaxBatchMessages/MaxBatchBytes) becomes one
// command, s2-compressed when that pays, in an entry that carries (proposer, sequence, floor)
// — the proposer is the site ID plus a random incarnation, so a restarted site never reuses a
// (proposer, sequence). A proposal is retried with backoff on a busy queue, no leader, a
// dropped or timed-out attempt, until the callers' ctxs end or ProposalTimeout passes; the
// replicas apply a sequence once (see shard.Replica), so a retried proposal is stored once,
// and the duplicate's result carries the original's timestamps.
//
// Generation rotation and retention are entries too, proposed by the site that leads the
// shard; a rotation carries the generation it seals (IfCurrent), so two sites that both
// decided to rotate add one generation.
//
// # Errors
//
// A Store that cannot commit in time (no leader, quorum lost, this site cut off) fails with
// ds.ErrUnavailable (ds.IsRetryable): nothing was stored, unless the error also wraps
// ds.ErrOutcomeUnknown (an attempt timed out after a leader had it). Admin operations wrap ErrSiteExists,
// ErrSiteNotFound, ErrTooFewSites, ErrNotBootstrapped or ErrInvalidConfig.
//
// # Limits
//
//   - A forwarded call adds a round trip between sites; a forwarding site's tail
//     subscriptions and record watchers are fed by a holder's ring of recent steps (tail.go,
//     a long poll), those behind the tail read through forwarded calls, and Layout and
//     DroppedMessages answer only where the shard has a replica (ds-info layout: ask a site
//     that holds it).
//   - A site's RaftAddress cannot change (dragonboat addresses replicas by it).
//   - StorageQuota is admission control per site: while the site's replica stores are over
//     it, Stores through that site fail with ErrQuotaExceeded and nothing is proposed (a
//     replica cannot refuse a committed entry). A custom FS is not supported.
//   - A full disk stops the site's process: dragonboat treats a failed Raft log write as fatal
//     (its Pebble logger panics), also while Open starts a site on a disk too small for the
//     log's preallocated files (seen with a 40 MiB filesystem). Nothing acknowledged is lost
//     (a quorum holds it); free space and restart. Keep StorageQuota well below the free
//     space so that the quota, not the disk, is what stops writes.
//
// # Testing
//
// Package raftgroup/clustertest starts a local cluster (every site in one process, on
// 127.0.0.1) for tests and benchmarks; this package's own tests keep a small in-package
// equivalent (cluster_test.go) because they reach unexported state, which an importer cannot.
package raftgroup
