//go:build linux

// Command harness measures the observability tax of the eBPF receiver: the
// same workloads without the collector (A) and with bin/otelcol-ebpf
// capturing the server under test (B), interleaved A B A B ... in one
// session, plus the kernel's own per-program statistics, the user-space
// pipeline benchmarks and the map-pressure scrape benchmark. It writes
// bench/results.json and docs/performance.md. Run it with `make bench`
// (root; PostgreSQL 15, ghz, bin/otelcol-ebpf).
//
// Subcommands: "run" (default), "grpc-server" (the gRPC server under test,
// started by run inside the server cgroup), "protoset FILE" (the health
// service descriptor for ghz --protoset, to run ghz by hand) and "render"
// (rewrite the report from a results file).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/ghz"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "grpc-server" {
		if err := grpcServerMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "grpc-server:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "protoset" {
		// The protoset ghz needs, for running it by hand.
		if err := ghz.WriteHealthProtoset(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "protoset:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "render" {
		// Re-render the markdown report from a results file.
		if err := renderMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "render:", err)
			os.Exit(1)
		}
		return
	}
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "run" {
		args = args[1:]
	}
	code := 0
	func() {
		// A panic still stops the servers and the collector.
		defer func() {
			if r := recover(); r != nil {
				runCleanups()
				panic(r)
			}
		}()
		if err := run(args); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			code = 1
		}
	}()
	runCleanups()
	os.Exit(code)
}

// options are the harness's flags.
type options struct {
	root         string
	collectorBin string
	ghzBin       string
	sink         string
	pairs        int
	satSeconds   int
	rateSeconds  int
	grpcSeconds  int
	kSeconds     int
	grpcConc     int
	grpcConns    int
	pgScale      int
	rateFraction float64
	phases       string
	outMD        string
	outJSON      string
	goBenchTime  string
	keep         bool
}

func (o *options) want(phase string) bool {
	if o.phases == "" || o.phases == "all" {
		return true
	}
	for _, p := range strings.Split(o.phases, ",") {
		if strings.TrimSpace(p) == phase {
			return true
		}
	}
	return false
}

// env is what the phases share.
type env struct {
	opts         *options
	tmp          string
	collectorBin string
	ghzBin       string
	protoset     string
	sink         string
	serverCg     *cgroup // the server under test: the collector's filter
	clientCg     *cgroup // load generators (not captured)
	collCg       *cgroup // the collector process (CPU accounting)
	idleCg       *cgroup // an empty cgroup: filter of the filtered-out kernel phase
	pg           *pgServer
	grpc         *grpcServer
	res          *Results
}

func (e *env) ghzSat(seconds int, client *cgroup) ghzRun {
	return ghzRun{
		Bin: e.ghzBin, Protoset: e.protoset, Port: e.grpc.Port, Seconds: seconds,
		Concurrency: e.opts.grpcConc, Connections: e.opts.grpcConns, Client: client,
	}
}

