package mappressure

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/bpfprog"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
)

// TestProgramStats runs a program of ours a known number of times with
// kernel-wide stats on, then checks the counts and that closing turns the
// accounting off again.
func TestProgramStats(t *testing.T) {
	privileged.Require(t)
	own := newOwnMaps(t)
	rb, _ := own.create(&ebpf.MapSpec{Type: ebpf.RingBuf, MaxEntries: 4096})
	prog := bpfprog.RingbufWriter(t, "mp_rb_writer", rb, 1)
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	ourID, _ := info.ID()
	ours := func(id ebpf.ProgramID) bool { return id == ourID }

	// Runs before enabling tell whether anybody else on the host holds
	// kernel-wide stats on (the kernel counts enablers; the sysctl
	// kernel.bpf_stats_enabled only shows its own setting).
	bpfprog.Run(t, prog, 10)
	base, err := sampleProgramStats(nil, ours)
	if err != nil || len(base) != 1 {
		t.Fatalf("sampling our program: %v, %d programs", err, len(base))
	}
	statsHeldElsewhere := base[0].RunCount != 0

	stats, err := EnableProgramStats()
	checkFeatureErr(t, err, "BPF_ENABLE_STATS", 5, 8)
	const runs = 50
	bpfprog.Run(t, prog, runs)
	got, err := sampleProgramStats(nil, ours)
	if err != nil {
		stats.Close()
		t.Fatal(err)
	}
	if len(got) != 1 {
		stats.Close()
		t.Fatalf("%d programs sampled, want only ours", len(got))
	}
	p := got[0]
	if p.ID != uint32(ourID) || p.Name != "mp_rb_writer" || p.Type != "socket_filter" {
		t.Errorf("sampled %+v, want id %d mp_rb_writer socket_filter", p, ourID)
	}
	if p.RunCount != base[0].RunCount+runs || p.RunTime <= 0 {
		t.Errorf("run count %d run time %v, want %d runs and a positive time", p.RunCount, p.RunTime, runs)
	}

	if err := stats.Close(); err != nil {
		t.Fatal(err)
	}
	if statsHeldElsewhere {
		t.Log("BPF stats were already on before this test: the kernel keeps counting for their holder, so the off check is left out")
		return
	}
	bpfprog.Run(t, prog, 10)
	after, err := sampleProgramStats(nil, ours)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 1 || after[0].RunCount != runs {
		t.Fatalf("after Close: %+v, want run count to stay %d", after, runs)
	}
}

// The table follows the kernel's enum bpf_prog_type: spot checks against
// cilium/ebpf's constants, which carry the same numbers.
func TestProgramTypeName(t *testing.T) {
	for typ, want := range map[ebpf.ProgramType]string{
		ebpf.SocketFilter: "socket_filter", ebpf.Kprobe: "kprobe", ebpf.SchedCLS: "sched_cls", ebpf.TracePoint: "tracepoint",
		ebpf.XDP: "xdp", ebpf.CGroupSKB: "cgroup_skb", ebpf.RawTracepoint: "raw_tracepoint", ebpf.Tracing: "tracing",
		ebpf.StructOps: "struct_ops", ebpf.LSM: "lsm", ebpf.SkLookup: "sk_lookup", ebpf.Syscall: "syscall", ebpf.Netfilter: "netfilter",
		ebpf.ProgramType(200): "unknown(200)",
	} {
		if got := ProgramTypeName(typ); got != want {
			t.Errorf("ProgramTypeName(%v) = %q, want %q", typ, got, want)
		}
	}
}
