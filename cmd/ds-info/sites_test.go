package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/loopback"
	"github.com/strata-mq/strata/raftgroup"
)

// openSites bootstraps a cluster of n sites on 127.0.0.1, site i in root/i, in parallel, with
// db as every site's DB options. The caller closes them; if one fails to open, the others are
// closed and the test fails.
func openSites(t *testing.T, root string, n int, db *ds.Options) []*raftgroup.Site {
	t.Helper()
	addrs, err := loopback.FreeAddrs(n)
	if err != nil {
		t.Fatal(err)
	}
	sites := make([]*raftgroup.Site, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			sites[i], errs[i] = raftgroup.Open(ctx, raftgroup.Config{
				Dir: filepath.Join(root, fmt.Sprint(i)), RaftAddress: addrs[i], InitialSites: addrs,
				LogDBMemory: raftgroup.LogDBTiny, ReconcileInterval: 20 * time.Millisecond, DB: db,
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, s := range sites {
			if s != nil {
				s.Close()
			}
		}
		t.Fatal(err)
	}
	return sites
}
