package bench

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
	"time"
)

// WriteHTML writes a self-contained HTML report: the results table, and for every publisher run
// a chart of throughput over time and one of the Store latency distribution (inline SVG, no
// scripts, no external files).
func WriteHTML(w io.Writer, title string, rs []Result) error {
	type chartRow struct {
		Name       string
		Throughput template.HTML
		Latency    template.HTML
	}
	var charts []chartRow
	for _, r := range rs {
		if len(r.Series) == 0 && len(r.LatencyHist) == 0 {
			continue
		}
		charts = append(charts, chartRow{Name: r.Name, Throughput: lineChart(r.Series), Latency: barChart(r.LatencyHist)})
	}
	return reportTemplate.Execute(w, map[string]any{"Title": title, "Results": rs, "Charts": charts, "Sweep": sweepChart(rs)})
}

var reportTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"rate": func(r Result) string { return Human(r.MsgsPerSec()) },
	"dur": func(d time.Duration) string {
		return d.Round(10 * time.Microsecond).String()
	},
	"ms": func(d time.Duration) string { return d.Round(time.Millisecond).String() },
}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>{{.Title}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child,td:last-child{text-align:left}
.chart{display:inline-block;margin:0 2em 1.5em 0}.chart h4{margin:.2em 0;font-weight:normal}
svg text{font-size:11px;fill:#555}
</style></head><body>
<h1>{{.Title}}</h1>
<table><tr><th>scenario</th><th>messages</th><th>time</th><th>msgs/s</th><th>p50</th><th>p99</th><th>p99.9</th><th>note</th></tr>
{{range .Results}}<tr><td>{{.Name}}</td><td>{{.Msgs}}</td><td>{{ms .Elapsed}}</td><td>{{rate .}}</td>{{if or .P50 .P99 .P999}}<td>{{dur .P50}}</td><td>{{dur .P99}}</td><td>{{dur .P999}}</td>{{else}}<td>-</td><td>-</td><td>-</td>{{end}}<td>{{.Note}}</td></tr>
{{end}}</table>
{{if .Sweep}}<h3>payload sweep: MB/s of payload, Strata's durable ingest (blue) and raw Pebble batched (grey)</h3>
<div class="chart">{{.Sweep}}</div>
{{end}}{{range .Charts}}<h3>{{.Name}}</h3>
<div class="chart"><h4>throughput over time (msgs/s, every 250 ms)</h4>{{.Throughput}}</div>
<div class="chart"><h4>Store latency distribution (share of calls)</h4>{{.Latency}}</div>
{{end}}</body></html>
`))

const chartW, chartH, pad = 440.0, 160.0, 55.0

// lineChart draws ys as a polyline with a y axis from 0 to the maximum.
func lineChart(ys []float64) template.HTML {
	if len(ys) == 0 {
		return ""
	}
	top := 0.0
	for _, y := range ys {
		top = math.Max(top, y)
	}
	top = math.Max(top, 1)
	var pts strings.Builder
	for i, y := range ys {
		x := pad + float64(i)/math.Max(float64(len(ys)-1), 1)*(chartW-pad-10)
		fmt.Fprintf(&pts, "%.1f,%.1f ", x, chartH-20-y/top*(chartH-30))
	}
	return template.HTML(fmt.Sprintf(`<svg width="%.0f" height="%.0f" xmlns="http://www.w3.org/2000/svg">`+
		`<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="#999"/>`+
		`<text x="2" y="14">%s</text><text x="2" y="%.0f">0</text>`+
		`<text x="%.0f" y="%.0f">%.1f s</text>`+
		`<polyline fill="none" stroke="#2b6cb0" stroke-width="1.5" points="%s"/></svg>`,
		chartW, chartH, pad, chartH-20, chartW-10, chartH-20, Human(top), chartH-20,
		chartW-60, chartH-4, float64(len(ys))*SampleInterval.Seconds(), pts.String()))
}

// barChart draws the latency histogram as bars labelled with their bucket bounds.
func barChart(hist []int) template.HTML {
	total := 0
	for _, c := range hist {
		total += c
	}
	if total == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg width="%.0f" height="%.0f" xmlns="http://www.w3.org/2000/svg">`, chartW, chartH)
	bw := (chartW - 10) / float64(len(hist))
	for i, c := range hist {
		h := float64(c) / float64(total) * (chartH - 40)
		x := 5 + float64(i)*bw
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#38a169"><title>%d calls</title></rect>`,
			x, chartH-25-h, bw-1, h, c)
		if i%4 == 0 && i < len(LatencyBounds) {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.0f">%s</text>`, x, chartH-8, LatencyBounds[i])
		}
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}
