//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ebpfotel/ebpfreceiver/internal/capture"
)

// collectorPrograms opens the capture programs that one collector process
// holds, found through the prog_id lines of its /proc/PID/fdinfo (other
// agents may run collectors with programs of the same names).
func collectorPrograms(pid int) (map[string]*ebpf.Program, error) {
	names, err := capture.ProgramNames()
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for n := range names {
		if len(n) > unix.BPF_OBJ_NAME_LEN-1 {
			n = n[:unix.BPF_OBJ_NAME_LEN-1]
		}
		want[n] = true
	}
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	seen := map[uint64]bool{}
	out := map[string]*ebpf.Program{}
	for _, e := range ents {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			v, ok := strings.CutPrefix(sc.Text(), "prog_id:")
			if !ok {
				continue
			}
			id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			if err != nil || seen[id] {
				continue
			}
			seen[id] = true
			p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
			if err != nil {
				continue
			}
			info, err := p.Info()
			if err != nil || !want[info.Name] {
				p.Close()
				continue
			}
			out[info.Name] = p
		}
		f.Close()
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no capture programs found in %s", dir)
	}
	return out, nil
}

type progSnap map[string][2]uint64 // name -> run_time_ns, run_cnt

func snapPrograms(progs map[string]*ebpf.Program) progSnap {
	s := progSnap{}
	for name, p := range progs {
		st, err := p.Stats()
		if err != nil {
			continue
		}
		s[name] = [2]uint64{uint64(st.Runtime.Nanoseconds()), st.RunCount}
	}
	return s
}

// ProgCost is one program's share of a measurement window.
type ProgCost struct {
	Name     string  `json:"name"`
	Runs     uint64  `json:"runs"`
	NsPerRun float64 `json:"ns_per_run"`
	// BackgroundRuns is how many of Runs the idle rate before the workload
	// predicts (other processes on the host: filtered-out path).
	BackgroundRuns float64 `json:"background_runs"`
}

// KernelWindow is one workload of a kernel-statistics session.
type KernelWindow struct {
	Workload string     `json:"workload"`
	Seconds  float64    `json:"seconds"`
	Programs []ProgCost `json:"programs"`
	Records  float64    `json:"records"`
	// Syscall programs only (sys_enter_*/sys_exit_*), as measured.
	AllRuns     uint64  `json:"all_runs"`
	AllNsPerRun float64 `json:"all_ns_per_run"`
	// The data programs (read/write families), with the background runs
	// (other processes at the idle rate measured before) removed.
	DataRuns     float64 `json:"data_runs"`
	DataNsPerRun float64 `json:"data_ns_per_run"`
	// Per captured record: all the data programs' time in the window
	// (enter and exit, reads that found nothing, other fds; background
	// removed) divided by the records captured: an upper bound of the
	// kernel cost per message.
	NsPerRecord float64 `json:"ns_per_record"`
}

// KernelPhase is one collector session with BPF statistics on.
type KernelPhase struct {
	Name        string          `json:"name"`
	Filter      string          `json:"filter"`
	Windows     []*KernelWindow `json:"windows"`
	StatsWereOn bool            `json:"stats_already_enabled"`
}

