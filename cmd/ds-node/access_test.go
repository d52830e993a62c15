package main

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/inspect"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/stretchr/testify/require"
)

// reply is an HTTP response of the API, read whole.
type reply struct {
	status int
	header http.Header
	body   []byte
}

// errorText is the "error" of a JSON error response ("" if there is none).
func (r reply) errorText() string {
	var e errorResponse
	json.Unmarshal(r.body, &e)
	return e.Error
}

// call sends one request, with "Authorization: Bearer token" unless token is empty.
func call(c *http.Client, method, url, token, body string) (reply, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: b}, err
}

// TestAccessGuard checks the guard of /store, /read and /sites over a real listener: off, with
// a token, open.
func TestAccessGuard(t *testing.T) {
	for _, tc := range []struct {
		name   string
		access access
		token  string
		want   int
	}{
		{"off", access{}, "", http.StatusForbidden},
		{"off, a token sent", access{}, "secret", http.StatusForbidden},
		{"token, none sent", tokenAccess("secret"), "", http.StatusUnauthorized},
		{"token, wrong", tokenAccess("secret"), "secreT", http.StatusUnauthorized},
		{"token, a prefix", tokenAccess("secret"), "secre", http.StatusUnauthorized},
		{"token", tokenAccess("secret"), "secret", http.StatusOK},
		{"open", access{open: true}, "", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.access.guard(func(w http.ResponseWriter, r *http.Request) {
				inspect.WriteJSON(w, http.StatusOK, struct{}{})
			}))
			defer srv.Close()
			r, err := call(srv.Client(), "POST", srv.URL+"/store", tc.token, "{}")
			require.NoError(t, err)
			require.Equal(t, tc.want, r.status, "status %d, want %d: %s", r.status, tc.want, r.body)
			got := r.header.Get("Content-Type")
			require.Equal(t, "application/json", got, "Content-Type %q", got)
			auth := r.header.Get("WWW-Authenticate")
			switch r.status {
			case http.StatusForbidden:
				msg := r.errorText()
				require.Contains(t, msg, "POST /store is off", "403 error %q does not say how to turn the endpoint on", msg)
				require.Contains(t, msg, "-api-token", "403 error %q does not say how to turn the endpoint on", msg)
				require.Contains(t, msg, "-api-insecure-no-auth", "403 error %q does not say how to turn the endpoint on", msg)
			case http.StatusUnauthorized:
				require.True(t, strings.HasPrefix(auth, "Bearer"), "401 with WWW-Authenticate %q", auth)
				msg := r.errorText()
				require.Contains(t, msg, "needs the API token", "401 error %q", msg)
				require.NotContains(t, msg, "secret", "401 error %q", msg)
			}
		})
	}
}

// TestAPIAccessFlags checks how -api-token, -api-token-file, $STRATA_API_TOKEN and
// -api-insecure-no-auth combine.
func TestAPIAccessFlags(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	good, empty, spaced := file("good", "  s3cret\n"), file("empty", " \n"), file("spaced", "s3 cret\n")
	for _, tc := range []struct {
		name            string
		token, file     string
		insecure        bool
		env             string
		want, wantError string
	}{
		{name: "nothing", want: "off"},
		{name: "insecure", insecure: true, want: "open"},
		{name: "flag", token: "s3cret", want: "token"},
		{name: "file", file: good, want: "token"},
		{name: "env", env: "s3cret", want: "token"},
		{name: "flag over env", token: "s3cret", env: "other", want: "token"},
		{name: "both flags", token: "s3cret", file: good, wantError: "-api-token and -api-token-file"},
		{name: "token and insecure", token: "s3cret", insecure: true, wantError: "-api-insecure-no-auth and an API token (-api-token)"},
		{name: "env and insecure", env: "s3cret", insecure: true, wantError: "(" + "$" + apiTokenEnv + ")"},
		{name: "missing file", file: filepath.Join(dir, "nope"), wantError: "-api-token-file: open"},
		{name: "empty file", file: empty, wantError: "the file is empty"},
		{name: "space in file", file: spaced, wantError: "whitespace or control characters"},
		{name: "control char", token: "a\x01b", wantError: "whitespace or control characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(apiTokenEnv, tc.env)
			ac, _, err := apiAccess(tc.token, tc.file, tc.insecure)
			if tc.wantError != "" {
				require.Error(t, err, "error %v, want one with %q", err, tc.wantError)
				require.Contains(t, err.Error(), tc.wantError, "error %v, want one with %q", err, tc.wantError)
				require.NotContains(t, err.Error(), "s3cret", "the error %q shows the token", err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, ac.String(), "access %s, want %s", ac, tc.want)
			if tc.want == "token" {
				req := httptest.NewRequest("GET", "/read", nil)
				req.Header.Set("Authorization", "Bearer s3cret")
				require.NoError(t, ac.authorize(req), "the token s3cret is refused")
			}
		})
	}
}

