package raftgroup

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPeerHealth: down counts from the first failure after a success; a success in between
// (the prober reaches the site every second) starts a later outage afresh, so a short outage
// long after an earlier one is down, not lost; LostAfter unreachable is lost; left is left.
func TestPeerHealth(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	h := newPeerHealth(func() time.Time { return now })
	site := SiteInfo{Slot: 2, Addr: "10.0.0.2:7000", State: SiteActive}
	const lostAfter = 5 * time.Minute
	check := func(reachable bool, want Health, wantSince time.Time) {
		t.Helper()
		got, since := h.health(site, reachable, lostAfter)
		require.Equal(t, want, got, "at %v: health %q, want %q", now.Sub(t0), got, want)
		if wantSince.IsZero() {
			require.Nil(t, since, "at %v: down since %v, want none", now.Sub(t0), since)
		} else {
			require.NotNil(t, since, "at %v: down since %v, want %v", now.Sub(t0), since, wantSince)
			require.True(t, since.Equal(wantSince), "at %v: down since %v, want %v", now.Sub(t0), since, wantSince)
		}
	}
	_, ok := h.lastReached(site.Addr)
	require.False(t, ok, "an observation before any")
	h.failed(site.Addr) // the transport's failed send
	now = now.Add(time.Minute)
	check(false, HealthDown, t0)
	h.reached(site.Addr) // the prober reaches it: back
	check(true, HealthUp, time.Time{})
	r, ok := h.lastReached(site.Addr)
	require.True(t, ok, "last observation not a success")
	require.True(t, r, "last observation not a success")
	now = t0.Add(time.Hour) // a new, short outage an hour later
	h.failed(site.Addr)
	now = now.Add(10 * time.Second)
	check(false, HealthDown, t0.Add(time.Hour))
	d := h.unreachableFor(site.Addr)
	require.Equal(t, 10*time.Second, d, "unreachable for %v, want 10s", d)
	now = now.Add(lostAfter) // still unreachable LostAfter later
	check(false, HealthLost, t0.Add(time.Hour))
	site.State = SiteLeft
	check(false, HealthLeft, time.Time{})
}
