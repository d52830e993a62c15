// Command peers measures NATS JetStream (embedded nats-server) next to Strata on the same
// machine and workload: 1 KiB messages over 1,000 subjects/publishers, durable publish, read
// back, and a consumer filtered to one subject. It lives in its own module so that the
// library's go.mod never carries nats-server's dependency tree.
//
//	cd bench/peers && go run . -n 200000   # 1 KiB and 128 B payloads
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/strata-mq/strata/bench"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/raftgroup"
)

func main() {
	n := flag.Int("n", 200_000, "messages")
	subjects := flag.Int("subjects", 1000, "subjects (JetStream) / publishers (Strata)")
	payloads := flag.String("payload", "1024,128", "payload sizes in bytes, comma-separated: the whole table per size")
	syncAlwaysN := flag.Int("syncalways-n", 5000, "messages for the SyncAlways run (it does ~3k msgs/s)")
	r3N := flag.Int("r3-n", 100_000, "messages for Strata R3 (three sites in this process; it does ~20k msgs/s)")
	flag.Parse()
	if *n < *subjects || *subjects < 1 {
		fmt.Fprintln(os.Stderr, "peers: need -n >= -subjects >= 1")
		os.Exit(2)
	}
	for i, f := range strings.Split(*payloads, ",") {
		size, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || size < 1 {
			fmt.Fprintf(os.Stderr, "peers: -payload %q is not a size in bytes\n", f)
			os.Exit(2)
		}
		if i > 0 {
			fmt.Println()
		}
		fmt.Printf("== %d B payloads\n", size)
		runAll(*n, *subjects, size, *syncAlwaysN, *r3N)
	}
}

// runAll runs every peer and Strata scenario with payloads of size bytes and prints the table
// and the ratios.
func runAll(n, subjects, size, syncAlwaysN, r3N int) {
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + 3)
	}
	var rows []row
	add := func(r row, err error) {
		if err != nil {
			fmt.Fprintln(os.Stderr, "peers:", r.name, err)
			os.Exit(1)
		}
		rows = append(rows, r)
	}
	js, err := jetStreamRun(false, n, subjects, data)
	add(row{name: "JetStream R1 publish, default sync"}, err)
	rows[len(rows)-1] = js.publish
	rows = append(rows, js.readAll, js.filtered)
	jsAlways, err := jetStreamRun(true, syncAlwaysN, min(subjects, syncAlwaysN), data)
	add(jsAlways.publish, err)
	r3, err := jetStreamR3Publish(n, subjects, data)
	add(r3, err)
	st, err := strataRun(n, subjects, data, ds.Sync)
	add(st.publish, err)
	rows = append(rows, st.readAll, st.filtered)
	stNoSync, err := strataRun(n, subjects, data, ds.NoSync)
	add(stNoSync.publish, err)
	stAsync, err := strataAsyncPublish(n, subjects, data)
	add(stAsync, err)
	stR3, err := strataR3Publish(min(r3N, n), subjects, size, 0)
	add(stR3, err)
	stR3Async, err := strataR3Publish(min(r3N, n), subjects, size, asyncWindow)
	add(stR3Async, err)

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "scenario\tmessages\ttime\tmsgs/s\t\tdurability")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%d\t%s\t%.0f\t\t%s\n", r.name, r.msgs, r.elapsed.Round(time.Millisecond), r.rate(), r.durability)
	}
	w.Flush()
	fmt.Println()
	fmt.Printf("durable ingest, Strata (fsync per commit) / JetStream R1 default sync (no fsync per write): %.2f×\n", st.publish.rate()/js.publish.rate())
	inFlight := fmt.Sprintf("%d in flight", subjects*asyncWindow)
	fmt.Printf("durable ingest, Strata StoreAsync (%s) / JetStream R1 (4,000 pending):        %.2f×\n", inFlight, stAsync.rate()/js.publish.rate())
	fmt.Printf("NoSync ingest, Strata NoSync / JetStream R1 default sync (neither fsyncs per write):     %.2f×\n", stNoSync.publish.rate()/js.publish.rate())
	fmt.Printf("durable ingest, Strata / JetStream R1 SyncAlways (fsync per write):                         %.2f×\n", st.publish.rate()/jsAlways.publish.rate())
	fmt.Printf("durable ingest, Strata R1 / JetStream R3 (3 servers, loopback):                             %.2f×\n", st.publish.rate()/r3.rate())
	fmt.Printf("replicated ingest, Strata R3 (fsync per Raft round) / JetStream R3 (no fsync per write):  %.2f×\n", stR3.rate()/r3.rate())
	fmt.Printf("replicated ingest, Strata R3 StoreAsync (%s) / JetStream R3 (4,000 pending):  %.2f×\n", inFlight, stR3Async.rate()/r3.rate())
	fmt.Printf("full replay, Strata / JetStream:                                                             %.2f×\n", st.readAll.rate()/js.readAll.rate())
	fmt.Printf("one subject of %d, Strata / JetStream filtered consumer:                                   %.0f×\n", subjects, st.filtered.rate()/js.filtered.rate())
}

