//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/ghz"
)

// Run is one measured run of a workload.
type Run struct {
	Workload string  `json:"workload"`
	Mode     string  `json:"mode"` // A: without the collector, B: with it
	Pair     int     `json:"pair"`
	Start    string  `json:"start"`
	Seconds  float64 `json:"seconds"`
	// Throughput is transactions (pgbench) or calls (ghz) per second;
	// Count how many completed, Failed how many failed.
	Throughput float64 `json:"throughput"`
	// PerSecond is pgbench's -P 1 progress; Stalls counts the seconds
	// under a quarter of the run's median second (machine-wide stalls on
	// a shared host show up in A and B alike).
	PerSecond []float64 `json:"per_second,omitempty"`
	Stalls    int       `json:"stalled_seconds"`
	Count     int64     `json:"count"`
	Failed    int64     `json:"failed"`
	Target    float64   `json:"target_rate,omitempty"`
	// Latencies in microseconds (fixed-rate runs): per transaction or call.
	LatAvgUs float64 `json:"lat_avg_us,omitempty"`
	LatP50Us float64 `json:"lat_p50_us,omitempty"`
	LatP99Us float64 `json:"lat_p99_us,omitempty"`
	// pgbench with --rate: latency from the scheduled start (client lag
	// included), for reference.
	SchedAvgUs float64 `json:"sched_avg_us,omitempty"`
	SchedP99Us float64 `json:"sched_p99_us,omitempty"`
	// CPU seconds over the run: the server cgroup, the load generator's
	// cgroup, the collector (its cgroup, and utime+stime from
	// /proc/PID/stat), and the whole host (all cores, from /proc/stat).
	ServerCPU        float64 `json:"server_cpu_s"`
	ClientCPU        float64 `json:"client_cpu_s"`
	CollectorCPU     float64 `json:"collector_cpu_s,omitempty"`
	CollectorProcCPU float64 `json:"collector_proc_cpu_s,omitempty"`
	HostBusyCPU      float64 `json:"host_busy_cpu_s"`
	StealCPU         float64 `json:"steal_cpu_s"`
	// B only: the receiver's counters for the run.
	Records           float64            `json:"records,omitempty"`
	Bytes             float64            `json:"bytes,omitempty"`
	Spans             float64            `json:"spans,omitempty"`
	Drops             map[string]float64 `json:"drops,omitempty"`
	LostBytes         map[string]float64 `json:"lost_bytes,omitempty"`
	VmHWMKB           int64              `json:"vm_hwm_kb,omitempty"`
	VmRSSKB           int64              `json:"vm_rss_kb,omitempty"`
	CollectorStartSec float64            `json:"collector_start_s,omitempty"`
}

// workload is one load shape, run A and B.
type workload struct {
	Name  string
	Title string
	Unit  string // of Throughput
	Rate  bool   // fixed rate (latency matters), else saturating
	// load runs the load generator once and fills the run's throughput
	// and latency fields.
	load func(ctx context.Context, r *Run) error
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile of unsorted values (nearest rank).
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var t float64
	for _, x := range v {
		t += x
	}
	return t / float64(len(v))
}

func workloads(e *env) []*workload {
	o := e.opts
	pgSat := func(sel bool) func(ctx context.Context, r *Run) error {
		return func(ctx context.Context, r *Run) error {
			res, err := e.pg.runPgbench(ctx, pgbenchRun{Select: sel, Seconds: o.satSeconds, Client: e.clientCg})
			if err != nil {
				return err
			}
			r.Throughput, r.Count, r.Failed = res.TPS, res.Transactions, res.Failed
			r.setPerSecond(res.PerSecond)
			return nil
		}
	}
	return []*workload{
		{Name: "pg-select", Title: fmt.Sprintf("pgbench -S -M prepared -c 4 -j 2, %d s, saturating", o.satSeconds), Unit: "TPS", load: pgSat(true)},
		{Name: "pg-tpcb", Title: fmt.Sprintf("pgbench (TPC-B-like) -M prepared -c 4 -j 2, %d s, saturating", o.satSeconds), Unit: "TPS", load: pgSat(false)},
		{Name: "pg-rate", Title: "pgbench -S -M prepared -c 4 -j 2 -R (fixed rate), --log", Unit: "TPS", Rate: true,
			load: func(ctx context.Context, r *Run) error {
				rate, err := e.pgRate(ctx)
				if err != nil {
					return err
				}
				res, err := e.pg.runPgbench(ctx, pgbenchRun{Select: true, Rate: rate, Seconds: o.rateSeconds, Client: e.clientCg})
				if err != nil {
					return err
				}
				r.Throughput, r.Count, r.Failed, r.Target = res.TPS, res.Transactions, res.Failed, rate
				r.setPerSecond(res.PerSecond)
				r.LatAvgUs, r.LatP50Us, r.LatP99Us = mean(res.Service), percentile(res.Service, 50), percentile(res.Service, 99)
				r.SchedAvgUs, r.SchedP99Us = mean(res.Scheduled), percentile(res.Scheduled, 99)
				return nil
			}},
		{Name: "grpc-sat", Title: fmt.Sprintf("ghz unary grpc.health.v1.Health/Check -c %d --connections %d, %d s, saturating", o.grpcConc, o.grpcConns, o.grpcSeconds), Unit: "RPS",
			load: func(ctx context.Context, r *Run) error {
				res, err := runGhz(ctx, e.ghzSat(o.grpcSeconds, e.clientCg))
				if err != nil {
					return err
				}
				fillGhz(r, res)
				return nil
			}},
		{Name: "grpc-rate", Title: fmt.Sprintf("ghz unary grpc.health.v1.Health/Check -c %d --connections %d --rps (fixed rate), %d s", o.grpcConc, o.grpcConns, o.grpcSeconds), Unit: "RPS", Rate: true,
			load: func(ctx context.Context, r *Run) error {
				rate, err := e.grpcRate(ctx)
				if err != nil {
					return err
				}
				g := e.ghzSat(o.grpcSeconds, e.clientCg)
				g.RPS = rate
				res, err := runGhz(ctx, g)
				if err != nil {
					return err
				}
				fillGhz(r, res)
				r.Target = rate
				return nil
			}},
	}
}

