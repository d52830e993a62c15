// Package testutil holds helpers shared by tests of several packages.
package testutil

import (
	"testing"
	"time"
)

// Eventually calls cond every 10ms until it returns nil, and fails the test with cond's last
// error once timeout passed. For conditions nothing signals: a Raft group electing a leader,
// other replicas applying an entry, another process catching up — a test can only look.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
