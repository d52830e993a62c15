package raftgroup

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/stretchr/testify/require"
)

// issueTLS issues a site certificate from ca and returns the site's TLS configuration.
func issueTLS(ca *testutil.CA, name string) *TLS {
	cert, key := ca.Issue(name)
	return &TLS{CAFile: ca.File, CertFile: cert, KeyFile: key}
}

// capturedLogs is a slog handler that keeps the distinct messages at Debug and above
// (logger.go maps dragonboat's INFO and WARNING to Debug, its ERROR to Warn). dragonboat's logs
// go to the most recently opened site's Logger, so giving one to the last site opened
// captures every site's dragonboat logs.
type capturedLogs struct {
	mu    sync.Mutex
	lines []string
	seen  map[string]bool
}

func (l *capturedLogs) Enabled(_ context.Context, lvl slog.Level) bool { return lvl >= slog.LevelDebug }
func (l *capturedLogs) WithAttrs([]slog.Attr) slog.Handler             { return l }
func (l *capturedLogs) WithGroup(string) slog.Handler                  { return l }
func (l *capturedLogs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	line := r.Level.String() + " " + r.Message
	if l.seen == nil {
		l.seen = map[string]bool{}
	}
	if !l.seen[line] && len(l.lines) < 50000 {
		l.seen[line] = true
		l.lines = append(l.lines, line)
	}
	return nil
}

// grep returns up to max captured lines containing sub.
func (l *capturedLogs) grep(sub string, max int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines {
		if strings.Contains(s, sub) && len(out) < max {
			out = append(out, s)
		}
	}
	return out
}

// pendingJoin is a site opened with Join in the background.
type pendingJoin struct {
	i    int // the site's index in the cluster (its entry in c.sites stays nil unless it joins)
	id   SiteID
	addr string
	done chan struct{}
	site *Site
	err  error
	took time.Duration
}

