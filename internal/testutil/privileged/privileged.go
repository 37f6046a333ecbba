// Package privileged holds helpers for tests that need a real kernel and
// root: they skip with the reason when not root, and fail when a kernel
// feature is missing on a kernel recent enough to have it.
package privileged

import (
	"os"
	"testing"

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

// OurPrograms lists the ids of loaded programs whose name is in names,
// read from the kernel's program list (not from our own bookkeeping).
func OurPrograms(t testing.TB, names map[string]bool) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return ids
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded in between
		}
		info, err := p.Info()
		p.Close()
		if err == nil && names[info.Name] {
			ids = append(ids, id)
		}
	}
}