func (r *Run) setPerSecond(v []float64) {
	r.PerSecond = v
	// The last progress line may cover a partial second.
	if len(v) > 2 {
		v = v[:len(v)-1]
	}
	m := median(v)
	for _, x := range v {
		if x < m/4 {
			r.Stalls++
		}
	}
}

func fillGhz(r *Run, res *ghz.Result) {
	r.Throughput, r.Count = res.RPS, res.Count
	for code, n := range res.Status {
		if code != "OK" {
			r.Failed += n
		}
	}
	r.LatAvgUs = float64(res.Average) / 1e3
	r.LatP50Us, r.LatP99Us = res.Percentile(50), res.Percentile(99)
}

// pgRate is the fixed rate: a fraction of the saturation measured by the
// first A run of the saturating select-only workload (or by a short
// calibration run when that workload is not part of the session), then
// kept for the whole session.
func (e *env) pgRate(ctx context.Context) (float64, error) {
	if e.res.calibration["pg-select"] == 0 {
		if v := e.res.medianA("pg-select"); v > 0 {
			e.res.calibration["pg-select"] = v
		}
	}
	if e.res.calibration["pg-select"] == 0 {
		logf("calibrating pgbench -S saturation (5 s)")
		res, err := e.pg.runPgbench(ctx, pgbenchRun{Select: true, Seconds: 5, Client: e.clientCg})
		if err != nil {
			return 0, err
		}
		e.res.calibration["pg-select"] = res.TPS
	}
	return e.opts.rateFraction * e.res.calibration["pg-select"], nil
}

func (e *env) grpcRate(ctx context.Context) (float64, error) {
	if e.res.calibration["grpc-sat"] == 0 {
		if v := e.res.medianA("grpc-sat"); v > 0 {
			e.res.calibration["grpc-sat"] = v
		}
	}
	if e.res.calibration["grpc-sat"] == 0 {
		logf("calibrating ghz saturation (5 s)")
		res, err := runGhz(ctx, e.ghzSat(5, e.clientCg))
		if err != nil {
			return 0, err
		}
		e.res.calibration["grpc-sat"] = res.RPS
	}
	return e.opts.rateFraction * e.res.calibration["grpc-sat"], nil
}

// runPairs runs the workloads in blocks: for every pair, each workload
// without the collector (A), then each workload with one collector session
// running (B). Every workload is thus measured A B A B ..., its A and B
// runs one block apart; one collector start and stop per pair keeps the
// session short (detaching the tracepoint programs can take seconds on a
// loaded machine).
func runPairs(ctx context.Context, e *env, ws []*workload) error {
	for _, w := range ws {
		logf("== %s: %s", w.Name, w.Title)
		e.res.addWorkload(w)
	}
	for pair := 1; pair <= e.opts.pairs; pair++ {
		for _, mode := range []string{"A", "B"} {
			if err := runBlock(ctx, e, ws, mode, pair); err != nil {
				return err
			}
		}
	}
	return nil
}