// strataR3Publish runs ds-bench's replicated ingest: three Strata sites in this process on
// loopback (replication factor 3, 16 shards, Strata's segment Raft log), publishers over the
// sites, each message acknowledged once a quorum holds it in its fsynced Raft log; through
// Store (window 0) or StoreAsync with window messages in flight per publisher.
func strataR3Publish(n, publishers, payload, window int) (row, error) {
	r, err := bench.RunReplicated(bench.Config{N: n, Publishers: publishers, Payload: payload, Shards: 16, RaftWindow: window}, 3, raftgroup.LogDBSegments)
	name := "Strata R3 publish (3 sites, 16 shards, loopback)"
	if window > 0 {
		name = fmt.Sprintf("Strata R3 StoreAsync (3 sites, %d × %d in flight)", publishers, window)
	}
	return row{name: name, msgs: r.Msgs, elapsed: r.Elapsed, durability: "fsync per Raft round, replicated to 3"}, err
}

// asyncWindow is the messages each Strata publisher keeps in flight through StoreAsync: with
// 1,000 publishers, 4,000 in all, as many as the JetStream client's PublishAsync may have
// pending.
const asyncWindow = 4

// strataAsyncPublish stores n messages through StoreAsync (Sync durability) from publishers
// goroutines, each with asyncWindow messages in flight, as a broker acknowledging a
// connection's PUBLISHes as they become durable while it reads the next ones.
func strataAsyncPublish(n, publishers int, data []byte) (row, error) {
	r := row{name: fmt.Sprintf("Strata StoreAsync (%d publishers × %d in flight)", publishers, asyncWindow),
		msgs: n, durability: "Sync (fsync per group commit)"}
	dir, err := os.MkdirTemp("", "peers-strata-async-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	db, err := ds.Open(dir, &ds.Options{Retention: ds.RetainForever})
	if err != nil {
		return r, err
	}
	defer db.Close()
	ctx := context.Background()
	start := time.Now()
	var wg sync.WaitGroup
	var failed sync.Once
	var firstErr error
	fail := func(err error) { failed.Do(func() { firstErr = err }) }
	for p := 0; p < publishers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := fmt.Sprintf("client-%d", p)
			slots := make(chan struct{}, asyncWindow)
			for i := p; i < n; i += publishers {
				slots <- struct{}{}
				m := ds.Message{ClientID: client, Topic: "bench/" + client, QoS: 1, Payload: data}
				err := db.StoreAsync(ctx, m, func(_ ds.Ref, err error) {
					if err != nil {
						fail(err)
					}
					<-slots
				})
				if err != nil {
					fail(err)
					return
				}
			}
			for range asyncWindow {
				slots <- struct{}{}
			}
		}()
	}
	wg.Wait()
	r.elapsed = time.Since(start)
	return r, firstErr
}

type row struct {
	name       string
	msgs       int
	elapsed    time.Duration
	durability string
}

func (r row) rate() float64 { return float64(r.msgs) / r.elapsed.Seconds() }

type runResult struct{ publish, readAll, filtered row }