// startJoinAsync makes site len(c.sites) (configured by the harness's mutate hook with that
// index, then by adjust), gets its ID with PrepareSite, opens it with Join in the background
// (Open bounded by timeout) and adds it through member.
func (c *testCluster) startJoinAsync(member int, timeout time.Duration, adjust func(*Config)) *pendingJoin {
	c.t.Helper()
	i := len(c.sites)
	c.addrs = append(c.addrs, freeAddr(c.t))
	c.sites = append(c.sites, nil)
	cfg := c.config(i, nil, true, 0)
	if adjust != nil {
		adjust(&cfg)
	}
	id, err := PrepareSite(cfg)
	require.NoError(c.t, err)
	j := &pendingJoin{i: i, id: id, addr: cfg.RaftAddress, done: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(j.done)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		j.site, j.err = Open(ctx, cfg)
		j.took = time.Since(start)
	}()
	c.t.Cleanup(func() {
		<-j.done
		if j.site != nil {
			j.site.Close()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(c.t, c.sites[member].AddSite(ctx, id, j.addr), "AddSite %s %s", id, j.addr)
	return j
}

// wait waits up to d for the joiner's Open to return; ok is false if it has not.
func (j *pendingJoin) wait(d time.Duration) bool {
	select {
	case <-j.done:
		return true
	case <-time.After(d):
		return false
	}
}

// metaVia returns the meta group's state read linearizably through site i.
func (c *testCluster) metaVia(i int) (*MetaState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.sites[i].Meta(ctx)
}

// refusedJoinWait bounds the Open of a site that must not get in.
const refusedJoinWait = 5 * time.Second

// testRefusedJoiner: three sites (PlacementEverySite) (clusterTLS gives site i's TLS, nil for plain TCP) take
// writes; a fourth site, configured like them and then by adjust, is added with AddSite. The
// members make it a (non-voting) member of every group and keep trying to reach it, but it
// never gets the cluster's schema, so its Open fails when its ctx ends; meanwhile, and after
// RemoveSite took it out again, the cluster takes writes and every site holds all of them.
// wantLog, if set, is text that dragonboat must log while the site is refused.
func testRefusedJoiner(t *testing.T, clusterTLS func(i int) *TLS, adjust func(*Config), wantLog string) {
	const nShards = 3
	c := newTestCluster(t, 3, nShards, func(i int, cfg *Config) {
		cfg.TLS = clusterTLS(i)
		cfg.ReadReplicas = true // the joiner is made a member of every group at once
	})
	acked := storeN(t, c.db(0), "before", 30)

	logs := &capturedLogs{}
	j := c.startJoinAsync(1, refusedJoinWait, func(cfg *Config) {
		adjust(cfg)
		cfg.DB.Logger = slog.New(logs)
	})
	// The members record the site and add its replica to every group's membership: from then
	// on the groups' leaders try to send it the data.
	eventually(t, 20*time.Second, "the refused site is a member of every group", func() error {
		st, err := c.metaVia(0)
		if err != nil {
			return err
		}
		si, ok := st.SiteByID(j.id)
		if !ok {
			return fmt.Errorf("site %s not in the site table", j.id)
		}
		for _, g := range st.groups() {
			found := false
			for _, r := range st.GroupReplicas(g) {
				if r.Slot == si.Slot {
					found = true
					if r.Member != memberNonVoting {
						return fmt.Errorf("group %d: replica %d is %q", g, r.ReplicaID, r.Member)
					}
				}
			}
			if !found {
				return fmt.Errorf("group %d: no replica on slot %d", g, si.Slot)
			}
		}
		return nil
	})
	// The cluster keeps working while it cannot reach the new member.
	acked = append(acked, storeN(t, c.db(2), "during", 30)...)

	require.True(t, j.wait(refusedJoinWait+15*time.Second), "the refused site's Open did not return %v after its ctx ended", 15*time.Second)
	if j.err == nil {
		c.sites[j.i] = j.site // closed by the cluster's cleanup
	}
	require.Error(t, j.err, "the refused site joined after %v", j.took)
	require.ErrorIs(t, j.err, ds.ErrUnavailable, "the refused site's Open failed after %v with %v; want ErrUnavailable after its ctx (%v) ended", j.took, j.err, refusedJoinWait)
	require.ErrorIs(t, j.err, context.DeadlineExceeded, "the refused site's Open failed after %v with %v; want ErrUnavailable after its ctx (%v) ended", j.took, j.err, refusedJoinWait)
	require.GreaterOrEqual(t, j.took, refusedJoinWait-time.Second, "the refused site's Open failed after %v with %v; want ErrUnavailable after its ctx (%v) ended", j.took, j.err, refusedJoinWait)
	t.Logf("refused site's Open: after %v: %v", j.took.Round(time.Millisecond), j.err)
	if wantLog != "" {
		got := logs.grep(wantLog, 3)
		require.NotEmpty(t, got, "dragonboat did not log %q; it logged e.g. %q", wantLog, logs.grep("", 20))
		t.Logf("dragonboat logged: %q", got)
	} else {
		t.Logf("dragonboat logged: %q", logs.grep("failed", 3))
	}

	// Take it out again. The cluster goes on taking writes and its three sites converge.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.sites[0].RemoveSite(ctx, j.id))
	acked = append(acked, storeN(t, c.db(1), "after", 30)...)
	c.requireAllRead(acked, 20*time.Second)
	c.waitConverged(nShards, 20*time.Second)
	// The removal completes: the site is "left" and holds no replica.
	st := waitRemoved(t, c, j.id, 20*time.Second)
	for _, r := range st.Replicas {
		require.LessOrEqual(t, r.Slot, 3, "replica %+v left on the removed site", r)
	}
}

// waitRemoved waits until site id is "left" and nothing is in transition.
func waitRemoved(t *testing.T, c *testCluster, id SiteID, timeout time.Duration) *MetaState {
	t.Helper()
	var st *MetaState
	eventually(t, timeout, fmt.Sprintf("site %s removed", id), func() error {
		var err error
		if st, err = c.metaVia(0); err != nil {
			return err
		}
		si, _ := st.SiteByID(id)
		for _, r := range st.Replicas {
			if tr := r.Transition(); tr != "" {
				if r.Group == metaGroup && r.Slot == si.Slot && !si.Drained {
					return fmt.Errorf("site %s is %q: its meta replica %d waits for the site to report itself drained, "+
						"which a site that never joined (or is down) cannot do", id, si.State, r.ReplicaID)
				}
				return fmt.Errorf("group %d replica %d on slot %d: %s", r.Group, r.ReplicaID, r.Slot, tr)
			}
		}
		if si.State != SiteLeft {
			return fmt.Errorf("site %s is %q", id, si.State)
		}
		return nil
	})
	return st
}

// tlsSites issues certificates for sites 0..n-1 from ca.
func tlsSites(ca *testutil.CA, n int) []*TLS {
	out := make([]*TLS, n)
	for i := range out {
		out[i] = issueTLS(ca, fmt.Sprintf("site-%d", i))
	}
	return out
}

// TestTLSClusterStoreAndReadEverywhere: three sites with mutual TLS, each with its own
// certificate from one CA: messages stored through each site are read through every site,
// once, and the replicas converge.
func TestTLSClusterStoreAndReadEverywhere(t *testing.T) {
	const nShards = 4
	certs := tlsSites(testutil.NewCA(t, "strata"), 3)
	c := newTestCluster(t, 3, nShards, func(i int, cfg *Config) { cfg.TLS = certs[i] })
	var acked []string
	for i := range c.sites {
		acked = append(acked, storeN(t, c.db(i), fmt.Sprintf("s%d", i), 60)...)
	}
	c.requireAllRead(acked, 20*time.Second)
	c.waitConverged(nShards, 20*time.Second)
	requireMutualTLS(t, c.addrs[0], certs[1])
	requireMutualTLS(t, c.sites[0].Service(), certs[1])
	// A client that connects to the service and never completes the handshake is
	// disconnected after an attempt timeout (1 s here), instead of holding the connection
	// until the site stops.
	conn, err := net.Dial("tcp", c.sites[0].Service())
	require.NoError(t, err)
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	require.Error(t, err)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the service kept a connection that sent no TLS handshake for 20 s")
	}
}

// requireMutualTLS checks that the site at addr speaks TLS with a certificate valid for it
// under good's CA, and that it turns away a client without a certificate.
func requireMutualTLS(t *testing.T, addr string, good *TLS) {
	t.Helper()
	caPEM, err := os.ReadFile(good.CAFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(good.CertFile, good.KeyFile)
	require.NoError(t, err)
	host, _, _ := net.SplitHostPort(addr)
	dial := func(certs []tls.Certificate) error {
		d := &net.Dialer{Timeout: 5 * time.Second}
		conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: pool, ServerName: host, Certificates: certs})
		if err != nil {
			return err
		}
		defer conn.Close()
		// With TLS 1.3 the server checks the client's certificate after the client's side of
		// the handshake is done: a rejection shows on the first read.
		conn.SetReadDeadline(time.Now().Add(time.Second))
		_, err = conn.Read(make([]byte, 1))
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return nil // accepted: the server waits for a request
		}
		return err
	}
	require.NoError(t, dial([]tls.Certificate{cert}), "TLS with a valid client certificate")
	err = dial(nil)
	require.Error(t, err, "TLS without a client certificate was accepted")
	t.Logf("TLS without a client certificate: %v", err)
}

