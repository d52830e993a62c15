package inspect_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/inspect"
	"github.com/strata-mq/strata/shard"
	"github.com/stretchr/testify/require"
)

// adminServer serves inspect.Handler of a fresh DB with some messages under /strata/.
func adminServer(t *testing.T) (*testDB, *httptest.Server) {
	t.Helper()
	d := openTestDB(t, fastOptions())
	for i := range 20 {
		d.store(msg(fmt.Sprintf("client-%d", i%5), fmt.Sprintf("sensor/%d/temp", i%7), i))
	}
	d.store(ds.Message{ClientID: "bin", Topic: "raw/1", Payload: []byte{0, 1, 0xff, '\n', '\\'}})
	mux := http.NewServeMux()
	mux.Handle("/strata/", http.StripPrefix("/strata", inspect.Handler(d.DB, inspect.WithDataDir(d.dir), inspect.WithPayloads(nil))))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return d, srv
}

// The payload endpoints are off unless turned on, and with a bearer token they answer only
// requests that carry it; the other views stay open.
func TestAdminPayloadsOffByDefaultAndToken(t *testing.T) {
	d := openTestDB(t, fastOptions())
	d.store(msg("c", "a/b", 1))
	get := func(h http.Handler, path, token string) int {
		t.Helper()
		req := httptest.NewRequest(http.MethodGet, path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	off := inspect.Handler(d.DB)
	for _, p := range []string{"/v1/messages", "/v1/records?shard=0"} {
		require.Equal(t, http.StatusForbidden, get(off, p, ""), p)
	}
	require.Equal(t, http.StatusOK, get(off, "/v1/streams", ""))
	require.Equal(t, http.StatusOK, get(off, "/metrics", ""))

	guarded := inspect.Handler(d.DB, inspect.WithPayloads(inspect.BearerToken("s3cret")))
	for _, p := range []string{"/v1/messages", "/v1/records?shard=0"} {
		require.Equal(t, http.StatusUnauthorized, get(guarded, p, ""), p)
		require.Equal(t, http.StatusUnauthorized, get(guarded, p, "wrong"), p)
		require.Equal(t, http.StatusOK, get(guarded, p, "s3cret"), p)
	}
	require.Equal(t, http.StatusOK, get(guarded, "/v1/info", ""))
	require.Equal(t, http.StatusUnauthorized, get(inspect.Handler(d.DB, inspect.WithPayloads(inspect.BearerToken(""))), "/v1/messages", ""),
		"an empty token accepts nothing")
}

func httpGet(t *testing.T, u string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.Get(u)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, b
}

var (
	promName   = `[a-zA-Z_:][a-zA-Z0-9_:]*`
	promHelp   = regexp.MustCompile(`^# HELP (` + promName + `) (.*)$`)
	promType   = regexp.MustCompile(`^# TYPE (` + promName + `) (counter|gauge|histogram|summary|untyped)$`)
	promSample = regexp.MustCompile(`^(` + promName + `)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})? (\S+)$`)
	promLabel  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"`)
)

type promSampleT struct {
	name   string
	labels map[string]string
	value  float64
}

// parseProm parses the text exposition format strictly: every line a HELP, a TYPE or a
// sample of a declared family.
func parseProm(t *testing.T, text string) (types map[string]string, samples []promSampleT) {
	t.Helper()
	require.True(t, strings.HasSuffix(text, "\n"), "the exposition ends with a newline")
	types = map[string]string{}
	helps := map[string]bool{}
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if m := promHelp.FindStringSubmatch(line); m != nil {
			require.False(t, helps[m[1]], "line %d: second HELP for %s", i+1, m[1])
			helps[m[1]] = true
			continue
		}
		if m := promType.FindStringSubmatch(line); m != nil {
			_, dup := types[m[1]]
			require.False(t, dup, "line %d: second TYPE for %s", i+1, m[1])
			types[m[1]] = m[2]
			continue
		}
		m := promSample.FindStringSubmatch(line)
		require.NotNil(t, m, "line %d is not well-formed: %q", i+1, line)
		s := promSampleT{name: m[1], labels: map[string]string{}}
		for _, l := range promLabel.FindAllStringSubmatch(m[2], -1) {
			s.labels[l[1]] = l[2]
		}
		v, err := strconv.ParseFloat(m[3], 64)
		require.NoError(t, err, "line %d", i+1)
		s.value = v
		family := s.name
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(s.name, suf); ok && types[base] == "histogram" {
				family = base
			}
		}
		require.Contains(t, types, family, "line %d: sample before its TYPE", i+1)
		require.True(t, helps[family], "line %d: sample without HELP", i+1)
		samples = append(samples, s)
	}
	return types, samples
}

