package topic

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// validationCase is shared by the validation table test and the fuzz
// seed corpus.
type validationCase struct {
	in string
	// nameErr and filterErr are substrings of the expected error message,
	// or "" if the input is valid as a name / as a filter.
	nameErr, filterErr string
}

var validationCases = []validationCase{
	// Plain names are valid as both.
	{in: "a"},
	{in: "sport/tennis/player1"},
	{in: "sport/tennis/player1/ranking"},
	{in: "$SYS/broker/uptime"},
	{in: "$"},
	{in: "a$b"},
	{in: "Accounts payable"}, // spaces are allowed
	{in: "ü/日本/🎾"},
	{in: "\ufeff"},       // BOM must not be stripped or rejected
	{in: "\x01\x1f\x7f"}, // control characters: SHOULD NOT, but legal
	{in: "\ufffd"},       // U+FFFD itself is a valid character
	{in: "\U0010ffff"},
	// Empty levels are legal.
	{in: "/"},
	{in: "//"},
	{in: "/a"},
	{in: "a/"},
	{in: "a//b"},
	{in: "/finance"},
	// Length limit is inclusive.
	{in: strings.Repeat("x", MaxLen)},
	{in: strings.Repeat("/", MaxLen)},

	// Well-formed wildcard filters: invalid as names.
	{in: "+", nameErr: "wildcard '+' not allowed in a topic name (offset 0)"},
	{in: "#", nameErr: "wildcard '#' not allowed in a topic name (offset 0)"},
	{in: "+/+", nameErr: "wildcard '+'"},
	{in: "/+", nameErr: "wildcard '+' not allowed in a topic name (offset 1)"},
	{in: "+/", nameErr: "wildcard '+'"},
	{in: "a/+/b", nameErr: "wildcard '+' not allowed in a topic name (offset 2)"},
	{in: "a/#", nameErr: "wildcard '#' not allowed in a topic name (offset 2)"},
	{in: "/#", nameErr: "wildcard '#'"},
	{in: "+/#", nameErr: "wildcard '+'"},
	{in: "+/+/#", nameErr: "wildcard '+'"},
	{in: "sport/tennis/+", nameErr: "wildcard '+'"},
	{in: "sport/tennis/player1/#", nameErr: "wildcard '#'"},
	{in: "$SYS/#", nameErr: "wildcard '#'"},
	{in: "$SYS/+/uptime", nameErr: "wildcard '+'"},
	{in: "//+//#", nameErr: "wildcard '+'"},

	// Malformed wildcards: invalid as both.
	{in: "a+", nameErr: "wildcard '+'", filterErr: "'+' must occupy a whole level (offset 1)"},
	{in: "+a", nameErr: "wildcard '+'", filterErr: "'+' must occupy a whole level (offset 0)"},
	{in: "a/b+/c", nameErr: "wildcard '+'", filterErr: "'+' must occupy a whole level (offset 3)"},
	{in: "++", nameErr: "wildcard '+'", filterErr: "'+' must occupy a whole level (offset 0)"},
	{in: "sport+", nameErr: "wildcard '+'", filterErr: "'+' must occupy a whole level"},
	{in: "a#", nameErr: "wildcard '#'", filterErr: "'#' must occupy a whole level (offset 1)"},
	{in: "#a", nameErr: "wildcard '#'", filterErr: "'#' must occupy a whole level (offset 0)"},
	{in: "##", nameErr: "wildcard '#'", filterErr: "'#' must occupy a whole level (offset 0)"},
	{in: "a/#/b", nameErr: "wildcard '#'", filterErr: "'#' must be the last level (offset 2)"},
	{in: "#/", nameErr: "wildcard '#'", filterErr: "'#' must be the last level (offset 0)"},
	{in: "#/+", nameErr: "wildcard '#'", filterErr: "'#' must be the last level (offset 0)"},
	{in: "sport/tennis#", nameErr: "wildcard '#'", filterErr: "'#' must occupy a whole level"},
	{in: "sport/tennis/#/ranking", nameErr: "wildcard '#'", filterErr: "'#' must be the last level"},
	{in: "+/#a", nameErr: "wildcard '+'", filterErr: "'#' must occupy a whole level (offset 2)"},

	// Rules shared by names and filters.
	{in: "", nameErr: "must not be empty", filterErr: "must not be empty"},
	{in: strings.Repeat("x", MaxLen+1),
		nameErr:   "length 65536 exceeds maximum of 65535 bytes",
		filterErr: "length 65536 exceeds maximum of 65535 bytes"},
	{in: strings.Repeat("#", MaxLen+1), nameErr: "length 65536", filterErr: "length 65536"},
	{in: "\x00", nameErr: "contains U+0000 (offset 0)", filterErr: "contains U+0000 (offset 0)"},
	{in: "a/\x00", nameErr: "contains U+0000 (offset 2)", filterErr: "contains U+0000 (offset 2)"},
	{in: "a\x00#", nameErr: "contains U+0000", filterErr: "contains U+0000"},
	{in: "\xff", nameErr: "not valid UTF-8 (offset 0)", filterErr: "not valid UTF-8 (offset 0)"},
	{in: "a/\xc3", nameErr: "not valid UTF-8 (offset 2)", filterErr: "not valid UTF-8 (offset 2)"},
	{in: "\xc0\xaf", nameErr: "not valid UTF-8", filterErr: "not valid UTF-8"},         // overlong '/'
	{in: "\xed\xa0\x80", nameErr: "not valid UTF-8", filterErr: "not valid UTF-8"},     // U+D800
	{in: "\xed\xbf\xbf", nameErr: "not valid UTF-8", filterErr: "not valid UTF-8"},     // U+DFFF
	{in: "\xf4\x90\x80\x80", nameErr: "not valid UTF-8", filterErr: "not valid UTF-8"}, // > U+10FFFF
}

