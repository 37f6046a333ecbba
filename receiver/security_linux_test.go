//go:build linux

package receiver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componentstatus"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"go.opentelemetry.io/collector/receiver/receivertest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/cgroup"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/pgserver"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// builtCollector is bin/otelcol-ebpf, built by `make otelcol` (which `make
// test` runs first).
func builtCollector(t *testing.T) string {
	t.Helper()
	bin, err := filepath.Abs(filepath.Join("..", "bin", "otelcol-ebpf"))
	require.NoError(t, err)
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s is missing: build it with `make otelcol` (`make test` does)", bin)
	}
	return bin
}

func secFreePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// dropCaps runs a command without the capabilities named (setpriv's
// names: bpf, perfmon, sys_admin): setpriv removes them from the
// inheritable and the bounding set, so the program it executes (as root)
// does not get them.
func dropCaps(ctx context.Context, caps []string, name string, args ...string) *exec.Cmd {
	drop := "-" + strings.Join(caps, ",-")
	return exec.CommandContext(ctx, "setpriv", append([]string{
		"--inh-caps=" + drop, "--bounding-set=" + drop, "--", name,
	}, args...)...)
}

// capEff is the effective capability set of a command run under dropCaps,
// from its /proc/self/status.
func capEff(t *testing.T, caps []string) uint64 {
	t.Helper()
	out, err := dropCaps(context.Background(), caps, "cat", "/proc/self/status").Output()
	require.NoError(t, err)
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			require.NoError(t, err)
			return eff
		}
	}
	t.Fatalf("no CapEff line in /proc/self/status")
	return 0
}