func TestHandlerMetrics(t *testing.T) {
	d, srv := adminServer(t)
	before, err := d.Metrics()
	require.NoError(t, err)
	code, hdr, body := httpGet(t, srv.URL+"/strata/metrics")
	require.Equal(t, http.StatusOK, code, "%s", body)
	require.Contains(t, hdr.Get("Content-Type"), "text/plain; version=0.0.4")
	after, err := d.Metrics()
	require.NoError(t, err)

	types, samples := parseProm(t, string(body))
	require.Equal(t, map[string]string{
		"strata_messages_stored_total":        "counter",
		"strata_bytes_stored_total":           "counter",
		"strata_commits_total":                "counter",
		"strata_queue_depth":                  "gauge",
		"strata_generations":                  "gauge",
		"strata_streams":                      "gauge",
		"strata_shard_available":              "gauge",
		"strata_messages_held":                "gauge",
		"strata_shard_disk_bytes":             "gauge",
		"strata_store_stage_seconds_total":    "counter",
		"strata_commit_latency_seconds":       "histogram",
		"strata_batch_messages":               "histogram",
		"strata_disk_bytes":                   "gauge",
		"strata_messages_forwarded_total":     "counter",
		"strata_forwarded_batches_total":      "counter",
		"strata_bytes_written_total":          "counter",
		"strata_subscriptions":                "gauge",
		"strata_subscriptions_tail":           "gauge",
		"strata_subscriptions_parked":         "gauge",
		"strata_subscription_lag_seconds":     "gauge",
		"strata_subscription_delivered_total": "counter",
		"strata_subscription_reads_total":     "counter",
		"strata_subscription_fed_total":       "counter",
		"strata_subscription_demoted_total":   "counter",
		"strata_subscription_losses_total":    "counter",
	}, types)

	get := func(name string, labels map[string]string) []promSampleT {
		var out []promSampleT
		for _, s := range samples {
			if s.name != name {
				continue
			}
			match := true
			for k, v := range labels {
				if s.labels[k] != v {
					match = false
				}
			}
			if match {
				out = append(out, s)
			}
		}
		return out
	}
	one := func(name string, labels map[string]string) float64 {
		t.Helper()
		s := get(name, labels)
		require.Len(t, s, 1, "%s %v", name, labels)
		return s[0].value
	}

	require.Len(t, before.Shards, 4)
	var stored float64
	for _, sm := range before.Shards {
		l := map[string]string{"shard": strconv.Itoa(int(sm.Shard))}
		require.Equal(t, float64(sm.Messages), one("strata_messages_stored_total", l))
		require.Equal(t, float64(sm.Bytes), one("strata_bytes_stored_total", l))
		require.Equal(t, float64(sm.Batches), one("strata_commits_total", l))
		require.Equal(t, float64(sm.QueueDepth), one("strata_queue_depth", l))
		require.Equal(t, float64(sm.Generations), one("strata_generations", l))
		require.Equal(t, float64(sm.Streams), one("strata_streams", l))
		require.Equal(t, 1.0, one("strata_shard_available", l))
		require.Equal(t, float64(sm.Held), one("strata_messages_held", l))
		require.Equal(t, float64(sm.DiskBytes), one("strata_shard_disk_bytes", l))
		stored += one("strata_messages_stored_total", l)
		var stages time.Duration
		for st, name := range shard.StageNames {
			l := map[string]string{"shard": l["shard"], "stage": name}
			require.InDelta(t, sm.Stages[st].Seconds(), one("strata_store_stage_seconds_total", l), 1e-9, "stage %s", name)
			stages += sm.Stages[st]
		}
		if sm.Messages > 0 {
			// Every stored message spent some time between Store and its acknowledgement.
			require.Positive(t, stages, "shard %d: stage times of %d messages", sm.Shard, sm.Messages)
		}

		buckets := get("strata_commit_latency_seconds_bucket", l)
		require.Len(t, buckets, len(shard.LatencyBuckets)+1)
		var cum uint64
		prevLE, prevV := math.Inf(-1), -1.0
		for i, b := range buckets {
			le, err := strconv.ParseFloat(b.labels["le"], 64)
			require.NoError(t, err, "le %q", b.labels["le"])
			require.Greater(t, le, prevLE, "le increasing")
			require.GreaterOrEqual(t, b.value, prevV, "buckets cumulative")
			prevLE, prevV = le, b.value
			if i < len(shard.LatencyBuckets) {
				require.InDelta(t, shard.LatencyBuckets[i].Seconds(), le, 1e-12)
			}
			cum += sm.CommitLatency[i]
			require.Equal(t, float64(cum), b.value, "bucket %d of shard %d", i, sm.Shard)
		}
		last := buckets[len(buckets)-1]
		require.Equal(t, "+Inf", last.labels["le"])
		count := one("strata_commit_latency_seconds_count", l)
		require.Equal(t, last.value, count, "+Inf bucket == _count")
		require.Equal(t, float64(sm.Batches), count)
		require.InDelta(t, sm.CommitTotal.Seconds(), one("strata_commit_latency_seconds_sum", l), 1e-9)

		// Batch sizes: cumulative over shard.BatchBuckets, count = commits, sum = messages.
		bb := get("strata_batch_messages_bucket", l)
		require.Len(t, bb, len(shard.BatchBuckets)+1)
		cum = 0
		for i, b := range bb {
			if i < len(shard.BatchBuckets) {
				require.Equal(t, strconv.Itoa(shard.BatchBuckets[i]), b.labels["le"])
			} else {
				require.Equal(t, "+Inf", b.labels["le"])
			}
			cum += sm.BatchSize[i]
			require.Equal(t, float64(cum), b.value, "batch bucket %d of shard %d", i, sm.Shard)
		}
		require.Equal(t, float64(sm.Batches), one("strata_batch_messages_count", l))
		require.Equal(t, float64(sm.Messages), one("strata_batch_messages_sum", l))
	}
	require.Equal(t, float64(21), stored)
	if before.DiskBytes == after.DiskBytes && before.BytesWritten == after.BytesWritten {
		require.Equal(t, float64(before.DiskBytes), one("strata_disk_bytes", nil))
		require.Equal(t, float64(before.BytesWritten), one("strata_bytes_written_total", nil))
	}
	require.NotZero(t, one("strata_disk_bytes", nil))
}

