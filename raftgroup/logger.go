package raftgroup

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/lni/dragonboat/v4/logger"
)

// dragonboat's loggers are process-wide and its logger factory can be set only once, so all
// sites of a process share one route into slog: the Logger of the most recently opened site.
var (
	dbLogger     atomic.Pointer[slog.Logger]
	dbLoggerOnce sync.Once
)

// routeDragonboatLogs sends dragonboat's logs to l from now on, at quieter levels than its
// own: its INFO (every replica start, every election) and WARNING (votes, dropped proposals
// while there is no leader: routine in elections) become Debug, and ERROR (which includes
// connection resets at shutdown) Warn. Panics stay panics.
func routeDragonboatLogs(l *slog.Logger) {
	dbLogger.Store(l)
	dbLoggerOnce.Do(func() {
		defer func() {
			// The program set dragonboat's logger factory itself: keep its choice.
			if r := recover(); r != nil {
				l.Info("dragonboat's logs are not routed to slog: the program set its logger factory", "reason", r)
			}
		}()
		logger.SetLoggerFactory(func(pkg string) logger.ILogger { return slogAdapter{pkg: pkg} })
	})
}

type slogAdapter struct{ pkg string }

func (a slogAdapter) log(level slog.Level, format string, args []any) {
	l := dbLogger.Load()
	if l == nil || !l.Enabled(context.Background(), level) {
		return
	}
	l.Log(context.Background(), level, fmt.Sprintf(format, args...), "component", "dragonboat/"+a.pkg)
}

func (slogAdapter) SetLevel(logger.LogLevel)            {}
func (a slogAdapter) Debugf(format string, args ...any) { a.log(slog.LevelDebug-4, format, args) }
func (a slogAdapter) Infof(format string, args ...any)  { a.log(slog.LevelDebug, format, args) }
func (a slogAdapter) Warningf(format string, args ...any) {
	a.log(slog.LevelDebug, format, args)
}
func (a slogAdapter) Errorf(format string, args ...any) { a.log(slog.LevelWarn, format, args) }
func (a slogAdapter) Panicf(format string, args ...any) {
	a.log(slog.LevelError, format, args)
	panic(fmt.Sprintf(format, args...))
}
