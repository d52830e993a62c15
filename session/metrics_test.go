package session_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/strata-mq/strata/inspect"
	"github.com/strata-mq/strata/session"
	"github.com/stretchr/testify/require"
)

var promLine = regexp.MustCompile(`^(?:# HELP ([a-z_]+) .+|# TYPE ([a-z_]+) (counter|gauge)|([a-z_]+) ([0-9]+))$`)

// parseMetrics parses the exposition strictly (every line a HELP, TYPE or unlabelled sample
// of a declared family) into types and values by name.
func parseMetrics(t *testing.T, text string) (types map[string]string, values map[string]uint64) {
	t.Helper()
	require.True(t, strings.HasSuffix(text, "\n"))
	types, values = map[string]string{}, map[string]uint64{}
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		m := promLine.FindStringSubmatch(line)
		require.NotNil(t, m, "line %q", line)
		switch {
		case m[2] != "":
			types[m[2]] = m[3]
		case m[4] != "":
			require.Contains(t, types, m[4], "sample before its TYPE")
			v, err := strconv.ParseUint(m[5], 10, 64)
			require.NoError(t, err)
			values[m[4]] = v
		}
	}
	return types, values
}

func TestCollector(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	st := openStore(t, db)
	defer st.Close()
	s, _, err := st.Connect(ctx, "sub", session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)
	require.NoError(t, s.Subscribe(ctx, "a/#", session.SubscribeOptions{QoS: 1}))
	require.NoError(t, s.Subscribe(ctx, "b/+", session.SubscribeOptions{QoS: 1}))
	publish(t, db, "pub", "a/1", 1, 3)
	next(t, s, 3)
	_, _, err = st.Connect(ctx, "other", session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)

	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(st.Collector()))
	families, err := reg.Gather()
	require.NoError(t, err)
	var b strings.Builder
	for _, f := range families {
		_, err := expfmt.MetricFamilyToText(&b, f)
		require.NoError(t, err)
	}
	types, values := parseMetrics(t, b.String())
	require.Equal(t, map[string]string{
		"strata_session_sessions":           "gauge",
		"strata_session_connected":          "gauge",
		"strata_session_open":               "gauge",
		"strata_session_durable_filters":    "gauge",
		"strata_session_deliveries_total":   "counter",
		"strata_session_state_writes_total": "counter",
		"strata_session_checkpoints_total":  "counter",
		"strata_session_expired_total":      "counter",
		"strata_session_fenced_total":       "counter",
		"strata_session_lost_total":         "counter",
	}, types)
	require.Equal(t, uint64(2), values["strata_session_sessions"])
	require.Equal(t, uint64(2), values["strata_session_open"])
	require.Equal(t, uint64(2), values["strata_session_durable_filters"])
	require.Equal(t, uint64(3), values["strata_session_deliveries_total"])
	require.GreaterOrEqual(t, values["strata_session_state_writes_total"], uint64(4)) // 2 connects, 2 subscribes

	// Beside ds's metrics, in one exposition.
	mux := http.NewServeMux()
	mux.Handle("/strata/", http.StripPrefix("/strata", inspect.Handler(db, inspect.WithCollectors(st.Collector()))))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/strata/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	text := string(body)
	require.Contains(t, text, "\nstrata_messages_stored_total{shard=\"0\"} ")
	require.Contains(t, text, "\nstrata_session_sessions 2\n")
	require.Equal(t, 1, strings.Count(text, "# TYPE strata_session_open gauge\n"))
}
