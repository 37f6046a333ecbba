//go:build linux

package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
)

// Summary is min / median / max over the pairs of a session.
type Summary struct {
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

func summarize(v []float64) Summary {
	var s Summary
	var clean []float64
	for _, x := range v {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			clean = append(clean, x)
		}
	}
	if len(clean) == 0 {
		return s
	}
	sort.Float64s(clean)
	return Summary{Min: clean[0], Median: median(clean), Max: clean[len(clean)-1], N: len(clean)}
}

// WorkloadResult is one workload's runs and what they say.
type WorkloadResult struct {
	Name  string `json:"name"`
	Title string `json:"title"`
	Unit  string `json:"unit"`
	Rate  bool   `json:"fixed_rate"`
	Runs  []*Run `json:"runs"`

	ThroughputA     Summary `json:"throughput_a"`
	ThroughputB     Summary `json:"throughput_b"`
	ThroughputRatio Summary `json:"throughput_ratio"` // B/A per pair
	LatAvgA         Summary `json:"lat_avg_us_a"`
	LatAvgB         Summary `json:"lat_avg_us_b"`
	LatAvgAddedUs   Summary `json:"lat_avg_added_us"` // B-A per pair
	LatP99A         Summary `json:"lat_p99_us_a"`
	LatP99B         Summary `json:"lat_p99_us_b"`
	LatP99Ratio     Summary `json:"lat_p99_ratio"`
	// CPU per request (all of server, load generator and collector) and
	// the extra per captured record: ((cpu/requests)_B - (cpu/requests)_A)
	// / (records/requests)_B, per pair.
	CPUPerReqUsA         Summary `json:"cpu_per_request_us_a"`
	CPUPerReqUsB         Summary `json:"cpu_per_request_us_b"`
	ExtraNsPerRecord     Summary `json:"extra_cpu_ns_per_record"`
	CollectorNsPerRecord Summary `json:"collector_cpu_ns_per_record"`
	InProcessNsPerRecord Summary `json:"in_process_extra_ns_per_record"`
	RecordsPerRequest    Summary `json:"records_per_request"`
	SpansPerRequest      Summary `json:"spans_per_request"`
	OtherHostLoadCores   Summary `json:"other_host_load_cores"`
	PeakHWMMB            float64 `json:"peak_vm_hwm_mb"`
	StalledSecondsA      int     `json:"stalled_seconds_a"`
	// Fixed-rate runs that did not reach 95 % of the target rate.
	BelowRateA      int                `json:"below_rate_runs_a"`
	BelowRateB      int                `json:"below_rate_runs_b"`
	StalledSecondsB int                `json:"stalled_seconds_b"`
	Drops           map[string]float64 `json:"drops_total"`
	LostBytes       map[string]float64 `json:"lost_bytes_total"`
}

// Target is one goal of the brief and whether this session met it.
type Target struct {
	ID     string `json:"id"`
	What   string `json:"what"`
	Goal   string `json:"goal"`
	Value  string `json:"value"`
	Met    *bool  `json:"met"`
	Detail string `json:"detail,omitempty"`
}

// Machine describes where the numbers come from.
type Machine struct {
	Summary   string `json:"summary"`
	CPU       string `json:"cpu"`
	Cores     int    `json:"cores"`
	MemoryMB  int64  `json:"memory_mb"`
	Kernel    string `json:"kernel"`
	OS        string `json:"os"`
	Virtual   bool   `json:"virtual"`
	Go        string `json:"go"`
	Postgres  string `json:"postgres"`
	Ghz       string `json:"ghz"`
	Collector string `json:"collector"`
	LoadStart string `json:"load_avg_start"`
}

// Results is everything one session measured.
type Results struct {
	Started     time.Time          `json:"started"`
	Finished    time.Time          `json:"finished"`
	ElapsedSec  float64            `json:"elapsed_s"`
	Machine     Machine            `json:"machine"`
	Options     map[string]any     `json:"options"`
	Commands    map[string]string  `json:"commands"`
	Collector   string             `json:"collector_config"`
	Workloads   []*WorkloadResult  `json:"workloads"`
	Sessions    []Session          `json:"collector_sessions"`
	Kernel      *KernelResult      `json:"kernel,omitempty"`
	Perf        []*PerfResult      `json:"perf,omitempty"`
	GoBench     *GoBenchResult     `json:"go_benchmarks,omitempty"`
	Targets     []Target           `json:"targets"`
	Warnings    []string           `json:"warnings,omitempty"`
	LoadAvgEnd  string             `json:"load_avg_end"`
	calibration map[string]float64 `json:"-"`
	byName      map[string]*WorkloadResult
}

