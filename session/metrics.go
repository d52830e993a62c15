package session

import (
	"fmt"
	"io"
	"strconv"
)

// Prometheus metrics of a Store, in the text exposition format (version 0.0.4), without
// labels; to be served beside package ds's:
//
//	mux.Handle("/strata/", http.StripPrefix("/strata", ds.AdminHandler(db, ds.AdminMetrics(st.WriteMetrics))))
//
//	strata_session_sessions             gauge     durable sessions of the DB (every Store's)
//	strata_session_connected            gauge     of them recorded as connected, through any Store
//	strata_session_open                 gauge     sessions open in this Store
//	strata_session_durable_filters      gauge     distinct filters of every durable subscription
//	strata_session_deliveries_total     counter   deliveries returned by Session.Next
//	strata_session_state_writes_total   counter   session record writes by this Store
//	strata_session_checkpoints_total    counter   of them made by the checkpoint interval
//	strata_session_expired_total        counter   sessions deleted by expiry
//	strata_session_fenced_total         counter   sessions of this Store taken over elsewhere
//	strata_session_lost_total           counter   messages dropped by retention before a
//	                                              session read them
//
// Counters count since the Store was opened. These names are stable.

// WriteMetrics writes st.Metrics() to w in the Prometheus text exposition format.
func (st *Store) WriteMetrics(w io.Writer) error { return st.Metrics().WritePrometheus(w) }

// WritePrometheus writes m to w in the Prometheus text exposition format, with the names
// documented with Store.WriteMetrics.
func (m Metrics) WritePrometheus(w io.Writer) error {
	var b []byte
	for _, g := range []struct {
		name, kind, help string
		v                uint64
	}{
		{"strata_session_sessions", "gauge", "Durable sessions of the DB.", uint64(m.Sessions)},
		{"strata_session_connected", "gauge", "Durable sessions recorded as connected, through any Store.", uint64(m.Connected)},
		{"strata_session_open", "gauge", "Sessions open in this Store.", uint64(m.Open)},
		{"strata_session_durable_filters", "gauge", "Distinct filters of every durable subscription.", uint64(m.DurableFilters)},
		{"strata_session_deliveries_total", "counter", "Deliveries returned by Session.Next.", m.Deliveries},
		{"strata_session_state_writes_total", "counter", "Session record writes by this Store.", m.StateWrites},
		{"strata_session_checkpoints_total", "counter", "Session record writes made by the checkpoint interval.", m.Checkpoints},
		{"strata_session_expired_total", "counter", "Sessions deleted by expiry.", m.Expired},
		{"strata_session_fenced_total", "counter", "Sessions of this Store taken over by another connection.", m.Fenced},
		{"strata_session_lost_total", "counter", "Messages dropped by retention before a session read them.", m.Lost},
	} {
		b = fmt.Appendf(b, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", g.name, g.help, g.name, g.kind, g.name, strconv.FormatUint(g.v, 10))
	}
	_, err := w.Write(b)
	return err
}
