package pebbleopts

import (
	"fmt"
	"log/slog"
)

// SlogLogger routes Pebble's logs into slog: its info lines (flushes, compactions) at debug
// level, so a DB does not flood the broker's log. Fatalf logs and panics with a Fatal value.
type SlogLogger struct{ L *slog.Logger }

func (p SlogLogger) Infof(format string, args ...any) {
	p.L.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}

func (p SlogLogger) Errorf(format string, args ...any) {
	p.L.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

func (p SlogLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.L.Error(msg, "component", "pebble", "fatal", true)
	panic(Fatal(msg))
}

// Fatal is the panic value of SlogLogger.Fatalf. Pebble calls Fatalf where it cannot go on (a
// MANIFEST that cannot be written); its default would exit the process.
type Fatal string
