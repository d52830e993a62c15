// Command ds-info is the operator's view of an embedded Strata data directory (the kind
// ds.Open creates) or of a stopped replicated site's directory (the kind raftgroup.Open
// creates): its manifest, generations, learned streams and topic tries, messages, and a full
// integrity check.
//
//	ds-info info        -dir DIR                      manifest, disk bytes, generation and stream counts
//	ds-info shards      -dir DIR                      per shard: generations, streams, messages, disk bytes
//	ds-info generations -dir DIR                      per shard and generation: span, state, layout,
//	                                                  streams, messages, disk bytes
//	ds-info streams     -dir DIR [-filter F]          learned patterns per shard and generation (filter default #)
//	ds-info trie        -dir DIR -shard N -gen G      the learned topic structure of one shard-generation
//	ds-info messages    -dir DIR [-filter F] [-since RFC3339] [-limit N]
//	ds-info sessions    -dir DIR                      durable MQTT sessions (package session's records):
//	                                                  owner, state, expiry, subscriptions, QoS 2
//	ds-info check       -dir DIR                      decode every key and value, verify order and checksums
//
//	ds-info -url URL <command> [flags]                 info, shards, generations, streams, trie, messages,
//	                                                  sessions
//	                                                  of a running node, through its admin handler
//	                                                  (inspect.Handler, raftgroup.Site.AdminHandler)
//	ds-info cluster     -url URL                      a replicated site's view: sites and their health,
//	                                                  every group's leader, Raft indexes, transitions
//
// On a replicated site (-url), info adds the sites by health (up, down, lost, left), the
// shards without a known leader and the replica transitions in progress; shards adds each
// shard's leader, term, this site's last log index, applied index and apply lag, and its
// replicas with their roles.
//
// Every subcommand prints an aligned table, or JSON with -json; the JSON is the same, row for
// row, with -dir and with -url (the types of package ds: InfoView, GenerationView, ...).
//
// A directory with a SITE file is a replicated site's: -dir reads, through raftgroup.Inspect,
// the Pebble store of one replica directory per shard (the one that applied the most of the
// shard's Raft log; see raftgroup.Inspect), and everything else works alike. info then names
// the site and, per shard, the replica directory read (JSON: "site"); check also decodes the
// replicas' applied indexes and de-duplication records.
//
// The directory is never modified: ds-info opens Pebble read-only (the WAL is replayed in
// memory) through inspect.Open, whose filesystem refuses every write, and starts no shard
// writer, so no rotation or retention runs. It takes Pebble's directory lock, so it cannot
// inspect a directory that a running node holds: it says so and exits 2 (stop the node, or,
// use -url with the node's admin endpoint).
//
// Exit status: 0 success; 1 corruption found (check), or data that could not be read; 2
// usage errors and directories that cannot be opened.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/strata-mq/strata/inspect"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/raftgroup"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit statuses.
const (
	exitOK     = 0
	exitFailed = 1 // corruption, or data that could not be read
	exitUsage  = 2 // usage, or the directory cannot be opened
)

const usage = `usage: ds-info <command> -dir DIR [flags]
       ds-info [-url URL] <command> [-url URL] [flags]

-dir reads a data directory that no process holds, embedded or a replicated site's (it
has a SITE file); -url reads a running node's admin handler (inspect.Handler), e.g.
-url http://host:port/strata. check needs -dir. messages and sessions read payloads, which a
node serves only when its operator turned them on (inspect.WithPayloads), usually behind a token:
ds-info sends $STRATA_ADMIN_TOKEN as a bearer token.

commands:
  info          manifest, disk bytes, generation and stream counts
  shards        per shard: generations, streams; with -url on a replicated site also its
                leader, term, log and applied indexes, apply lag, replicas and transitions
  generations   per shard and generation: span, state, layout, stream count
  streams       learned stream patterns per shard and generation [-filter F]
  trie          learned topic structure of one shard-generation -shard N -gen G
  messages      messages [-filter F] [-since RFC3339] [-limit N]
  sessions      durable MQTT sessions: owner, connected or disconnected at, expiry,
                subscriptions with QoS, QoS 2 in flight, inbound QoS 2 packet IDs
  check         decode every key and value, verify order and checksums
  cluster       a replicated site's view (-url only): sites, leaders, transitions

every command takes -json for JSON output.
`

