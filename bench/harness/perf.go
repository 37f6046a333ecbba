//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// PerfResult is a system-wide cpu-clock profile of a captured workload.
type PerfResult struct {
	Name     string         `json:"name"`
	Command  string         `json:"command"`
	Workload string         `json:"workload"`
	Samples  int64          `json:"samples"`
	ByComm   []ProfileEntry `json:"by_comm"`
	// Kernel and BPF symbols in the processes under test (postgres,
	// pgbench), and the collector's own symbols.
	Traced      []ProfileEntry `json:"traced_processes_top"`
	Collector   []ProfileEntry `json:"collector_top"`
	BPFShare    float64        `json:"bpf_pct_of_traced"`
	TracePct    float64        `json:"tracepoint_plumbing_pct_of_traced"`
	TracedComms []string       `json:"traced_comms"`
	// Records captured during the profile, and the CPU time per record
	// that the samples put in BPF code and in the syscall-tracepoint
	// plumbing (samples x 1/frequency / records).
	Records          float64 `json:"records"`
	BPFNsPerRecord   float64 `json:"bpf_ns_per_record"`
	TraceNsPerRecord float64 `json:"tracepoint_ns_per_record"`

	bpfPct, tracePct float64 // of all samples
}

// perfFreq is the sampling frequency of perf record (per CPU).
const perfFreq = 499

// bpfSymbol says whether a kernel symbol is BPF code: JITed programs,
// helpers, and the map and copy routines they call.
func bpfSymbol(sym string) bool {
	sym = strings.TrimPrefix(strings.TrimPrefix(sym, "[k] "), "[.] ")
	for _, p := range []string{"bpf_", "__bpf_", "htab_", "__htab_", "lookup_nulls_elem_raw", "copy_from_user_nofault", "pcpu_freelist"} {
		if strings.HasPrefix(sym, p) {
			return true
		}
	}
	return false
}

// traceSymbol says whether a kernel symbol is the syscall-tracepoint path
// that attaching the programs turns on (slow syscall entry and exit, the
// perf/BPF tracepoint glue).
func traceSymbol(sym string) bool {
	sym = strings.TrimPrefix(sym, "[k] ")
	for _, p := range []string{"perf_syscall_", "trace_call_bpf", "syscall_trace_enter", "syscall_exit_work", "perf_trace_", "rcu_read_unlock_trace", "rcu_read_lock_trace", "__traceiter_", "perf_call_bpf"} {
		if strings.HasPrefix(sym, p) {
			return true
		}
	}
	return false
}

// runPerf records system-wide cpu-clock profiles (perf record -a -g) while
// the collector captures a workload whose both ends run in the server
// cgroup: pgbench -S against PostgreSQL, then ghz against the gRPC server.
func runPerf(ctx context.Context, e *env) error {
	perf, err := exec.LookPath("perf")
	if err != nil {
		logf("perf not installed: no system-wide profile")
		return nil
	}
	dir, err := os.MkdirTemp(e.tmp, "perf-")
	if err != nil {
		return err
	}
	c, err := startCollector(ctx, collectorOpts{Bin: e.collectorBin, Dir: dir, FilterCgroup: e.serverCg.Path, Sink: e.sink, Cgroup: e.collCg})
	if err != nil {
		return err
	}
	defer c.stop()
	if err := sleep(ctx, time.Second); err != nil {
		return err
	}
	secs := e.opts.kSeconds
	loads := []struct {
		name, desc string
		traced     []string // comm names of the processes under test
		run        func() error
	}{
		{"postgres", fmt.Sprintf("pgbench -S -M prepared -c 4 -j 2 -T %d, pgbench and PostgreSQL in the server cgroup (both ends captured)", secs),
			[]string{"postgres", "pgbench"}, func() error {
				_, err := e.pg.runPgbench(ctx, pgbenchRun{Select: true, Seconds: secs, Client: e.serverCg})
				return err
			}},
		{"grpc", fmt.Sprintf("ghz unary -c %d --connections %d -z %ds, ghz and the gRPC server in the server cgroup (both ends captured)", e.opts.grpcConc, e.opts.grpcConns, secs),
			[]string{"ghz", "harness"}, func() error {
				_, err := runGhz(ctx, e.ghzSat(secs, e.serverCg))
				return err
			}},
	}
	for _, l := range loads {
		logf("== perf: system-wide profile, %s", l.desc)
		data := filepath.Join(dir, l.name+".perf.data")
		args := []string{"record", "-a", "-g", "-e", "cpu-clock", "-F", strconv.Itoa(perfFreq), "-o", data, "--", "sleep", strconv.Itoa(secs)}
		rec := exec.CommandContext(ctx, perf, args...)
		out := &strings.Builder{}
		rec.Stdout, rec.Stderr = out, out
		records := func() float64 {
			m, err := scrape(c.promURL)
			if err != nil {
				return 0
			}
			return m.sum("ebpf_capture_records_total")
		}
		r0 := records()
		if err := rec.Start(); err != nil {
			return err
		}
		if err := l.run(); err != nil {
			_ = rec.Process.Kill()
			_ = rec.Wait()
			return err
		}
		if err := rec.Wait(); err != nil {
			logf("perf record: %v\n%s", err, out.String())
			return nil
		}
		res, err := perfReport(ctx, perf, data, l.traced)
		if err != nil {
			logf("perf report: %v", err)
			return nil
		}
		res.Name, res.Command, res.Workload = l.name, "perf "+strings.Join(args, " "), l.desc
		if err := sleep(ctx, drainWait); err != nil {
			return err
		}
		res.Records = records() - r0
		if res.Records > 0 && res.Samples > 0 {
			perSample := 1e9 / perfFreq
			res.BPFNsPerRecord = res.bpfPct / 100 * float64(res.Samples) * perSample / res.Records
			res.TraceNsPerRecord = res.tracePct / 100 * float64(res.Samples) * perSample / res.Records
		}
		e.res.Perf = append(e.res.Perf, res)
	}
	return nil
}

