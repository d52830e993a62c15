package topic

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

type matchCase struct {
	filter, name string
	want         bool
}

// matchCases is shared by the table test, the benchmarks and the fuzz seed
// corpus. Inputs are valid unless noted.
var matchCases = []matchCase{
	// Spec examples, MQTT 3.1.1 4.7.1.2 / MQTT 5 4.7.1.2 ('#').
	{"sport/tennis/player1/#", "sport/tennis/player1", true},
	{"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
	{"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
	{"sport/tennis/player1/#", "sport/tennis/player2", false},
	{"sport/tennis/player1/#", "sport/tennis", false},
	{"sport/#", "sport", true},
	{"sport/#", "sport/", true},
	{"#", "sport/tennis/player1", true},
	{"#", "/", true},
	{"#", "a", true},
	// Spec examples, 4.7.1.3 ('+').
	{"sport/tennis/+", "sport/tennis/player1", true},
	{"sport/tennis/+", "sport/tennis/player2", true},
	{"sport/tennis/+", "sport/tennis/player1/ranking", false},
	{"sport/+", "sport", false},
	{"sport/+", "sport/", true},
	{"sport/+", "sport/tennis/player1", false},
	{"+/tennis/#", "sport/tennis", true},
	{"+/tennis/#", "sport/tennis/player1", true},
	{"+/tennis/#", "sport/squash", false},
	{"sport/+/player1", "sport/tennis/player1", true},
	{"+/+", "/finance", true},
	{"/+", "/finance", true},
	{"+", "/finance", false},
	{"+", "finance", true},
	{"+", "", true}, // invalid name; '+' matches one empty level
	// Spec examples, 4.7.2 (topics beginning with '$').
	{"#", "$SYS", false},
	{"#", "$SYS/broker/uptime", false},
	{"+/monitor/Clients", "$SYS/monitor/Clients", false},
	{"$SYS/#", "$SYS/monitor/Clients", true},
	{"$SYS/#", "$SYS", true},
	{"$SYS/#", "$SYS/", true},
	{"$SYS/monitor/+", "$SYS/monitor/Clients", true},
	{"$SYS/+/Clients", "$SYS/monitor/Clients", true},
	{"+", "$", false},
	{"+/#", "$SYS/x", false},
	{"$", "$", true},
	{"$+", "$x", false}, // invalid filter; "$+" is a literal level
	// '$' only matters at the very start of the name.
	{"#", "a/$SYS", true},
	{"+/+", "a/$x", true},
	{"a/+", "a/$x", true},
	{"a/#", "a/$x/y", true},
	// '#' matches the parent level and anything below.
	{"a/#", "a", true},
	{"a/#", "a/", true},
	{"a/#", "a/b", true},
	{"a/#", "a/b/c", true},
	{"a/#", "a//", true},
	{"a/#", "ab", false},
	{"a/#", "b", false},
	{"a/#", "b/a", false},
	{"a/b/#", "a", false},
	{"/#", "/", true},
	{"/#", "/a/b", true},
	{"/#", "a", false},
	{"+/#", "a", true},
	{"+/#", "a/b/c", true},
	{"+/#", "/", true},
	{"+/+/#", "a", false},
	{"+/+/#", "a/b", true},
	// Empty levels are levels.
	{"/", "/", true},
	{"/", "//", false},
	{"a//b", "a//b", true},
	{"a/+/b", "a//b", true},
	{"a/+/b", "a/b", false},
	{"+/+", "/", true},
	{"+", "/", false},
	{"+/", "a/", true},
	{"+/", "a", false},
	{"//+", "//", true},
	// Literal matching is exact and case-sensitive.
	{"a", "a", true},
	{"a", "A", false},
	{"a", "a/", false},
	{"a/", "a", false},
	{"a", "ab", false},
	{"ab", "a", false},
	{"Accounts payable", "Accounts payable", true},
	{"ü/日本", "ü/日本", true},
	{"ü/日本", "u\u0308/日本", false}, // no Unicode normalisation
	{"a/b/c/d/e/f/g/h", "a/b/c/d/e/f/g/h", true},
	{"a/b/c/d/e/f/g/h", "a/b/c/d/e/f/g/i", false},
	{"+/+/+/+/+/+/+/+", "a/b/c/d/e/f/g/h", true},
	{"+/+/+/+/+/+/+/+", "a/b/c/d/e/f/g", false},

	// Invalid filters: defined, non-panicking behaviour.
	{"a/#/b", "a/x/b", false}, // '#' not last matches nothing
	{"a/#/b", "a", false},
	{"#/", "a/", false},
	{"a+", "a+", true}, // literal comparison; the name is invalid too
	{"a+", "ab", false},
	{"a#", "a", false},
	{"", "", true},
	{"", "a", false},
	{"a", "", false},
	{"#", "", true},
}

func TestMatch(t *testing.T) {
	for _, tc := range matchCases {
		require.Equal(t, tc.want, Match(tc.filter, tc.name), "Match(%q, %q)", tc.filter, tc.name)
		require.Equal(t, tc.want, MatchLevels(Split(tc.filter), Split(tc.name)), "MatchLevels(%q, %q)", tc.filter, tc.name)
		if ValidateFilter(tc.filter) == nil && ValidateName(tc.name) == nil {
			require.Equal(t, tc.want, refMatch(tc.filter, tc.name),
				"reference disagrees with table: refMatch(%q, %q)", tc.filter, tc.name)
		}
	}
}

func TestMatchLevelsEmpty(t *testing.T) {
	// Split never returns an empty slice, but MatchLevels callers may pass
	// one; check it is handled and documented behaviour holds.
	cases := []struct {
		filter, name []string
		want         bool
	}{
		{nil, nil, true},
		{[]string{"#"}, nil, true},
		{[]string{"+"}, nil, false},
		{[]string{"a"}, nil, false},
		{[]string{"+", "#"}, nil, false},
		{nil, []string{"a"}, false},
		{nil, []string{""}, false},
		{[]string{"+"}, []string{"$x", "y"}, false},
		{[]string{"#"}, []string{"$x"}, false},
		{[]string{"#"}, []string{"", "$x"}, true},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, MatchLevels(tc.filter, tc.name), "MatchLevels(%q, %q)", tc.filter, tc.name)
	}
}

func TestSplit(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"", []string{""}},
		{"a", []string{"a"}},
		{"/", []string{"", ""}},
		{"/a", []string{"", "a"}},
		{"a/", []string{"a", ""}},
		{"a//b", []string{"a", "", "b"}},
		{"sport/tennis/#", []string{"sport", "tennis", "#"}},
		{"日本/ü", []string{"日本", "ü"}},
	}
	for _, tc := range cases {
		got := Split(tc.in)
		require.Equal(t, tc.want, got, "Split(%q)", tc.in)
		require.Equal(t, refSplit(tc.in), got, "Split(%q), as the reference", tc.in)
		require.Equal(t, tc.in, strings.Join(got, "/"), "Join(Split(%q))", tc.in)
	}
}

