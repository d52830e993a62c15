package raftgroup

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/lni/dragonboat/v4/raftio"
)

// Site health as `ds-info cluster` and /v1/cluster show it.
//
//	up     this site reaches it now (a TCP connection to its Raft address is accepted)
//	down   unreachable, for less than Config.LostAfter: a restart or a short partition;
//	       Raft catches it up when it returns
//	lost   unreachable for Config.LostAfter or more: an operator should bring it back or
//	       remove it (Site.RemoveSite), because its replicas count towards their groups'
//	       quorums while it holds none of the new data
//	left   it left the cluster
const (
	HealthUp   Health = "up"
	HealthDown Health = "down"
	HealthLost Health = "lost"
	HealthLeft Health = "left"
)

// Health is a site's health as seen from another site (HealthUp, HealthDown, HealthLost,
// HealthLeft).
type Health string

// probeInterval is how often a site probes the others' Raft addresses. A probe is one TCP
// connection, closed at once (dragonboat's listener drops it silently, with or without TLS).
const probeInterval = time.Second

// peerHealth remembers, per Raft address, whether this site reached it at the last
// observation and since when it has failed to. Observations come from the site's prober
// (every probeInterval, so the view never goes stale), from the admin view's own probe, and
// from dragonboat's transport (ConnectionFailed / ConnectionEstablished, only when this site
// has messages for the peer). The first failure after a success starts the count; a success
// clears it.
type peerHealth struct {
	mu        sync.Mutex
	now       func() time.Time
	down      map[string]time.Time // address → first failure since its last success
	reachable map[string]bool      // address → the last observation
}

func newPeerHealth(now func() time.Time) *peerHealth {
	return &peerHealth{now: now, down: map[string]time.Time{}, reachable: map[string]bool{}}
}

func (h *peerHealth) reached(addr string) {
	h.mu.Lock()
	delete(h.down, addr)
	h.reachable[addr] = true
	h.mu.Unlock()
}

func (h *peerHealth) failed(addr string) {
	h.mu.Lock()
	if _, ok := h.down[addr]; !ok {
		h.down[addr] = h.now()
	}
	h.reachable[addr] = false
	h.mu.Unlock()
}

// unreachableFor returns how long this site has failed to reach addr (0 if it reaches it).
func (h *peerHealth) unreachableFor(addr string) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t, ok := h.down[addr]; ok {
		return h.now().Sub(t)
	}
	return 0
}

// lastReached reports the last observation of addr; ok is false before the first.
func (h *peerHealth) lastReached(addr string) (reached, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	reached, ok = h.reachable[addr]
	return reached, ok
}

// probe tries a TCP connection to addr within timeout.
func probe(ctx context.Context, addr string, timeout time.Duration) bool {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// runProber probes the other sites of the local meta copy every probeInterval.
func (s *Site) runProber() {
	defer s.wg.Done()
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		st, err := s.localMeta()
		if err != nil {
			continue
		}
		var wg sync.WaitGroup
		for _, si := range st.Sites {
			if si.State == SiteLeft || si.ID == s.file.ID || si.Addr == s.cfg.RaftAddress {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if probe(s.ctx, si.Addr, probeInterval/2) {
					s.health.reached(si.Addr)
				} else if s.ctx.Err() == nil {
					s.health.failed(si.Addr)
				}
			}()
		}
		wg.Wait()
	}
}

// health classifies a site from a probe's result and the failure history.
func (h *peerHealth) health(si SiteInfo, reachable bool, lostAfter time.Duration) (Health, *time.Time) {
	if si.State == SiteLeft {
		return HealthLeft, nil
	}
	if reachable {
		h.reached(si.Addr)
		return HealthUp, nil
	}
	h.failed(si.Addr)
	h.mu.Lock()
	defer h.mu.Unlock()
	since := h.down[si.Addr]
	if h.now().Sub(since) >= lostAfter {
		return HealthLost, &since
	}
	return HealthDown, &since
}

// setClock replaces the clock (tests).
func (h *peerHealth) setClock(now func() time.Time) {
	h.mu.Lock()
	h.now = now
	h.mu.Unlock()
}

// systemEvents passes dragonboat's connection events to a peerHealth; the other events are
// not used.
type systemEvents struct{ h *peerHealth }

func (e systemEvents) ConnectionEstablished(i raftio.ConnectionInfo) {
	if !i.SnapshotConnection {
		e.h.reached(i.Address)
	}
}

func (e systemEvents) ConnectionFailed(i raftio.ConnectionInfo) {
	if !i.SnapshotConnection {
		e.h.failed(i.Address)
	}
}

func (systemEvents) NodeHostShuttingDown()                     {}
func (systemEvents) NodeUnloaded(raftio.NodeInfo)              {}
func (systemEvents) NodeDeleted(raftio.NodeInfo)               {}
func (systemEvents) NodeReady(raftio.NodeInfo)                 {}
func (systemEvents) MembershipChanged(raftio.NodeInfo)         {}
func (systemEvents) SendSnapshotStarted(raftio.SnapshotInfo)   {}
func (systemEvents) SendSnapshotCompleted(raftio.SnapshotInfo) {}
func (systemEvents) SendSnapshotAborted(raftio.SnapshotInfo)   {}
func (systemEvents) SnapshotReceived(raftio.SnapshotInfo)      {}
func (systemEvents) SnapshotRecovered(raftio.SnapshotInfo)     {}
func (systemEvents) SnapshotCreated(raftio.SnapshotInfo)       {}
func (systemEvents) SnapshotCompacted(raftio.SnapshotInfo)     {}
func (systemEvents) LogCompacted(raftio.EntryInfo)             {}
func (systemEvents) LogDBCompacted(raftio.EntryInfo)           {}
