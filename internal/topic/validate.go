package topic

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Sentinel errors. Errors returned by ValidateName and ValidateFilter wrap
// one of these with the offending input (truncated) and a reason; test
// with errors.Is.
var (
	ErrInvalidTopic  = errors.New("invalid topic name")
	ErrInvalidFilter = errors.New("invalid topic filter")
)

// MaxLen is the maximum length in bytes of a topic name or filter. MQTT
// encodes strings with a 16-bit length prefix, so nothing longer can be
// carried on the wire.
const MaxLen = 65535

const (
	separator   = '/'
	singleLevel = '+'
	multiLevel  = '#'
	sysPrefix   = '$'
)

// ValidateName returns nil if name is a valid MQTT topic name, and
// otherwise an error wrapping ErrInvalidTopic. See the package
// documentation for the rules.
func ValidateName(name string) error {
	if reason := validateCommon(name); reason != "" {
		return invalid(ErrInvalidTopic, name, reason)
	}
	// Multi-byte UTF-8 sequences only contain bytes >= 0x80, so a plain
	// byte search cannot produce false positives inside a rune.
	if i := strings.IndexAny(name, "+#"); i >= 0 {
		return invalid(ErrInvalidTopic, name,
			fmt.Sprintf("wildcard %q not allowed in a topic name (offset %d)", name[i], i))
	}
	return nil
}

// ValidateFilter returns nil if filter is a valid MQTT topic filter, and
// otherwise an error wrapping ErrInvalidFilter. See the package
// documentation for the rules. Every valid topic name is also a valid
// topic filter (one that matches only itself).
func ValidateFilter(filter string) error {
	if reason := validateCommon(filter); reason != "" {
		return invalid(ErrInvalidFilter, filter, reason)
	}
	for i := 0; i < len(filter); i++ {
		c := filter[i]
		if c != singleLevel && c != multiLevel {
			continue
		}
		// A wildcard must be the whole level: bounded on the left by the
		// start of the string or a separator, and on the right by the end
		// of the string or a separator.
		whole := (i == 0 || filter[i-1] == separator) &&
			(i == len(filter)-1 || filter[i+1] == separator)
		if !whole {
			return invalid(ErrInvalidFilter, filter,
				fmt.Sprintf("%q must occupy a whole level (offset %d)", c, i))
		}
		if c == multiLevel && i != len(filter)-1 {
			return invalid(ErrInvalidFilter, filter,
				fmt.Sprintf("'#' must be the last level (offset %d)", i))
		}
	}
	return nil
}

// validateCommon checks the rules shared by names and filters and returns
// a non-empty reason if s violates one. It returns a string rather than an
// error so that the caller can pick the sentinel; the reason is only
// formatted on the failure path, keeping the success path allocation-free.
func validateCommon(s string) string {
	if len(s) == 0 {
		return "must not be empty"
	}
	// Check the length first so that oversized input is rejected before
	// we spend time scanning it.
	if len(s) > MaxLen {
		return fmt.Sprintf("length %d exceeds maximum of %d bytes", len(s), MaxLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Sprintf("not valid UTF-8 (offset %d)", invalidUTF8Offset(s))
	}
	if i := strings.IndexByte(s, 0); i >= 0 {
		return fmt.Sprintf("contains U+0000 (offset %d)", i)
	}
	return ""
}

// invalidUTF8Offset returns the byte offset of the first invalid UTF-8
// sequence in s, or -1 if there is none. Only used to build error messages.
func invalidUTF8Offset(s string) int {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return -1
}

// maxQuoted is how many bytes of an invalid input are echoed in an error
// message. Inputs can be up to 64 KiB (or more, when rejected for length)
// and error messages end up in logs.
const maxQuoted = 64

func invalid(sentinel error, s, reason string) error {
	return fmt.Errorf("%w: %s: %s", sentinel, short(s), reason)
}

// short returns s quoted for an error message, truncated to about
// maxQuoted bytes. The cut is moved back to a rune boundary (by at most
// utf8.UTFMax-1 bytes, so it always terminates) to avoid showing a split
// rune as spurious \x escapes.
func short(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	cut := maxQuoted
	for i := 0; i < utf8.UTFMax-1 && !utf8.RuneStart(s[cut]); i++ {
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(s[:cut]), len(s))
}
