package topic

import (
	"errors"
	"strings"
	"testing"
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
				if err != nil {
					t.Errorf("%s(%s): unexpected error: %v", kind, short(tc.in), err)
				}
				return
			}
			if err == nil {
				t.Errorf("%s(%s): got nil, want error containing %q", kind, short(tc.in), want)
				return
			}
			if !errors.Is(err, sentinel) {
				t.Errorf("%s(%s): error %v does not wrap %v", kind, short(tc.in), err, sentinel)
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s(%s): error %q does not contain %q", kind, short(tc.in), err, want)
			}
		}
		check("ValidateName", ValidateName(tc.in), ErrInvalidTopic, tc.nameErr)
		check("ValidateFilter", ValidateFilter(tc.in), ErrInvalidFilter, tc.filterErr)
		// Keep the table honest against the reference implementation.
		if got := refValidName(tc.in); got != (tc.nameErr == "") {
			t.Errorf("table/reference disagree on name %s", short(tc.in))
		}
		if got := refValidFilter(tc.in); got != (tc.filterErr == "") {
			t.Errorf("table/reference disagree on filter %s", short(tc.in))
		}
	}
}

func TestValidateErrorFormat(t *testing.T) {
	// The full message, so that changes to it are deliberate.
	err := ValidateFilter("a/#/b")
	if got, want := err.Error(), `invalid topic filter: "a/#/b": '#' must be the last level (offset 2)`; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	err = ValidateName("a/+")
	if got, want := err.Error(), `invalid topic name: "a/+": wildcard '+' not allowed in a topic name (offset 2)`; got != want {
		t.Errorf("got %q, want %q", got, want)
	}

	// Long inputs are truncated to a bounded message.
	long := strings.Repeat("x", 100) + "+"
	err = ValidateName(long)
	want := `invalid topic name: "` + strings.Repeat("x", 64) + `"... (101 bytes): wildcard '+' not allowed in a topic name (offset 100)`
	if err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}
	huge := strings.Repeat("y", 10*MaxLen)
	if msg := ValidateFilter(huge).Error(); len(msg) > 200 {
		t.Errorf("error message for huge input is %d bytes", len(msg))
	}
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
		if got := short(tc.in); got != tc.want {
			t.Errorf("short(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestValidateNoAllocs(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		_ = ValidateName("sport/tennis/player1/ranking")
		_ = ValidateFilter("sport/+/player1/#")
	})
	if allocs != 0 {
		t.Errorf("validating valid input allocates %v times", allocs)
	}
}