// run is the whole command, in-process testable: it returns the exit status.
func run(args []string, stdout, stderr io.Writer) (code int) {
	defer func() {
		// The code paths below return errors for damaged input; this is the last line of
		// defence, so that a bug shows as a clear failure rather than a goroutine dump.
		if r := recover(); r != nil {
			fmt.Fprintf(stderr, "ds-info: internal error (please report): %v\n%s", r, debug.Stack())
			code = exitFailed
		}
	}()
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	// -dir and -url may also come before the command.
	global := flag.NewFlagSet("ds-info", flag.ContinueOnError)
	global.SetOutput(stderr)
	var gdir, gurl string
	global.StringVar(&gdir, "dir", "", "the embedded data directory")
	global.StringVar(&gurl, "url", "", "a running node's admin handler")
	global.Usage = func() { fmt.Fprint(stderr, usage) }
	if err := global.Parse(args); err != nil {
		return exitUsage
	}
	args = global.Args()
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, args := args[0], args[1:]
	c := &command{name: cmd, stdout: stdout, stderr: stderr, dir: gdir, url: gurl}
	switch cmd {
	case "info":
		return c.info(args)
	case "generations":
		return c.generations(args)
	case "streams":
		return c.streams(args)
	case "trie":
		return c.trie(args)
	case "messages":
		return c.messages(args)
	case "sessions":
		return c.sessions(args)
	case "check":
		return c.check(args)
	case "cluster":
		return c.cluster(args)
	case "shards":
		return c.shards(args)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "ds-info: unknown command %q\n%s", cmd, usage)
		return exitUsage
	}
}

type command struct {
	name           string
	stdout, stderr io.Writer
	fs             *flag.FlagSet
	dir            string
	url            string // of a node's admin handler, instead of dir
	json           bool
}

// flags returns the subcommand's flag set with -dir and -json.
func (c *command) flags() *flag.FlagSet {
	c.fs = flag.NewFlagSet("ds-info "+c.name, flag.ContinueOnError)
	c.fs.SetOutput(c.stderr)
	c.fs.StringVar(&c.dir, "dir", c.dir, "the embedded data directory (this or -url is required)")
	urlHelp := "a running node's admin handler, e.g. http://host:port/strata"
	if c.name == "check" {
		urlHelp = "not for check, which needs -dir"
	}
	c.fs.StringVar(&c.url, "url", c.url, urlHelp)
	c.fs.BoolVar(&c.json, "json", false, "print JSON instead of a table")
	return c.fs
}

// parse parses args and checks -dir; ok false means exit with exitUsage.
func (c *command) parse(args []string) bool {
	if err := c.fs.Parse(args); err != nil {
		return false
	}
	if c.fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "ds-info %s: unexpected arguments %q\n", c.name, c.fs.Args())
		return false
	}
	if c.name == "check" && c.url != "" {
		fmt.Fprintf(c.stderr, "ds-info check: works only with -dir (it reads every file of a stopped node's directory), not -url\n")
		return false
	}
	switch {
	case c.dir != "" && c.url != "":
		fmt.Fprintf(c.stderr, "ds-info %s: -dir and -url exclude each other\n", c.name)
		return false
	case c.dir == "" && c.url == "":
		fmt.Fprintf(c.stderr, "ds-info %s: -dir (or -url) is required\n", c.name)
		return false
	}
	return true
}

func (c *command) errorf(format string, args ...any) {
	fmt.Fprintf(c.stderr, "ds-info %s: %s\n", c.name, clean(fmt.Sprintf(format, args...)))
}

// clean drops the placeholder lines Pebble's errors carry for their structured details.
func clean(msg string) string {
	return strings.ReplaceAll(msg, "\n<corruption detail carrier>", "")
}

// open opens the directory read-only: a replicated site's directory (it has a SITE file)
// through raftgroup.Inspect, else an embedded one through inspect.Open. site is set for the
// former. On failure it prints why and returns the exit status.
func (c *command) open() (in dirInspector, site *raftgroup.SiteInspector, code int) {
	var err error
	if raftgroup.IsSiteDir(c.dir) {
		site, err = raftgroup.Inspect(c.dir)
		if err == nil {
			return site, site, exitOK
		}
	} else {
		var emb *inspect.Inspector
		emb, err = inspect.Open(c.dir)
		if err == nil {
			return emb, nil, exitOK
		}
	}
	return nil, nil, c.openFailed(err)
}

