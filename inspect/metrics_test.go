package inspect_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/inspect"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/stretchr/testify/require"
)

// TestMetricsExpositionGolden: the metric names, types, help texts, labels and histogram
// buckets are a public interface (dashboards and alerts use them): the exposition of a DB, with
// the values taken out, must match testdata/metrics.golden. Run with -rewrite after a
// deliberate change, and say so in the change log.
func TestMetricsExpositionGolden(t *testing.T) {
	d := openTestDB(t, fastOptions())
	d.store(msg("c", "a/b", 0))
	reg := prometheus.NewPedanticRegistry() // checks the collector's descriptions too
	require.NoError(t, reg.Register(inspect.Collector(d.DB)))
	families, err := reg.Gather()
	require.NoError(t, err)
	var b strings.Builder
	for _, f := range families {
		_, err := expfmt.MetricFamilyToText(&b, f)
		require.NoError(t, err)
	}
	var shape []string
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if !strings.HasPrefix(line, "#") {
			line = line[:strings.LastIndexByte(line, ' ')] // the value
		}
		shape = append(shape, line)
	}
	got := strings.Join(shape, "\n") + "\n"
	const golden = "testdata/metrics.golden"
	if testutil.Rewriting() {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(golden, []byte(got), 0o644))
	}
	want, err := os.ReadFile(golden)
	require.NoError(t, err)
	require.Equal(t, string(want), got)
}

// TestHandlerCollectors: the collectors given with WithCollectors are served beside the DB's
// in /metrics; one that fails fails the request (500), with nothing of the metrics sent.
func TestHandlerCollectors(t *testing.T) {
	d := openTestDB(t, fastOptions())
	d.store(msg("c", "a/b", 0))
	var fail atomic.Bool
	extra := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "x_one", Help: "Extra."}, func() float64 { return 7 })
	failing := failingCollector{desc: prometheus.NewDesc("x_two", "Fails on demand.", nil, nil), fail: &fail}
	mux := http.NewServeMux()
	mux.Handle("/strata/", http.StripPrefix("/strata", inspect.Handler(d.DB, inspect.WithCollectors(extra, failing))))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	code, hdr, body := httpGet(t, srv.URL+"/strata/metrics")
	require.Equal(t, http.StatusOK, code, "%s", body)
	require.Contains(t, hdr.Get("Content-Type"), "text/plain; version=0.0.4")
	types, samples := parseProm(t, string(body))
	require.Equal(t, "gauge", types["x_one"])
	require.Equal(t, "gauge", types["x_two"])
	require.Equal(t, "counter", types["strata_messages_stored_total"])
	n := 0
	for _, s := range samples {
		if s.name == "x_one" || s.name == "x_two" {
			require.Equal(t, 7.0, s.value)
			n++
		}
	}
	require.Equal(t, 2, n)

	fail.Store(true)
	code, _, body = httpGet(t, srv.URL+"/strata/metrics")
	require.Equal(t, http.StatusInternalServerError, code)
	require.Contains(t, string(body), "broken collector")
	require.NotContains(t, string(body), "strata_messages_stored_total")

	// A closed DB cannot report: 503 (retryable: another node may), not a page of zeros.
	fail.Store(false)
	require.NoError(t, d.Close())
	code, _, body = httpGet(t, srv.URL+"/strata/metrics")
	require.Equal(t, http.StatusServiceUnavailable, code)
	var e inspect.ErrorBody
	require.NoError(t, json.Unmarshal(body, &e))
	require.True(t, e.Retryable)
	require.Contains(t, e.Error, "closed")
}

type failingCollector struct {
	desc *prometheus.Desc
	fail *atomic.Bool
}

func (c failingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c failingCollector) Collect(ch chan<- prometheus.Metric) {
	if c.fail.Load() {
		ch <- prometheus.NewInvalidMetric(c.desc, errors.New("broken collector"))
		return
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, 7)
}

// TestAdminRecords: /v1/records lists a shard's records by prefix, with limit; bad
// parameters are 400, an unknown shard 404.
func TestAdminRecords(t *testing.T) {
	d, srv := adminServer(t)
	_, err := d.Update(context.Background(), 1, &ds.Txn{Writes: []ds.RecordWrite{
		{Key: []byte("Sa"), Value: []byte{0, 1}}, {Key: []byte("Sb"), Value: []byte("b")}, {Key: []byte("Q\x00\x01")}}})
	require.NoError(t, err)
	get := func(q string) (int, []inspect.RecordView, string) {
		code, _, body := httpGet(t, srv.URL+"/strata/v1/records?"+q)
		var rows []inspect.RecordView
		if code == http.StatusOK {
			require.NoError(t, json.Unmarshal(body, &rows))
		}
		return code, rows, string(body)
	}
	code, rows, body := get("shard=1")
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, []inspect.RecordView{{Shard: 1, Key: []byte("Q\x00\x01"), Value: []byte{}, Version: 3},
		{Shard: 1, Key: []byte("Sa"), Value: []byte{0, 1}, Version: 1}, {Shard: 1, Key: []byte("Sb"), Value: []byte("b"), Version: 2}}, rows)
	code, rows, _ = get("shard=1&prefix=S&limit=1")
	require.Equal(t, http.StatusOK, code)
	require.Len(t, rows, 1)
	require.Equal(t, "Sa", string(rows[0].Key))
	code, rows, _ = get("shard=0")
	require.Equal(t, http.StatusOK, code)
	require.Empty(t, rows)
	code, _, _ = get("shard=x")
	require.Equal(t, http.StatusBadRequest, code)
	code, _, _ = get("shard=1&limit=-1")
	require.Equal(t, http.StatusBadRequest, code)
	code, _, _ = get("shard=999")
	require.Equal(t, http.StatusNotFound, code)
}
