// Package topic validates and matches MQTT topic names and topic filters
// as defined by MQTT 3.1.1 (section 4.7) and MQTT 5.0 (section 4.7).
//
// # Names and filters
//
// A topic name is the address a message is published to, e.g.
// "sport/tennis/player1". A topic filter is the pattern a subscriber
// registers, e.g. "sport/+/player1" or "sport/#". Both are split into
// levels at every '/' byte; levels may be empty, so "a//b", "/" and "/a"
// are legal and have three, two and two levels respectively.
//
// Both names and filters must
//
//   - be non-empty;
//   - be at most [MaxLen] (65,535) bytes long, the limit of an MQTT
//     UTF-8 encoded string;
//   - be well-formed UTF-8 (which excludes the surrogate code points
//     U+D800..U+DFFF, as the spec requires);
//   - not contain U+0000.
//
// A topic name must additionally not contain the wildcard characters '+'
// and '#'. In a topic filter, '+' (single-level wildcard) must occupy a
// whole level, and '#' (multi-level wildcard) must occupy a whole level
// and be the last level. So "+", "+/+", "a/+/b", "#" and "a/#" are valid
// filters, while "a+", "+a", "a#" and "a/#/b" are not.
//
// The spec says control characters (U+0001..U+001F, U+007F..U+009F) and
// Unicode non-characters SHOULD NOT appear, and that a server MAY reject
// them. This package accepts them: a storage layer must be able to hold
// anything a conforming broker lets through, and rejecting them here
// would make such messages unreadable. Brokers wanting the stricter rule
// can layer it on top.
//
// # Matching
//
// [Match] reports whether a filter matches a name. Matching is by level,
// case-sensitive and on exact bytes (no Unicode normalisation):
//
//   - a literal level matches exactly the same level;
//   - '+' matches exactly one level, which may be empty;
//   - '#' matches the parent level and any number of levels below it,
//     so "a/#" matches "a", "a/", "a/b" and "a/b/c", and "#" matches
//     every name;
//   - a filter whose first level is a wildcard ('+' or '#') never
//     matches a name starting with '$' (MQTT 4.7.2), so that
//     subscribing to "#" does not deliver "$SYS/..." traffic; a filter
//     that spells the '$' level out, such as "$SYS/#", matches normally.
//
// Shared subscriptions ("$share/{group}/{filter}", MQTT 5 section 4.8.2)
// are not interpreted here: "$share/g/a/#" is an ordinary valid filter to
// this package. Callers must strip the "$share/{group}/" prefix before
// matching.
//
// # Performance
//
// Match and MatchLevels do not allocate and do not validate: they are
// meant for the delivery hot path, where names and filters were
// validated once on the way in. On invalid input they never panic; the
// result is then well defined (see [Match]) but not meaningful in MQTT
// terms. ValidateName and ValidateFilter do not allocate unless they
// return an error.
package topic
