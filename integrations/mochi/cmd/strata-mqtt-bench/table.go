package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// column of a table: its heading and how a value is printed.
type column struct {
	name   string
	format func(float64) string
}

func count(v float64) string                      { return fmt.Sprintf("%.0f", v) }
func rate(v float64) string                       { return fmt.Sprintf("%.0f", v) }
func millis(v float64) string                     { return fmt.Sprintf("%.2f", v) }
func seconds(v float64) string                    { return fmt.Sprintf("%.2f", v) }
func ratio(v float64) string                      { return fmt.Sprintf("%.2fx", v) }
func yesNo(v float64) string                      { return map[bool]string{true: "yes", false: "no"}[v != 0] }
func boolf(b bool) float64                        { return map[bool]float64{true: 1, false: 0}[b] }
func ms(d interface{ Seconds() float64 }) float64 { return d.Seconds() * 1000 }

// table collects the values of each row over the runs and prints, per cell, the median and,
// over several runs, the range: "median (min–max)".
type table struct {
	title  string
	labels []string // headings of the label columns
	cols   []column
	rows   []*tableRow
	notes  []string
}

type tableRow struct {
	labels []string
	vals   [][]float64 // per column, one value per run
}

// add records one run's values of the row labelled labels.
func (t *table) add(labels []string, vals ...float64) {
	if len(vals) != len(t.cols) {
		panic(fmt.Sprintf("table %q: %d values for %d columns", t.title, len(vals), len(t.cols)))
	}
	var r *tableRow
	for _, x := range t.rows {
		if slices.Equal(x.labels, labels) {
			r = x
		}
	}
	if r == nil {
		r = &tableRow{labels: labels, vals: make([][]float64, len(t.cols))}
		t.rows = append(t.rows, r)
	}
	for i, v := range vals {
		r.vals[i] = append(r.vals[i], v)
	}
}

func (t *table) note(format string, args ...any) {
	t.notes = append(t.notes, fmt.Sprintf(format, args...))
}

func median(vs []float64) float64 {
	s := slices.Sorted(slices.Values(vs))
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (t *table) print(w io.Writer) {
	runs := 0
	for _, r := range t.rows {
		runs = max(runs, len(r.vals[0]))
	}
	title := t.title
	if runs > 1 {
		title += fmt.Sprintf(" — median (min–max) of %d runs", runs)
	}
	fmt.Fprintf(w, "\n## %s\n\n", title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	var head []string
	head = append(head, t.labels...)
	for _, c := range t.cols {
		head = append(head, c.name)
	}
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	for _, r := range t.rows {
		cells := slices.Clone(r.labels)
		for i, c := range t.cols {
			vs := r.vals[i]
			cell := c.format(median(vs))
			if lo, hi := slices.Min(vs), slices.Max(vs); len(vs) > 1 && c.format(lo) != c.format(hi) {
				cell += fmt.Sprintf(" (%s–%s)", c.format(lo), c.format(hi))
			}
			cells = append(cells, cell)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	tw.Flush()
	for _, n := range t.notes {
		fmt.Fprintf(w, "  %s\n", n)
	}
}