func newResults(o *options) *Results {
	return &Results{
		Started: time.Now().UTC(),
		Options: map[string]any{
			"pairs": o.pairs, "sat_seconds": o.satSeconds, "rate_seconds": o.rateSeconds, "grpc_seconds": o.grpcSeconds,
			"kernel_seconds": o.kSeconds, "grpc_concurrency": o.grpcConc, "grpc_connections": o.grpcConns,
			"pg_scale": o.pgScale, "rate_fraction": o.rateFraction, "sink": o.sink, "phases": o.phases, "nice": niceness,
		},
		Commands:    map[string]string{},
		calibration: map[string]float64{},
		byName:      map[string]*WorkloadResult{},
	}
}

// Session is one collector run (the B block of a pair).
type Session struct {
	Pair     int     `json:"pair"`
	StartSec float64 `json:"start_s"`
	// SettleSec, SettleCPU: after ready, until the collector went idle,
	// and its CPU seconds meanwhile (start-up work).
	SettleSec float64 `json:"settle_s"`
	SettleCPU float64 `json:"settle_cpu_s"`
	StopSec   float64 `json:"stop_s"`
	VmHWMKB   int64   `json:"vm_hwm_kb"`
}

// Commands are recorded as they first run.
var (
	cmdMu   sync.Mutex
	cmdSeen = map[string]string{}
)

func recordCommand(kind string, args []string) {
	cmdMu.Lock()
	defer cmdMu.Unlock()
	if _, ok := cmdSeen[kind]; !ok {
		quoted := make([]string, len(args))
		for i, a := range args {
			quoted[i] = shellQuote(a)
		}
		cmdSeen[kind] = strings.Join(quoted, " ")
	}
}

// shellQuote quotes an argument for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_/.:=,+-@%^") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (r *Results) addWorkload(w *workload) {
	wr := &WorkloadResult{Name: w.Name, Title: w.Title, Unit: w.Unit, Rate: w.Rate}
	r.Workloads = append(r.Workloads, wr)
	r.byName[w.Name] = wr
}

func (r *Results) addRun(run *Run) {
	r.byName[run.Workload].Runs = append(r.byName[run.Workload].Runs, run)
}

func (r *Results) medianA(name string) float64 {
	wr := r.byName[name]
	if wr == nil {
		return 0
	}
	var v []float64
	for _, run := range wr.Runs {
		if run.Mode == "A" {
			v = append(v, run.Throughput)
		}
	}
	return median(v)
}

// pairs returns the complete A/B pairs of a workload.
func (w *WorkloadResult) pairs() [][2]*Run {
	byPair := map[int]*[2]*Run{}
	var order []int
	for _, run := range w.Runs {
		p := byPair[run.Pair]
		if p == nil {
			p = &[2]*Run{}
			byPair[run.Pair] = p
			order = append(order, run.Pair)
		}
		if run.Mode == "A" {
			p[0] = run
		} else {
			p[1] = run
		}
	}
	var out [][2]*Run
	for _, i := range order {
		if p := byPair[i]; p[0] != nil && p[1] != nil {
			out = append(out, *p)
		}
	}
	return out
}