func perfReport(ctx context.Context, perf, data string, tracedComms []string) (*PerfResult, error) {
	res := &PerfResult{}
	rep, err := exec.CommandContext(ctx, perf, "report", "-i", data, "--no-children", "--stdio", "--sort", "comm,dso,sym",
		"--percent-limit", "0.05", "-g", "none").Output()
	if err != nil {
		return nil, err
	}
	type row struct {
		pct            float64
		comm, dso, sym string
	}
	var rows []row
	sc := bufio.NewScanner(strings.NewReader(string(rep)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "# Samples: "); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				mult := int64(1)
				n := f[0]
				if strings.HasSuffix(n, "K") {
					mult, n = 1000, strings.TrimSuffix(n, "K")
				}
				v, _ := strconv.ParseFloat(n, 64)
				res.Samples = int64(v * float64(mult))
			}
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasSuffix(f[0], "%") {
			continue
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "%"), 64)
		if err != nil {
			continue
		}
		// "12.3%  comm  dso  [k] symbol..."
		sym := strings.Join(f[3:], " ")
		rows = append(rows, row{pct: pct, comm: f[1], dso: f[2], sym: sym})
	}
	traced := map[string]bool{}
	for _, c := range tracedComms {
		traced[c] = true
	}
	byComm := map[string]float64{}
	tr := map[string]float64{}
	coll := map[string]float64{}
	var tracedTotal, bpf, trace float64
	for _, r := range rows {
		byComm[r.comm] += r.pct
		switch {
		case traced[r.comm]:
			tr[r.sym] += r.pct
			tracedTotal += r.pct
			if bpfSymbol(r.sym) {
				bpf += r.pct
			}
			if traceSymbol(r.sym) {
				trace += r.pct
			}
		case strings.HasPrefix(r.comm, "otelcol"):
			coll[r.sym] += r.pct
		}
	}
	top := func(m map[string]float64, n int) []ProfileEntry {
		var out []ProfileEntry
		for k, v := range m {
			out = append(out, ProfileEntry{Name: k, FlatPct: v})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].FlatPct > out[j].FlatPct })
		if len(out) > n {
			out = out[:n]
		}
		return out
	}
	res.ByComm = top(byComm, 12)
	res.Traced = top(tr, 30)
	res.Collector = top(coll, 15)
	if tracedTotal > 0 {
		res.BPFShare = 100 * bpf / tracedTotal
		res.TracePct = 100 * trace / tracedTotal
	}
	res.bpfPct, res.tracePct = bpf, trace
	res.TracedComms = tracedComms
	return res, nil
}
