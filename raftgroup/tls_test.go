package raftgroup

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
)

// tlsCA is a certificate authority made up for one test: its certificate and the site
// certificates it issues are PEM files in a temporary directory.
type tlsCA struct {
	t      testing.TB
	dir    string
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	caFile string
}

func tlsSerial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newTLSCA(t testing.TB, name string) *tlsCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: tlsSerial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &tlsCA{t: t, dir: t.TempDir(), cert: cert, key: key}
	ca.caFile = ca.write(name+"-ca.pem", "CERTIFICATE", der)
	return ca
}

func (ca *tlsCA) write(name, typ string, der []byte) string {
	ca.t.Helper()
	path := filepath.Join(ca.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		ca.t.Fatal(err)
	}
	return path
}

// issue makes a site certificate for 127.0.0.1 and localhost, good for both ends of mutual
// TLS (server and client), and returns the site's TLS configuration (this CA's file).
func (ca *tlsCA) issue(name string) *TLS {
	ca.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: tlsSerial(ca.t), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		ca.t.Fatal(err)
	}
	return &TLS{CAFile: ca.caFile, CertFile: ca.write(name+".pem", "CERTIFICATE", der),
		KeyFile: ca.write(name+"-key.pem", "PRIVATE KEY", keyDER)}
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
	if err != nil {
		c.t.Fatal(err)
	}
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
	if err := c.sites[member].AddSite(ctx, id, j.addr); err != nil {
		c.t.Fatalf("AddSite %s %s: %v", id, j.addr, err)
	}
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