func (w *WorkloadResult) compute() {
	var tA, tB, tR, lA, lB, lD, pA, pB, pR, cA, cB, extra, coll, inproc, rpr, spr, other []float64
	w.Drops, w.LostBytes = map[string]float64{}, map[string]float64{}
	for _, p := range w.pairs() {
		a, b := p[0], p[1]
		tA, tB = append(tA, a.Throughput), append(tB, b.Throughput)
		tR = append(tR, b.Throughput/a.Throughput)
		if w.Rate {
			lA, lB = append(lA, a.LatAvgUs), append(lB, b.LatAvgUs)
			lD = append(lD, b.LatAvgUs-a.LatAvgUs)
			pA, pB = append(pA, a.LatP99Us), append(pB, b.LatP99Us)
			pR = append(pR, b.LatP99Us/a.LatP99Us)
		}
		if a.Count > 0 && b.Count > 0 {
			perA := (a.ServerCPU + a.ClientCPU) / float64(a.Count)
			perB := (b.ServerCPU + b.ClientCPU + b.CollectorCPU) / float64(b.Count)
			cA, cB = append(cA, perA*1e6), append(cB, perB*1e6)
			if b.Records > 0 {
				recPerReq := b.Records / float64(b.Count)
				rpr = append(rpr, recPerReq)
				spr = append(spr, b.Spans/float64(b.Count))
				extra = append(extra, (perB-perA)/recPerReq*1e9)
				coll = append(coll, b.CollectorCPU/b.Records*1e9)
				inprocB := (b.ServerCPU + b.ClientCPU) / float64(b.Count)
				inproc = append(inproc, (inprocB-perA)/recPerReq*1e9)
			}
		}
		for _, run := range p {
			ours := run.ServerCPU + run.ClientCPU + run.CollectorCPU
			if run.Seconds > 0 {
				other = append(other, (run.HostBusyCPU-ours)/run.Seconds)
			}
		}
		w.PeakHWMMB = math.Max(w.PeakHWMMB, float64(b.VmHWMKB)/1024)
		w.StalledSecondsA += a.Stalls
		w.StalledSecondsB += b.Stalls
		if w.Rate && a.Throughput < 0.95*a.Target {
			w.BelowRateA++
		}
		if w.Rate && b.Throughput < 0.95*b.Target {
			w.BelowRateB++
		}
		for k, v := range b.Drops {
			w.Drops[k] += v
		}
		for k, v := range b.LostBytes {
			w.LostBytes[k] += v
		}
	}
	w.ThroughputA, w.ThroughputB, w.ThroughputRatio = summarize(tA), summarize(tB), summarize(tR)
	w.LatAvgA, w.LatAvgB, w.LatAvgAddedUs = summarize(lA), summarize(lB), summarize(lD)
	w.LatP99A, w.LatP99B, w.LatP99Ratio = summarize(pA), summarize(pB), summarize(pR)
	w.CPUPerReqUsA, w.CPUPerReqUsB = summarize(cA), summarize(cB)
	w.ExtraNsPerRecord, w.CollectorNsPerRecord, w.InProcessNsPerRecord = summarize(extra), summarize(coll), summarize(inproc)
	w.RecordsPerRequest, w.SpansPerRequest = summarize(rpr), summarize(spr)
	w.OtherHostLoadCores = summarize(other)
}

// lossReasons are the drop reasons that lose data; capture_cap is the
// configured truncation of large syscalls (head and tail are kept).
var lossReasons = map[string]bool{
	"ringbuf_full": true, "conn_event_ringbuf_full": true, "socket_table_full": true, "inflight_table_full": true,
	"out_of_order": true, "decode_error": true, "parser_panic": true, "export_queue_full": true,
}

func boolp(b bool) *bool { return &b }

func fmtS(s Summary, format string) string {
	if s.N == 0 {
		return "n/a"
	}
	return fmt.Sprintf(format+" ["+format+" – "+format+"]", s.Median, s.Min, s.Max)
}