// TestSecurityCollectorWithoutCapabilities runs the built collector without
// some of CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (which stands in for both,
// so it is always dropped), with the ebpf receiver in one pipeline and an
// OTLP receiver in another. The collector cannot run the ebpf receiver. By
// default (on_start_failure: stop_collector) a receiver that fails to start
// stops the collector: it must say exactly which capabilities are missing,
// whichever of its components would load first, shut the rest down cleanly
// (no panic, no hang, its ports released) and exit promptly with an error.
// With on_start_failure: keep_collector_running the collector runs on, logs
// the same error once, and its OTLP pipeline carries spans (the last
// subtest).
func TestSecurityCollectorWithoutCapabilities(t *testing.T) {
	privileged.Require(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) is needed to drop capabilities")
	}
	bin := builtCollector(t)

	// Capability numbers from linux/capability.h.
	const sysAdmin, perfmon, bpf = 21, 38, 39
	const (
		tracesOnly = "traces: {receivers: [ebpf], exporters: [debug]}"
		// With a metrics pipeline and map pressure on (the default), the
		// map sampler is loaded before the capture.
		tracesAndMetrics = "traces: {receivers: [ebpf], exporters: [debug]}\n    metrics: {receivers: [ebpf], exporters: [debug]}"
		grant            = ": run the collector as root or grant CAP_BPF and CAP_PERFMON ("
	)
	for _, tc := range []struct {
		name, ebpf, pipelines string
		drop                  []string // setpriv's capability names
		dropped               uint64   // their bits, checked in CapEff
		want                  string   // what the error says after "ebpf receiver: "
		notWant               []string
	}{
		{"traces pipeline", "{map_pressure: {enabled: false}}", tracesOnly,
			[]string{"bpf", "perfmon", "sys_admin"}, 1<<sysAdmin | 1<<perfmon | 1<<bpf,
			"missing capabilities CAP_BPF, CAP_PERFMON" + grant, nil},
		{"traces and metrics pipelines", "{}", tracesAndMetrics,
			[]string{"bpf", "perfmon", "sys_admin"}, 1<<sysAdmin | 1<<perfmon | 1<<bpf,
			"missing capabilities CAP_BPF, CAP_PERFMON" + grant, nil},
		// CAP_BPF kept: only CAP_PERFMON is named.
		{"without CAP_PERFMON only", "{}", tracesAndMetrics,
			[]string{"perfmon", "sys_admin"}, 1<<sysAdmin | 1<<perfmon,
			"missing capability CAP_PERFMON" + grant, []string{"missing capability CAP_BPF", "capabilities CAP_BPF"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The drop works: the effective set lacks exactly those
			// capabilities.
			eff := capEff(t, tc.drop)
			require.NotZero(t, eff, "other capabilities stay")
			require.Zero(t, eff&tc.dropped, "CapEff %x", eff)
			require.Equal(t, tc.dropped, (1<<sysAdmin|1<<perfmon|1<<bpf)&^eff, "CapEff %x: the capabilities not dropped stay", eff)

			port := secFreePort(t)
			dir := t.TempDir()
			cfgPath := filepath.Join(dir, "config.yaml")
			require.NoError(t, os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
receivers:
  ebpf: %s
  otlp:
    protocols:
      grpc: {endpoint: 127.0.0.1:%d}
exporters:
  debug: {}
service:
  telemetry:
    metrics: {level: none}
  pipelines:
    %s
    traces/otlp: {receivers: [otlp], exporters: [debug]}
`, tc.ebpf, port, tc.pipelines)), 0o600))

			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := dropCaps(ctx, tc.drop, bin, "--config", cfgPath)
			var output bytes.Buffer
			cmd.Stdout, cmd.Stderr = &output, &output
			start := time.Now()
			err := cmd.Run()
			took := time.Since(start)
			log := output.String()
			t.Logf("exit after %.1f s: %v\n%s", took.Seconds(), err, lastLines(log, 4))

			var exit *exec.ExitError
			require.True(t, errors.As(err, &exit), "the collector exits with an error: %v", err)
			ws := exit.Sys().(syscall.WaitStatus)
			require.False(t, ws.Signaled(), "not killed (by the timeout or a signal)")
			require.Equal(t, 1, ws.ExitStatus())
			require.Less(t, took, 15*time.Second, "it exits promptly")
			require.NotContains(t, log, "panic:")
			require.NotContains(t, log, "goroutine ")
			require.Contains(t, log, `failed to start "ebpf" receiver`)
			require.Contains(t, log, "Shutdown complete.", "the components that started were shut down")
			// Nothing is left behind: the OTLP port can be bound again.
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			require.NoError(t, err, "the OTLP receiver's port is released")
			ln.Close()
			// The error names the missing capabilities and how to grant
			// them, whichever component would have loaded first, and
			// nothing about RLIMIT_MEMLOCK: on Linux >= 5.11 it plays no
			// part, and it is not what is missing.
			errLine := errorLine(log)
			require.True(t, strings.HasPrefix(errLine, `Error: cannot start pipelines: failed to start "ebpf" receiver: ebpf receiver: `+tc.want), "%s", errLine)
			for _, w := range append(tc.notWant, "MEMLOCK", "CAP_SYS_RESOURCE", "map_pressure") {
				require.NotContains(t, errLine, w)
			}
		})
	}

	t.Run("keep_collector_running", func(t *testing.T) {
		drop := []string{"bpf", "perfmon", "sys_admin"}
		require.Zero(t, capEff(t, drop)&(1<<sysAdmin|1<<perfmon|1<<bpf))
		port := secFreePort(t)
		cfgPath := filepath.Join(t.TempDir(), "config.yaml")
		// Traces and metrics: both pipelines' Start calls of the shared
		// receiver return nil, and the error is logged once.
		require.NoError(t, os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
receivers:
  ebpf: {on_start_failure: keep_collector_running}
  otlp:
    protocols:
      grpc: {endpoint: 127.0.0.1:%d}
exporters:
  debug: {verbosity: detailed}
service:
  telemetry:
    metrics: {level: none}
  pipelines:
    %s
    traces/otlp: {receivers: [otlp], exporters: [debug]}
`, port, tracesAndMetrics)), 0o600))

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := dropCaps(ctx, drop, bin, "--config", cfgPath)
		var output syncBuffer
		cmd.Stdout, cmd.Stderr = &output, &output
		require.NoError(t, cmd.Start())
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		exited := false
		defer func() {
			if !exited {
				_ = cmd.Process.Kill()
				<-done
				t.Logf("collector log:\n%s", output.String())
			}
		}()
		for ready := time.After(time.Minute); !strings.Contains(output.String(), "Everything is ready"); {
			select {
			case err := <-done:
				exited = true
				t.Fatalf("the collector exited: %v\n%s", err, lastLines(output.String(), 6))
			case <-ready:
				t.Fatalf("the collector is not ready after a minute")
			case <-time.After(50 * time.Millisecond):
			}
		}

		// The receiver's error, at error level, once, naming the
		// capabilities as the stop_collector error does.
		log := output.String()
		const notStarted = "ebpf receiver: not started; the collector's other pipelines keep running (on_start_failure: keep_collector_running)"
		require.Equal(t, 1, strings.Count(log, notStarted), "logged once for both pipelines:\n%s", log)
		line := lineWith(log, notStarted)
		require.Contains(t, line, "\terror\t", "at error level: %s", line)
		require.Contains(t, line, `"error": "ebpf receiver: missing capabilities CAP_BPF, CAP_PERFMON`+grant, "%s", line)
		require.NotContains(t, log, `failed to start "ebpf" receiver`)
		require.NotContains(t, log, "(*ebpfReceiver).Start", "no stack trace: the error says what is missing")

		// The OTLP pipeline works: a span sent to the OTLP receiver comes
		// out of the debug exporter.
		raw := make([]byte, 8)
		_, err := rand.Read(raw)
		require.NoError(t, err)
		name := "keep-running-" + hex.EncodeToString(raw)
		td := ptrace.NewTraces()
		sp := td.ResourceSpans().AppendEmpty().ScopeSpans().AppendEmpty().Spans().AppendEmpty()
		sp.SetName(name)
		sp.SetTraceID(pcommon.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
		sp.SetSpanID(pcommon.SpanID{1, 2, 3, 4, 5, 6, 7, 8})
		now := time.Now()
		sp.SetStartTimestamp(pcommon.NewTimestampFromTime(now.Add(-time.Millisecond)))
		sp.SetEndTimestamp(pcommon.NewTimestampFromTime(now))
		cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", port), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		defer cc.Close()
		sendCtx, sendCancel := context.WithTimeout(ctx, 10*time.Second)
		defer sendCancel()
		_, err = ptraceotlp.NewGRPCClient(cc).Export(sendCtx, ptraceotlp.NewExportRequestFromTraces(td))
		require.NoError(t, err, "the OTLP receiver accepts the span")
		require.Eventually(t, func() bool {
			return strings.Contains(output.String(), "Name           : "+name)
		}, 10*time.Second, 50*time.Millisecond, "the debug exporter prints the span")

		// SIGTERM: a clean exit, status 0.
		require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
		select {
		case err = <-done:
			exited = true
		case <-time.After(20 * time.Second):
			t.Fatalf("the collector did not stop within 20 s of SIGTERM")
		}
		log = output.String()
		t.Logf("exit: %v\n%s", err, lastLines(log, 3))
		require.NoError(t, err, "the collector exits with status 0")
		require.Contains(t, log, "Shutdown complete.")
		require.NotContains(t, log, "panic:")
		require.NotContains(t, log, "goroutine ")
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		require.NoError(t, err, "the OTLP receiver's port is released")
		ln.Close()
	})
}

