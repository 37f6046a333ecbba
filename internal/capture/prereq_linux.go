//go:build linux

package capture

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Capability numbers from linux/capability.h.
const (
	capSysAdmin = 21
	capPerfmon  = 38
	capBPF      = 39
)

// checkPrerequisites names what is missing before any program is loaded:
// the capabilities (and the memlock limit), the kernel's BTF, and tracefs.
func checkPrerequisites() error {
	if err := CheckPrivileges(); err != nil {
		return err
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return fmt.Errorf("kernel BTF not found at /sys/kernel/btf/vmlinux: a kernel built with CONFIG_DEBUG_INFO_BTF=y is required (most distribution kernels since 5.8): %w", err)
	}
	return ensureTracefs()
}

// CheckPrivileges is what every eBPF object of the receiver needs, the
// capture's and the map sampler's alike: call it before loading the first
// one, whichever that is, so that a missing capability is named instead of
// surfacing as a bare EPERM from bpf(2). It checks the effective
// capabilities and then, on kernels before 5.11, raises RLIMIT_MEMLOCK.
func CheckPrivileges() error {
	if err := checkCapabilities(); err != nil {
		return err
	}
	// Kernels before 5.11 charge eBPF maps and programs to RLIMIT_MEMLOCK;
	// from 5.11 they are charged to the memory cgroup and RemoveMemlock
	// changes nothing.
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raise RLIMIT_MEMLOCK for eBPF maps (needed on Linux before 5.11 only, which charges eBPF memory to it instead of the memory cgroup): grant CAP_SYS_RESOURCE or raise the limit before the collector starts (systemd LimitMEMLOCK=infinity): %w", err)
	}
	return nil
}

// checkCapabilities names the capabilities missing from the effective set.
// Every program the receiver loads is a tracing program (syscall
// tracepoints, tp_btf, uprobes, iter/bpf_map): bpf(2) wants CAP_BPF for
// BPF_PROG_LOAD and BPF_MAP_CREATE, and CAP_PERFMON for tracing program
// types, probe reads and perf_event_open(2). CAP_SYS_ADMIN satisfies both
// checks in the kernel (bpf_capable, perfmon_capable), and is the only way
// before Linux 5.8, which has neither.
func checkCapabilities() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read process capabilities: %w", err)
	}
	return missingCapabilities(func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 })
}

// missingCapabilities builds the error for an effective set: nil, or one
// that names exactly the capabilities lacking.
func missingCapabilities(has func(c uint) bool) error {
	if has(capSysAdmin) {
		return nil
	}
	var missing []string
	if !has(capBPF) {
		missing = append(missing, "CAP_BPF")
	}
	if !has(capPerfmon) {
		missing = append(missing, "CAP_PERFMON")
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("missing capability %s: %s", missing[0], grantHint)
	default:
		return fmt.Errorf("missing capabilities %s: %s", strings.Join(missing, ", "), grantHint)
	}
}

const grantHint = "run the collector as root or grant CAP_BPF and CAP_PERFMON " +
	"(setcap, the systemd unit's AmbientCapabilities, the container's capabilities.add; " +
	"CAP_SYS_ADMIN covers both, and is needed instead on Linux before 5.8)"

// ensureTracefs makes sure the syscall tracepoints can be found, mounting
// tracefs at /sys/kernel/tracing when it is not mounted (allowed as root).
func ensureTracefs() error {
	for _, dir := range []string{"/sys/kernel/tracing/events/syscalls", "/sys/kernel/debug/tracing/events/syscalls"} {
		if _, err := os.Stat(dir); err == nil {
			return nil
		}
	}
	if err := unix.Mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, ""); err != nil {
		return fmt.Errorf("tracefs is not mounted and mounting it at /sys/kernel/tracing failed (mount it: mount -t tracefs tracefs /sys/kernel/tracing; a kernel with CONFIG_FTRACE_SYSCALLS is required): %w", err)
	}
	if _, err := os.Stat("/sys/kernel/tracing/events/syscalls"); err != nil {
		return fmt.Errorf("syscall tracepoints not found under tracefs: a kernel with CONFIG_FTRACE_SYSCALLS=y is required: %w", err)
	}
	return nil
}

// explainLoadError adds the verifier's last lines to a load failure.
func explainLoadError(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		log := ve.Log
		if len(log) > 20 {
			log = log[len(log)-20:]
		}
		return fmt.Errorf("the kernel verifier rejected the capture programs (kernel too old or unsupported configuration; report it with this log): %w\n%s", err, strings.Join(log, "\n"))
	}
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("loading eBPF programs was refused (EPERM): run as root or grant CAP_BPF and CAP_PERFMON; check kernel.unprivileged_bpf_disabled and lockdown: %w", err)
	}
	return fmt.Errorf("load capture programs: %w", err)
}