// jetStreamRun starts an embedded nats-server with a file-store R1 stream, publishes n
// messages asynchronously (4,000 pending) round-robin over the subjects, reads them all back with
// a pull consumer, then reads one subject's messages through a filtered consumer.
func jetStreamRun(syncAlways bool, n, subjects int, data []byte) (runResult, error) {
	var res runResult
	dir, err := os.MkdirTemp("", "peers-js-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	srv, err := server.NewServer(&server.Options{JetStream: true, StoreDir: dir, Port: -1, SyncAlways: syncAlways, NoLog: true, NoSigs: true})
	if err != nil {
		return res, err
	}
	go srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(10 * time.Second) {
		return res, errors.New("nats-server not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		return res, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4000))
	if err != nil {
		return res, err
	}
	ctx := context.Background()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		return res, err
	}
	durability := "default sync (fsync every 2 min)"
	if syncAlways {
		durability = "SyncAlways (fsync per write)"
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		if _, err := js.PublishAsync(fmt.Sprintf("bench.s%d", i%subjects), data, jetstream.WithStallWait(time.Minute)); err != nil {
			return res, err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(10 * time.Minute):
		return res, errors.New("publish acks timed out")
	}
	name := "JetStream R1 publish"
	if syncAlways {
		name += " SyncAlways"
	}
	res.publish = row{name: name, msgs: n, elapsed: time.Since(start), durability: durability}
	if syncAlways {
		return res, nil
	}
	read := func(filter string, want int) (time.Duration, error) {
		start := time.Now()
		cons, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy, FilterSubject: filter})
		if err != nil {
			return 0, err
		}
		got := 0
		for got < want {
			batch, err := cons.FetchNoWait(1000)
			if err != nil {
				return 0, err
			}
			for range batch.Messages() {
				got++
			}
			if err := batch.Error(); err != nil {
				return 0, err
			}
		}
		return time.Since(start), nil
	}
	d, err := read("", n)
	if err != nil {
		return res, err
	}
	res.readAll = row{name: "JetStream read all (pull consumer)", msgs: n, elapsed: d, durability: "-"}
	one := n / subjects
	d, err = read("bench.s7", one)
	if err != nil {
		return res, err
	}
	res.filtered = row{name: "JetStream filtered consumer, one subject", msgs: one, elapsed: d, durability: "-"}
	return res, nil
}

// strataRun stores n messages from one goroutine per publisher (one Store per message, Sync),
// reads everything back, then one publisher's messages.
func strataRun(n, publishers int, data []byte, durability ds.Durability) (runResult, error) {
	var res runResult
	dir, err := os.MkdirTemp("", "peers-strata-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	db, err := ds.Open(dir, &ds.Options{Retention: ds.RetainForever, Durability: durability})
	if err != nil {
		return res, err
	}
	defer db.Close()
	ctx := context.Background()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for p := 0; p < publishers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := fmt.Sprintf("client-%d", p)
			for i := p; i < n; i += publishers {
				if _, err := db.Store(ctx, ds.Message{ClientID: client, Topic: fmt.Sprintf("bench/%s", client), QoS: 1, Payload: data}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return res, err
	}
	res.publish = row{name: "Strata Store (1,000 publishers)", msgs: n, elapsed: time.Since(start), durability: "Sync (fsync per group commit)"}
	if durability == ds.NoSync {
		res.publish.name, res.publish.durability = "Strata Store NoSync (1,000 publishers)", "NoSync (page cache)"
		return res, nil
	}
	all, err := bench.Replay(ctx, db, "Strata read all (one reader)", "#", 1)
	if err != nil {
		return res, err
	}
	res.readAll = row{name: all.Name, msgs: all.Msgs, elapsed: all.Elapsed, durability: "-"}
	one, err := bench.Replay(ctx, db, "Strata one publisher's topic", "bench/client-7", 1)
	if err != nil {
		return res, err
	}
	res.filtered = row{name: one.Name, msgs: one.Msgs, elapsed: one.Elapsed, durability: "-"}
	return res, nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// jetStreamR3Publish starts three clustered nats-servers in this process (routes on loopback),
// creates an R3 file-store stream and publishes n messages asynchronously, as in jetStreamRun.
func jetStreamR3Publish(n, subjects int, data []byte) (row, error) {
	const size = 3
	ports := make([]int, size)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return row{}, err
		}
		ports[i] = p
	}
	var routes []*url.URL
	for _, p := range ports {
		u, _ := url.Parse(fmt.Sprintf("nats://127.0.0.1:%d", p))
		routes = append(routes, u)
	}
	var servers []*server.Server
	defer func() {
		for _, s := range servers {
			s.Shutdown()
		}
	}()
	for i := range size {
		dir, err := os.MkdirTemp("", "peers-js-r3-")
		if err != nil {
			return row{}, err
		}
		defer os.RemoveAll(dir)
		srv, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("s%d", i), JetStream: true, StoreDir: dir, Port: -1, NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "bench", Host: "127.0.0.1", Port: ports[i]},
			Routes:  routes,
		})
		if err != nil {
			return row{}, err
		}
		go srv.Start()
		servers = append(servers, srv)
	}
	for _, s := range servers {
		if !s.ReadyForConnections(20 * time.Second) {
			return row{}, errors.New("nats-server not ready")
		}
	}
	nc, err := nats.Connect(servers[0].ClientURL())
	if err != nil {
		return row{}, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4000))
	if err != nil {
		return row{}, err
	}
	// The cluster elects its meta leader after the routes connect: retry until it takes the
	// stream (bounded).
	ctx := context.Background()
	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = js.CreateStream(cctx, jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage, Replicas: size})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return row{}, fmt.Errorf("create R3 stream: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		if _, err := js.PublishAsync(fmt.Sprintf("bench.s%d", i%subjects), data, jetstream.WithStallWait(time.Minute)); err != nil {
			return row{}, err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(10 * time.Minute):
		return row{}, errors.New("publish acks timed out")
	}
	return row{name: "JetStream R3 publish (3 servers, loopback)", msgs: n, elapsed: time.Since(start), durability: "default sync, replicated to 3"}, nil
}