// TestTLSJoinWithValidCertificate is the control of the refused-site tests below: a fourth
// site with a certificate from the cluster's CA joins (its Open returns), receives its share
// of the shards and takes writes; every site stores and reads every shard, forwarding over
// TLS what it holds no replica of.
func TestTLSJoinWithValidCertificate(t *testing.T) {
	const nShards = 3
	certs := tlsSites(testutil.NewCA(t, "strata"), 4)
	c := newTestCluster(t, 3, nShards, func(i int, cfg *Config) { cfg.TLS = certs[i] })
	acked := storeN(t, c.db(0), "before", 30)
	j := c.startJoinAsync(1, 30*time.Second, nil)
	require.True(t, j.wait(45*time.Second), "the joiner's Open did not return")
	require.NoError(t, j.err, "the joiner's Open")
	c.sites[j.i] = j.site
	t.Logf("joined over mutual TLS in %v", j.took.Round(time.Millisecond))
	c.waitPlanDone(0, 20*time.Second)
	acked = append(acked, storeN(t, c.db(j.i), "joiner", 30)...)
	c.requireAllRead(acked, 20*time.Second)
	c.waitConverged(nShards, 20*time.Second)
	// PlacementVoters: 9 replicas on 4 sites, so some site lacks a shard and forwards its
	// calls, over the same mutual TLS.
	forwarding := false
	for i := range c.sites {
		forwarding = forwarding || len(c.heldShards(i, nShards)) < nShards
	}
	require.True(t, forwarding, "every site holds every shard: nothing was forwarded")
	for i := range c.sites {
		acked = append(acked, storeN(t, c.db(i), fmt.Sprintf("site%d", i), 14)...)
	}
	c.requireAllRead(acked, 20*time.Second)
}

// TestTLSRefusesSiteOfAnotherCA: a site whose certificate (and CA file) come from another CA
// cannot take part: the members do not accept its certificate and it does not accept theirs.
func TestTLSRefusesSiteOfAnotherCA(t *testing.T) {
	certs := tlsSites(testutil.NewCA(t, "strata"), 3)
	intruder := issueTLS(testutil.NewCA(t, "intruder"), "site-3")
	testRefusedJoiner(t, func(i int) *TLS { return certs[i%3] },
		func(cfg *Config) { cfg.TLS = intruder },
		"certificate signed by unknown authority")
}

// TestTLSRefusesOtherDeploymentID: a site with the cluster's certificates but another
// DeploymentID: the connections are made, but dragonboat drops every message between them.
func TestTLSRefusesOtherDeploymentID(t *testing.T) {
	certs := tlsSites(testutil.NewCA(t, "strata"), 4)
	testRefusedJoiner(t, func(i int) *TLS { return certs[i] },
		func(cfg *Config) { cfg.DeploymentID = 2 },
		"deployment id does not match")
}

