package topic

import (
	"regexp"
	"strings"
)

// This file holds deliberately naive reference implementations that the
// brute-force and fuzz tests compare the real ones against. They are
// written for obviousness, not speed, and share no code with the package.

// refSplit splits s at '/' with an explicit loop (not strings.Split, which
// Split uses).
func refSplit(s string) []string {
	var levels []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			levels = append(levels, s[start:i])
			start = i + 1
		}
	}
	return append(levels, s[start:])
}

// refWellFormed is the rule shared by names and filters. UTF-8 validity is
// checked by round-tripping through []rune: every invalid byte (including
// encoded surrogates) decodes to U+FFFD and so changes the string.
func refWellFormed(s string) bool {
	return s != "" && len(s) <= MaxLen && string([]rune(s)) == s && !strings.Contains(s, "\x00")
}

func refValidName(s string) bool {
	return refWellFormed(s) && !strings.ContainsAny(s, "+#")
}

func refValidFilter(s string) bool {
	if !refWellFormed(s) {
		return false
	}
	levels := refSplit(s)
	for i, l := range levels {
		switch {
		case l == "+":
		case l == "#":
			if i != len(levels)-1 {
				return false
			}
		case strings.ContainsAny(l, "+#"):
			return false
		}
	}
	return true
}

// refMatch is the matching rule stated recursively, straight from the
// spec: '#' matches whatever is left (including nothing), '+' consumes one
// level, anything else must be equal to the next level.
func refMatch(filter, name string) bool {
	f, n := refSplit(filter), refSplit(name)
	if strings.HasPrefix(name, "$") && (f[0] == "+" || f[0] == "#") {
		return false // MQTT 4.7.2
	}
	return refMatchLevels(f, n)
}

func refMatchLevels(f, n []string) bool {
	if len(f) == 0 {
		return len(n) == 0
	}
	switch f[0] {
	case "#":
		return len(f) == 1
	case "+":
		return len(n) > 0 && refMatchLevels(f[1:], n[1:])
	default:
		return len(n) > 0 && f[0] == n[0] && refMatchLevels(f[1:], n[1:])
	}
}

// filterRegexp translates a valid filter into an equivalent regular
// expression: a second, structurally different reference. '+' becomes
// "[^/]*" and a trailing "/#" becomes "(/.*)?" so that the parent level
// also matches. The $-rule is not expressible as cheaply and is applied by
// regexpMatch.
func filterRegexp(filter string) *regexp.Regexp {
	levels := refSplit(filter)
	var b strings.Builder
	b.WriteString(`^(?s)`)
	for i, l := range levels {
		switch {
		case l == "#" && i == 0:
			b.WriteString(`.*`)
		case l == "#":
			b.WriteString(`(/.*)?`)
		default:
			if i > 0 {
				b.WriteString(`/`)
			}
			if l == "+" {
				b.WriteString(`[^/]*`)
			} else {
				b.WriteString(regexp.QuoteMeta(l))
			}
		}
	}
	b.WriteString(`$`)
	return regexp.MustCompile(b.String())
}

func regexpMatch(re *regexp.Regexp, filter, name string) bool {
	if strings.HasPrefix(name, "$") && (filter == "#" || filter == "+" ||
		strings.HasPrefix(filter, "+/") || strings.HasPrefix(filter, "#/")) {
		return false
	}
	return re.MatchString(name)
}
