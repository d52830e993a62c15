package raftgroup

import (
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
	HealthUp   = "up"
	HealthDown = "down"
	HealthLost = "lost"
	HealthLeft = "left"
)

// peerHealth remembers, per Raft address, since when this site has failed to reach it.
// dragonboat's transport reports every failed connection or send and every connection made
// after a failure (ConnectionFailed / ConnectionEstablished), the admin view's TCP probe
// reports too; the first failure after a success starts the count, a success clears it.
type peerHealth struct {
	mu        sync.Mutex
	now       func() time.Time
	down      map[string]time.Time // address → first failure since its last success
	connected map[string]bool      // the transport's last word on the address
}

func newPeerHealth(now func() time.Time) *peerHealth {
	return &peerHealth{now: now, down: map[string]time.Time{}, connected: map[string]bool{}}
}

func (h *peerHealth) reached(addr string) {
	h.mu.Lock()
	delete(h.down, addr)
	h.mu.Unlock()
}

func (h *peerHealth) failed(addr string) {
	h.mu.Lock()
	if _, ok := h.down[addr]; !ok {
		h.down[addr] = h.now()
	}
	h.mu.Unlock()
}

func (h *peerHealth) transport(addr string, ok bool) {
	h.mu.Lock()
	h.connected[addr] = ok
	h.mu.Unlock()
	if ok {
		h.reached(addr)
	} else {
		h.failed(addr)
	}
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

// transportConnected reports the transport's last event for addr: connected, or failed;
// ok is false when there was none (no message was sent to it yet).
func (h *peerHealth) transportConnected(addr string) (connected, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	connected, ok = h.connected[addr]
	return connected, ok
}

// health classifies a site from a probe's result and the failure history.
func (h *peerHealth) health(si SiteInfo, reachable bool, lostAfter time.Duration) (string, *time.Time) {
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
		e.h.transport(i.Address, true)
	}
}

func (e systemEvents) ConnectionFailed(i raftio.ConnectionInfo) {
	if !i.SnapshotConnection {
		e.h.transport(i.Address, false)
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
