package ds

import "fmt"

func DebugSub(s *Subscription) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := fmt.Sprintf("outstanding %d closed %v\n", s.mu.outstanding, s.mu.closed)
	for _, sh := range s.shards {
		f := s.db.feeds[sh.id]
		f.mu.Lock()
		fp, busy, q := f.mu.pos, f.mu.busy, len(f.mu.queue)
		f.mu.Unlock()
		lim, _ := s.db.shards[sh.id].ReadLimit()
		out += fmt.Sprintf("shard %d next %d tail %v gap [%d,%d) pending %d unacked %v loss %v feedpos %d delivered %d busy %v q %d readlimit %d cu.listedAt %d cursors %d\n",
			sh.id, sh.next, sh.tail, sh.gapFrom, sh.gapUntil, len(sh.pending), sh.unacked, sh.loss, fp, f.delivered.Load(), busy, q, lim, sh.cu.listedAt, len(sh.cu.cursors))
		for _, m := range sh.pending {
			out += fmt.Sprintf("   pending ts %d %s\n", m.Timestamp, m.Topic)
		}
	}
	return out
}