// testRefusedJoiner: three sites (clusterTLS gives site i's TLS, nil for plain TCP) take
// writes; a fourth site, configured like them and then by adjust, is added with AddSite. The
// members make it a (non-voting) member of every group and keep trying to reach it, but it
// never gets the cluster's schema, so its Open fails when its ctx ends; meanwhile, and after
// RemoveSite took it out again, the cluster takes writes and every site holds all of them.
// wantLog, if set, is text that dragonboat must log while the site is refused.
func testRefusedJoiner(t *testing.T, clusterTLS func(i int) *TLS, adjust func(*Config), wantLog string) {
	const nShards = 3
	c := newTestCluster(t, 3, nShards, func(i int, cfg *Config) { cfg.TLS = clusterTLS(i) })
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

	if !j.wait(refusedJoinWait + 15*time.Second) {
		t.Fatalf("the refused site's Open did not return %v after its ctx ended", 15*time.Second)
	}
	if j.err == nil {
		c.sites[j.i] = j.site
		t.Fatalf("the refused site joined after %v", j.took)
	}
	if !errors.Is(j.err, ds.ErrUnavailable) || !errors.Is(j.err, context.DeadlineExceeded) || j.took < refusedJoinWait-time.Second {
		t.Fatalf("the refused site's Open failed after %v with %v; want ErrUnavailable after its ctx (%v) ended", j.took, j.err, refusedJoinWait)
	}
	t.Logf("refused site's Open: after %v: %v", j.took.Round(time.Millisecond), j.err)
	if wantLog != "" {
		if got := logs.grep(wantLog, 3); len(got) == 0 {
			t.Errorf("dragonboat did not log %q; it logged e.g. %q", wantLog, logs.grep("", 20))
		} else {
			t.Logf("dragonboat logged: %q", got)
		}
	} else {
		t.Logf("dragonboat logged: %q", logs.grep("failed", 3))
	}

	// Take it out again. The cluster goes on taking writes and its three sites converge.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.sites[0].RemoveSite(ctx, j.id); err != nil {
		t.Fatal(err)
	}
	acked = append(acked, storeN(t, c.db(1), "after", 30)...)
	c.requireAllRead(acked, 20*time.Second)
	c.waitConverged(nShards, 20*time.Second)
	// The removal completes: the site is "left" and holds no replica.
	st := waitRemoved(t, c, j.id, 20*time.Second)
	for _, r := range st.Replicas {
		if r.Slot > 3 {
			t.Fatalf("replica %+v left on the removed site", r)
		}
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
func tlsSites(ca *tlsCA, n int) []*TLS {
	out := make([]*TLS, n)
	for i := range out {
		out[i] = ca.issue(fmt.Sprintf("site-%d", i))
	}
	return out
}

// TestTLSClusterStoreAndReadEverywhere: three sites with mutual TLS, each with its own
// certificate from one CA: messages stored through each site are read through every site,
// once, and the replicas converge.
func TestTLSClusterStoreAndReadEverywhere(t *testing.T) {
	const nShards = 4
	certs := tlsSites(newTLSCA(t, "strata"), 3)
	c := newTestCluster(t, 3, nShards, func(i int, cfg *Config) { cfg.TLS = certs[i] })
	var acked []string
	for i := range c.sites {
		acked = append(acked, storeN(t, c.db(i), fmt.Sprintf("s%d", i), 60)...)
	}
	c.requireAllRead(acked, 20*time.Second)
	c.waitConverged(nShards, 20*time.Second)
	requireMutualTLS(t, c.addrs[0], certs[1])
}

// requireMutualTLS checks that the site at addr speaks TLS with a certificate valid for it
// under good's CA, and that it turns away a client without a certificate.
func requireMutualTLS(t *testing.T, addr string, good *TLS) {
	t.Helper()
	caPEM, err := os.ReadFile(good.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(good.CertFile, good.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
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
	if err := dial([]tls.Certificate{cert}); err != nil {
		t.Errorf("TLS with a valid client certificate: %v", err)
	}
	if err := dial(nil); err == nil {
		t.Errorf("TLS without a client certificate was accepted")
	} else {
		t.Logf("TLS without a client certificate: %v", err)
	}
}

// TestTLSJoinWithValidCertificate is the control of the refused-site tests below: a fourth
// site with a certificate from the cluster's CA joins (its Open returns), receives every shard
// and takes writes.
func TestTLSJoinWithValidCertificate(t *testing.T) {
	const nShards = 3
	certs := tlsSites(newTLSCA(t, "strata"), 4)
	c := newTestCluster(t, 3, nShards, func(i int, cfg *Config) { cfg.TLS = certs[i] })
	acked := storeN(t, c.db(0), "before", 30)
	j := c.startJoinAsync(1, 30*time.Second, nil)
	if !j.wait(45 * time.Second) {
		t.Fatal("the joiner's Open did not return")
	}
	if j.err != nil {
		t.Fatalf("the joiner's Open: %v", j.err)
	}
	c.sites[j.i] = j.site
	t.Logf("joined over mutual TLS in %v", j.took.Round(time.Millisecond))
	c.waitPlanDone(0, 20*time.Second)
	acked = append(acked, storeN(t, c.db(j.i), "joiner", 30)...)
	c.requireAllRead(acked, 20*time.Second)
	c.waitConverged(nShards, 20*time.Second)
}

// TestTLSRefusesSiteOfAnotherCA: a site whose certificate (and CA file) come from another CA
// cannot take part: the members do not accept its certificate and it does not accept theirs.
func TestTLSRefusesSiteOfAnotherCA(t *testing.T) {
	certs := tlsSites(newTLSCA(t, "strata"), 3)
	intruder := newTLSCA(t, "intruder").issue("site-3")
	testRefusedJoiner(t, func(i int) *TLS { return certs[i%3] },
		func(cfg *Config) { cfg.TLS = intruder },
		"certificate signed by unknown authority")
}

// TestTLSRefusesOtherDeploymentID: a site with the cluster's certificates but another
// DeploymentID: the connections are made, but dragonboat drops every message between them.
func TestTLSRefusesOtherDeploymentID(t *testing.T) {
	certs := tlsSites(newTLSCA(t, "strata"), 4)
	testRefusedJoiner(t, func(i int) *TLS { return certs[i] },
		func(cfg *Config) { cfg.DeploymentID = 2 },
		"deployment id does not match")
}

// TestTLSRefusesPlainSite: a site without TLS cannot take part in a cluster with mutual TLS.
func TestTLSRefusesPlainSite(t *testing.T) {
	certs := tlsSites(newTLSCA(t, "strata"), 3)
	testRefusedJoiner(t, func(i int) *TLS { return certs[i%3] },
		func(cfg *Config) { cfg.TLS = nil }, "")
}

// TestTLSSiteRefusedByPlainCluster: the mirror image: a site with mutual TLS (and a valid
// certificate) cannot take part in a cluster on plain TCP.
func TestTLSSiteRefusedByPlainCluster(t *testing.T) {
	cert := newTLSCA(t, "strata").issue("site-3")
	testRefusedJoiner(t, func(int) *TLS { return nil },
		func(cfg *Config) { cfg.TLS = cert }, "")
}

// TestTLSOpenFailsOnBadCertificateFiles: Open fails at once (dragonboat's NodeHost does not
// start: its TCP transport loads the files when it starts listening) when a TLS file is
// missing or does not hold what it should; the same directory then starts fine with good
// files and takes writes.
func TestTLSOpenFailsOnBadCertificateFiles(t *testing.T) {
	ca := newTLSCA(t, "strata")
	good, other := ca.issue("site"), ca.issue("other")
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a PEM file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
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
			t.Fatalf("%s: Open succeeded", tc.name)
		}
		took := time.Since(start)
		if !strings.Contains(err.Error(), tc.want) || errors.Is(err, ErrInvalidConfig) != tc.invalid || took > 5*time.Second {
			t.Errorf("%s: Open failed after %v with %q; want %q (ErrInvalidConfig %v) at once", tc.name, took, err, tc.want, tc.invalid)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, config(*good))
	if err != nil {
		t.Fatalf("Open with good files after failed attempts: %v", err)
	}
	defer s.Close()
	db, err := s.DB()
	if err != nil {
		t.Fatal(err)
	}
	acked := storeN(t, db, "ok", 20)
	got, err := readAll(db)
	if err != nil {
		t.Fatal(err)
	}
	if missing, dups := diff(acked, got); len(missing) > 0 || len(dups) > 0 || len(got) != len(acked) {
		t.Fatalf("read %d of %d: missing %q, dups %q", len(got), len(acked), missing, dups)
	}
}