func TestIsSystem(t *testing.T) {
	for in, want := range map[string]bool{
		"":           false,
		"$":          true,
		"$SYS/a":     true,
		"$share/g/a": true,
		"a/$SYS":     false,
		"/$SYS":      false,
		"SYS":        false,
	} {
		require.Equal(t, want, IsSystem(in), "IsSystem(%q)", in)
	}
}

func TestMatchNoAllocs(t *testing.T) {
	f, n := Split("sport/+/player1/#"), Split("sport/tennis/player1/ranking")
	allocs := testing.AllocsPerRun(100, func() {
		for _, tc := range matchCases {
			_ = Match(tc.filter, tc.name)
		}
		_ = MatchLevels(f, n)
	})
	require.Zero(t, allocs, "Match allocates")
}

// bruteAlphabet is the set of levels the brute-force test builds inputs
// from. It is small so that random filters and names collide often, and
// contains every interesting kind of level: empty, '$'-prefixed, plain,
// both wildcards, and malformed wildcards.
var (
	bruteNameLevels   = []string{"", "$x", "a", "b"}
	bruteFilterLevels = []string{"", "$x", "a", "b", "+", "#", "a+", "#b"}
)

func joinLevels(alphabet []string, digits []int) string {
	levels := make([]string, len(digits))
	for i, d := range digits {
		levels[i] = alphabet[d]
	}
	return strings.Join(levels, "/")
}

// enumerate returns every string of 1..maxLevels levels over alphabet.
func enumerate(alphabet []string, maxLevels int) []string {
	var out []string
	var rec func(prefix []int)
	rec = func(prefix []int) {
		if len(prefix) > 0 {
			out = append(out, joinLevels(alphabet, prefix))
		}
		if len(prefix) == maxLevels {
			return
		}
		for d := range alphabet {
			rec(append(prefix[:len(prefix):len(prefix)], d))
		}
	}
	rec(nil)
	return out
}

func randomLevels(r *rand.Rand, alphabet []string, maxLevels int) string {
	digits := make([]int, 1+r.IntN(maxLevels))
	for i := range digits {
		digits[i] = r.IntN(len(alphabet))
	}
	return joinLevels(alphabet, digits)
}

