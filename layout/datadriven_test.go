package layout

import (
	"fmt"
	"testing"

	"github.com/strata-mq/strata/internal/datadriven"
	"github.com/stretchr/testify/require"
)

// The layout's data-driven tests (testdata/keys) run on internal/datadriven; see its package
// documentation for the file format. Run with -rewrite to replace every expected output with
// the actual one, then review the diff:
//
//	go test ./layout/ -run TestFormat -rewrite
//
// ddCase has datadriven.Case's fields, so that the tests here can give it methods of their own.
type ddCase datadriven.Case

type ddArg = datadriven.Arg

func (c *ddCase) has(key string) bool { return (*datadriven.Case)(c).Has(key) }

// arg returns the value of key, or def when key is absent.
func (c *ddCase) arg(key, def string) string { return (*datadriven.Case)(c).Arg(key, def) }

// fatalf fails the test with a message that starts with the line and command of a datadriven
// case.
func (c *ddCase) fatalf(t *testing.T, format string, args ...any) {
	t.Helper()
	require.Failf(t, fmt.Sprintf("line %d: %s", c.Line, c.Cmd), format, args...)
}

func parseArgs(s string) []ddArg { return datadriven.ParseArgs(s) }

func argString(args []ddArg) string { return datadriven.ArgString(args) }

// runDD runs every case of the file at path through run, which returns the actual output.
func runDD(t *testing.T, path string, run func(t *testing.T, c *ddCase) string) {
	t.Helper()
	datadriven.Run(t, path, func(t *testing.T, c *datadriven.Case) string { return run(t, (*ddCase)(c)) })
}
