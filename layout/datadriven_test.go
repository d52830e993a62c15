package layout

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

// A small datadriven runner in the style of cockroachdb/datadriven (used by Pebble and etcd/raft),
// kept here so the module needs no new dependency. A test file is a sequence of cases:
//
//	# comment lines and blank lines between cases are kept as they are
//	command key=value key2=value2 flag
//	optional input lines
//	----
//	expected output lines
//	(a blank line or the end of the file ends the output)
//
// Run with -rewrite to replace every expected output with the actual one, then review the diff:
//
//	go test ./layout/ -run TestFormat -rewrite

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output in layout/testdata with the actual output")

// ddCase is one case of a datadriven file.
type ddCase struct {
	Line   int // 1-based line of the command
	Cmd    string
	Args   []ddArg
	Input  []string
	Output []string // expected

	outStart, outEnd int // 0-based line range [start, end) of the expected output
}

type ddArg struct{ Key, Val string }

func (c *ddCase) has(key string) bool {
	for _, a := range c.Args {
		if a.Key == key {
			return true
		}
	}
	return false
}

// arg returns the value of key, or def when key is absent.
func (c *ddCase) arg(key, def string) string {
	for _, a := range c.Args {
		if a.Key == key {
			return a.Val
		}
	}
	return def
}

func parseArgs(s string) []ddArg {
	var out []ddArg
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		out = append(out, ddArg{k, v})
	}
	return out
}

// parseDD splits a datadriven file into cases.
func parseDD(t *testing.T, path string, lines []string) []*ddCase {
	t.Helper()
	var cases []*ddCase
	for i := 0; i < len(lines); {
		l := strings.TrimSpace(lines[i])
		if l == "" || strings.HasPrefix(l, "#") {
			i++
			continue
		}
		fields := strings.Fields(l)
		c := &ddCase{Line: i + 1, Cmd: fields[0], Args: parseArgs(strings.Join(fields[1:], " "))}
		i++
		for ; i < len(lines) && lines[i] != "----"; i++ {
			c.Input = append(c.Input, lines[i])
		}
		if i == len(lines) {
			t.Fatalf("%s:%d: %s: missing ----", path, c.Line, c.Cmd)
		}
		i++
		c.outStart = i
		for ; i < len(lines) && lines[i] != ""; i++ {
			c.Output = append(c.Output, lines[i])
		}
		c.outEnd = i
		cases = append(cases, c)
	}
	return cases
}

// runDD runs every case of the file at path through run, which returns the actual output.
func runDD(t *testing.T, path string, run func(t *testing.T, c *ddCase) string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	cases := parseDD(t, path, lines)
	actual := make([][]string, len(cases))
	for i, c := range cases {
		out := strings.TrimRight(run(t, c), "\n")
		if strings.Contains(out, "\n\n") {
			t.Fatalf("%s:%d: %s: output contains a blank line, which ends a case", path, c.Line, c.Cmd)
		}
		if out == "" {
			out = "ok"
		}
		actual[i] = strings.Split(out, "\n")
		if !*rewrite && strings.Join(c.Output, "\n") != out {
			t.Errorf("%s:%d: %s %s\nwant:\n%s\ngot:\n%s", path, c.Line, c.Cmd, argString(c.Args),
				strings.Join(c.Output, "\n"), out)
		}
	}
	if !*rewrite {
		return
	}
	var b strings.Builder
	prev := 0
	for i, c := range cases {
		for _, l := range lines[prev:c.outStart] {
			b.WriteString(l + "\n")
		}
		for _, l := range actual[i] {
			b.WriteString(l + "\n")
		}
		prev = c.outEnd
	}
	for _, l := range lines[prev:] {
		b.WriteString(l + "\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("rewrote %s", path)
}

func argString(args []ddArg) string {
	s := make([]string, len(args))
	for i, a := range args {
		s[i] = a.Key
		if a.Val != "" {
			s[i] += "=" + a.Val
		}
	}
	return strings.Join(s, " ")
}

// must fails the test on a non-nil error.
func must(t testing.TB, err error, ctx ...any) {
	t.Helper()
	if err != nil {
		t.Fatal(append(ctx, err)...)
	}
}

// fatalf is t.Fatalf with a leading file:line of a datadriven case.
func (c *ddCase) fatalf(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Fatalf("line %d: %s: %s", c.Line, c.Cmd, fmt.Sprintf(format, args...))
}