// checkAgainstReference compares Match with MatchLevels on any input, the
// validators with their references, and, when both inputs are valid, Match
// with the recursive reference matcher and (if re is non-nil) with the
// filter's regexp translation.
func checkAgainstReference(t *testing.T, filter, name string, re *regexp.Regexp) {
	t.Helper()
	got := Match(filter, name)
	require.Equal(t, got, MatchLevels(Split(filter), Split(name)), "MatchLevels(%q, %q), as Match", filter, name)
	validF, validN := ValidateFilter(filter) == nil, ValidateName(name) == nil
	require.Equal(t, refValidFilter(filter), validF, "ValidateFilter(%q) valid, as the reference", filter)
	require.Equal(t, refValidName(name), validN, "ValidateName(%q) valid, as the reference", name)
	if !validF || !validN {
		return
	}
	require.Equal(t, refMatch(filter, name), got, "Match(%q, %q), as the reference", filter, name)
	if re != nil {
		require.Equal(t, regexpMatch(re, filter, name), got, "Match(%q, %q), as regexp %s", filter, name, re)
	}
}

// TestMatchBruteForce compares Match against the reference matchers on
// every filter of up to 3 levels against every name of up to 4 levels
// from a small alphabet, then on random longer inputs.
func TestMatchBruteForce(t *testing.T) {
	filters := enumerate(bruteFilterLevels, 3)
	names := enumerate(bruteNameLevels, 4)
	n := 0
	for _, f := range filters {
		var re *regexp.Regexp
		if ValidateFilter(f) == nil {
			re = filterRegexp(f)
		}
		for _, name := range names {
			checkAgainstReference(t, f, name, re)
			n++
		}
	}

	r := rand.New(rand.NewPCG(1, 2))
	iters := 20000
	if testing.Short() {
		iters = 2000
	}
	for range iters {
		f := randomLevels(r, bruteFilterLevels, 10)
		name := randomLevels(r, bruteNameLevels, 10)
		checkAgainstReference(t, f, name, nil)
		// Also derive a name from the filter, so that deep matches happen
		// often: replace each wildcard with random levels.
		checkAgainstReference(t, f, instantiate(r, f), nil)
		n += 2
	}
	t.Logf("checked %d pairs (%d filters x %d names exhaustively)", n, len(filters), len(names))
}

// instantiate returns a name that a valid filter f would match if there
// were no $-rule, by replacing '+' with one random level and '#' with zero
// or more random levels. Malformed wildcard levels are kept as they are.
func instantiate(r *rand.Rand, f string) string {
	var out []string
	for _, l := range Split(f) {
		switch l {
		case "+":
			out = append(out, bruteNameLevels[r.IntN(len(bruteNameLevels))])
		case "#":
			for range r.IntN(4) {
				out = append(out, bruteNameLevels[r.IntN(len(bruteNameLevels))])
			}
		default:
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return "a"
	}
	return strings.Join(out, "/")
}

func BenchmarkMatch(b *testing.B) {
	benches := []matchCase{
		{"sport/tennis/player1/ranking", "sport/tennis/player1/ranking", true},
		{"sport/tennis/player1/ranking", "sport/tennis/player2/ranking", false},
		{"weather/+/temperature", "sport/tennis/player1/ranking", false},
		{"sport/+/player1/+", "sport/tennis/player1/ranking", true},
		{"sport/#", "sport/tennis/player1/ranking", true},
		{"#", "$SYS/broker/load/bytes/received", false},
		{"+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/#", "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t", true},
	}
	for _, bc := range benches {
		b.Run(fmt.Sprintf("%s~%s", bc.filter, bc.name), func(b *testing.B) {
			b.ReportAllocs()
			var got bool
			for b.Loop() {
				got = Match(bc.filter, bc.name)
			}
			if got != bc.want {
				b.Fatalf("Match(%q, %q) = %v", bc.filter, bc.name, got)
			}
		})
	}
	b.Run("levels", func(b *testing.B) {
		f, n := Split("sport/+/player1/#"), Split("sport/tennis/player1/ranking")
		b.ReportAllocs()
		for b.Loop() {
			if !MatchLevels(f, n) {
				b.Fatal("no match")
			}
		}
	})
}

func BenchmarkValidateFilter(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if err := ValidateFilter("sport/tennis/+/ranking/#"); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzSplitInto: SplitInto appends exactly Split's levels, after what dst held.
func FuzzSplitInto(f *testing.F) {
	for _, s := range []string{"", "/", "a", "a/b/c", "//", "a//b/", "$SYS/x", "+/#"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := SplitInto([]string{"kept"}, s)
		require.Equal(t, append([]string{"kept"}, Split(s)...), got)
	})
}
