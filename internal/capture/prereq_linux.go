//go:build linux

package capture

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Capability numbers from linux/capability.h.
const (
	capSysAdmin = 21
	capPerfmon  = 38
	capBPF      = 39
)

// checkPrerequisites names what is missing before any program is loaded:
// the capabilities, the kernel's BTF, and tracefs.
func checkPrerequisites() error {
	if err := checkCapabilities(); err != nil {
		return err
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return fmt.Errorf("kernel BTF not found at /sys/kernel/btf/vmlinux: a kernel built with CONFIG_DEBUG_INFO_BTF=y is required (most distribution kernels since 5.8): %w", err)
	}
	return ensureTracefs()
}

func checkCapabilities() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read process capabilities: %w", err)
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
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
	if len(missing) > 0 {
		return fmt.Errorf("missing capabilities %s: run the collector as root or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE (e.g. setcap or the systemd unit's AmbientCapabilities)", strings.Join(missing, ", "))
	}
	return nil
}

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