// TestTLSRefusesPlainSite: a site without TLS cannot take part in a cluster with mutual TLS.
func TestTLSRefusesPlainSite(t *testing.T) {
	certs := tlsSites(testutil.NewCA(t, "strata"), 3)
	testRefusedJoiner(t, func(i int) *TLS { return certs[i%3] },
		func(cfg *Config) { cfg.TLS = nil }, "")
}

// TestTLSSiteRefusedByPlainCluster: the mirror image: a site with mutual TLS (and a valid
// certificate) cannot take part in a cluster on plain TCP.
func TestTLSSiteRefusedByPlainCluster(t *testing.T) {
	cert := issueTLS(testutil.NewCA(t, "strata"), "site-3")
	testRefusedJoiner(t, func(int) *TLS { return nil },
		func(cfg *Config) { cfg.TLS = cert }, "")
}

// TestTLSOpenFailsOnBadCertificateFiles: Open fails at once (dragonboat's NodeHost does not
// start: its TCP transport loads the files when it starts listening) when a TLS file is
// missing or does not hold what it should; the same directory then starts fine with good
// files and takes writes.
func TestTLSOpenFailsOnBadCertificateFiles(t *testing.T) {
	ca := testutil.NewCA(t, "strata")
	good, other := issueTLS(ca, "site"), issueTLS(ca, "other")
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	require.NoError(t, os.WriteFile(garbage, []byte("not a PEM file\n"), 0o600))
	missing := filepath.Join(t.TempDir(), "missing.pem")
	addr := freeAddr(t)
	dir := t.TempDir()
	config := func(tls TLS) Config {
		return Config{Dir: dir, RaftAddress: addr, InitialSites: []string{addr}, ReplicationFactor: 1,
			LogDBMemory: LogDBTiny, ReconcileInterval: 20 * time.Millisecond, TLS: &tls,
			DB: &ds.Options{NShards: 2, Logger: testLogger(), Retention: ds.RetainForever, GenerationSpan: time.Hour,
				Expert: ds.ExpertOptions{MemTableBytes: 4 << 20, CacheBytes: 8 << 20}}}
	}
	for _, tc := range []struct {
		name    string
		tls     TLS
		want    string
		invalid bool // ErrInvalidConfig (caught before dragonboat)
	}{
		{"no CA file", TLS{"", good.CertFile, good.KeyFile}, "TLS needs CAFile, CertFile and KeyFile", true},
		{"missing certificate", TLS{good.CAFile, missing, good.KeyFile}, "no such file or directory", false},
		{"missing key", TLS{good.CAFile, good.CertFile, missing}, "no such file or directory", false},
		{"missing CA", TLS{missing, good.CertFile, good.KeyFile}, "no such file or directory", false},
		{"garbage certificate", TLS{good.CAFile, garbage, good.KeyFile}, "failed to find any PEM data in certificate input", false},
		{"garbage key", TLS{good.CAFile, good.CertFile, garbage}, "failed to find any PEM data in key input", false},
		{"garbage CA", TLS{garbage, good.CertFile, good.KeyFile}, "failed to append certs", false},
		{"key of another certificate", TLS{good.CAFile, good.CertFile, other.KeyFile}, "private key does not match public key", false},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		s, err := Open(ctx, config(tc.tls))
		cancel()
		if err == nil {
			s.Close()
		}
		require.Error(t, err, "%s: Open succeeded", tc.name)
		took := time.Since(start)
		require.Contains(t, err.Error(), tc.want, "%s: Open failed after %v with %q; want %q (ErrInvalidConfig %v) at once", tc.name, took, err, tc.want, tc.invalid)
		require.Equal(t, tc.invalid, errors.Is(err, ErrInvalidConfig), "%s: Open failed after %v with %q; want %q (ErrInvalidConfig %v) at once", tc.name, took, err, tc.want, tc.invalid)
		require.LessOrEqual(t, took, 5*time.Second, "%s: Open failed after %v with %q; want %q (ErrInvalidConfig %v) at once", tc.name, took, err, tc.want, tc.invalid)
		t.Logf("%s: %v", tc.name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, config(*good))
	require.NoError(t, err, "Open with good files after failed attempts")
	defer s.Close()
	db, err := s.DB()
	require.NoError(t, err)
	acked := storeN(t, db, "ok", 20)
	got, err := readAll(db)
	require.NoError(t, err)
	lost, dups := diff(acked, got)
	require.Empty(t, lost, "read %d of %d: missing %q, dups %q", len(got), len(acked), lost, dups)
	require.Empty(t, dups, "read %d of %d: missing %q, dups %q", len(got), len(acked), lost, dups)
	require.Len(t, got, len(acked), "read %d of %d: missing %q, dups %q", len(got), len(acked), lost, dups)
}
