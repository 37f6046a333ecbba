//go:build linux

package receiver

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/receiver/receivertest"
	"go.uber.org/goleak"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// lifecycleCycles is how many times the receiver is started and stopped
// (EBPF_LIFECYCLE_CYCLES overrides it).
const lifecycleCycles = 50

// bpfFDs lists this process's eBPF file descriptors by kind (bpf-prog,
// bpf-map, bpf_link, ...) with the kernel ids their fdinfo names.
type bpfFDs struct {
	all  int            // every fd of the process
	kind map[string]int // anon_inode kind -> fds
	maps map[ebpf.MapID]bool
}

func heldFDs(t *testing.T) bpfFDs {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	h := bpfFDs{all: len(ents), kind: map[string]int{}, maps: map[ebpf.MapID]bool{}}
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue
		}
		kind, ok := strings.CutPrefix(target, "anon_inode:")
		if !ok || !strings.HasPrefix(kind, "bpf") {
			continue
		}
		h.kind[kind]++
		if kind != "bpf-map" {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "map_id:"); ok {
				if id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
					h.maps[ebpf.MapID(id)] = true
				}
			}
		}
	}
	return h
}

// captureMapNames are the kernel names of the maps the receiver loads
// (the kernel keeps 15 bytes of a name).
var captureMapNames = []string{"sockets", "events", "task_ctxs", "proc_bits", "tracked_procs", "cap_states", "scratch", "counters",
	"filter_pids", "filter_ports", "filter_comms", "filter_cgroups"}

// TestLifecycleStartStopRepeatedly starts and stops the receiver 50 times
// in one process, traces and metrics (map pressure on), filtered to this
// process (which the receiver never captures). Nothing may accumulate:
// file descriptors, programs, links, maps, goroutines.
func TestLifecycleStartStopRepeatedly(t *testing.T) {
	privileged.Require(t)
	cycles := lifecycleCycles
	if n, err := strconv.Atoi(os.Getenv("EBPF_LIFECYCLE_CYCLES")); err == nil && n > 0 {
		cycles = n
	}
	cfg := createDefaultConfig().(*Config)
	cfg.Filter.PIDs = []int{os.Getpid()}
	cfg.MapPressure.CollectionInterval = 100 * time.Millisecond
	// Self metrics keep their default interval (10 s, longer than a
	// cycle): TestLifecycleShutdownWhileReportingSelfMetrics stops the
	// receiver while they are reported.
	cfg.Limits.RingBufferPollInterval = time.Millisecond
	f := NewFactory()
	ctx := context.Background()
	host := componenttest.NewNopHost()

	var lastMaps map[ebpf.MapID]bool
	var lastProgs []ebpf.ProgramID
	cycle := func(i int) {
		set := receivertest.NewNopSettings(metadata.Type)
		metrics := new(consumertest.MetricsSink)
		tr, err := f.CreateTraces(ctx, set, cfg, consumertest.NewNop())
		require.NoError(t, err)
		mr, err := f.CreateMetrics(ctx, set, cfg, metrics)
		require.NoError(t, err)
		require.NoError(t, tr.Start(ctx, host), "cycle %d", i)
		require.NoError(t, mr.Start(ctx, host), "cycle %d", i)
		// Let the goroutines work: the reader polls, the metrics loop
		// samples the maps.
		require.Eventually(t, func() bool {
			_, maps := robMetric(metrics, "ebpf.map.max_entries", nil)
			return maps
		}, 10*time.Second, 10*time.Millisecond, "cycle %d: the receiver runs", i)
		held := heldFDs(t)
		lastMaps = held.maps
		lastProgs = privileged.ProgramsHeldBySelf(t)
		require.NoError(t, tr.Shutdown(ctx), "cycle %d", i)
		require.NoError(t, mr.Shutdown(ctx), "cycle %d", i)
	}

	// A first cycle outside the count: the runtime opens what it keeps for
	// the life of the process (the netpoller's epoll fd).
	cycle(0)
	names := map[string]bool{}
	for id := range lastMaps {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue
		}
		if info, err := m.Info(); err == nil {
			names[info.Name] = true
		}
		m.Close()
	}
	for _, n := range captureMapNames {
		require.True(t, names[n], "while running the receiver holds its map %q (held: %v)", n, names)
	}
	time.Sleep(100 * time.Millisecond)
	before := heldFDs(t)
	require.Empty(t, before.kind, "no eBPF object held between cycles")
	ignore := goleak.IgnoreCurrent()

	start := time.Now()
	for i := 1; i <= cycles; i++ {
		cycle(i)
	}
	elapsed := time.Since(start)

	after := heldFDs(t)
	t.Logf("%d start/stop cycles in %.1f s; fds %d before, %d after; last cycle held %d maps and %d programs",
		cycles, elapsed.Seconds(), before.all, after.all, len(lastMaps), len(lastProgs))
	require.Equal(t, before.all, after.all, "file descriptors")
	require.Empty(t, after.kind, "no program, map or link fd left")
	require.Empty(t, privileged.ProgramsHeldBySelf(t))
	// The kernel frees an object once nothing refers to it: the last
	// cycle's programs and maps are gone from the kernel, not only from
	// this process's fd table (no link, pin or other holder kept them).
	privileged.RequireUnloaded(t, lastProgs)
	deadline := time.Now().Add(5 * time.Second)
	for id := range lastMaps {
		for {
			m, err := ebpf.NewMapFromID(id)
			if err != nil {
				require.True(t, errors.Is(err, os.ErrNotExist), "look up map %d: %v", id, err)
				break
			}
			m.Close()
			require.True(t, time.Now().Before(deadline), "map %d is still in the kernel", id)
			time.Sleep(20 * time.Millisecond)
		}
	}
	goleak.VerifyNone(t, ignore, goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"))
}