// TestHTTPTLSFlags checks the validation of -http-tls-cert, -http-tls-key and
// -http-tls-client-ca.
func TestHTTPTLSFlags(t *testing.T) {
	ca := testutil.NewCA(t, "test")
	cert, key := ca.Issue("node")
	for _, tc := range []struct {
		name              string
		cert, key, client string
		want, wantError   string
	}{
		{name: "none", want: "off"},
		{name: "server", cert: cert, key: key, want: "on"},
		{name: "mutual", cert: cert, key: key, client: ca.File, want: "mutual"},
		{name: "cert only", cert: cert, wantError: "go together"},
		{name: "key only", key: key, wantError: "go together"},
		{name: "client CA only", client: ca.File, wantError: "needs -http-tls-cert"},
		{name: "key as cert", cert: key, key: key, wantError: "-http-tls-cert/-http-tls-key"},
		{name: "missing cert", cert: cert + ".nope", key: key, wantError: "no such file"},
		{name: "client CA not PEM", cert: cert, key: key, client: key, wantError: "no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := httpTLSConfig(tc.cert, tc.key, tc.client)
			if tc.wantError != "" {
				require.Error(t, err, "error %v, want one with %q", err, tc.wantError)
				require.Contains(t, err.Error(), tc.wantError, "error %v, want one with %q", err, tc.wantError)
				return
			}
			require.NoError(t, err)
			got := tlsMode(cfg)
			require.Equal(t, tc.want, got, "TLS %s, want %s", got, tc.want)
		})
	}
}

// TestFlagErrorsBeforeStart: conflicting access or TLS flags stop ds-node at once with a clear
// error, before it opens the site.
func TestFlagErrorsBeforeStart(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: skipped with -short")
	}
	bin := buildNode(t, "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-api-token", "x", "-api-insecure-no-auth"}, "-api-insecure-no-auth and an API token"},
		{[]string{"-http-tls-key", "key.pem"}, "-http-tls-cert and -http-tls-key go together"},
	} {
		dir := filepath.Join(t.TempDir(), "node")
		args := append([]string{"-dir", dir, "-raft-addr", "127.0.0.1:1", "-initial", "127.0.0.1:1"}, tc.args...)
		out, err := exec.Command(bin, args...).CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		require.True(t, ok, "ds-node %q: %v, want exit status 1 with %q:\n%s", tc.args, err, tc.want, out)
		require.Equal(t, 1, ee.ExitCode(), "ds-node %q: %v, want exit status 1 with %q:\n%s", tc.args, err, tc.want, out)
		require.Contains(t, string(out), tc.want, "ds-node %q: %v, want exit status 1 with %q:\n%s", tc.args, err, tc.want, out)
		_, err = os.Stat(dir)
		require.Error(t, err, "ds-node %q created its directory before it refused the flags", tc.args)
	}
}

