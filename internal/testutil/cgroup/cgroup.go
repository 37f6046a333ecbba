// Package cgroup makes throwaway cgroup v2 directories for tests, so that a
// test can filter capture to exactly the processes it started (a server and
// every process it forks included).
package cgroup

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ebpfotel/ebpfreceiver/internal/cgroupv2"
)

// Group is a cgroup made by a test.
type Group struct {
	Path string
	fd   *os.File
}

// New makes a cgroup for t and removes it (killing what is left in it) when
// the test ends.
func New(t testing.TB) *Group {
	t.Helper()
	root, err := cgroupv2.Root()
	if err != nil {
		t.Fatalf("cgroup v2 is required to filter test processes: %v", err)
	}
	path := filepath.Join(root, fmt.Sprintf("ebpfreceiver-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatalf("make cgroup %s: %v", path, err)
	}
	fd, err := os.Open(path)
	if err != nil {
		t.Fatalf("open cgroup %s: %v", path, err)
	}
	g := &Group{Path: path, fd: fd}
	t.Cleanup(func() { g.remove(t) })
	return g
}

// Command returns an exec.Cmd that starts inside the cgroup
// (clone3 CLONE_INTO_CGROUP), so it and all its children are in it from
// their first instruction.
func (g *Group) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	g.Into(cmd)
	return cmd
}

// Into makes cmd start inside the cgroup.
func (g *Group) Into(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(g.fd.Fd())
}

// PIDs lists the processes in the cgroup.
func (g *Group) PIDs() []int {
	b, err := os.ReadFile(filepath.Join(g.Path, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

func (g *Group) remove(t testing.TB) {
	for i := 0; i < 50; i++ {
		pids := g.PIDs()
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.fd.Close()
	if err := os.Remove(g.Path); err != nil {
		t.Errorf("remove cgroup %s: %v", g.Path, err)
	}
}