// openFailed prints why the directory did not open and returns the exit status.
func (c *command) openFailed(err error) int {
	site := raftgroup.IsSiteDir(c.dir)
	switch {
	case errors.Is(err, inspect.ErrInUse):
		c.errorf("%s is in use by another process (lock held): stop it or use the admin endpoint\n  (%v)", c.dir, err)
		return exitUsage
	case isCorruption(err):
		c.errorf("%s cannot be opened, its files are damaged: %v", c.dir, err)
		return exitFailed
	case site && errors.Is(err, os.ErrNotExist):
		c.errorf("%s is a replicated site's directory, but holds nothing to inspect: %v", c.dir, err)
		return exitUsage
	case errors.Is(err, os.ErrNotExist):
		c.errorf("%s is not a Strata data directory: %v", c.dir, err)
		return exitUsage
	default:
		c.errorf("cannot open %s: %v", c.dir, err)
		return exitUsage
	}
}

func isCorruption(err error) bool {
	return errors.Is(err, ds.ErrCorruption) || pebble.IsCorruptionError(err)
}

// done reports errors that came with a partial result (shards that did not load, records
// that did not decode) and returns the exit status.
func (c *command) done(err error) int {
	if err == nil {
		return exitOK
	}
	c.errorf("%v", err)
	return exitFailed
}

func (c *command) printJSON(v any) {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		c.errorf("%v", err)
	}
}

func (c *command) table() *tabwriter.Writer {
	return tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
}

// open opens the subcommand's source, -dir or -url. On failure it prints why and returns
// the exit status.
func (c *command) openSource() (source, int) {
	if c.url != "" {
		s, err := newURLSource(c.url)
		if err != nil {
			c.errorf("-url %v", err)
			return nil, exitUsage
		}
		return s, exitOK
	}
	in, site, code := c.open()
	if in == nil {
		return nil, code
	}
	return dirSource{in, site}, exitOK
}

// failed reports an error that came without data and returns the exit status; ok false means
// there is data to print (err is then reported by done).
func (c *command) failed(err error) (code int, ok bool) {
	var ue usageError
	var re remoteError
	switch {
	case errors.As(err, &ue):
		c.errorf("%v", err)
		return exitUsage, false
	case errors.As(err, &re):
		c.errorf("%v", err)
		return exitFailed, false
	}
	return exitOK, true
}

// noData reports whether err came without data: a usage error or an error response.
func noData(err error) bool {
	var ue usageError
	var re remoteError
	return errors.As(err, &ue) || errors.As(err, &re)
}

// show runs what the read-only subcommands share once their flags are parsed: it opens the
// source, fetches with get, and prints the result as JSON (-json) or with table. An error
// that came without data ends it (usage: 2, remote: 1); one that came with data (shards that
// did not load) is reported after the data, with exit status 1.
func show[T any](c *command, get func(source) (T, error), table func(T)) int {
	src, code := c.openSource()
	if src == nil {
		return code
	}
	defer src.close()
	v, err := get(src)
	if code, ok := c.failed(err); !ok {
		return code
	}
	if c.json {
		c.printJSON(v)
	} else {
		table(v)
	}
	return c.done(err)
}

func (c *command) info(args []string) int {
	c.flags()
	if !c.parse(args) {
		return exitUsage
	}
	return show(c, source.info, c.printInfo)
}

