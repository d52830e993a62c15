package topic

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// FuzzValidate checks that validation never panics and that what it
// accepts satisfies the rules, by comparing with the reference validators
// and with direct checks of the invariants callers rely on.
//
//	go test -run='^$' -fuzz=FuzzValidate -fuzztime=30s ./internal/topic/
func FuzzValidate(f *testing.F) {
	for _, tc := range validationCases {
		if len(tc.in) <= 1024 { // keep the seed corpus small
			f.Add(tc.in)
		}
	}
	for _, tc := range matchCases {
		f.Add(tc.filter)
		f.Add(tc.name)
	}
	f.Fuzz(func(t *testing.T, s string) {
		nameErr, filterErr := ValidateName(s), ValidateFilter(s)

		if nameErr == nil {
			require.False(t, s == "" || len(s) > MaxLen || !utf8.ValidString(s) ||
				strings.ContainsAny(s, "+#\x00"), "ValidateName accepted %q", s)
			// Every valid name is a valid filter matching (at least) itself.
			require.NoError(t, filterErr, "valid name %q rejected as filter", s)
			require.True(t, Match(s, s), "valid name %q does not match itself", s)
		} else {
			require.ErrorIs(t, nameErr, ErrInvalidTopic, "ValidateName(%q): wrong sentinel", s)
			require.NotErrorIs(t, nameErr, ErrInvalidFilter, "ValidateName(%q): wrong sentinel", s)
		}
		if filterErr == nil {
			require.False(t, s == "" || len(s) > MaxLen || !utf8.ValidString(s) || strings.Contains(s, "\x00"),
				"ValidateFilter accepted %q", s)
		} else {
			require.ErrorIs(t, filterErr, ErrInvalidFilter, "ValidateFilter(%q): wrong sentinel", s)
			require.NotErrorIs(t, filterErr, ErrInvalidTopic, "ValidateFilter(%q): wrong sentinel", s)
		}

		require.Equal(t, refValidName(s), nameErr == nil, "ValidateName(%q) valid, as the reference (err %v)", s, nameErr)
		require.Equal(t, refValidFilter(s), filterErr == nil, "ValidateFilter(%q) valid, as the reference (err %v)", s, filterErr)

		// Error messages are bounded regardless of input size.
		for _, err := range []error{nameErr, filterErr} {
			if err != nil {
				require.LessOrEqual(t, len(err.Error()), 512, "error message length: %v", err)
			}
		}

		levels := Split(s)
		require.NotEmpty(t, levels, "Split(%q)", s)
		require.Equal(t, s, strings.Join(levels, "/"), "Split(%q) = %q does not round-trip", s, levels)
		_ = IsSystem(s)
	})
}

// FuzzMatch checks that matching never panics, that Match and MatchLevels
// always agree (on any input), and that Match equals the reference matcher
// when both inputs are valid.
//
//	go test -run='^$' -fuzz=FuzzMatch -fuzztime=30s ./internal/topic/
func FuzzMatch(f *testing.F) {
	for _, tc := range matchCases {
		f.Add(tc.filter, tc.name)
	}
	f.Fuzz(func(t *testing.T, filter, name string) {
		got := Match(filter, name)
		require.Equal(t, got, MatchLevels(Split(filter), Split(name)), "MatchLevels(%q, %q), as Match", filter, name)
		if ValidateFilter(filter) != nil || ValidateName(name) != nil {
			return
		}
		require.Equal(t, refMatch(filter, name), got, "Match(%q, %q), as the reference", filter, name)
		require.Equal(t, regexpMatch(filterRegexp(filter), filter, name), got, "Match(%q, %q), as the regexp reference", filter, name)
		// '#' matches every name that does not start with '$'.
		if !IsSystem(name) {
			require.True(t, Match("#", name), "%q not matched by '#'", name)
		}
		// A name always matches itself used as a filter.
		require.True(t, Match(name, name), "%q does not match itself", name)
	})
}