// syncBuffer is a bytes.Buffer the collector's output can be copied into
// (exec copies stdout and stderr from their own goroutines) while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lineWith is the first line of log that contains sub.
func lineWith(log, sub string) string {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, sub) {
			return line
		}
	}
	return ""
}

// statusHost is a component.Host that keeps the status events reported to
// it, as the collector's service keeps one status per pipeline instance of
// a component.
type statusHost struct {
	component.Host
	mu     sync.Mutex
	events []*componentstatus.Event
}

func (h *statusHost) Report(ev *componentstatus.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, ev)
}

func (h *statusHost) reported() []*componentstatus.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.events)
}

// TestSecurityStartFailureStatus fails Start for real after programs were
// loaded: the map sampler loads, then the capture loads its programs and
// refuses a filter.cgroups directory that is not on cgroup v2 (a plain
// temporary directory), and unloads them. Under stop_collector both
// pipelines' Start return that error; under keep_collector_running both
// return nil, each pipeline's host gets one permanent error event with the
// error, it is logged once at error level, nothing stays loaded, and
// Shutdown is clean.
func TestSecurityStartFailureStatus(t *testing.T) {
	privileged.Require(t)
	dir := t.TempDir()
	for _, mode := range []string{stopCollector, keepCollectorRunning} {
		t.Run(mode, func(t *testing.T) {
			cfg := createDefaultConfig().(*Config)
			cfg.Filter.Cgroups = []string{dir}
			cfg.OnStartFailure = mode
			require.NoError(t, cfg.Validate())
			core, logs := observer.New(zapcore.InfoLevel)
			set := receivertest.NewNopSettings(metadata.Type)
			set.Logger = zap.New(core)
			ctx := context.Background()
			f := NewFactory()
			tr, err := f.CreateTraces(ctx, set, cfg, consumertest.NewNop())
			require.NoError(t, err)
			mr, err := f.CreateMetrics(ctx, set, cfg, consumertest.NewNop())
			require.NoError(t, err)
			trHost := &statusHost{Host: componenttest.NewNopHost()}
			mrHost := &statusHost{Host: componenttest.NewNopHost()}

			trErr, mrErr := tr.Start(ctx, trHost), mr.Start(ctx, mrHost)
			require.Empty(t, heldFDs(t).kind, "a failed Start unloads what it loaded")
			require.Empty(t, privileged.ProgramsHeldBySelf(t))
			const want = "ebpf receiver: filter.cgroups: " // then the path and "is not a cgroup v2 directory"
			errorLogs := logs.FilterLevelExact(zapcore.ErrorLevel).All()
			if mode == stopCollector {
				require.ErrorContains(t, trErr, want)
				require.ErrorContains(t, trErr, dir+" is not a cgroup v2 directory")
				require.Equal(t, trErr, mrErr, "the second pipeline's Start returns the first one's result")
				require.Empty(t, trHost.reported(), "the collector reports a returned error itself")
				require.Empty(t, mrHost.reported())
				require.Empty(t, errorLogs, "the collector logs a returned error itself")
			} else {
				require.NoError(t, trErr)
				require.NoError(t, mrErr)
				for _, h := range []*statusHost{trHost, mrHost} {
					ev := h.reported()
					require.Len(t, ev, 1)
					require.Equal(t, componentstatus.StatusPermanentError, ev[0].Status())
					require.ErrorContains(t, ev[0].Err(), want)
					require.ErrorContains(t, ev[0].Err(), dir+" is not a cgroup v2 directory")
				}
				require.Len(t, errorLogs, 1, "logged once for both pipelines")
				require.Contains(t, errorLogs[0].Message, "not started")
				require.Equal(t, trHost.reported()[0].Err().Error(), errorLogs[0].ContextMap()["error"])
			}
			require.NoError(t, tr.Shutdown(ctx))
			require.NoError(t, mr.Shutdown(ctx))
			require.NoError(t, tr.Shutdown(ctx), "Shutdown is idempotent")
		})
	}
}