func (r *Results) evaluate() {
	cmdMu.Lock()
	for k, v := range cmdSeen {
		r.Commands[k] = v
	}
	cmdMu.Unlock()
	if c := lastCollectorConfig.Load(); c != nil {
		r.Collector = *c
	}
	for _, w := range r.Workloads {
		w.compute()
	}
	r.Targets = nil
	add := func(t Target) { r.Targets = append(r.Targets, t) }
	ratio := func(id, name, what string, goal float64) {
		w := r.byName[name]
		if w == nil || w.ThroughputRatio.N == 0 {
			return
		}
		add(Target{ID: id, What: what, Goal: fmt.Sprintf("≥ %.2f", goal), Value: fmtS(w.ThroughputRatio, "%.3f"),
			Met: boolp(w.ThroughputRatio.Median >= goal), Detail: fmt.Sprintf("%s A %s, B %s", w.Unit, fmtS(w.ThroughputA, "%.0f"), fmtS(w.ThroughputB, "%.0f"))})
	}
	ratio("1a", "pg-select", "PostgreSQL select-only, saturating: TPS B/A", 0.95)
	ratio("1b", "pg-tpcb", "PostgreSQL TPC-B-like, saturating: TPS B/A", 0.97)
	if w := r.byName["pg-rate"]; w != nil && w.LatAvgAddedUs.N > 0 {
		add(Target{ID: "2a", What: "PostgreSQL -S at a fixed rate: added average latency per query", Goal: "≤ 10 µs",
			Value: fmtS(w.LatAvgAddedUs, "%.1f µs"), Met: boolp(w.LatAvgAddedUs.Median <= 10),
			Detail: fmt.Sprintf("avg A %s, B %s", fmtS(w.LatAvgA, "%.1f"), fmtS(w.LatAvgB, "%.1f"))})
		add(Target{ID: "2b", What: "PostgreSQL -S at a fixed rate: p99 latency B/A", Goal: "(reported)",
			Value: fmtS(w.LatP99Ratio, "%.3f"), Detail: fmt.Sprintf("p99 A %s µs, B %s µs", fmtS(w.LatP99A, "%.0f"), fmtS(w.LatP99B, "%.0f"))})
	}
	ratio("3a", "grpc-sat", "gRPC unary, saturating: RPS B/A", 0.95)
	if w := r.byName["grpc-rate"]; w != nil && w.LatP99Ratio.N > 0 {
		add(Target{ID: "3b", What: "gRPC unary at a fixed rate: p99 latency B/A", Goal: "≤ 1.03",
			Value: fmtS(w.LatP99Ratio, "%.3f"), Met: boolp(w.LatP99Ratio.Median <= 1.03),
			Detail: fmt.Sprintf("p99 A %s µs, B %s µs; added avg %s µs", fmtS(w.LatP99A, "%.0f"), fmtS(w.LatP99B, "%.0f"), fmtS(w.LatAvgAddedUs, "%.1f"))})
	}
	if k := r.Kernel; k != nil && k.Filtered != nil && k.Captured != nil {
		// floor names the empty program's ns/run under the same workload.
		floor := func(i int) string {
			if k.Floor == nil || i >= len(k.Floor.Windows) {
				return ""
			}
			return fmt.Sprintf("; an empty program on the same tracepoints: %.0f ns/run", k.Floor.Windows[i].AllNsPerRun)
		}
		for i, w := range k.Captured.Windows {
			proto := "PostgreSQL"
			if i == 1 {
				proto = "gRPC"
			}
			add(Target{ID: "4a", What: "Kernel: ns per program run, captured path, " + proto + " (read/write-family programs, both ends captured)", Goal: "≤ 250 ns",
				Value: fmt.Sprintf("%.0f ns", w.DataNsPerRun), Met: boolp(w.DataNsPerRun <= 250),
				Detail: fmt.Sprintf("%.0f runs; %.0f ns of program time per captured record (enter + exit + non-capturing runs)%s", w.DataRuns, w.NsPerRecord, floor(i))})
		}
		for i, w := range k.Filtered.Windows {
			proto := "PostgreSQL"
			if i == 1 {
				proto = "gRPC"
			}
			add(Target{ID: "4b", What: "Kernel: ns per program run, filtered-out path, " + proto + " (all syscall programs)", Goal: "≤ 90 ns",
				Value: fmt.Sprintf("%.0f ns", w.AllNsPerRun), Met: boolp(w.AllNsPerRun <= 90),
				Detail: fmt.Sprintf("%d runs%s", w.AllRuns, floor(i))})
		}
	}
	if w := r.byName["pg-rate"]; w != nil && w.ExtraNsPerRecord.N > 0 {
		add(Target{ID: "5", What: "Whole extra CPU per captured message (PostgreSQL at a fixed rate; collector + server + client)", Goal: "≤ 1 µs",
			Value: fmtS(w.ExtraNsPerRecord, "%.0f ns"), Met: boolp(w.ExtraNsPerRecord.Median <= 1000),
			Detail: fmt.Sprintf("collector alone %s ns/record; %s records per query", fmtS(w.CollectorNsPerRecord, "%.0f"), fmtS(w.RecordsPerRequest, "%.2f"))})
	}
	if g := r.GoBench; g != nil {
		for _, b := range g.Benches {
			if b.Name != "BenchmarkPipelineReplay/all" && b.Name != "BenchmarkPipelineSteady/postgres" {
				continue
			}
			v := b.Metrics["msgs/cpu-s"]
			add(Target{ID: "6", What: "User-space pipeline " + strings.TrimPrefix(b.Name, "Benchmark") + ": messages/s/core", Goal: "≥ 1,000,000",
				Value: fmt.Sprintf("%.0f", v), Met: boolp(v >= 1e6),
				Detail: fmt.Sprintf("%.2f allocs/message (goal 0 where feasible), %.0f msgs/s on the reader goroutine", b.Metrics["allocs/msg"], b.Metrics["msgs/s"])})
		}
		for _, b := range g.Benches {
			if !strings.HasPrefix(b.Name, "BenchmarkSample/") {
				continue
			}
			v := b.Metrics["ns/map"]
			add(Target{ID: "7", What: "Map pressure: scrape cost per map, " + strings.TrimPrefix(b.Name, "BenchmarkSample/"), Goal: "≤ 500 ns",
				Value: fmt.Sprintf("%.0f ns", v), Met: boolp(v <= 500), Detail: fmt.Sprintf("%.0f maps per pass", b.Metrics["maps/pass"])})
		}
	}
	var peak float64
	drops, lost := map[string]float64{}, map[string]float64{}
	nB := 0
	for _, w := range r.Workloads {
		peak = math.Max(peak, w.PeakHWMMB)
		for k, v := range w.Drops {
			drops[k] += v
		}
		for k, v := range w.LostBytes {
			lost[k] += v
		}
		nB += len(w.pairs())
	}
	if nB > 0 {
		add(Target{ID: "8", What: "Collector peak RSS (VmHWM) over every B run", Goal: "≤ 48 MB",
			Value: fmt.Sprintf("%.1f MB", peak), Met: boolp(peak <= 48)})
		var lossy float64
		var parts []string
		for _, k := range sortedKeys(drops) {
			if lossReasons[k] {
				lossy += drops[k]
			}
			parts = append(parts, fmt.Sprintf("%s=%.0f", k, drops[k]))
		}
		var lparts []string
		for _, k := range sortedKeys(lost) {
			lparts = append(lparts, fmt.Sprintf("%s=%.0f", k, lost[k]))
		}
		add(Target{ID: "9", What: "Drops over every B run (ebpf_capture_drops_total, loss reasons)", Goal: "0",
			Value: fmt.Sprintf("%.0f", lossy), Met: boolp(lossy == 0),
			Detail: "drops: " + strings.Join(parts, ", ") + "; lost bytes: " + strings.Join(lparts, ", ")})
	}
}

