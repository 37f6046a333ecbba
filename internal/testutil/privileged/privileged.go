// Package privileged holds helpers for tests that need a real kernel and
// root: they skip with the reason when not root, and fail when a kernel
// feature is missing on a kernel recent enough to have it.
package privileged

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
)

// Require skips t unless the test runs as root with BTF available.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_BPF, CAP_PERFMON) to load eBPF programs: run `sudo make test`")
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skip("kernel has no BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF, kernel >= 5.8)")
	}
	// Ring buffers appeared in 5.8 and bpf_loop in 5.17; on a kernel that
	// is recent enough a missing feature is a failure, not a skip.
	if err := features.HaveMapType(ebpf.RingBuf); err != nil {
		t.Fatalf("BPF ring buffer unavailable (kernel >= 5.8 required): %v", err)
	}
}

// ProgramsHeldBySelf returns the ids of the eBPF programs this process
// holds open, as the kernel reports them in /proc/self/fdinfo. Tests of
// several packages run at once, so programs are told apart by who holds
// them, not by name.
func ProgramsHeldBySelf(t testing.TB) []ebpf.ProgramID {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("list /proc/self/fd: %v", err)
	}
	var ids []ebpf.ProgramID
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil || target != "anon_inode:bpf-prog" {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "prog_id:"); ok {
				if id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
					ids = append(ids, ebpf.ProgramID(id))
				}
			}
		}
	}
	return ids
}

// RequireUnloaded fails t if any of ids is still in the kernel's program
// list (a program with no fd, link or pin left is freed by the kernel).
// Links of BTF tracepoints are released after an RCU grace period, so the
// kernel is given a few seconds.
func RequireUnloaded(t testing.TB, ids []ebpf.ProgramID) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, id := range ids {
		for {
			p, err := ebpf.NewProgramFromID(id)
			if err != nil {
				if !errors.Is(err, os.ErrNotExist) {
					t.Errorf("look up program %d: %v", id, err)
				}
				break
			}
			p.Close()
			if time.Now().After(deadline) {
				t.Errorf("program %d is still loaded", id)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