func TestValidate(t *testing.T) {
	for _, tc := range validationCases {
		check := func(kind string, err, sentinel error, want string) {
			t.Helper()
			if want == "" {
				require.NoError(t, err, "%s(%s)", kind, short(tc.in))
				return
			}
			require.Error(t, err, "%s(%s): want error containing %q", kind, short(tc.in), want)
			require.ErrorIs(t, err, sentinel, "%s(%s)", kind, short(tc.in))
			require.ErrorContains(t, err, want, "%s(%s)", kind, short(tc.in))
		}
		check("ValidateName", ValidateName(tc.in), ErrInvalidTopic, tc.nameErr)
		check("ValidateFilter", ValidateFilter(tc.in), ErrInvalidFilter, tc.filterErr)
		// Keep the table honest against the reference implementation.
		require.Equal(t, tc.nameErr == "", refValidName(tc.in), "table/reference disagree on name %s", short(tc.in))
		require.Equal(t, tc.filterErr == "", refValidFilter(tc.in), "table/reference disagree on filter %s", short(tc.in))
	}
}

func TestValidateErrorFormat(t *testing.T) {
	// The full message, so that changes to it are deliberate.
	err := ValidateFilter("a/#/b")
	require.EqualError(t, err, `invalid topic filter: "a/#/b": '#' must be the last level (offset 2)`)
	err = ValidateName("a/+")
	require.EqualError(t, err, `invalid topic name: "a/+": wildcard '+' not allowed in a topic name (offset 2)`)

	// Long inputs are truncated to a bounded message.
	long := strings.Repeat("x", 100) + "+"
	err = ValidateName(long)
	want := `invalid topic name: "` + strings.Repeat("x", 64) + `"... (101 bytes): wildcard '+' not allowed in a topic name (offset 100)`
	require.EqualError(t, err, want)
	huge := strings.Repeat("y", 10*MaxLen)
	require.LessOrEqual(t, len(ValidateFilter(huge).Error()), 200, "error message length for huge input")
}

func TestShort(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", `""`},
		{"a\x00b", `"a\x00b"`},
		{strings.Repeat("a", 64), `"` + strings.Repeat("a", 64) + `"`},
		{strings.Repeat("a", 65), `"` + strings.Repeat("a", 64) + `"... (65 bytes)`},
		// A 3-byte rune straddling the cut is dropped rather than split.
		{strings.Repeat("a", 63) + "日本", `"` + strings.Repeat("a", 63) + `"... (69 bytes)`},
		// Invalid UTF-8 at the cut: back off at most 3 bytes, then cut.
		{strings.Repeat("a", 60) + strings.Repeat("\x80", 10),
			`"` + strings.Repeat("a", 60) + `\x80"... (70 bytes)`},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, short(tc.in), "short(%q)", tc.in)
	}
}

func TestValidateNoAllocs(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		_ = ValidateName("sport/tennis/player1/ranking")
		_ = ValidateFilter("sport/+/player1/#")
	})
	require.Zero(t, allocs, "validating valid input allocates")
}