// TestAPIAccessAndHTTPS runs three single-site nodes: one with an API token (from
// -api-token-file) over mutual TLS, one with -api-insecure-no-auth over HTTPS, one with neither
// over HTTP, and checks who may store, read and add sites on each.
func TestAPIAccessAndHTTPS(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: skipped with -short")
	}
	bin := buildNode(t, "")
	ca := testutil.NewCA(t, "test")
	srvCert, srvKey := ca.Issue("node")
	cliCertFile, cliKeyFile := ca.Issue("client")
	cliCert, err := tls.LoadX509KeyPair(cliCertFile, cliKeyFile)
	require.NoError(t, err)
	root := t.TempDir()
	tokenFile := filepath.Join(root, "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(testAPIToken+"\n"), 0o600))

	var procs []*proc
	node := func(name string, extra ...string) *proc {
		raft := freePort(t)
		args := append([]string{"-dir", filepath.Join(root, name), "-raft-addr", raft, "-http-addr", "127.0.0.1:0",
			"-initial", raft, "-shards", "2", "-rf", "1", "-open-timeout", "60s"}, extra...)
		p := &proc{t: t, idx: len(procs), bin: bin, args: args, logPath: filepath.Join(root, name+".log")}
		procs = append(procs, p)
		return p
	}
	t.Cleanup(func() {
		for _, p := range procs {
			if p.running() {
				p.kill()
			}
			if t.Failed() {
				t.Log(p.tail(30))
			}
		}
	})
	secured := node("secured", "-api-token-file", tokenFile,
		"-http-tls-cert", srvCert, "-http-tls-key", srvKey, "-http-tls-client-ca", ca.File)
	open := node("open", "-api-insecure-no-auth", "-http-tls-cert", srvCert, "-http-tls-key", srvKey)
	off := node("off")
	for _, p := range procs {
		p.start()
	}
	https := func(p *proc) string {
		return strings.Replace(p.waitReady(60*time.Second), "http://", "https://", 1)
	}
	securedURL, openURL, offURL := https(secured), https(open), off.waitReady(60*time.Second)
	for p, want := range map[*proc]string{secured: "api=token http_tls=mutual", open: "api=open http_tls=on", off: "api=off http_tls=off"} {
		require.Contains(t, p.tail(100), want, "node %d's ready line does not say %q:\n%s", p.idx, want, p.tail(10))
	}

	plain := &http.Client{Timeout: 30 * time.Second}
	tlsClient := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}}
	mtlsClient := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{cliCert}}}}
	type want struct {
		status int
		text   string // in the body
	}
	check := func(c *http.Client, method, url, token, body string, w want) reply {
		t.Helper()
		r, err := call(c, method, url, token, body)
		require.NoError(t, err, "%s %s", method, url)
		require.Equal(t, w.status, r.status, "%s %s (token %q): %d %s, want %d with %q", method, url, token, r.status, bytes.TrimSpace(r.body), w.status, w.text)
		require.Contains(t, string(r.body), w.text, "%s %s (token %q): %d %s, want %d with %q", method, url, token, r.status, bytes.TrimSpace(r.body), w.status, w.text)
		require.False(t, r.status == http.StatusUnauthorized && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer"), "%s %s: 401 with WWW-Authenticate %q", method, url, r.header.Get("WWW-Authenticate"))
		return r
	}
	// storeAndRead stores one message (retrying while the node elects its leaders) and reads it.
	storeAndRead := func(c *http.Client, base, token, payload string) {
		t.Helper()
		msg := fmt.Sprintf(`{"client_id": "c1", "topic": "t/1", "payload_b64": %q}`, base64.StdEncoding.EncodeToString([]byte(payload)))
		eventually(t, 30*time.Second, "store through "+base, func() error {
			r, err := call(c, "POST", base+"/store", token, msg)
			if err != nil || r.status != http.StatusOK {
				return fmt.Errorf("%d %s %v", r.status, r.body, err)
			}
			return nil
		})
		eventually(t, 30*time.Second, "read through "+base, func() error {
			r, err := call(c, "GET", base+"/read?filter=%23", token, "")
			if err != nil || r.status != http.StatusOK || !strings.Contains(string(r.body), base64.StdEncoding.EncodeToString([]byte(payload))) {
				return fmt.Errorf("%d %s %v", r.status, r.body, err)
			}
			return nil
		})
	}
	const badSite = `{"id": "zz", "raft_address": "127.0.0.1:1"}` // passes the guard, then 400
	refused := want{http.StatusUnauthorized, "needs the API token"}

	// Token and mutual TLS: no client certificate, no connection; no token, no payloads.
	r, err := call(plain, "GET", strings.Replace(securedURL, "https://", "http://", 1)+"/status", "", "")
	require.False(t, err == nil && r.status == http.StatusOK, "plain HTTP to the HTTPS node: %d %s", r.status, r.body)
	_, err = call(tlsClient, "GET", securedURL+"/status", "", "")
	require.Error(t, err, "mutual TLS: a client without a certificate got an answer")
	_, err = call(&http.Client{Timeout: 30 * time.Second}, "GET", securedURL+"/status", "", "")
	require.Error(t, err, "a client that does not trust the test CA got an answer")
	check(mtlsClient, "GET", securedURL+"/status", "", "", want{http.StatusOK, `"site_id"`})
	check(mtlsClient, "GET", securedURL+"/metrics", "", "", want{http.StatusOK, "strata_"})
	check(mtlsClient, "POST", securedURL+"/store", "", `{"topic": "t/1"}`, refused)
	check(mtlsClient, "POST", securedURL+"/store", testAPIToken+"x", `{"topic": "t/1"}`, refused)
	check(mtlsClient, "GET", securedURL+"/read", "", "", refused)
	check(mtlsClient, "GET", securedURL+"/read", "wrong", "", refused)
	check(mtlsClient, "POST", securedURL+"/sites", "", badSite, refused)
	storeAndRead(mtlsClient, securedURL, testAPIToken, "through the token")
	check(mtlsClient, "POST", securedURL+"/sites", testAPIToken, badSite, want{http.StatusBadRequest, "error"})
	check(mtlsClient, "GET", securedURL+"/v1/messages", testAPIToken, "", want{http.StatusForbidden, "off"}) // -admin-token is separate

	// -api-insecure-no-auth over HTTPS: open to any client that trusts the server.
	storeAndRead(tlsClient, openURL, "", "open")
	check(tlsClient, "POST", openURL+"/sites", "", badSite, want{http.StatusBadRequest, "error"})

	// Neither: off, token or not; status open.
	off403 := want{http.StatusForbidden, "-api-token"}
	check(plain, "POST", offURL+"/store", "", `{"topic": "t/1"}`, off403)
	check(plain, "POST", offURL+"/store", testAPIToken, `{"topic": "t/1"}`, off403)
	check(plain, "GET", offURL+"/read", "", "", off403)
	check(plain, "POST", offURL+"/sites", "", badSite, off403)
	check(plain, "GET", offURL+"/status", "", "", want{http.StatusOK, `"site_id"`})

	for _, p := range procs {
		require.NoError(t, p.terminate(15*time.Second), "node %d: SIGTERM", p.idx)
	}
}
