// Package dockertest holds the generic pieces of the repository's Docker tests, which run its
// commands in containers through the docker CLI: skipping when no Docker Engine is reachable,
// running docker with a timeout, building a FROM-scratch image from a static Go binary,
// creating a network with an explicit subnet (so that containers get fixed addresses with
// --ip), finding a port published on the host, and removing what a test created.
//
// It is a normal package, not a _test.go file, so that tests of other packages and of the
// integration modules under github.com/strata-mq/strata can import it; it is internal, so
// nothing outside the repository can. Nothing in it talks to a particular command: the
// scenarios stay in the tests.
package dockertest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Timeout bounds the docker commands of Must and of the helpers that fail the test.
const Timeout = 2 * time.Minute

// SkipUnlessAvailable skips t with -short, when docker is not on PATH or when `docker info`
// fails (no Docker Engine reachable). It returns the Engine's version otherwise.
func SkipUnlessAvailable(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("Docker test: skipped with -short")
	}
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("docker is not on PATH: skipping the Docker test")
	}
	out, err := Run(30*time.Second, "info", "--format", "{{.ServerVersion}}")
	if err != nil {
		t.Skipf("docker info failed (no Docker Engine reachable?): skipping the Docker test: %v", err)
	}
	return out
}

// Run runs the docker CLI with args, killing it after timeout, and returns its combined
// output, trimmed. The error names the command and holds its output.
func Run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, s)
	}
	return s, nil
}

// Must is Run with Timeout that fails t on an error.
func Must(t testing.TB, args ...string) string {
	t.Helper()
	out, err := Run(Timeout, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// UniqueID returns prefix followed by the process ID and a random number: a prefix for the
// names of one test's image, network and containers that no parallel run shares.
func UniqueID(prefix string) string {
	return fmt.Sprintf("%s-%d-%04x", prefix, os.Getpid(), rand.N(1<<16))
}

// BuildStatic builds the Go main package in dir into the executable out with CGO_ENABLED=0,
// so that it runs in a FROM-scratch image (no libc). It uses the go command on PATH.
func BuildStatic(dir, out string) error {
	goBin := "go"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("CGO_ENABLED=0 go build -o %s in %s: %w\n%s", out, dir, err, b)
	}
	return nil
}

// BuildScratchImage builds the image tag FROM scratch holding only the executable bin, as
// /name, which is its entrypoint; the image is labelled with label and exposes the TCP ports
// expose.
func BuildScratchImage(t testing.TB, tag, label, bin, name string, expose ...int) {
	t.Helper()
	ctxDir := t.TempDir()
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ctxDir, name), b, 0o755); err != nil {
		t.Fatal(err)
	}
	var df strings.Builder
	fmt.Fprintf(&df, "FROM scratch\nCOPY %s /%s\n", name, name)
	if len(expose) > 0 {
		df.WriteString("EXPOSE")
		for _, p := range expose {
			fmt.Fprintf(&df, " %d", p)
		}
		df.WriteString("\n")
	}
	fmt.Fprintf(&df, "ENTRYPOINT [\"/%s\"]\n", name)
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(df.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	Must(t, "build", "-q", "--label", label, "-t", tag, ctxDir)
}

// CreateNetwork creates the bridge network name, labelled with label, with an explicit
// subnet, and returns the subnet: Docker attaches a container with a fixed --ip (kept across
// restarts and reconnects) only to a network with a user-configured subnet. Docker first
// picks a free subnet, then the network is re-created with it spelled out (retried if a
// parallel run took it meanwhile). An internal network (--internal) has no route outside: a
// container that must publish ports on the host needs another network too (Docker's default
// bridge, for one).
func CreateNetwork(t testing.TB, name, label string, internal bool) netip.Prefix {
	t.Helper()
	create := []string{"network", "create", "--label", label}
	if internal {
		create = append(create, "--internal")
	}
	var last error
	for range 5 {
		if _, err := Run(time.Minute, append(create, name)...); err != nil {
			last = err
			continue
		}
		sub, err := Run(time.Minute, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", name)
		Run(time.Minute, "network", "rm", name)
		if err != nil {
			last = err
			continue
		}
		prefix, err := netip.ParsePrefix(strings.Fields(sub + " ")[0])
		if err != nil || !prefix.Addr().Is4() || prefix.Bits() > 28 {
			last = fmt.Errorf("subnet %q: %v", sub, err)
			continue
		}
		if _, err := Run(time.Minute, append(create, "--subnet", prefix.String(), name)...); err != nil {
			last = err // taken meanwhile by a parallel run: try again
			continue
		}
		return prefix
	}
	t.Fatalf("create network %s: %v", name, last)
	return netip.Prefix{}
}

// FixedAddrs returns the n consecutive addresses of subnet that start from, counted from the
// network address (from 11 in 172.18.0.0/16: 172.18.0.11, ...), for containers' --ip. Keep from
// past Docker's gateway (the first address) and clear of the addresses Docker assigns to
// containers attached without --ip (the lowest ones).
func FixedAddrs(subnet netip.Prefix, from, n int) []netip.Addr {
	a := subnet.Masked().Addr()
	for range from {
		a = a.Next()
	}
	out := []netip.Addr{}
	for range n {
		out = append(out, a)
		a = a.Next()
	}
	return out
}

// PublishedAddr returns the IPv4 host address where container publishes port (such as
// "8080/tcp"): with -p 127.0.0.1::8080, 127.0.0.1 and a port Docker chose, which changes when
// the container restarts.
func PublishedAddr(container, port string) (netip.AddrPort, error) {
	out, err := Run(time.Minute, "port", container, port)
	if err != nil {
		return netip.AddrPort{}, err
	}
	for _, line := range strings.Split(out, "\n") {
		if ap, err := netip.ParseAddrPort(strings.TrimSpace(line)); err == nil && ap.Addr().Is4() {
			return ap, nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("no published IPv4 port %s for %s: %q", port, container, out)
}

// Running reports whether container is running.
func Running(container string) (bool, error) {
	out, err := Run(time.Minute, "inspect", "-f", "{{.State.Running}}", container)
	if err != nil {
		return false, err
	}
	return out == "true", nil
}

// Logs returns the last tail lines of container's output (stdout and stderr), or the error.
func Logs(container string, tail int) string {
	out, err := Run(time.Minute, "logs", "--tail", fmt.Sprint(tail), container)
	if err != nil {
		return err.Error()
	}
	return out
}

// Remove removes (forcibly) the containers, then the network and the image, when non-empty,
// logging what fails other than their absence: for t.Cleanup. If t failed, it first logs the
// last tailOnFailure lines of every container's output.
func Remove(t testing.TB, tailOnFailure int, image, network string, containers ...string) {
	t.Helper()
	if t.Failed() && tailOnFailure > 0 {
		for _, c := range containers {
			t.Logf("--- container %s, last %d lines:\n%s", c, tailOnFailure, Logs(c, tailOnFailure))
		}
	}
	if len(containers) > 0 {
		if out, err := Run(Timeout, append([]string{"rm", "-f"}, containers...)...); err != nil && !strings.Contains(out, "No such container") {
			t.Logf("cleanup: %v", err)
		}
	}
	if network != "" {
		if out, err := Run(time.Minute, "network", "rm", network); err != nil && !strings.Contains(out, "not found") {
			t.Logf("cleanup: %v", err)
		}
	}
	if image != "" {
		if out, err := Run(time.Minute, "rmi", "-f", image); err != nil && !strings.Contains(out, "No such image") {
			t.Logf("cleanup: %v", err)
		}
	}
}
