//go:build linux

package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/cgroup"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/ghz"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
)

// ghzCalls is the number of calls ghz makes (-n), over -c 8 workers and
// --connections 2.
const ghzCalls = 2000

const healthServerEnv = "EBPF_DEPLOY_HEALTH_SERVER"

// TestHealthServerHelper is not a test: in a child process it serves
// grpc-go's health service on loopback and prints its address.
func TestHealthServerHelper(t *testing.T) {
	if os.Getenv(healthServerEnv) == "" {
		t.Skip("helper process only")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		os.Exit(2)
	}
	srv := grpc.NewServer()
	grpc_health_v1.RegisterHealthServer(srv, health.NewServer())
	fmt.Println(ln.Addr().String())
	_ = srv.Serve(ln)
}

// ghzBinary is installed by `make ghz` (a prerequisite of `make test`,
// which passes its path in GHZ).
func ghzBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("GHZ")
	if bin == "" {
		t.Skip("GHZ is not set: run through `make test`, which installs ghz and sets it")
	}
	_, err := os.Stat(bin)
	require.NoError(t, err, "GHZ=%s", bin)
	return bin
}

// countCalls counts the Health/Check spans in the file exporter's output
// (one OTLP JSON document per line) by kind, and whether any is not OK.
func countCalls(t *testing.T, path string) (client, server, notOK int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, 0
	}
	var um ptrace.JSONUnmarshaler
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		td, err := um.UnmarshalTraces(sc.Bytes())
		if err != nil {
			continue // a line being written
		}
		for i := 0; i < td.ResourceSpans().Len(); i++ {
			sss := td.ResourceSpans().At(i).ScopeSpans()
			for j := 0; j < sss.Len(); j++ {
				spans := sss.At(j).Spans()
				for k := 0; k < spans.Len(); k++ {
					sp := spans.At(k)
					if sp.Name() != "grpc.health.v1.Health/Check" {
						notOK++
						continue
					}
					if code, _ := sp.Attributes().Get("rpc.response.status_code"); code.Str() != "OK" {
						notOK++
					}
					switch sp.Kind() {
					case ptrace.SpanKindClient:
						client++
					case ptrace.SpanKindServer:
						server++
					}
				}
			}
		}
	}
	return client, server, notOK
}

// Load from ghz against a grpc-go server, both watched by the built
// collector: one CLIENT span (ghz's end) and one SERVER span per call ghz
// completed, all OK, and no other span.
func TestCollectorGRPCSpansEqualGhzCalls(t *testing.T) {
	privileged.Require(t)
	bin := ghzBinary(t)
	g := cgroup.New(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "spans.json")
	log := startCollector(t, fmt.Sprintf(`
receivers:
  ebpf:
    filter: {cgroups: [%s]}
    map_pressure: {enabled: false}
    limits: {ring_buffer_poll_interval: 1ms}
exporters:
  file: {path: %s}
service:
  telemetry:
    metrics: {level: none}
  pipelines:
    traces: {receivers: [ebpf], exporters: [file]}
`, g.Path, out))
	waitForLog(t, log, "Everything is ready")

	server := exec.Command(os.Args[0], "-test.run=^TestHealthServerHelper$")
	g.Into(server)
	server.Env = append(os.Environ(), healthServerEnv+"=1")
	stdout, err := server.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, server.Start())
	t.Cleanup(func() { _ = server.Process.Kill(); _ = server.Wait() })
	var addr string
	_, err = fmt.Fscanln(stdout, &addr)
	require.NoError(t, err)

	protoset := filepath.Join(dir, "health.protoset")
	require.NoError(t, ghz.WriteHealthProtoset(protoset))
	load := exec.Command(bin, "--insecure", "--protoset", protoset, "--call", ghz.HealthMethod, "-d", "{}",
		"-n", strconv.Itoa(ghzCalls), "-c", "8", "--connections", "2", "-O", "json", addr)
	g.Into(load)
	res, err := ghz.Run(load)
	require.NoError(t, err)
	require.Equal(t, int64(ghzCalls), res.Count)
	require.Equal(t, map[string]int64{"OK": ghzCalls}, res.Status, "ghz's calls all completed OK")

	var client, server2, notOK int
	require.Eventually(t, func() bool {
		client, server2, notOK = countCalls(t, out)
		return client >= ghzCalls && server2 >= ghzCalls
	}, 60*time.Second, 250*time.Millisecond, "spans for ghz's %d calls", ghzCalls)
	time.Sleep(time.Second)
	client, server2, notOK = countCalls(t, out)
	require.Equal(t, int(res.Count), client, "CLIENT spans (ghz's end) equal ghz's completed calls")
	require.Equal(t, int(res.Count), server2, "SERVER spans equal ghz's completed calls")
	require.Zero(t, notOK, "no span of another name or status")
	logText, err := os.ReadFile(log)
	require.NoError(t, err)
	require.NotContains(t, string(logText), "\terror\t", "the collector logged no error")
}