// TestLifecycleShutdownWhileReportingSelfMetrics stops the receiver while
// its metrics loop reports the capture's counters. emitSelfMetrics reads
// the capture's counter map and ring buffer (RingBufferUsed): Shutdown
// (engine.shutdown in receiver_linux.go) must wait for the metrics loop
// before it closes them. When it did not, a Shutdown that came while the
// loop was between Counters() and RingBufferUsed() killed the process (a
// nil pointer, or SIGSEGV on the unmapped ring, in
// ringbuf.(*Reader).AvailableBytes). At the smallest interval the config
// allows (100 ms) that happened about once in a hundred cycles; here the
// loop reports every millisecond, so it is inside emitSelfMetrics at almost
// every Shutdown: without the wait the process died at cycle 1, 1 and 9 of
// three runs.
func TestLifecycleShutdownWhileReportingSelfMetrics(t *testing.T) {
	privileged.Require(t)
	const cycles = 40 // about 1.6 s each, most of it detaching the tracepoints
	cfg := createDefaultConfig().(*Config)
	cfg.Filter.PIDs = []int{os.Getpid()}
	cfg.MapPressure.Enabled = false
	// Below the 100 ms that Config.Validate accepts: this config never
	// goes through it, and the loop is meant to be busy.
	cfg.SelfMetricsInterval = time.Millisecond
	f := NewFactory()
	ctx := context.Background()
	host := componenttest.NewNopHost()
	for i := 0; i < cycles; i++ {
		set := receivertest.NewNopSettings(metadata.Type)
		metrics := new(consumertest.MetricsSink)
		tr, err := f.CreateTraces(ctx, set, cfg, consumertest.NewNop())
		require.NoError(t, err)
		mr, err := f.CreateMetrics(ctx, set, cfg, metrics)
		require.NoError(t, err)
		require.NoError(t, tr.Start(ctx, host))
		require.NoError(t, mr.Start(ctx, host))
		require.Eventually(t, func() bool {
			_, self := robMetric(metrics, "ebpf.capture.records", nil)
			return self
		}, 10*time.Second, time.Millisecond)
		// Stop at a different point of the 1 ms reporting period each time.
		time.Sleep(time.Duration(i%10) * 100 * time.Microsecond)
		require.NoError(t, tr.Shutdown(ctx))
		require.NoError(t, mr.Shutdown(ctx))
	}
	t.Logf("%d cycles stopped while self metrics were reported, no crash", cycles)
}
