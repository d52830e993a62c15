package session

import "github.com/prometheus/client_golang/prometheus"

// Collector returns a prometheus.Collector of st.Metrics(), without labels, for a broker to
// register in its own registry, or to serve beside package ds's metrics:
//
//	mux.Handle("/strata/", http.StripPrefix("/strata", inspect.Handler(db, inspect.WithCollectors(st.Collector()))))
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
func (st *Store) Collector() prometheus.Collector { return storeCollector{st} }

type storeCollector struct{ st *Store }

type collectedMetric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(Metrics) float64
}

func newCollectedMetric(name, help string, kind prometheus.ValueType, value func(Metrics) float64) collectedMetric {
	return collectedMetric{prometheus.NewDesc(name, help, nil, nil), kind, value}
}

var collectedMetrics = []collectedMetric{
	newCollectedMetric("strata_session_sessions", "Durable sessions of the DB.", prometheus.GaugeValue,
		func(m Metrics) float64 { return float64(m.Sessions) }),
	newCollectedMetric("strata_session_connected", "Durable sessions recorded as connected, through any Store.", prometheus.GaugeValue,
		func(m Metrics) float64 { return float64(m.Connected) }),
	newCollectedMetric("strata_session_open", "Sessions open in this Store.", prometheus.GaugeValue,
		func(m Metrics) float64 { return float64(m.Open) }),
	newCollectedMetric("strata_session_durable_filters", "Distinct filters of every durable subscription.", prometheus.GaugeValue,
		func(m Metrics) float64 { return float64(m.DurableFilters) }),
	newCollectedMetric("strata_session_deliveries_total", "Deliveries returned by Session.Next.", prometheus.CounterValue,
		func(m Metrics) float64 { return float64(m.Deliveries) }),
	newCollectedMetric("strata_session_state_writes_total", "Session record writes by this Store.", prometheus.CounterValue,
		func(m Metrics) float64 { return float64(m.StateWrites) }),
	newCollectedMetric("strata_session_checkpoints_total", "Session record writes made by the checkpoint interval.", prometheus.CounterValue,
		func(m Metrics) float64 { return float64(m.Checkpoints) }),
	newCollectedMetric("strata_session_expired_total", "Sessions deleted by expiry.", prometheus.CounterValue,
		func(m Metrics) float64 { return float64(m.Expired) }),
	newCollectedMetric("strata_session_fenced_total", "Sessions of this Store taken over by another connection.", prometheus.CounterValue,
		func(m Metrics) float64 { return float64(m.Fenced) }),
	newCollectedMetric("strata_session_lost_total", "Messages dropped by retention before a session read them.", prometheus.CounterValue,
		func(m Metrics) float64 { return float64(m.Lost) }),
}

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range collectedMetrics {
		ch <- m.desc
	}
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.st.Metrics()
	for _, sm := range collectedMetrics {
		ch <- prometheus.MustNewConstMetric(sm.desc, sm.kind, sm.value(m))
	}
}