func TestAdminJSON(t *testing.T) {
	d, srv := adminServer(t)
	base := srv.URL + "/strata"

	code, hdr, body := httpGet(t, base+"/v1/info")
	require.Equal(t, http.StatusOK, code, "%s", body)
	require.Equal(t, "application/json", hdr.Get("Content-Type"))
	var info inspect.InfoView
	require.NoError(t, json.Unmarshal(body, &info))
	m, err := ds.ReadManifest(d.dir)
	require.NoError(t, err)
	require.Equal(t, m.Created, info.Created)
	require.Equal(t, 4, info.NShards)
	require.Equal(t, "shared pebble", info.Storage)
	require.Equal(t, 4, info.Generations)
	require.NotZero(t, info.Streams)

	var gens []inspect.GenerationView
	code, _, body = httpGet(t, base+"/v1/generations")
	require.Equal(t, http.StatusOK, code)
	require.NoError(t, json.Unmarshal(body, &gens))
	require.Len(t, gens, 4)
	for _, g := range gens {
		require.Equal(t, "current", g.State)
	}

	var streams []inspect.StreamView
	code, _, body = httpGet(t, base+"/v1/streams?filter="+url.QueryEscape("raw/#"))
	require.Equal(t, http.StatusOK, code)
	require.NoError(t, json.Unmarshal(body, &streams))
	require.Len(t, streams, 1)

	var trie inspect.TrieView
	code, _, body = httpGet(t, fmt.Sprintf("%s/v1/trie?shard=%d&gen=%d", base, streams[0].Shard, streams[0].Generation))
	require.Equal(t, http.StatusOK, code, "%s", body)
	require.NoError(t, json.Unmarshal(body, &trie))
	require.Contains(t, trie.Trie, "raw")

	var msgs []inspect.MessageView
	code, _, body = httpGet(t, base+"/v1/messages?filter="+url.QueryEscape("raw/#"))
	require.Equal(t, http.StatusOK, code)
	require.NoError(t, json.Unmarshal(body, &msgs))
	require.Len(t, msgs, 1)
	p, err := base64.StdEncoding.DecodeString(msgs[0].PayloadBase64)
	require.NoError(t, err)
	require.Equal(t, []byte{0, 1, 0xff, '\n', '\\'}, p)
	require.Equal(t, `\x00\x01\xff\x0a\\`, msgs[0].Payload)
	require.Equal(t, 5, msgs[0].PayloadBytes)

	// limit, since, and the order: by shard, then timestamp.
	code, _, body = httpGet(t, base+"/v1/messages?limit=0")
	require.Equal(t, http.StatusOK, code)
	require.NoError(t, json.Unmarshal(body, &msgs))
	require.Len(t, msgs, 21)
	for i := 1; i < len(msgs); i++ {
		a, b := msgs[i-1], msgs[i]
		require.True(t, a.Shard < b.Shard || a.Shard == b.Shard && a.Micros < b.Micros, "order at %d", i)
	}
	code, _, body = httpGet(t, base+"/v1/messages?limit=3")
	require.Equal(t, http.StatusOK, code)
	var three []inspect.MessageView
	require.NoError(t, json.Unmarshal(body, &three))
	require.Equal(t, msgs[:3], three)
	since := ds.Time(msgs[len(msgs)-1].Micros).UTC().Format(time.RFC3339Nano)
	code, _, body = httpGet(t, base+"/v1/messages?since="+url.QueryEscape(since))
	require.Equal(t, http.StatusOK, code)
	var late []inspect.MessageView
	require.NoError(t, json.Unmarshal(body, &late))
	for _, m := range late {
		require.GreaterOrEqual(t, m.Micros, msgs[len(msgs)-1].Micros)
	}
}