func sortedKeys(m map[string]float64) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

func describeMachine(e *env) Machine {
	m := Machine{Cores: runtime.NumCPU(), LoadStart: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok && m.CPU == "" {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
			}
			if strings.HasPrefix(line, "flags") && strings.Contains(line, " hypervisor") {
				m.Virtual = true
			}
		}
	}
	m.MemoryMB = procMemTotalMB()
	m.Kernel = outputOf("uname", "-r")
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	m.Go = firstLine(outputOf("go", "version"))
	m.Postgres = firstLine(outputOf(filepath.Join(pgBinDir, "postgres"), "--version"))
	m.Ghz = firstLine(outputOf(e.ghzBin, "--version"))
	m.Collector = firstLine(outputOf(e.collectorBin, "--version"))
	virt := "bare metal"
	if m.Virtual {
		virt = "virtual machine"
	}
	m.Summary = fmt.Sprintf("%s, %d cores, %d MB, %s, Linux %s, %s", m.CPU, m.Cores, m.MemoryMB, virt, m.Kernel, m.OS)
	return m
}

func procMemTotalMB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var kb int64
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d", &kb); err != nil {
				return 0
			}
		}
	}
	return kb / 1024
}

// renderMain rewrites the markdown report from a results file.
func renderMain(args []string) error {
	fs := flag.NewFlagSet("render", flag.ExitOnError)
	jsonPath := fs.String("json", "bench/results.json", "results file")
	mdPath := fs.String("md", "docs/performance.md", "markdown report")
	_ = fs.Parse(args)
	b, err := os.ReadFile(*jsonPath)
	if err != nil {
		return err
	}
	r := &Results{calibration: map[string]float64{}, byName: map[string]*WorkloadResult{}}
	if err := json.Unmarshal(b, r); err != nil {
		return err
	}
	for _, w := range r.Workloads {
		r.byName[w.Name] = w
	}
	r.evaluate()
	return r.write(*jsonPath, *mdPath)
}

// write saves the JSON results and the generated part of the markdown
// report (between the markers; text outside them is kept).
func (r *Results) write(jsonPath, mdPath string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(jsonPath), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(jsonPath, append(b, '\n'), 0o644); err != nil {
		return err
	}
	gen := r.markdown()
	old, err := os.ReadFile(mdPath)
	var doc string
	switch {
	case err == nil && strings.Contains(string(old), mdBegin) && strings.Contains(string(old), mdEnd):
		s := string(old)
		before, _, _ := strings.Cut(s, mdBegin)
		_, after, _ := strings.Cut(s, mdEnd)
		doc = before + gen + after
	default:
		doc = "# Performance: the observability tax\n\n" + gen + "\n"
	}
	return os.WriteFile(mdPath, []byte(doc), 0o644)
}
