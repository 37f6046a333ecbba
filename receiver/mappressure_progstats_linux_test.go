//go:build linux

package receiver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// bpfStatsFDs counts the BPF_ENABLE_STATS fds held open in /proc/<pid>/fd
// for each pid in pids ("self" for this process, "*" for every process):
// the kernel hands them out as anonymous inodes named "bpf-stats", and
// run_cnt/run_time_ns are counted while at least one is open or the sysctl
// kernel.bpf_stats_enabled is 1.
func bpfStatsFDs(t testing.TB, pid string) int {
	t.Helper()
	fds, err := filepath.Glob("/proc/" + pid + "/fd/*")
	require.NoError(t, err)
	n := 0
	for _, fd := range fds {
		// Processes and fds come and go while the walk runs.
		if target, err := os.Readlink(fd); err == nil && target == "anon_inode:bpf-stats" {
			n++
		}
	}
	return n
}

func bpfStatsSysctl(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}

// TestMapPressureProgramRunMetrics turns on ebpf.program.run.count and
// ebpf.program.run.time, runs a program of the test's own a known number of
// times, and checks what the receiver reports for it and that Shutdown
// turns the kernel's statistics off again.
func TestMapPressureProgramRunMetrics(t *testing.T) {
	privileged.Require(t)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "rcv_test_prog",
		Type:         ebpf.SocketFilter,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	require.NoError(t, err)
	defer prog.Close()
	info, err := prog.Info()
	require.NoError(t, err)
	id, ok := info.ID()
	require.True(t, ok)
	// BPF_PROG_TEST_RUN runs the program Repeat times through the same
	// bpf_prog_run() as a real attachment, which adds to run_cnt and
	// run_time_ns only while statistics are on. A socket filter's test run
	// needs at least an Ethernet header (14 bytes) of data.
	run := func(n uint32) {
		t.Helper()
		_, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 14), Repeat: n})
		require.NoError(t, err)
	}

	// The sysctl shows only what was written to it: BPF_ENABLE_STATS
	// holders are counted apart from it, so the receiver must leave it
	// alone.
	sysctlBefore := bpfStatsSysctl(t)
	selfBefore := bpfStatsFDs(t, "self")

	cfg := createDefaultConfig().(*Config)
	cfg.Filter.PIDs = []int{os.Getpid()} // the receiver never captures itself: no traffic
	cfg.MapPressure.CollectionInterval = 100 * time.Millisecond
	cfg.Metrics.EbpfProgramRunCount.Enabled = true
	cfg.Metrics.EbpfProgramRunTime.Enabled = true
	sink := new(consumertest.MetricsSink)
	r, err := NewFactory().CreateMetrics(context.Background(), receivertest.NewNopSettings(metadata.Type), cfg, sink)
	require.NoError(t, err)
	require.NoError(t, r.Start(context.Background(), componenttest.NewNopHost()))
	// Shutdown is idempotent: this only matters when the test fails early.
	t.Cleanup(func() { _ = r.Shutdown(context.Background()) })
	require.Equal(t, selfBefore+1, bpfStatsFDs(t, "self"), "Start holds one BPF_ENABLE_STATS fd")

	point := func(name string) (pmetric.NumberDataPoint, bool) {
		dp, found, _ := newestPoint(sink, "ebpf.program.run.count", name, "ebpf.program.id", int64(id))
		return dp, found
	}
	require.Eventually(t, func() bool {
		_, found := point("ebpf.program.run.count")
		return found
	}, 10*time.Second, 20*time.Millisecond, "the test's program is reported")
	// Only this test runs the program, so its count moves only by the
	// runs below; a base is taken in case another holder had statistics
	// on before Start.
	base, _ := point("ebpf.program.run.count")
	baseTime, found := point("ebpf.program.run.time")
	require.True(t, found)
	const runs = 1000
	run(runs)
	require.Eventually(t, func() bool {
		dp, _ := point("ebpf.program.run.count")
		return dp.IntValue() >= base.IntValue()+runs
	}, 10*time.Second, 20*time.Millisecond, "the runs are counted")
	count, _ := point("ebpf.program.run.count")
	require.Equal(t, base.IntValue()+runs, count.IntValue())
	runTime, found := point("ebpf.program.run.time")
	require.True(t, found)
	require.Greater(t, runTime.IntValue(), baseTime.IntValue(), "the runs add to the run time (ns)")
	wantAttrs := map[string]any{"ebpf.program.id": int64(id), "ebpf.program.name": "rcv_test_prog", "ebpf.program.type": "socket_filter"}
	require.Equal(t, wantAttrs, count.Attributes().AsRaw())
	require.Equal(t, wantAttrs, runTime.Attributes().AsRaw())
	for _, name := range []string{"ebpf.program.run.count", "ebpf.program.run.time"} {
		m := findMetric(t, sink, name)
		require.Equal(t, pmetric.MetricTypeSum, m.Type(), name)
		require.True(t, m.Sum().IsMonotonic(), name)
		require.Equal(t, pmetric.AggregationTemporalityCumulative, m.Sum().AggregationTemporality(), name)
	}

	require.NoError(t, r.Shutdown(context.Background()))
	require.Equal(t, selfBefore, bpfStatsFDs(t, "self"), "Shutdown closes the BPF_ENABLE_STATS fd")
	require.Equal(t, sysctlBefore, bpfStatsSysctl(t), "kernel.bpf_stats_enabled is as before")
	// With no holder left anywhere on the host and the sysctl at 0, the
	// kernel stops counting. Other jobs on a shared machine may hold
	// statistics on; then the kernel rightly keeps counting.
	if bpfStatsFDs(t, "*") != 0 || bpfStatsSysctl(t) != "0" {
		t.Log("another process holds BPF statistics on: the check that counting stopped is left out")
		return
	}
	before, err := prog.Stats()
	require.NoError(t, err)
	run(100)
	after, err := prog.Stats()
	require.NoError(t, err)
	if bpfStatsFDs(t, "*") != 0 || bpfStatsSysctl(t) != "0" {
		t.Log("another process turned BPF statistics on during the check: left out")
		return
	}
	require.Equal(t, before.RunCount, after.RunCount, "no run is counted after Shutdown")
}

// findMetric returns metric name from the newest batch that has it.
func findMetric(t testing.TB, sink *consumertest.MetricsSink, name string) pmetric.Metric {
	t.Helper()
	m, ok := newestMetric(sink, name)
	if !ok {
		t.Fatalf("no batch holds %s", name)
	}
	return m
}