func runBlock(ctx context.Context, e *env, ws []*workload, mode string, pair int) error {
	var c *collector
	if mode == "B" {
		dir, err := os.MkdirTemp(e.tmp, "collector-")
		if err != nil {
			return err
		}
		c, err = startCollector(ctx, collectorOpts{Bin: e.collectorBin, Dir: dir, FilterCgroup: e.serverCg.Path, Sink: e.sink, Cgroup: e.collCg})
		if err != nil {
			return err
		}
		defer c.stop()
		// Let start-up work (socket-table seeding, the first map-pressure
		// sample) finish before measuring.
		if err := sleep(ctx, time.Second); err != nil {
			return err
		}
	}
	for _, w := range ws {
		r, err := measureRun(ctx, e, w, mode, pair, c)
		if err != nil {
			return fmt.Errorf("%s %s pair %d: %w", w.Name, mode, pair, err)
		}
		e.res.addRun(r)
		line := fmt.Sprintf("%s %s pair %d: %.0f %s", w.Name, mode, pair, r.Throughput, w.Unit)
		if w.Rate {
			line += fmt.Sprintf(" (target %.0f), avg %.1f µs, p99 %.1f µs", r.Target, r.LatAvgUs, r.LatP99Us)
		}
		line += fmt.Sprintf(", cpu server %.2f s client %.2f s", r.ServerCPU, r.ClientCPU)
		if mode == "B" {
			line += fmt.Sprintf(" collector %.2f s, %.0f records, %.0f spans, HWM %.1f MB", r.CollectorCPU, r.Records, r.Spans, float64(r.VmHWMKB)/1024)
		}
		line += fmt.Sprintf(", host busy %.2f cores", r.HostBusyCPU/r.Seconds)
		if r.Stalls > 0 {
			line += fmt.Sprintf(", %d stalled seconds", r.Stalls)
		}
		logf("%s", line)
	}
	if c != nil {
		t := time.Now()
		c.stop()
		e.res.Sessions = append(e.res.Sessions, Session{Pair: pair, StartSec: c.StartSec, SettleSec: c.SettleSec, SettleCPU: c.SettleCPU,
			StopSec: time.Since(t).Seconds(), VmHWMKB: c.lastHWM})
		logf("collector session of pair %d: start %.1f s, settled after %.1f s more (%.2f s of CPU), stop %.1f s", pair, c.StartSec, c.SettleSec, c.SettleCPU, time.Since(t).Seconds())
	}
	return nil
}

// drainWait lets the receiver finish the run's records and emit its
// counters (self_metrics_interval is 1 s) before they are read.
const drainWait = 1500 * time.Millisecond

// telemetrySpans reads the spans the receiver handed on (the collector's
// own telemetry; the name has no _total suffix in v0.161).
func telemetrySpans(c *collector) float64 {
	tel, err := scrape(c.telURL)
	if err != nil {
		return 0
	}
	return tel.sum("otelcol_receiver_accepted_spans") + tel.sum("otelcol_receiver_accepted_spans_total")
}

func measureRun(ctx context.Context, e *env, w *workload, mode string, pair int, c *collector) (*Run, error) {
	r := &Run{Workload: w.Name, Mode: mode, Pair: pair}
	var m0 metrics
	var spans0, pc0 float64
	if c != nil {
		var err error
		if m0, err = scrape(c.promURL); err != nil {
			return nil, fmt.Errorf("scrape the collector's Prometheus endpoint: %w", err)
		}
		spans0 = telemetrySpans(c)
		pc0 = procCPU(c.Pid)
	}
	s0, cl0, co0 := e.serverCg.cpuUsec(), e.clientCg.cpuUsec(), e.collCg.cpuUsec()
	hb0 := hostCPU()
	st0 := stealSeconds()
	t0 := time.Now()
	r.Start = t0.UTC().Format(time.RFC3339)
	if err := w.load(ctx, r); err != nil {
		return nil, err
	}
	r.Seconds = time.Since(t0).Seconds()
	r.ServerCPU = float64(e.serverCg.cpuUsec()-s0) / 1e6
	r.ClientCPU = float64(e.clientCg.cpuUsec()-cl0) / 1e6
	hb1 := hostCPU()
	r.HostBusyCPU = hb1 - hb0
	r.StealCPU = stealSeconds() - st0
	if c == nil {
		return r, nil
	}
	if err := sleep(ctx, drainWait); err != nil {
		return nil, err
	}
	r.CollectorCPU = float64(e.collCg.cpuUsec()-co0) / 1e6
	r.CollectorProcCPU = procCPU(c.Pid) - pc0
	r.VmHWMKB = procStatusKB(c.Pid, "VmHWM")
	r.VmRSSKB = procStatusKB(c.Pid, "VmRSS")
	c.lastHWM = r.VmHWMKB
	r.CollectorStartSec = c.StartSec
	m1, err := scrape(c.promURL)
	if err != nil {
		return nil, fmt.Errorf("scrape the collector's Prometheus endpoint: %w", err)
	}
	r.Records = m1.sum("ebpf_capture_records_total") - m0.sum("ebpf_capture_records_total")
	r.Bytes = m1.sum("ebpf_capture_bytes_total") - m0.sum("ebpf_capture_bytes_total")
	r.Drops = deltaByLabel(m0, m1, "ebpf_capture_drops_total", "reason")
	r.LostBytes = deltaByLabel(m0, m1, "ebpf_capture_lost_bytes_total", "reason")
	r.Spans = telemetrySpans(c) - spans0
	return r, nil
}

func deltaByLabel(m0, m1 metrics, name, label string) map[string]float64 {
	a, b := m0.byLabel(name, label), m1.byLabel(name, label)
	out := map[string]float64{}
	for k, v := range b {
		out[k] = v - a[k]
	}
	return out
}
