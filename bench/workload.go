package bench

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Publisher p has client ID "client-<p>" and publishes to t/<p mod 8>/client-<p>/m<i mod 4>:
// a region level with 8 values (learned as literals), a client level with as many values as
// publishers (folded into '+'), and a metric level with 4 values.
func clientID(p int) string {
	if p < len(names) {
		return names[p].client
	}
	return fmt.Sprintf("client-%d", p)
}

func topicOf(p, i int) string {
	if p < len(names) {
		return names[p].topics[i%4]
	}
	return fmt.Sprintf("t/%d/client-%d/m%d", p%8, p, i%4)
}

// publisherNames is a publisher's client ID and its four topics.
type publisherNames struct {
	client string
	topics [4]string
}

// names holds the client IDs and topics of the first 4,096 publishers, made once, so that the
// publishers do not spend the CPU measured per message formatting strings (a broker takes
// them from the packets): 5% of a 128 B ingest run's profile went to Sprintf.
var names = func() []publisherNames {
	out := make([]publisherNames, 4096)
	for p := range out {
		out[p].client = fmt.Sprintf("client-%d", p)
		for i := range out[p].topics {
			out[p].topics[i] = fmt.Sprintf("t/%d/client-%d/m%d", p%8, p, i)
		}
	}
	return out
}()

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
// time, the latency of every send (in no particular order) and the first error.
func runPublishers(name string, n, publishers int, progress bool, send func(p, i int) error) (time.Duration, []time.Duration, []float64, error) {
	return runLoad(name, n, publishers, progress, func(p, count int, sent func(t0 time.Time)) error {
		for i := 0; i < count; i++ {
			t0 := time.Now()
			if err := send(p, i); err != nil {
				return err
			}
			sent(t0)
		}
		return nil
	})
}

// runWindowed is runPublishers for an asynchronous send: publisher p keeps up to window
// messages in flight (sent, outcome not yet known), like an MQTT connection with a Receive
// Maximum of window whose broker acknowledges each PUBLISH once it is durable while it reads
// the next ones. send(p, i, done) returns once the message is queued and calls done with its
// outcome later; a latency runs from the send to its done.
func runWindowed(name string, n, publishers, window int, progress bool, send func(p, i int, done func(error)) error) (time.Duration, []time.Duration, []float64, error) {
	return runLoad(name, n, publishers, progress, func(p, count int, sent func(t0 time.Time)) error {
		slots := make(chan struct{}, window)
		var failed atomic.Pointer[error]
		var err error
		for i := 0; i < count && err == nil; i++ {
			slots <- struct{}{}
			if e := failed.Load(); e != nil {
				err = *e
				break
			}
			t0 := time.Now()
			err = send(p, i, func(err error) {
				if err != nil {
					failed.CompareAndSwap(nil, &err)
				} else {
					sent(t0)
				}
				<-slots
			})
			if err != nil {
				<-slots
			}
		}
		for range window { // wait for the messages still in flight
			slots <- struct{}{}
		}
		if e := failed.Load(); e != nil && err == nil {
			err = *e
		}
		return err
	})
}

// runLoad runs publish(p, count, sent) for each publisher in a goroutine of its own, count
// being p's share of n; publish calls sent(t0) once per message it sent successfully (t0: when
// it was sent), never concurrently for one p. It returns the elapsed time, the latencies (in no
// particular order), the throughput series and the first error.
func runLoad(name string, n, publishers int, progress bool, publish func(p, count int, sent func(t0 time.Time)) error) (time.Duration, []time.Duration, []float64, error) {
	var done atomic.Int64
	var firstErr atomic.Pointer[error]
	stop := make(chan struct{})
	series := make(chan []float64, 1)
	go sampleRate(&done, stop, series)
	if progress {
		go progressLine(name, n, &done, stop)
	}
	lats := make([][]time.Duration, publishers)
	start := time.Now()
	var wg sync.WaitGroup
	for p := 0; p < publishers; p++ {
		count := n / publishers
		if p < n%publishers {
			count++
		}
		lats[p] = make([]time.Duration, 0, count)
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := publish(p, count, func(t0 time.Time) {
				lats[p] = append(lats[p], time.Since(t0))
				done.Add(1)
			})
			if err != nil {
				firstErr.CompareAndSwap(nil, &err)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	close(stop)
	if progress {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
	rates := <-series
	if e := firstErr.Load(); e != nil {
		return elapsed, all, rates, *e
	}
	return elapsed, all, rates, nil
}

// SampleInterval is the period of the throughput-over-time series.
const SampleInterval = 250 * time.Millisecond

// sampleRate records the completion rate (msgs/s) every SampleInterval until stop, then sends
// the series.
func sampleRate(done *atomic.Int64, stop chan struct{}, out chan<- []float64) {
	t := time.NewTicker(SampleInterval)
	defer t.Stop()
	var rates []float64
	last, lastT := int64(0), time.Now()
	for {
		select {
		case <-stop:
			out <- rates
			return
		case now := <-t.C:
			d := done.Load()
			rates = append(rates, float64(d-last)/now.Sub(lastT).Seconds())
			last, lastT = d, now
		}
	}
}

// percentiles returns the p50, p99 and p99.9 of lats (sorted in place).
func percentiles(lats []time.Duration) (p50, p99, p999 time.Duration) {
	if len(lats) == 0 {
		return 0, 0, 0
	}
	slices.Sort(lats)
	at := func(q float64) time.Duration { return lats[min(len(lats)-1, int(q*float64(len(lats))))] }
	return at(0.50), at(0.99), at(0.999)
}

// memory samples the Go heap while a run goes on and reports its peak, and the process's peak
// RSS (VmHWM, which covers Pebble's manually managed memory too).
type memory struct {
	peakHeap atomic.Uint64
	stop     chan struct{}
	done     chan struct{}
}

func startMemory() *memory {
	m := &memory{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > m.peakHeap.Load() {
				m.peakHeap.Store(ms.HeapInuse)
			}
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
		}
	}()
	return m
}

// finish stops sampling and returns the peak Go heap and the peak RSS (0 where /proc is
// missing).
func (m *memory) finish() (heap, rss uint64) {
	close(m.stop)
	<-m.done
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			rss = kb << 10
		}
	}
	return m.peakHeap.Load(), rss
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
				Human(float64(d)/time.Since(start).Seconds()))
		}
	}
}

// processCPU returns the CPU time (user + system) this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
