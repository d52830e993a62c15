package datadriven

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const sample = `# a comment
echo a=1 b flag=x
in 1
in 2
----
old

# another
upper
hello
----
HELLO
`

func echo(t *testing.T, c *Case) string {
	switch c.Cmd {
	case "echo":
		return ArgString(c.Args) + " " + c.Arg("a", "?") + " " + c.Arg("zz", "def") + "\n" + strings.Join(c.Input, ",")
	case "upper":
		return strings.ToUpper(strings.Join(c.Input, "\n"))
	}
	c.Fatalf(t, "unknown command")
	return ""
}

// TestRewrite: -rewrite replaces the outputs that differ and keeps comments, blank lines and
// the outputs that matched; the rewritten file then passes.
func TestRewrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.txt")
	require.NoError(t, os.WriteFile(path, []byte(sample), 0o644))
	require.NoError(t, flag.Set("rewrite", "true")) // the testutil flag
	Run(t, path, echo)
	require.NoError(t, flag.Set("rewrite", "false"))
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	want := strings.Replace(sample, "----\nold\n", "----\na=1 b flag=x 1 def\nin 1,in 2\n", 1)
	require.Equal(t, want, string(got), "rewritten file")
	Run(t, path, echo)
}

// TestParse: commands, arguments, input and expected output of each case, with its line.
func TestParse(t *testing.T) {
	cases := parse(t, "sample", strings.Split(strings.TrimRight(sample, "\n"), "\n"))
	require.Len(t, cases, 2)
	c := cases[0]
	require.Equal(t, 2, c.Line, "case %+v", c)
	require.Equal(t, "echo", c.Cmd, "case %+v", c)
	require.True(t, c.Has("b"), "case %+v", c)
	require.False(t, c.Has("in"), "case %+v", c)
	require.Equal(t, "x", c.Arg("flag", ""), "case %+v", c)
	require.Equal(t, "in 1|in 2", strings.Join(c.Input, "|"), "case %+v", c)
	require.Equal(t, "old", strings.Join(c.Output, "|"), "case %+v", c)
	c = cases[1]
	require.Equal(t, 9, c.Line, "case %+v", c)
	require.Equal(t, "upper", c.Cmd, "case %+v", c)
	require.Equal(t, "HELLO", strings.Join(c.Output, "|"), "case %+v", c)
}
