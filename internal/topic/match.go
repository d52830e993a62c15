package topic

import "strings"

// Split returns the levels of a topic name or filter, i.e. s split at
// every '/'. It never returns an empty slice: Split("") is [""],
// Split("/a") is ["", "a"] and Split("a//b") is ["a", "", "b"].
// strings.Join(Split(s), "/") == s for every s.
func Split(s string) []string {
	return strings.Split(s, string(separator))
}

// SplitInto appends the levels of s to dst and returns it: Split without an allocation when
// dst has room (a writer's scratch, reused message after message).
func SplitInto(dst []string, s string) []string {
	for {
		i := strings.IndexByte(s, separator)
		if i < 0 {
			return append(dst, s)
		}
		dst, s = append(dst, s[:i]), s[i+1:]
	}
}

// IsSystem reports whether name is a system topic, i.e. starts with '$'
// (e.g. "$SYS/broker/uptime"). Wildcard-first filters do not match such
// names; see Match.
func IsSystem(name string) bool {
	return len(name) > 0 && name[0] == sysPrefix
}

// Match reports whether the topic filter matches the topic name, following
// the rules in the package documentation. It does not allocate.
//
// Both arguments are assumed to be valid (see ValidateFilter and
// ValidateName); Match does not check, because it sits on the delivery hot
// path. It never panics. On invalid input it still compares level by level
// as described in the package documentation, with these consequences: a
// level is a wildcard only if it is exactly "+" or "#"; any other level,
// even one containing '+' or '#', is compared literally; and a filter with
// a "#" level that is not the last level matches nothing. Match(f, n)
// always equals MatchLevels(Split(f), Split(n)).
func Match(filter, name string) bool {
	// MQTT 4.7.2: a filter starting with a wildcard must not match a name
	// starting with '$', so that "#" subscribers do not see $SYS traffic.
	if IsSystem(name) {
		if l := firstLevel(filter); l == "+" || l == "#" {
			return false
		}
	}
	// fi and ni are the start offsets of the current filter and name
	// levels. Walking both strings in place avoids splitting them, which
	// would allocate.
	fi, ni := 0, 0
	for {
		fe := levelEnd(filter, fi)
		fl := filter[fi:fe]
		if fl == "#" {
			// '#' swallows the rest of the name, including no levels at
			// all. It is only meaningful as the last level.
			return fe == len(filter)
		}
		ne := levelEnd(name, ni)
		if fl != "+" && fl != name[ni:ne] {
			return false
		}
		fDone, nDone := fe == len(filter), ne == len(name)
		switch {
		case fDone && nDone:
			return true
		case fDone:
			// The name has levels left that nothing can match.
			return false
		case nDone:
			// The name is exhausted but the filter is not. Only a
			// trailing "#" can match zero levels: "a/#" matches "a".
			return filter[fe+1:] == "#"
		}
		fi, ni = fe+1, ne+1
	}
}

// MatchLevels is Match on levels already split with Split, for callers
// that match one name against many filters (or vice versa) and want to
// split once. It does not allocate and never panics. Unlike the result of
// Split, the slices may be empty; an empty name has no levels and is
// matched only by an empty filter or by "#".
func MatchLevels(filter, name []string) bool {
	if len(name) > 0 && IsSystem(name[0]) &&
		len(filter) > 0 && (filter[0] == "+" || filter[0] == "#") {
		return false
	}
	for i, fl := range filter {
		if fl == "#" {
			return i == len(filter)-1
		}
		if i >= len(name) {
			return false
		}
		if fl != "+" && fl != name[i] {
			return false
		}
	}
	return len(filter) == len(name)
}

// firstLevel returns the first level of s.
func firstLevel(s string) string {
	return s[:levelEnd(s, 0)]
}

// levelEnd returns the offset of the first '/' in s at or after start, or
// len(s) if there is none. start must be in [0, len(s)].
func levelEnd(s string, start int) int {
	if i := strings.IndexByte(s[start:], separator); i >= 0 {
		return start + i
	}
	return len(s)
}
