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
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
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
	if err := e.measureLoads(ctx, ph, progs, client, seconds, records); err != nil {
		return nil, err
	}
	return ph, nil
}

// measureLoads reads the statistics of progs over an idle interval (the
// background rate), then around each kernel workload, and appends one
// window per workload to ph. records, if not nil, reads the collector's
// count of captured records.
func (e *env) measureLoads(ctx context.Context, ph *KernelPhase, progs map[string]*ebpf.Program, client *cgroup, seconds int, records func() float64) error {
	bg0, tb0 := snapPrograms(progs), time.Now()
	if err := sleep(ctx, 2*time.Second); err != nil {
		return err
	}
	bg1, tb1 := snapPrograms(progs), time.Now()
	for _, l := range e.kernelLoads(client, seconds) {
		var r0, n float64
		if records != nil {
			r0 = records()
		}
		a, ta := snapPrograms(progs), time.Now()
		if err := l.run(ctx); err != nil {
			return err
		}
		b, tb := snapPrograms(progs), time.Now()
		if records != nil {
			// The receiver emits its counters every second.
			if err := sleep(ctx, drainWait); err != nil {
				return err
			}
			n = records() - r0
		}
		ph.Windows = append(ph.Windows, window(l.name, a, b, tb.Sub(ta), bg0, bg1, tb1.Sub(tb0), n))
	}
	return nil
}

// KernelResult compares the filtered-out and the captured path, and the
// floor: an empty program on the same tracepoints under the same loads.
type KernelResult struct {
	Filtered *KernelPhase `json:"filtered_out"`
	Captured *KernelPhase `json:"captured"`
	Floor    *KernelPhase `json:"floor,omitempty"`
}

// dataSyscalls are the syscalls whose enter and exit tracepoints carry the
// capture programs (bpf/capture.bpf.c DATA_SYSCALL).
var dataSyscalls = []string{"read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg"}

// floorPhase measures what any program costs on the capture's tracepoints:
// an empty tracepoint program (r0 = 0; exit) on the enter and exit of every
// data syscall, no collector, the same two workloads, statistics on. Its
// ns/run is the part of the capture programs' figures that is not theirs:
// the statistics' own clock reads and the dispatch of a tracepoint program
// (on this VM, reading the clock is not free).
func floorPhase(ctx context.Context, e *env, client *cgroup, seconds int) (*KernelPhase, error) {
	closer, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return nil, fmt.Errorf("enable BPF statistics: %w", err)
	}
	defer closer.Close()
	progs := map[string]*ebpf.Program{}
	var links []link.Link
	defer func() {
		for _, l := range links {
			l.Close()
		}
		for _, p := range progs {
			p.Close()
		}
	}()
	for _, sc := range dataSyscalls {
		for _, dir := range []string{"enter", "exit"} {
			p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
				Name: dir + "_" + sc, Type: ebpf.TracePoint, License: "GPL",
				Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
			})
			if err != nil {
				return nil, fmt.Errorf("load empty program: %w", err)
			}
			progs[dir+"_"+sc] = p
			l, err := link.Tracepoint("syscalls", "sys_"+dir+"_"+sc, p, nil)
			if err != nil {
				return nil, fmt.Errorf("attach empty program to sys_%s_%s: %w", dir, sc, err)
			}
			links = append(links, l)
		}
	}
	ph := &KernelPhase{Name: "floor", Filter: "none (empty programs)"}
	if err := e.measureLoads(ctx, ph, progs, client, seconds, nil); err != nil {
		return nil, err
	}
	return ph, nil
}

// kernelLoad is one workload of the kernel-statistics phases.
type kernelLoad struct {
	name string
	run  func(context.Context) error
}

// kernelLoads are the workloads of the kernel phases: PostgreSQL, then gRPC,
// with the load generators in client.
func (e *env) kernelLoads(client *cgroup, seconds int) []kernelLoad {
	return []kernelLoad{
		{fmt.Sprintf("pgbench -S -M prepared -c 4 -j 2 -T %d", seconds), func(ctx context.Context) error {
			_, err := e.pg.runPgbench(ctx, pgbenchRun{Select: true, Seconds: seconds, Client: client})
			return err
		}},
		{fmt.Sprintf("ghz unary saturating -c %d --connections %d -z %ds", e.opts.grpcConc, e.opts.grpcConns, seconds), func(ctx context.Context) error {
			_, err := runGhz(ctx, e.ghzSat(seconds, client))
			return err
		}},
	}
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
	logf("== kernel: BPF run-time statistics, floor (empty programs on the same tracepoints, no collector)")
	fl, err := floorPhase(ctx, e, e.serverCg, e.opts.kSeconds)
	if err != nil {
		return err
	}
	for _, w := range fl.Windows {
		logf("floor, %s: %d runs, %.1f ns/run", w.Workload, w.AllRuns, w.AllNsPerRun)
	}
	e.res.Kernel = &KernelResult{Filtered: f, Captured: c, Floor: fl}
	return nil
}
