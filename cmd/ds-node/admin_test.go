package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestAdminHandlerForDSInfo: a running ds-node serves the site's admin handler, so that
// ds-info -url prints the same rows as ds-info -dir on the node's directory once it stopped,
// and /metrics carries the Raft metrics.
func TestAdminHandlerForDSInfo(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: skipped with -short")
	}
	bin := buildNode(t, "")
	info := filepath.Join(t.TempDir(), "ds-info")
	out, err := exec.Command("go", "build", "-o", info, "../ds-info").CombinedOutput()
	require.NoError(t, err, "build ds-info: %v\n%s", err, out)
	root := t.TempDir()
	raft := freePort(t)
	dir := filepath.Join(root, "node")
	p := &proc{t: t, bin: bin, logPath: filepath.Join(root, "node.log"), args: []string{
		"-dir", dir, "-raft-addr", raft, "-http-addr", "127.0.0.1:0", "-initial", raft,
		"-shards", "2", "-rf", "1", "-open-timeout", "60s", "-admin-token", "t0ken", "-api-token", testAPIToken}}
	t.Cleanup(func() {
		if p.running() {
			p.kill()
		}
		if t.Failed() {
			t.Log(p.tail(40))
		}
	})
	p.start()
	base := p.waitReady(60 * time.Second)

	var msgs []storeMessage
	for i := range 20 {
		msgs = append(msgs, storeMessage{ClientID: fmt.Sprintf("c%d", i%4), Topic: fmt.Sprintf("room/%d/temp", i%3),
			PayloadB64: base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("m%d", i)))})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = postStore(ctx, base, msgs)
	require.NoError(t, err)

	resp, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, series := range []string{"strata_messages_stored_total", "strata_raft_applied_index{", "strata_raft_leader{"} {
		require.Equal(t, http.StatusOK, resp.StatusCode, "/metrics: %d, no %s:\n%s", resp.StatusCode, series, metrics)
		require.Contains(t, string(metrics), series, "/metrics: %d, no %s:\n%s", resp.StatusCode, series, metrics)
	}

	// The payload endpoint wants the token.
	for token, want := range map[string]int{"": http.StatusUnauthorized, "t0ken": http.StatusOK} {
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/messages", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, want, resp.StatusCode, "/v1/messages with token %q: %d, want %d", token, resp.StatusCode, want)
	}

	cases := [][]string{{"streams", "-json"}, {"generations", "-json"}, {"messages", "-json"}, {"messages", "-filter", "room/1/#"}}
	dsInfo := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(info, args...)
		cmd.Env = append(os.Environ(), "STRATA_ADMIN_TOKEN=t0ken")
		out, err := cmd.Output()
		require.NoError(t, err, "ds-info %q", args)
		return string(out)
	}
	byURL := make([]string, len(cases))
	for i, c := range cases {
		byURL[i] = dsInfo(append([]string{c[0], "-url", base}, c[1:]...)...)
	}
	require.NoError(t, p.terminate(15*time.Second))
	for i, c := range cases {
		byDir := dsInfo(append([]string{c[0], "-dir", dir}, c[1:]...)...)
		require.Equal(t, byURL[i], byDir, "ds-info %q: -url and -dir differ:\n-url:\n%s\n-dir:\n%s", c, byURL[i], byDir)
		require.False(t, c[0] != "generations" && !strings.Contains(byDir, "room/"), "ds-info %q -dir shows no stored topic:\n%s", c, byDir)
	}
}
