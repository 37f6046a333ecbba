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
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/cgroup"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/pgserver"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
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
// OTLP receiver in another. The collector cannot run the ebpf receiver, and
// a receiver that fails to start stops the collector: it must say exactly
// which capabilities are missing, whichever of its components would load
// first, shut the rest down cleanly (no panic, no hang, its ports released)
// and exit promptly with an error.
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