func run(args []string) error {
	o := &options{}
	fs := flag.NewFlagSet("harness", flag.ContinueOnError)
	fs.StringVar(&o.root, "root", ".", "repository root")
	fs.StringVar(&o.collectorBin, "collector", "bin/otelcol-ebpf", "collector binary (make otelcol)")
	fs.StringVar(&o.ghzBin, "ghz", "bench/.bin/ghz", "ghz binary (v0.121.0)")
	fs.StringVar(&o.sink, "sink", "debug", "span sink of the B runs: debug (verbosity basic) or file (/dev/null, proto)")
	fs.IntVar(&o.pairs, "pairs", 5, "A/B pairs per workload")
	fs.IntVar(&o.satSeconds, "sat-seconds", 8, "duration of a saturating pgbench run")
	fs.IntVar(&o.rateSeconds, "rate-seconds", 8, "duration of a fixed-rate pgbench run")
	fs.IntVar(&o.grpcSeconds, "grpc-seconds", 6, "duration of a ghz run")
	fs.IntVar(&o.kSeconds, "kernel-seconds", 5, "duration of each workload of the kernel-statistics phases")
	fs.IntVar(&o.grpcConc, "grpc-concurrency", 8, "ghz -c")
	fs.IntVar(&o.grpcConns, "grpc-connections", 2, "ghz --connections")
	fs.IntVar(&o.pgScale, "pg-scale", 4, "pgbench -i scale")
	fs.Float64Var(&o.rateFraction, "rate-fraction", 0.4, "fixed rate as a fraction of the saturation measured in the first A block (below one half: headroom for other tenants' load)")
	fs.StringVar(&o.phases, "phases", "all", "comma list: pg-select,pg-tpcb,pg-rate,grpc-sat,grpc-rate,kernel,perf,gobench")
	fs.StringVar(&o.outMD, "md", "docs/performance.md", "markdown report")
	fs.StringVar(&o.outJSON, "json", "bench/results.json", "JSON results")
	fs.StringVar(&o.goBenchTime, "gobench-time", "2s", "go test -benchtime for the user-space benchmarks")
	fs.IntVar(&niceness, "nice", 0, "niceness of the processes under test (servers, load generators, collector), e.g. -5 on a machine busy with niced jobs")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (collector configs and logs)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root: the harness loads BPF programs (through the collector), runs PostgreSQL as user postgres and makes cgroups")
	}
	if err := os.Chdir(o.root); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		logf("%v: stopping (a second signal cleans up at once)", sig)
		cancel()
		sig = <-sigs
		logf("%v again: cleaning up now", sig)
		runCleanups()
		os.Exit(130)
	}()

	e := &env{opts: o, sink: o.sink, res: newResults(o)}
	var err error
	if e.tmp, err = os.MkdirTemp("", "ebpfbench-"); err != nil {
		return err
	}
	if o.keep {
		logf("keeping %s", e.tmp)
	} else {
		atExit(func() { os.RemoveAll(e.tmp) })
	}
	if e.collectorBin, err = filepath.Abs(o.collectorBin); err != nil {
		return err
	}
	if e.ghzBin, err = filepath.Abs(o.ghzBin); err != nil {
		return err
	}
	if err := preflight(e); err != nil {
		return err
	}
	e.res.Machine = describeMachine(e)
	logf("machine: %s", e.res.Machine.Summary)

	if e.serverCg, err = newCgroup("server"); err != nil {
		return err
	}
	if e.clientCg, err = newCgroup("client"); err != nil {
		return err
	}
	if e.collCg, err = newCgroup("collector"); err != nil {
		return err
	}
	if e.idleCg, err = newCgroup("idle"); err != nil {
		return err
	}
	needPG := o.want("pg-select") || o.want("pg-tpcb") || o.want("pg-rate") || o.want("kernel") || o.want("perf")
	needGRPC := o.want("grpc-sat") || o.want("grpc-rate") || o.want("kernel") || o.want("perf")
	if needPG {
		logf("starting PostgreSQL 15 in %s", e.serverCg.Path)
		if e.pg, err = startPG(ctx, e.serverCg); err != nil {
			return err
		}
		logf("pgbench -i -s %d on 127.0.0.1:%d", o.pgScale, e.pg.Port)
		if err := e.pg.initPgbench(ctx, o.pgScale); err != nil {
			return err
		}
	}
	if needGRPC {
		e.protoset = filepath.Join(e.tmp, "health.protoset")
		if err := ghz.WriteHealthProtoset(e.protoset); err != nil {
			return err
		}
		if e.grpc, err = startGRPCServer(ctx, e.serverCg); err != nil {
			return err
		}
		logf("gRPC health server on 127.0.0.1:%d in %s", e.grpc.Port, e.serverCg.Path)
	}

	finish := func(err error) error {
		e.res.Finished = time.Now().UTC()
		e.res.ElapsedSec = time.Since(started).Seconds()
		e.res.LoadAvgEnd = loadAvg()
		e.res.evaluate()
		jsonPath, mdPath := o.outJSON, o.outMD
		if err != nil {
			// An interrupted or failed session does not replace the
			// report: its partial numbers go next to the profile.
			jsonPath = filepath.Join("bench", "out", "results.partial.json")
			mdPath = filepath.Join("bench", "out", "performance.partial.md")
			_ = os.MkdirAll(filepath.Dir(jsonPath), 0o755)
		}
		if werr := e.res.write(jsonPath, mdPath); werr != nil {
			return errors.Join(err, werr)
		}
		logf("wrote %s and %s", jsonPath, mdPath)
		return err
	}

	var ws []*workload
	for _, w := range workloads(e) {
		if o.want(w.Name) {
			ws = append(ws, w)
		}
	}
	if len(ws) > 0 {
		if err := runPairs(ctx, e, ws); err != nil {
			return finish(err)
		}
	}
	if o.want("kernel") {
		if err := runKernelPhases(ctx, e); err != nil {
			return finish(fmt.Errorf("kernel statistics: %w", err))
		}
	}
	if o.want("perf") {
		if err := runPerf(ctx, e); err != nil {
			return finish(fmt.Errorf("perf: %w", err))
		}
	}
	// The servers are not needed any more: stop them before the CPU-bound
	// Go benchmarks.
	if e.grpc != nil {
		e.grpc.stop()
	}
	if e.pg != nil {
		e.pg.stop()
	}
	if o.want("gobench") {
		if err := runGoBenchmarks(ctx, e); err != nil {
			return finish(fmt.Errorf("go benchmarks: %w", err))
		}
	}
	return finish(nil)
}

func preflight(e *env) error {
	for _, f := range []struct{ path, hint string }{
		{e.collectorBin, "build it with `make otelcol`"},
		{e.ghzBin, "install it with `make bench` (go install github.com/bojand/ghz/cmd/ghz@v0.121.0)"},
		{filepath.Join(pgBinDir, "pgbench"), "apt-get install postgresql-15"},
	} {
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s missing: %s", f.path, f.hint)
		}
	}
	// Warn when the collector is older than the receiver's sources.
	if st, err := os.Stat(e.collectorBin); err == nil {
		var newer []string
		for _, dir := range []string{"receiver", "internal"} {
			_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() && strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
					if fi, err := d.Info(); err == nil && fi.ModTime().After(st.ModTime()) {
						newer = append(newer, p)
					}
				}
				return nil
			})
		}
		if len(newer) > 0 {
			logf("warning: %s is older than %d source files (e.g. %s): run `make otelcol` to measure the current code", e.collectorBin, len(newer), newer[0])
			e.res.Warnings = append(e.res.Warnings, fmt.Sprintf("the collector binary is older than %d source files (e.g. %s)", len(newer), newer[0]))
		}
	}
	return nil
}