func isDataProg(name string) bool {
	for _, s := range []string{"read", "write", "recv", "send"} {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

// window computes one workload's program costs from the snapshots around
// it; bg is the idle snapshot pair and its duration.
func window(name string, a, b progSnap, dur time.Duration, bg0, bg1 progSnap, bgDur time.Duration, records float64) *KernelWindow {
	w := &KernelWindow{Workload: name, Seconds: dur.Seconds(), Records: records}
	scale := dur.Seconds() / bgDur.Seconds()
	var allT, allN, dataT, dataN float64
	for prog := range b {
		dt := float64(b[prog][0] - a[prog][0])
		dn := float64(b[prog][1] - a[prog][1])
		bgT := float64(bg1[prog][0]-bg0[prog][0]) * scale
		bgN := float64(bg1[prog][1]-bg0[prog][1]) * scale
		pc := ProgCost{Name: prog, Runs: uint64(dn), BackgroundRuns: bgN}
		if dn > 0 {
			pc.NsPerRun = dt / dn
		}
		w.Programs = append(w.Programs, pc)
		if strings.HasPrefix(prog, "enter_") || strings.HasPrefix(prog, "exit_") {
			allT += dt
			allN += dn
		}
		if isDataProg(prog) {
			dataT += max(dt-bgT, 0)
			dataN += max(dn-bgN, 0)
		}
	}
	sort.Slice(w.Programs, func(i, j int) bool { return w.Programs[i].Name < w.Programs[j].Name })
	w.AllRuns = uint64(allN)
	if allN > 0 {
		w.AllNsPerRun = allT / allN
	}
	w.DataRuns = dataN
	if dataN > 0 {
		w.DataNsPerRun = dataT / dataN
	}
	if records > 0 {
		w.NsPerRecord = dataT / records
	}
	return w
}

// kernelPhase runs one collector with the kernel's BPF run-time statistics
// on (BPF_ENABLE_STATS, only for this phase) and two workloads (PostgreSQL,
// then gRPC), and reads run_time_ns / run_cnt of each of the collector's
// programs around each of them.
func kernelPhase(ctx context.Context, e *env, name string, filter *cgroup, client *cgroup, seconds int) (*KernelPhase, error) {
	dir, err := os.MkdirTemp(e.tmp, "kstats-")
	if err != nil {
		return nil, err
	}
	c, err := startCollector(ctx, collectorOpts{Bin: e.collectorBin, Dir: dir, FilterCgroup: filter.Path, Sink: e.sink, Cgroup: e.collCg})
	if err != nil {
		return nil, err
	}
	defer c.stop()
	prev, _ := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	closer, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return nil, fmt.Errorf("enable BPF statistics: %w", err)
	}
	defer closer.Close()
	progs, err := collectorPrograms(c.Pid)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, p := range progs {
			p.Close()
		}
	}()
	ph := &KernelPhase{Name: name, Filter: filter.Path, StatsWereOn: strings.TrimSpace(string(prev)) == "1"}
	records := func() float64 {
		m, err := scrape(c.promURL)
		if err != nil {
			return 0
		}
		return m.sum("ebpf_capture_records_total")
	}
	bg0, tb0 := snapPrograms(progs), time.Now()
	if err := sleep(ctx, 2*time.Second); err != nil {
		return nil, err
	}
	bg1, tb1 := snapPrograms(progs), time.Now()
	loads := []struct {
		name string
		run  func() error
	}{
		{fmt.Sprintf("pgbench -S -M prepared -c 4 -j 2 -T %d", seconds), func() error {
			_, err := e.pg.runPgbench(ctx, pgbenchRun{Select: true, Seconds: seconds, Client: client})
			return err
		}},
		{fmt.Sprintf("ghz unary saturating -c %d --connections %d -z %ds", e.opts.grpcConc, e.opts.grpcConns, seconds), func() error {
			_, err := runGhz(ctx, e.ghzSat(seconds, client))
			return err
		}},
	}
	for _, l := range loads {
		r0 := records()
		a, ta := snapPrograms(progs), time.Now()
		if err := l.run(); err != nil {
			return nil, err
		}
		b, tb := snapPrograms(progs), time.Now()
		// The receiver emits its counters every second.
		if err := sleep(ctx, drainWait); err != nil {
			return nil, err
		}
		ph.Windows = append(ph.Windows, window(l.name, a, b, tb.Sub(ta), bg0, bg1, tb1.Sub(tb0), records()-r0))
	}
	return ph, nil
}

// KernelResult compares the filtered-out and the captured path.
type KernelResult struct {
	Filtered *KernelPhase `json:"filtered_out"`
	Captured *KernelPhase `json:"captured"`
}

// runKernelPhases measures the programs' cost per run, first with the
// collector filtering an empty cgroup (every socket syscall of the
// workload takes the filtered-out path: one hash lookup), then filtering
// the server cgroup with the load generators inside it too (both ends of
// every connection captured).
func runKernelPhases(ctx context.Context, e *env) error {
	logf("== kernel: BPF run-time statistics, filtered-out path")
	f, err := kernelPhase(ctx, e, "filtered_out", e.idleCg, e.clientCg, e.opts.kSeconds)
	if err != nil {
		return err
	}
	for _, w := range f.Windows {
		logf("filtered-out, %s: %d runs, %.1f ns/run (syscall programs)", w.Workload, w.AllRuns, w.AllNsPerRun)
	}
	logf("== kernel: BPF run-time statistics, captured path")
	c, err := kernelPhase(ctx, e, "captured", e.serverCg, e.serverCg, e.opts.kSeconds)
	if err != nil {
		return err
	}
	for _, w := range c.Windows {
		logf("captured, %s: data programs %.0f runs, %.1f ns/run; %.0f records, %.1f ns/record", w.Workload, w.DataRuns, w.DataNsPerRun, w.Records, w.NsPerRecord)
	}
	e.res.Kernel = &KernelResult{Filtered: f, Captured: c}
	return nil
}
