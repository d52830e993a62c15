// Package loopback hands out free TCP addresses on 127.0.0.1 for sites started in one process
// (tests, benchmarks), which must know each other's Raft addresses before they listen.
package loopback

import (
	"net"
	"sync"
)

var handedOut sync.Map // the OS may offer a port again once its listener closed: never twice here

// FreeAddrs returns n distinct addresses on 127.0.0.1 that were free a moment ago and were not
// returned before by this process.
func FreeAddrs(n int) ([]string, error) {
	out := make([]string, 0, n)
	for len(out) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		a := l.Addr().String()
		l.Close()
		if _, dup := handedOut.LoadOrStore(a, true); !dup {
			out = append(out, a)
		}
	}
	return out, nil
}
