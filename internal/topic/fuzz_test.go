package topic

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
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
			if s == "" || len(s) > MaxLen || !utf8.ValidString(s) ||
				strings.ContainsAny(s, "+#\x00") {
				t.Fatalf("ValidateName accepted %q", s)
			}
			// Every valid name is a valid filter matching (at least) itself.
			if filterErr != nil {
				t.Fatalf("valid name %q rejected as filter: %v", s, filterErr)
			}
			if !Match(s, s) {
				t.Fatalf("valid name %q does not match itself", s)
			}
		} else if !errors.Is(nameErr, ErrInvalidTopic) || errors.Is(nameErr, ErrInvalidFilter) {
			t.Fatalf("ValidateName(%q) = %v: wrong sentinel", s, nameErr)
		}
		if filterErr == nil {
			if s == "" || len(s) > MaxLen || !utf8.ValidString(s) || strings.Contains(s, "\x00") {
				t.Fatalf("ValidateFilter accepted %q", s)
			}
		} else if !errors.Is(filterErr, ErrInvalidFilter) || errors.Is(filterErr, ErrInvalidTopic) {
			t.Fatalf("ValidateFilter(%q) = %v: wrong sentinel", s, filterErr)
		}

		if got, want := nameErr == nil, refValidName(s); got != want {
			t.Fatalf("ValidateName(%q) valid=%v, reference %v (err %v)", s, got, want, nameErr)
		}
		if got, want := filterErr == nil, refValidFilter(s); got != want {
			t.Fatalf("ValidateFilter(%q) valid=%v, reference %v (err %v)", s, got, want, filterErr)
		}

		// Error messages are bounded regardless of input size.
		for _, err := range []error{nameErr, filterErr} {
			if err != nil && len(err.Error()) > 512 {
				t.Fatalf("error message is %d bytes: %v", len(err.Error()), err)
			}
		}

		levels := Split(s)
		if len(levels) == 0 || strings.Join(levels, "/") != s {
			t.Fatalf("Split(%q) = %q does not round-trip", s, levels)
		}
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
		if lv := MatchLevels(Split(filter), Split(name)); lv != got {
			t.Fatalf("Match(%q, %q) = %v but MatchLevels = %v", filter, name, got, lv)
		}
		if ValidateFilter(filter) != nil || ValidateName(name) != nil {
			return
		}
		if want := refMatch(filter, name); got != want {
			t.Fatalf("Match(%q, %q) = %v, reference %v", filter, name, got, want)
		}
		if want := regexpMatch(filterRegexp(filter), filter, name); got != want {
			t.Fatalf("Match(%q, %q) = %v, regexp reference %v", filter, name, got, want)
		}
		// '#' matches every name that does not start with '$'.
		if !IsSystem(name) && !Match("#", name) {
			t.Fatalf("%q not matched by '#'", name)
		}
		// A name always matches itself used as a filter.
		if !Match(name, name) {
			t.Fatalf("%q does not match itself", name)
		}
	})
}