// errorLine is the collector's final "Error: ..." line.
func errorLine(log string) string {
	for _, line := range strings.Split(log, "\n") {
		if strings.HasPrefix(line, "Error: ") {
			return line
		}
	}
	return ""
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// runCollector starts the built collector with config; stop sends SIGTERM
// and waits (the exporters flush on shutdown). The log holds stdout and
// stderr.
func runCollector(t *testing.T, config string) (logPath string, stop func()) {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	require.NoError(t, os.WriteFile(cfgPath, []byte(config), 0o600))
	logPath = filepath.Join(dir, "collector.log")
	logFile, err := os.Create(logPath)
	require.NoError(t, err)
	cmd := exec.Command(builtCollector(t), "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("the collector did not stop within 20 s of SIGTERM")
		}
		logFile.Close()
	}
	t.Cleanup(stop)
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(logPath)
		return bytes.Contains(b, []byte("Everything is ready"))
	}, 60*time.Second, 50*time.Millisecond, "the collector starts")
	return logPath, stop
}

// TestSecurityNoSecretLeavesTheCollector runs the built collector in the
// default configuration (file exporter and detailed debug exporter, debug
// logging, filtered to a test cgroup) while children send PostgreSQL
// queries with secrets in literals and bind parameters, and gRPC calls with
// a secret in a custom metadata header and in the message. No secret may
// appear in anything the collector wrote.
func TestSecurityNoSecretLeavesTheCollector(t *testing.T) {
	privileged.Require(t)
	g := cgroup.New(t)
	pg := pgserver.Start(t, g)
	_, addr := robGRPCServerIn(t, g)

	out := filepath.Join(t.TempDir(), "telemetry.json")
	logPath, stop := runCollector(t, fmt.Sprintf(`
receivers:
  ebpf:
    filter: {cgroups: [%s]}
    map_pressure: {enabled: false}
    self_metrics_interval: 500ms
    limits: {ring_buffer_poll_interval: 1ms}
exporters:
  debug: {verbosity: detailed}
  file: {path: %s}
service:
  telemetry:
    metrics: {level: none}
    logs: {level: debug}
  pipelines:
    traces: {receivers: [ebpf], exporters: [debug, file]}
    metrics: {receivers: [ebpf], exporters: [debug, file]}
`, g.Path, out))

	raw := make([]byte, 8)
	_, err := rand.Read(raw)
	require.NoError(t, err)
	secret := "Zk9" + hex.EncodeToString(raw)
	env := []string{robSecretEnv + "=" + secret}
	robRun(t, g, time.Minute, env, "pg", pg.URL("postgres"), "secrets")
	robRun(t, g, time.Minute, env, "grpc-call", addr, "3")

	// The spans of every statement and call arrived (the test must not
	// pass by seeing nothing), with literals replaced.
	want := []string{
		`"SELECT count(*) FROM pg_class WHERE relname = ?"`,
		`"SELECT count(*) FROM pg_class WHERE relname = $1"`,
		`"INSERT INTO robust_secrets (v) VALUES ($1)"`,
		`"INSERT INTO robust_secrets (v) VALUES (?)"`,
		`"SELECT $1::int"`,
		`"SELECT ?::int"`,
		`"robust.Probe/Echo"`,
	}
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(out)
		for _, w := range want {
			if !bytes.Contains(b, []byte(w)) {
				return false
			}
		}
		// Three calls, each seen by the client and the server.
		return bytes.Count(b, []byte(`"name":"robust.Probe/Echo"`)) >= 6
	}, 30*time.Second, 100*time.Millisecond, "the file exporter holds every span")
	time.Sleep(time.Second) // the metrics pipeline reports the parsers' counters too
	stop()

	spans, err := os.ReadFile(out)
	require.NoError(t, err)
	logText, err := os.ReadFile(logPath)
	require.NoError(t, err)
	require.Contains(t, string(logText), "robust.Probe/Echo", "the debug exporter printed the spans")
	outputs := map[string][]byte{"file exporter output": spans, "collector log": logText}

	planted := []string{"hdr-" + secret, "payload-" + secret}
	for _, q := range robSecretQueries(secret) {
		planted = append(planted, q.tag+secret)
	}
	for _, p := range planted {
		t.Run(strings.TrimSuffix(p, secret), func(t *testing.T) {
			for what, text := range outputs {
				if i := bytes.Index(text, []byte(p)); i >= 0 {
					t.Errorf("%q leaked into the %s: ...%s...", p, what, text[max(0, i-200):min(len(text), i+len(p)+40)])
				}
			}
		})
	}
	// Nor anywhere else, under another prefix.
	for what, text := range outputs {
		n := bytes.Count(text, []byte(secret))
		for _, p := range planted {
			n -= bytes.Count(text, []byte(p))
		}
		assert.Zero(t, n, "the secret appears in the %s outside the planted values", what)
	}
}
