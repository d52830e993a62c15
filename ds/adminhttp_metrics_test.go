package ds_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// TestAdminMetricsAppended: AdminMetrics writers follow the DB's metrics in /metrics, in
// order; one that fails fails the request, with nothing of the metrics sent.
func TestAdminMetricsAppended(t *testing.T) {
	d := openTestDB(t, fastOptions())
	d.store(msg("c", "a/b", 0))
	extra := func(name string) func(io.Writer) error {
		return func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "# HELP %s Extra.\n# TYPE %s gauge\n%s 7\n", name, name, name)
			return err
		}
	}
	var fail atomic.Bool
	mux := http.NewServeMux()
	mux.Handle("/strata/", http.StripPrefix("/strata", ds.AdminHandler(d.DB, ds.AdminMetrics(extra("x_one")), ds.AdminMetrics(nil),
		ds.AdminMetrics(func(w io.Writer) error {
			if fail.Load() {
				return errors.New("broken writer")
			}
			return extra("x_two")(w)
		}))))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	code, hdr, body := httpGet(t, srv.URL+"/strata/metrics")
	require.Equal(t, http.StatusOK, code, "%s", body)
	require.Contains(t, hdr.Get("Content-Type"), "text/plain; version=0.0.4")
	types, samples := parseProm(t, string(body))
	require.Equal(t, "gauge", types["x_one"])
	require.Equal(t, "gauge", types["x_two"])
	require.Equal(t, "counter", types["strata_messages_stored_total"])
	text := string(body)
	require.Less(t, strings.Index(text, "strata_subscription_losses_total"), strings.Index(text, "x_one"))
	require.Less(t, strings.Index(text, "x_one"), strings.Index(text, "x_two"))
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
	require.Contains(t, string(body), "broken writer")
	require.NotContains(t, string(body), "strata_messages_stored_total")
}

// TestAdminRecords: /v1/records lists a shard's records by prefix, with limit; bad
// parameters are 400, an unknown shard 404.
func TestAdminRecords(t *testing.T) {
	d, srv := adminServer(t)
	_, err := d.Update(context.Background(), 1, &ds.Txn{Writes: []ds.RecordWrite{
		{Key: []byte("Sa"), Value: []byte{0, 1}}, {Key: []byte("Sb"), Value: []byte("b")}, {Key: []byte("Q\x00\x01")}}})
	require.NoError(t, err)
	get := func(q string) (int, []ds.RecordView, string) {
		code, _, body := httpGet(t, srv.URL+"/strata/v1/records?"+q)
		var rows []ds.RecordView
		if code == http.StatusOK {
			require.NoError(t, json.Unmarshal(body, &rows))
		}
		return code, rows, string(body)
	}
	code, rows, body := get("shard=1")
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, []ds.RecordView{{Shard: 1, Key: []byte("Q\x00\x01"), Value: []byte{}, Version: 3},
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
