package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-mq/strata/ds"
)

// RecoveryChildFlag is the hidden flag with which RunRecovery runs its own program as the
// writing child: cmd/ds-bench calls RecoveryChild when it is given.
const RecoveryChildFlag = "recovery-child"

// RunRecovery measures recovery from a crash at full load: a child process (self, run with
// -recovery-child DIR) ingests into an embedded DB as fast as c.Publishers publishers can
// (Sync, c.Payload bytes, c.Shards shards), printing how many bytes the DB holds; once it
// holds dbBytes it is killed with SIGKILL, and this process times ds.Open of the directory
// until it returns, until a first Store succeeds, and until a first message is read back. A
// second Open after a clean Close shows the cost of the crash itself.
func RunRecovery(c Config, self string, dbBytes int64) (Result, error) {
	dir, remove, err := benchDir(c, "recovery")
	if err != nil {
		return Result{}, err
	}
	defer remove()
	db := filepath.Join(dir, "db")
	child := exec.Command(self, "-"+RecoveryChildFlag, db, "-payload", strconv.Itoa(c.Payload),
		"-publishers", strconv.Itoa(c.Publishers), "-shards", strconv.Itoa(c.Shards))
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		return Result{}, err
	}
	if err := child.Start(); err != nil {
		return Result{}, err
	}
	// The child prints "bytes N stored M" lines; kill it once the DB holds dbBytes.
	var stored, held int64
	sc := bufio.NewScanner(out)
	start := time.Now()
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 4 && f[0] == "bytes" {
			held, _ = strconv.ParseInt(f[1], 10, 64)
			stored, _ = strconv.ParseInt(f[3], 10, 64)
			if c.Progress {
				fmt.Fprintf(os.Stderr, "\r\033[Krecovery: the child holds %d MiB, %d messages stored", held>>20, stored)
			}
			if held >= dbBytes {
				break
			}
		}
	}
	killErr := child.Process.Kill()
	go io.Copy(io.Discard, out)
	child.Wait()
	if c.Progress {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
	if killErr != nil || held < dbBytes {
		return Result{}, fmt.Errorf("recovery: the child stopped at %d of %d bytes (%v, kill: %v)", held, dbBytes, sc.Err(), killErr)
	}
	ingest := time.Since(start)

	open, firstStore, firstRead, err := timeRecovery(db, c.Shards)
	if err != nil {
		return Result{}, fmt.Errorf("recovery after kill -9: %w", err)
	}
	cleanOpen, _, _, err := timeRecovery(db, c.Shards)
	if err != nil {
		return Result{}, fmt.Errorf("recovery, clean reopen: %w", err)
	}
	r := Result{Name: fmt.Sprintf("recovery after kill -9 at full load (%.1f GB)", float64(held)/1e9), Elapsed: firstRead,
		Figures: map[string]float64{"open_s": open.Seconds(), "first_store_s": firstStore.Seconds(), "first_read_s": firstRead.Seconds(),
			"clean_open_s": cleanOpen.Seconds(), "db_bytes": float64(held)}}
	r.Note = fmt.Sprintf("Open %v, first Store %v, first read %v after the kill (a clean reopen: %v); %d messages stored in %v before it",
		open.Round(time.Millisecond), firstStore.Round(time.Millisecond), firstRead.Round(time.Millisecond), cleanOpen.Round(time.Millisecond),
		stored, ingest.Round(time.Second))
	return r, nil
}

// timeRecovery opens the DB in dir and returns how long Open took, and until a first Store
// and a first read (one message from the start of every stream) succeeded; it closes the DB.
func timeRecovery(dir string, shards int) (open, store, read time.Duration, err error) {
	start := time.Now()
	db, err := ds.Open(dir, &ds.Options{NShards: shards, Retention: ds.RetainForever})
	if err != nil {
		return 0, 0, 0, err
	}
	defer db.Close()
	open = time.Since(start)
	ctx := context.Background()
	if _, err := db.Store(ctx, ds.Message{ClientID: "recovery", Topic: "t/recovery", Payload: []byte("x")}); err != nil {
		return 0, 0, 0, err
	}
	store = time.Since(start)
	streams, err := db.Streams("t/#", time.Time{})
	if err != nil {
		return 0, 0, 0, err
	}
	for _, s := range streams {
		it, err := db.Iterator(s, "t/#", time.Time{})
		if err != nil {
			return 0, 0, 0, err
		}
		msgs, _, err := db.Next(ctx, it, 1)
		if err != nil {
			return 0, 0, 0, err
		}
		if len(msgs) > 0 {
			return open, store, time.Since(start), nil
		}
	}
	return 0, 0, 0, errors.New("no message read back")
}

// RecoveryChild is the writing child of RunRecovery: it ingests into the DB in dir until it is
// killed, printing "bytes HELD stored MESSAGES" to stdout every 100ms (HELD: the DB's bytes
// on disk).
func RecoveryChild(dir string, c Config) error {
	db, err := ds.Open(dir, &ds.Options{NShards: c.Shards, Retention: ds.RetainForever})
	if err != nil {
		return err
	}
	pl := payloads(64, c.Payload)
	var stored atomic.Int64
	var wg sync.WaitGroup
	ctx := context.Background()
	for p := range c.Publishers {
		wg.Go(func() {
			for i := 0; ; i++ {
				if _, err := db.Store(ctx, ds.Message{ClientID: clientID(p), Topic: topicOf(p, i), QoS: 1, Payload: pl[(p+i)%len(pl)]}); err != nil {
					fmt.Fprintln(os.Stderr, "recovery child:", err)
					os.Exit(1)
				}
				stored.Add(1)
			}
		})
	}
	w := bufio.NewWriter(os.Stdout)
	for range time.Tick(100 * time.Millisecond) {
		m, err := db.Metrics()
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "bytes %d stored %d\n", m.DiskBytes, stored.Load())
		if err := w.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// benchDir returns a directory for a scenario: c.Dir/name, or a temporary directory that
// remove deletes.
func benchDir(c Config, name string) (dir string, remove func(), err error) {
	if c.Dir != "" {
		dir = filepath.Join(c.Dir, name)
		return dir, func() {}, os.MkdirAll(dir, 0o755)
	}
	dir, err = os.MkdirTemp("", "ds-bench-"+name+"-")
	return dir, func() { os.RemoveAll(dir) }, err
}
