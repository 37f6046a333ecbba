//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ebpfotel/ebpfreceiver/internal/cgroupv2"
)

// cleanups run in reverse order at exit, also after Ctrl-C. runMu makes a
// second caller (main returning while the signal handler cleans up) wait
// until the first has finished, so the process never exits half-way.
var (
	cleanupMu sync.Mutex
	cleanups  []func()
	runMu     sync.Mutex
)

func atExit(f func()) {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	cleanups = append(cleanups, f)
}

func runCleanups() {
	runMu.Lock()
	defer runMu.Unlock()
	cleanupMu.Lock()
	fs := cleanups
	cleanups = nil
	cleanupMu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// logf prints a progress line with the time since start.
var started = time.Now()

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// cgroup is a cgroup v2 directory made by the harness. Processes started
// with into() begin their life inside it (clone3 CLONE_INTO_CGROUP), so a
// server and every process it forks are in it.
type cgroup struct {
	Path string
	fd   *os.File
}

func newCgroup(name string) (*cgroup, error) {
	root, err := cgroupv2.Root()
	if err != nil {
		return nil, fmt.Errorf("cgroup v2 is required (the collector filters by cgroup): %w", err)
	}
	path := filepath.Join(root, fmt.Sprintf("ebpfbench-%d-%s", os.Getpid(), name))
	if err := os.Mkdir(path, 0o755); err != nil {
		return nil, fmt.Errorf("make cgroup %s: %w", path, err)
	}
	fd, err := os.Open(path)
	if err != nil {
		_ = os.Remove(path)
		return nil, err
	}
	g := &cgroup{Path: path, fd: fd}
	atExit(g.remove)
	return g, nil
}

func (g *cgroup) into(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(g.fd.Fd())
}

func (g *cgroup) pids() []int {
	b, err := os.ReadFile(filepath.Join(g.Path, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// cpuUsec is the CPU time (user + system, microseconds) used by every
// process that ever ran in the cgroup.
func (g *cgroup) cpuUsec() int64 {
	b, err := os.ReadFile(filepath.Join(g.Path, "cpu.stat"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// remove kills what is left in the cgroup and removes it.
func (g *cgroup) remove() {
	_ = os.WriteFile(filepath.Join(g.Path, "cgroup.kill"), []byte("1"), 0o644)
	for range 100 {
		if len(g.pids()) == 0 {
			break
		}
		for _, p := range g.pids() {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.fd.Close()
	for range 50 {
		if err := os.Remove(g.Path); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	logf("warning: could not remove cgroup %s", g.Path)
}

// procCPU is utime + stime of a process (all its threads), from
// /proc/PID/stat, in seconds (clock-tick resolution).
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces: fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

// procStatusKB reads a "Vm...:" line of /proc/PID/status in kB.
func procStatusKB(pid int, key string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// hostCPU returns the busy CPU time of the whole machine in seconds
// (from /proc/stat), to show how much else ran during a measurement.
func hostCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var v [8]float64
	for i := range v {
		v[i], _ = strconv.ParseFloat(f[i+1], 64)
	}
	// user nice system idle iowait irq softirq steal
	idle := v[3] + v[4]
	var total float64
	for _, x := range v {
		total += x
	}
	return (total - idle) / 100
}

func stealSeconds() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 {
		return 0
	}
	s, _ := strconv.ParseFloat(f[8], 64)
	return s / 100
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return ""
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// niceness is given to every process under test (servers, load
// generators, collector) through nice(1); 0 leaves them as they are.
var niceness int

// niced prefixes a command line with nice(1) when niceness is set.
func niced(name string, args ...string) (string, []string) {
	if niceness == 0 {
		return name, args
	}
	return "nice", append([]string{"-n", strconv.Itoa(niceness), name}, args...)
}

// command builds a child that is signalled when the harness dies and that
// is interrupted (SIGINT, then killed after grace) when ctx ends.
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	name, args = niced(name, args...)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func outputOf(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
