package bench

import (
	"fmt"
	"html/template"
	"math"
	"strings"
)

// sweepBytes bounds the payload bytes of one sweep row, so that large payloads do not run for
// minutes.
const sweepBytes = 256 << 20

// RunPayloadSweep measures durable ingest (shared Pebble, no replays) at each payload size
// in sizes, next to raw Pebble batched (16 writers × 1000 messages per commit, Strata's
// options) writing the same bytes: two rows per size, the ingest row's note giving the ratio
// and its Figures the size ("payload_bytes"), for the report's sweep chart.
func RunPayloadSweep(c Config, sizes []int) ([]Result, error) {
	var out []Result
	for _, size := range sizes {
		cc := c
		cc.Payload, cc.Replay, cc.SubCatchUp, cc.PerShard = size, false, false, false
		cc.N = max(cc.Publishers, min(c.N, sweepBytes/max(size, 1)))
		rs, err := RunStrata(cc)
		if err != nil {
			return nil, fmt.Errorf("sweep %d B: %w", size, err)
		}
		ingest := rs[0]
		raw, err := runRawVariant(cc, rawVariants()[1])
		if err != nil {
			return nil, fmt.Errorf("sweep %d B: raw pebble: %w", size, err)
		}
		ingest.Name = fmt.Sprintf("%s, %s payload", ingest.Name, sizeName(size))
		raw.Name = fmt.Sprintf("%s, %s payload", raw.Name, sizeName(size))
		ratio := ingest.MsgsPerSec() / raw.MsgsPerSec()
		ingest.Note = fmt.Sprintf("%.2f× raw batched; %s", ratio, ingest.Note)
		ingest.Figures = map[string]float64{"payload_bytes": float64(size), "vs_raw_batched": ratio}
		raw.Figures = map[string]float64{"payload_bytes": float64(size)}
		out = append(out, ingest, raw)
	}
	return out, nil
}

func sizeName(b int) string {
	switch {
	case b >= 1<<20 && b%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", b>>20)
	case b >= 1<<10 && b%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", b>>10)
	}
	return fmt.Sprintf("%d B", b)
}

// sweepChart draws the sweep rows of rs (those with Figures["payload_bytes"]): MB/s of
// payload per size, Strata's ingest and raw Pebble batched side by side; "" without such rows.
func sweepChart(rs []Result) template.HTML {
	type point struct {
		size          float64
		strata, pebbl float64
	}
	var pts []point
	for i := 0; i+1 < len(rs); i++ {
		a, b := rs[i], rs[i+1]
		size, ok := a.Figures["payload_bytes"]
		if !ok || b.Figures["payload_bytes"] != size || !strings.HasPrefix(a.Name, "ingest") {
			continue
		}
		mbs := func(r Result) float64 { return float64(r.Bytes) / r.Elapsed.Seconds() / 1e6 }
		pts = append(pts, point{size, mbs(a), mbs(b)})
		i++
	}
	if len(pts) == 0 {
		return ""
	}
	top := 0.0
	for _, p := range pts {
		top = math.Max(top, math.Max(p.strata, p.pebbl))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg width="%.0f" height="%.0f" xmlns="http://www.w3.org/2000/svg">`, chartW, chartH)
	fmt.Fprintf(&b, `<text x="0" y="12">%.0f MB/s</text>`, top)
	gw := (chartW - pad) / float64(len(pts))
	for i, p := range pts {
		x := pad + float64(i)*gw
		for j, v := range []float64{p.strata, p.pebbl} {
			h := v / top * (chartH - 40)
			color := []string{"#3b6ea8", "#bbb"}[j]
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%.0f MB/s</title></rect>`,
				x+float64(j)*gw*0.4, chartH-25-h, gw*0.38, h, color, v)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f">%s</text>`, x, chartH-8, sizeName(int(p.size)))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}
