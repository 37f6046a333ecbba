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
)

// GoBench is one line of `go test -bench` output.
type GoBench struct {
	Package string             `json:"package"`
	Name    string             `json:"name"`
	N       int64              `json:"n"`
	Metrics map[string]float64 `json:"metrics"`
}

// ProfileEntry is one function or package share of a CPU profile.
type ProfileEntry struct {
	Name    string  `json:"name"`
	FlatPct float64 `json:"flat_pct,omitempty"`
	CumPct  float64 `json:"cum_pct,omitempty"`
}

// GoBenchResult holds the user-space benchmarks and the pipeline profile.
type GoBenchResult struct {
	Commands  []string       `json:"commands"`
	Benches   []GoBench      `json:"benchmarks"`
	Packages  []ProfileEntry `json:"profile_by_package"`
	TopFlat   []ProfileEntry `json:"profile_top_flat"`
	KeyCum    []ProfileEntry `json:"profile_key_cumulative"`
	Profile   string         `json:"profile_benchmark"`
	ProfileAt string         `json:"profile_file,omitempty"`
}

func goCmd(ctx context.Context, dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	return cmd
}

// runGoBench runs one `go test -bench` and parses its result lines.
func runGoBench(ctx context.Context, pkg string, args ...string) ([]GoBench, string, error) {
	full := append([]string{"test", "-run", "^$", "-count", "1"}, args...)
	full = append(full, pkg)
	cmdline := "go " + strings.Join(full, " ")
	logf("%s", cmdline)
	out, err := goCmd(ctx, ".", full...).CombinedOutput()
	if err != nil {
		return nil, cmdline, fmt.Errorf("%s: %w\n%s", cmdline, err, out)
	}
	return parseGoBench(pkg, string(out)), cmdline, nil
}

func parseGoBench(pkg, out string) []GoBench {
	var res []GoBench
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			name = name[:i] // the GOMAXPROCS suffix
		}
		b := GoBench{Package: pkg, Name: name, N: n, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			b.Metrics[f[i+1]] = v
		}
		res = append(res, b)
	}
	return res
}

func runGoBenchmarks(ctx context.Context, e *env) error {
	r := &GoBenchResult{}
	e.res.GoBench = r
	profDir := filepath.Join(e.tmp, "prof")
	if err := os.MkdirAll(profDir, 0o755); err != nil {
		return err
	}
	cpuProf := filepath.Join(profDir, "pipeline.cpu.prof")
	testBin := filepath.Join(profDir, "receiver.test")
	bt := e.opts.goBenchTime
	logf("== user-space pipeline benchmarks")
	steps := []struct {
		pkg  string
		args []string
	}{
		{"./receiver/", []string{"-bench", "^BenchmarkPipeline", "-benchtime", bt}},
		// The profile: the replay of every recorded stream, spans on.
		{"./receiver/", []string{"-bench", "^BenchmarkPipelineReplay$/^all$", "-benchtime", bt, "-cpuprofile", cpuProf, "-o", testBin}},
		{"./internal/postgres/", []string{"-bench", ".", "-benchtime", "1s"}},
		{"./internal/grpc/", []string{"-bench", "^BenchmarkParserReplay$", "-benchtime", "0.3s"}},
		{"./internal/mappressure/", []string{"-bench", "^BenchmarkSample$", "-benchtime", "20x"}},
	}
	for i, s := range steps {
		bs, cmdline, err := runGoBench(ctx, s.pkg, s.args...)
		if err != nil {
			return err
		}
		r.Commands = append(r.Commands, cmdline)
		if i == 1 {
			r.Profile = "BenchmarkPipelineReplay/all"
			continue // the profiled run only feeds the profile
		}
		r.Benches = append(r.Benches, bs...)
	}
	if err := summarizeProfile(ctx, r, testBin, cpuProf); err != nil {
		return err
	}
	// Keep the profile next to the results for `go tool pprof`.
	keep := filepath.Join("bench", "out")
	if err := os.MkdirAll(keep, 0o755); err == nil {
		b, _ := os.ReadFile(cpuProf)
		if os.WriteFile(filepath.Join(keep, "pipeline.cpu.prof"), b, 0o644) == nil {
			r.ProfileAt = filepath.Join(keep, "pipeline.cpu.prof")
		}
	}
	return nil
}

type pprofLine struct {
	flatPct, cumPct float64
	name            string
}

func pprofTop(ctx context.Context, bin, prof string, cum bool) ([]pprofLine, error) {
	args := []string{"tool", "pprof", "-top", "-nodecount=100000"}
	if cum {
		args = append(args, "-cum")
	}
	args = append(args, bin, prof)
	out, err := goCmd(ctx, ".", args...).Output()
	if err != nil {
		return nil, fmt.Errorf("go tool pprof: %w", err)
	}
	var lines []pprofLine
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || !strings.HasSuffix(f[1], "%") || !strings.HasSuffix(f[4], "%") {
			continue
		}
		pct := func(s string) float64 { v, _ := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64); return v }
		lines = append(lines, pprofLine{flatPct: pct(f[1]), cumPct: pct(f[4]), name: strings.Join(f[5:], " ")})
	}
	return lines, nil
}

// pkgOf is the package of a pprof function name.
func pkgOf(fn string) string {
	fn = strings.TrimSuffix(fn, " (inline)")
	slash := strings.LastIndexByte(fn, '/')
	dot := strings.IndexByte(fn[slash+1:], '.')
	if dot < 0 {
		return fn
	}
	return fn[:slash+1+dot]
}

func summarizeProfile(ctx context.Context, r *GoBenchResult, bin, prof string) error {
	flat, err := pprofTop(ctx, bin, prof, false)
	if err != nil {
		return err
	}
	byPkg := map[string]float64{}
	for _, l := range flat {
		byPkg[pkgOf(l.name)] += l.flatPct
	}
	for p, v := range byPkg {
		r.Packages = append(r.Packages, ProfileEntry{Name: p, FlatPct: v})
	}
	sort.Slice(r.Packages, func(i, j int) bool { return r.Packages[i].FlatPct > r.Packages[j].FlatPct })
	if len(r.Packages) > 15 {
		r.Packages = r.Packages[:15]
	}
	for i, l := range flat {
		if i == 20 {
			break
		}
		r.TopFlat = append(r.TopFlat, ProfileEntry{Name: l.name, FlatPct: l.flatPct, CumPct: l.cumPct})
	}
	cum, err := pprofTop(ctx, bin, prof, true)
	if err != nil {
		return err
	}
	keys := []string{
		"stream.(*Assembler).Record",
		"grpc.(*Parser).Data",
		"postgres.(*Parser).Data",
		"receiver.(*tracer).onCall",
		"receiver.(*tracer).onQuery",
		"spans.(*Builder).Call",
		"spans.(*Builder).Query",
		"pcommon.Map.PutStr",
		"sqlsan.Sanitize",
		"hpack.(*Decoder).Write",
		"runtime.mallocgc",
		"runtime.gcBgMarkWorker",
	}
	for _, k := range keys {
		for _, l := range cum {
			if strings.HasSuffix(strings.TrimSuffix(l.name, " (inline)"), k) {
				r.KeyCum = append(r.KeyCum, ProfileEntry{Name: l.name, CumPct: l.cumPct})
				break
			}
		}
	}
	return nil
}