func TestAdminErrors(t *testing.T) {
	d, srv := adminServer(t)
	base := srv.URL + "/strata"
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/v1/streams?filter=" + url.QueryEscape("a/#/b"), http.StatusBadRequest},
		{"/v1/streams?filter=", http.StatusBadRequest},
		{"/v1/messages?filter=" + url.QueryEscape("a/+b"), http.StatusBadRequest},
		{"/v1/messages?since=yesterday", http.StatusBadRequest},
		{"/v1/messages?limit=-1", http.StatusBadRequest},
		{"/v1/messages?limit=x", http.StatusBadRequest},
		{"/v1/trie", http.StatusBadRequest},
		{"/v1/trie?shard=0", http.StatusBadRequest},
		{"/v1/trie?shard=-1&gen=1", http.StatusBadRequest},
		{"/v1/trie?shard=9&gen=1", http.StatusNotFound},
		{"/v1/trie?shard=0&gen=99", http.StatusNotFound},
		{"/v1/nope", http.StatusNotFound},
	} {
		code, hdr, body := httpGet(t, base+tc.path)
		require.Equal(t, tc.status, code, "%s: %s", tc.path, body)
		require.Equal(t, "application/json", hdr.Get("Content-Type"), tc.path)
		var e inspect.ErrorBody
		require.NoError(t, json.Unmarshal(body, &e), "%s: %s", tc.path, body)
		require.NotEmpty(t, e.Error, tc.path)
	}
	resp, err := http.Post(base+"/v1/info", "application/json", bytes.NewReader(nil))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

	require.NoError(t, d.Close())
	for _, p := range []string{"/metrics", "/v1/info", "/v1/generations", "/v1/streams", "/v1/trie?shard=0&gen=1", "/v1/messages"} {
		code, _, body := httpGet(t, base+p)
		require.Equal(t, http.StatusServiceUnavailable, code, "%s: %s", p, body)
		var e inspect.ErrorBody
		require.NoError(t, json.Unmarshal(body, &e))
		require.Contains(t, e.Error, "closed", p)
	}
}