// printInfo prints info's table.
func (c *command) printInfo(out infoView) {
	tw := c.table()
	if c.url != "" {
		fmt.Fprintf(tw, "url\t%s\n", c.url)
	} else {
		fmt.Fprintf(tw, "directory\t%s\n", c.dir)
	}
	created := out.Created
	if out.Site != nil {
		fmt.Fprintf(tw, "site\t%s (raft address %s)\n", out.Site.ID, out.Site.RaftAddress)
		if created == "" {
			created = "unknown"
		}
	}
	fmt.Fprintf(tw, "format version\t%d\n", out.Format)
	fmt.Fprintf(tw, "shards\t%d\n", out.NShards)
	fmt.Fprintf(tw, "storage\t%s\n", out.Storage)
	fmt.Fprintf(tw, "created\t%s\n", created)
	fmt.Fprintf(tw, "disk bytes\t%d\n", out.DiskBytes)
	fmt.Fprintf(tw, "generations\t%d\n", out.Generations)
	fmt.Fprintf(tw, "streams\t%d\n", out.Streams)
	if cs := out.Cluster; cs != nil {
		meta := "fresh"
		if !cs.MetaFresh {
			meta = "STALE (no meta quorum reachable: this site's local copy)"
		}
		fmt.Fprintf(tw, "site\t%s (raft address %s), meta %s\n", cs.Site, cs.RaftAddress, meta)
		total := 0
		for _, n := range cs.Sites {
			total += n
		}
		fmt.Fprintf(tw, "sites\t%d: %d up, %d down, %d lost, %d left", total, cs.Sites[raftgroup.HealthUp],
			cs.Sites[raftgroup.HealthDown], cs.Sites[raftgroup.HealthLost], cs.Sites[raftgroup.HealthLeft])
		if len(cs.NotUp) > 0 {
			fmt.Fprintf(tw, " (not up: slots %v)", cs.NotUp)
		}
		fmt.Fprintln(tw)
		if len(cs.Leaderless) == 0 {
			fmt.Fprintf(tw, "leaderless shards\tnone\n")
		} else {
			fmt.Fprintf(tw, "leaderless shards\t%d %v\n", len(cs.Leaderless), cs.Leaderless)
		}
		fmt.Fprintf(tw, "replica transitions\t%d in progress\n", cs.Transitions)
	}
	tw.Flush()
	if out.Site != nil {
		c.printReplicas(out.Site)
	}
}

// printReplicas prints, for a replicated site's directory, the replica each shard was read
// from and the replica directories left aside.
func (c *command) printReplicas(v *siteView) {
	fmt.Fprintln(c.stdout)
	tw := c.table()
	fmt.Fprintln(tw, "SHARD\tREPLICA\tAPPLIED\tREAD FROM")
	var ignored []string
	for _, r := range v.Replicas {
		if r.ReplicaID == 0 {
			fmt.Fprintf(tw, "%d\t-\t-\t(no replica on this site)\n", r.Shard)
		} else {
			fmt.Fprintf(tw, "%d\t%d\t%d\t%s\n", r.Shard, r.ReplicaID, r.AppliedIndex, r.Store)
		}
		for _, ig := range r.Ignored {
			ignored = append(ignored, fmt.Sprintf("shard %d: not read: %s: %s", r.Shard, ig.Dir, ig.Reason))
		}
	}
	tw.Flush()
	for _, s := range ignored {
		fmt.Fprintln(c.stdout, s)
	}
}

func (c *command) generations(args []string) int {
	c.flags()
	if !c.parse(args) {
		return exitUsage
	}
	return show(c, source.generations, func(rows []inspect.GenerationView) {
		tw := c.table()
		fmt.Fprintln(tw, "SHARD\tGEN\tSINCE\tUNTIL\tSTATE\tLAYOUT\tSTREAMS\tMESSAGES\tDISK BYTES")
		for _, r := range rows {
			until := r.Until
			if until == "" {
				until = "-"
			}
			msgs := fmt.Sprint(r.Messages)
			if r.Uncounted {
				msgs = "?"
			}
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%d\n", r.Shard, r.Generation, r.Since, until, r.State, r.Layout, r.Streams, msgs, r.DiskBytes)
		}
		tw.Flush()
	})
}

func (c *command) streams(args []string) int {
	fs := c.flags()
	filter := fs.String("filter", "#", "MQTT topic filter the patterns must be able to match")
	if !c.parse(args) {
		return exitUsage
	}
	get := func(src source) ([]inspect.StreamView, error) {
		rows, err := src.streams(*filter)
		if rows == nil {
			rows = []inspect.StreamView{}
		}
		return rows, err
	}
	return show(c, get, func(rows []inspect.StreamView) {
		tw := c.table()
		fmt.Fprintln(tw, "SHARD\tGEN\tKEY\tLAYOUT\tPATTERN")
		for _, r := range rows {
			fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\n", r.Shard, r.Generation, r.Key, r.Layout, escape([]byte(r.Pattern)))
		}
		tw.Flush()
	})
}

