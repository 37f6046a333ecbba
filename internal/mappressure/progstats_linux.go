package mappressure

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// EnableProgramStats turns on the kernel's per-program run_cnt and
// run_time_ns accounting (BPF_ENABLE_STATS with BPF_STATS_RUN_TIME, Linux
// >= 5.8). The accounting costs two clock reads per program run on the whole
// host, so it stays on only while the returned Closer is open; the kernel
// counts enablers, so closing it turns stats off unless another process
// also asked for them (or sysctl kernel.bpf_stats_enabled is set).
func EnableProgramStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return nil, fmt.Errorf("enabling BPF program stats (needs Linux >= 5.8 and CAP_SYS_ADMIN): %w", err)
	}
	return c, nil
}

// SampleProgramStats returns the statistics of every BPF program loaded on
// the host, appended to dst[:0]. Programs that are unloaded while the walk
// runs are skipped.
func SampleProgramStats(dst []ProgramStats) ([]ProgramStats, error) {
	return sampleProgramStats(dst, nil)
}

// sampleProgramStats takes a filter on program ids (a test seam: tests open
// only the programs they loaded).
func sampleProgramStats(dst []ProgramStats, allow func(ebpf.ProgramID) bool) ([]ProgramStats, error) {
	dst = dst[:0]
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return dst, nil
		}
		if err != nil {
			return dst, fmt.Errorf("walking program ids: %w", err)
		}
		id = next
		if allow != nil && !allow(id) {
			continue
		}
		st, err := programStats(id)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return dst, err
		}
		dst = append(dst, st)
	}
}

func programStats(id ebpf.ProgramID) (ProgramStats, error) {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return ProgramStats{}, fmt.Errorf("opening program %d: %w", id, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return ProgramStats{}, fmt.Errorf("program %d info: %w", id, err)
	}
	stats, err := p.Stats()
	if err != nil {
		return ProgramStats{}, fmt.Errorf("program %d stats: %w", id, err)
	}
	return ProgramStats{
		ID:              uint32(id),
		Name:            info.Name,
		Type:            ProgramTypeName(info.Type),
		RunCount:        stats.RunCount,
		RunTime:         stats.Runtime,
		RecursionMisses: stats.RecursionMisses,
	}, nil
}

// programTypeNames are the kernel's enum bpf_prog_type names without the
// BPF_PROG_TYPE_ prefix, lower case, as bpftool prints them (and as map
// types are reported), rather than cilium/ebpf's Go names.
var programTypeNames = [...]string{
	"unspec", "socket_filter", "kprobe", "sched_cls", "sched_act", "tracepoint", "xdp", "perf_event",
	"cgroup_skb", "cgroup_sock", "lwt_in", "lwt_out", "lwt_xmit", "sock_ops", "sk_skb", "cgroup_device",
	"sk_msg", "raw_tracepoint", "cgroup_sock_addr", "lwt_seg6local", "lirc_mode2", "sk_reuseport",
	"flow_dissector", "cgroup_sysctl", "raw_tracepoint_writable", "cgroup_sockopt", "tracing",
	"struct_ops", "ext", "lsm", "sk_lookup", "syscall", "netfilter",
}

// ProgramTypeName is the kernel's name of a program type, "unknown(N)" for
// one newer than this table.
func ProgramTypeName(t ebpf.ProgramType) string {
	if int(t) < len(programTypeNames) {
		return programTypeNames[t]
	}
	return fmt.Sprintf("unknown(%d)", uint32(t))
}
