// Package datadriven is a small runner of data-driven tests in the style of
// cockroachdb/datadriven (used by Pebble and etcd/raft), kept in the module so that it needs no
// new dependency. Only tests import it.
//
// A test file is a sequence of cases:
//
//	# comment lines and blank lines between cases are kept as they are
//	command key=value key2=value2 flag
//	optional input lines
//	----
//	expected output lines
//	(a blank line or the end of the file ends the output)
//
// Run passes each case to a function that returns the actual output, and fails the test where
// it differs from the expected one. An empty output is written "ok"; an output cannot contain a
// blank line (it would end the case). Run the tests with -rewrite to replace every expected
// output with the actual one, then review the diff:
//
//	go test ./layout/ -run TestFormat -rewrite
package datadriven

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/strata-mq/strata/internal/testutil"
)

// Rewriting reports whether the test binary runs with -rewrite.
func Rewriting() bool { return testutil.Rewriting() }

// Case is one case of a data-driven file.
type Case struct {
	Line   int // 1-based line of the command
	Cmd    string
	Args   []Arg
	Input  []string
	Output []string // expected

	outStart, outEnd int // 0-based line range [start, end) of the expected output
}

// Arg is one key=value (or bare key) argument of a command.
type Arg struct{ Key, Val string }

// Has reports whether the case has an argument key.
func (c *Case) Has(key string) bool {
	for _, a := range c.Args {
		if a.Key == key {
			return true
		}
	}
	return false
}

// Arg returns the value of key, or def when key is absent.
func (c *Case) Arg(key, def string) string {
	for _, a := range c.Args {
		if a.Key == key {
			return a.Val
		}
	}
	return def
}

// Fatalf is t.Fatalf with the case's line and command in front.
func (c *Case) Fatalf(t testing.TB, format string, args ...any) {
	t.Helper()
	t.Fatalf("line %d: %s: %s", c.Line, c.Cmd, fmt.Sprintf(format, args...))
}

// ParseArgs splits "k=v k2=v2 flag" into arguments.
func ParseArgs(s string) []Arg {
	var out []Arg
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		out = append(out, Arg{k, v})
	}
	return out
}

// ArgString is the inverse of ParseArgs.
func ArgString(args []Arg) string {
	s := make([]string, len(args))
	for i, a := range args {
		s[i] = a.Key
		if a.Val != "" {
			s[i] += "=" + a.Val
		}
	}
	return strings.Join(s, " ")
}

// parse splits the lines of a data-driven file into cases.
func parse(t testing.TB, path string, lines []string) []*Case {
	t.Helper()
	var cases []*Case
	for i := 0; i < len(lines); {
		l := strings.TrimSpace(lines[i])
		if l == "" || strings.HasPrefix(l, "#") {
			i++
			continue
		}
		fields := strings.Fields(l)
		c := &Case{Line: i + 1, Cmd: fields[0], Args: ParseArgs(strings.Join(fields[1:], " "))}
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

// Run runs every case of the file at path, in order, through run, which returns the actual
// output, and compares it with the expected one (or, with -rewrite, writes it into the file).
func Run(t *testing.T, path string, run func(t *testing.T, c *Case) string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	cases := parse(t, path, lines)
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
		if !testutil.Rewriting() && strings.Join(c.Output, "\n") != out {
			t.Errorf("%s:%d: %s %s\nwant:\n%s\ngot:\n%s", path, c.Line, c.Cmd, ArgString(c.Args),
				strings.Join(c.Output, "\n"), out)
		}
	}
	if !testutil.Rewriting() {
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