func (c *command) trie(args []string) int {
	fs := c.flags()
	sh := fs.Int("shard", -1, "shard (required)")
	gen := fs.Int64("gen", -1, "generation (required)")
	if !c.parse(args) {
		return exitUsage
	}
	if *sh < 0 || *sh > int(^uint16(0)) || *gen < 0 || *gen > int64(^uint32(0)) {
		c.errorf("-shard and -gen are required (see the generations command)")
		return exitUsage
	}
	src, code := c.openSource()
	if src == nil {
		return code
	}
	defer src.close()
	v, err := src.trie(*sh, *gen)
	if code, ok := c.failed(err); !ok {
		return code
	}
	if err != nil {
		return c.done(err)
	}
	if c.json {
		c.printJSON(v)
		return exitOK
	}
	fmt.Fprint(c.stdout, v.Trie)
	return exitOK
}

func (c *command) messages(args []string) int {
	fs := c.flags()
	filter := fs.String("filter", "#", "MQTT topic filter")
	sinceFlag := fs.String("since", "", "first timestamp, RFC 3339 (default: the beginning)")
	limit := fs.Int("limit", 100, "at most this many messages; 0: no limit")
	if !c.parse(args) {
		return exitUsage
	}
	var since time.Time
	if *sinceFlag != "" {
		t, err := time.Parse(time.RFC3339Nano, *sinceFlag)
		if err != nil {
			c.errorf("-since: %v", err)
			return exitUsage
		}
		since = t
	}
	if *limit < 0 {
		c.errorf("-limit %d is negative", *limit)
		return exitUsage
	}
	get := func(src source) ([]inspect.MessageView, error) {
		rows, err := src.messages(*filter, since, *limit)
		if rows == nil {
			rows = []inspect.MessageView{}
		}
		return rows, err
	}
	return show(c, get, func(rows []inspect.MessageView) {
		tw := c.table()
		fmt.Fprintln(tw, "SHARD\tTIMESTAMP\tCLIENT\tQOS\tTOPIC\tPAYLOAD")
		for _, r := range rows {
			qos := fmt.Sprint(r.QoS)
			if r.Retain {
				qos += "r"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.Shard, r.Timestamp, r.ClientID, qos, r.Topic, r.Payload)
		}
		tw.Flush()
	})
}

// payloadText shows a payload safely (inspect.PayloadPreview).
func payloadText(p []byte) string { return inspect.PayloadPreview(p) }

// escape returns b with printable UTF-8 as is and every other byte as \xNN, a backslash
// doubled (inspect.EscapeBytes).
func escape(b []byte) string { return inspect.EscapeBytes(b) }

func (c *command) check(args []string) int {
	fs := c.flags()
	maxProblems := fs.Int("max-problems", 100, "report at most this many problems")
	if !c.parse(args) {
		return exitUsage
	}
	in, site, code := c.open()
	if in == nil {
		return code
	}
	defer in.Close()
	r := in.Check(*maxProblems)
	problems := []string{}
	for _, p := range r.Problems {
		problems = append(problems, clean(p.String()))
	}
	out := struct {
		OK          bool   `json:"ok"`
		Keys        uint64 `json:"keys"`
		Messages    uint64 `json:"messages"`
		IndexKeys   uint64 `json:"index_keys"`
		TrieRecords uint64 `json:"trie_records"`
		Records     uint64 `json:"records"` // the shards' keyed records (sessions)
		// Replicated sites only: applied indexes and de-duplication records.
		ReplicaRecords uint64   `json:"replica_records,omitempty"`
		Problems       []string `json:"problems"`
	}{r.OK(), r.Keys, r.Messages, r.IndexKeys, r.TrieRecords, r.Records, r.ReplicaRecords, problems}
	if c.json {
		c.printJSON(out)
	} else {
		tw := c.table()
		fmt.Fprintf(tw, "keys\t%d\n", out.Keys)
		fmt.Fprintf(tw, "messages\t%d\n", out.Messages)
		fmt.Fprintf(tw, "index keys\t%d\n", out.IndexKeys)
		fmt.Fprintf(tw, "trie records\t%d\n", out.TrieRecords)
		fmt.Fprintf(tw, "records\t%d\n", out.Records)
		if site != nil {
			fmt.Fprintf(tw, "replica records\t%d\n", out.ReplicaRecords)
		}
		tw.Flush()
		if out.OK {
			fmt.Fprintln(c.stdout, "OK")
		} else {
			fmt.Fprintf(c.stdout, "CORRUPT: %d problem(s)\n", len(problems))
		}
	}
	if !out.OK {
		for _, p := range problems {
			fmt.Fprintf(c.stderr, "ds-info check: %s\n", p)
		}
		return exitFailed
	}
	return exitOK
}
