package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Publisher p has client ID "client-<p>" and publishes to t/<p mod 8>/client-<p>/m<i mod 4>:
// a region level with 8 values (learned as literals), a client level with as many values as
// publishers (folded into '+'), and a metric level with 4 values.
func clientID(p int) string     { return fmt.Sprintf("client-%d", p) }
func topicOf(p, i int) string   { return fmt.Sprintf("t/%d/client-%d/m%d", p%8, p, i%4) }
func regionFilter(r int) string { return fmt.Sprintf("t/%d/#", r) }
func publisherFilter(p int) string {
	return fmt.Sprintf("t/%d/client-%d/+", p%8, p)
}

// payloads returns k random payloads of size bytes (random so compression cannot flatter).
func payloads(k, size int) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	out := make([][]byte, k)
	for i := range out {
		out[i] = make([]byte, size)
		for j := range out[i] {
			out[i][j] = byte(rng.Uint32())
		}
	}
	return out
}

// runPublishers runs one goroutine per publisher; publisher p sends its share of n messages by
// calling send(p, i) sequentially, like a broker connection's read loop. It returns the elapsed
// time and the first error.
func runPublishers(name string, n, publishers int, progress bool, send func(p, i int) error) (time.Duration, error) {
	var done atomic.Int64
	var firstErr atomic.Pointer[error]
	stop := make(chan struct{})
	if progress {
		go progressLine(name, n, &done, stop)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for p := 0; p < publishers; p++ {
		count := n / publishers
		if p < n%publishers {
			count++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < count; i++ {
				if err := send(p, i); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	if progress {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
	if e := firstErr.Load(); e != nil {
		return elapsed, *e
	}
	return elapsed, nil
}

// progressLine prints "name  42% 123.4k msgs/s" on stderr twice a second.
func progressLine(name string, total int, done *atomic.Int64, stop chan struct{}) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	start := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			d := done.Load()
			fmt.Fprintf(os.Stderr, "\r\033[K%-28s %3d%%  %s msgs/s", name, d*100/int64(total),
				human(float64(d)/time.Since(start).Seconds()))
		}
	}
}
