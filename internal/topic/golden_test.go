package topic

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/strata-mq/strata/internal/testutil"
	"github.com/stretchr/testify/require"
)

// TestGolden runs the command files in testdata. The format is documented
// at the top of testdata/match.txt. Run with -rewrite to regenerate the
// expected results after an intentional change, then review the diff:
//
//	go test ./internal/topic/ -run TestGolden -rewrite
func TestGolden(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "no testdata/*.txt files")
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) { runGoldenFile(t, path) })
	}
}

func runGoldenFile(t *testing.T, path string) {
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	lines := strings.Split(string(data), "\n")
	changed := false
	for i, line := range lines {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		args, raw, expected, err := parseGoldenLine(trimmed)
		require.NoError(t, err, "%s:%d", path, i+1)
		actual, err := runGoldenCommand(args)
		require.NoError(t, err, "%s:%d", path, i+1)
		if actual == expected {
			continue
		}
		if testutil.Rewriting() {
			lines[i] = strings.Join(raw, " ") + " -> " + actual
			changed = true
			continue
		}
		require.Equal(t, expected, actual, "%s:%d: %s (run with -rewrite to update)", path, i+1, trimmed)
	}
	if changed {
		require.NoError(t, os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644))
		t.Logf("rewrote %s", path)
	}
}

// parseGoldenLine splits a command line into its arguments (unquoted, and
// raw as written, so that -rewrite preserves the author's quoting) and the
// expected result: everything after the "->" token.
func parseGoldenLine(line string) (args, raw []string, expected string, err error) {
	rest := line
	for {
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" {
			return nil, nil, "", fmt.Errorf("missing \"->\"")
		}
		if rest == "->" || strings.HasPrefix(rest, "-> ") || strings.HasPrefix(rest, "->\t") {
			return args, raw, strings.TrimSpace(rest[2:]), nil
		}
		var tok, arg string
		if rest[0] == '"' || rest[0] == '`' {
			if tok, err = strconv.QuotedPrefix(rest); err != nil {
				return nil, nil, "", fmt.Errorf("bad quoted argument in %q: %v", rest, err)
			}
			if arg, err = strconv.Unquote(tok); err != nil {
				return nil, nil, "", err
			}
		} else {
			end := strings.IndexAny(rest, " \t")
			if end < 0 {
				end = len(rest)
			}
			tok = rest[:end]
			arg = tok
		}
		rest = rest[len(tok):]
		args, raw = append(args, arg), append(raw, tok)
	}
}

func runGoldenCommand(args []string) (string, error) {
	want := func(n int) error {
		if len(args) != n+1 {
			return fmt.Errorf("%s takes %d argument(s), got %d", args[0], n, len(args)-1)
		}
		return nil
	}
	if len(args) == 0 {
		return "", fmt.Errorf("missing command")
	}
	errResult := func(err error) string {
		if err == nil {
			return "ok"
		}
		return "error: " + err.Error()
	}
	switch args[0] {
	case "match":
		if err := want(2); err != nil {
			return "", err
		}
		return strconv.FormatBool(Match(args[1], args[2])), nil
	case "validate-name":
		if err := want(1); err != nil {
			return "", err
		}
		return errResult(ValidateName(args[1])), nil
	case "validate-filter":
		if err := want(1); err != nil {
			return "", err
		}
		return errResult(ValidateFilter(args[1])), nil
	case "split":
		if err := want(1); err != nil {
			return "", err
		}
		return fmt.Sprintf("%q", Split(args[1])), nil
	default:
		return "", fmt.Errorf("unknown command %q", args[0])
	}
}
