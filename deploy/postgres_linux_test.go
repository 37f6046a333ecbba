//go:build linux

package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/pgserver"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
)

// The built collector, filtered to a PostgreSQL port, writes the spans of
// psql's queries to the debug exporter and to the file exporter, and no
// query literal reaches either in the default configuration.
func TestCollectorPostgresSpansToDebugAndFile(t *testing.T) {
	privileged.Require(t)
	pg := pgserver.Start(t, nil)
	out := filepath.Join(t.TempDir(), "spans.json")
	log := startCollector(t, fmt.Sprintf(`
receivers:
  ebpf:
    filter: {ports: [%d]}
    map_pressure: {enabled: false}
    limits: {ring_buffer_poll_interval: 1ms}
exporters:
  debug: {verbosity: detailed}
  file: {path: %s}
service:
  telemetry:
    metrics: {level: none}
  pipelines:
    traces: {receivers: [ebpf], exporters: [debug, file]}
`, pg.Port, out))
	waitForLog(t, log, "Everything is ready")

	const secret = "s3cr3t-literal-7781"
	psql := exec.Command("/usr/bin/psql", "-X", "-h", "127.0.0.1", "-p", fmt.Sprint(pg.Port), "-U", "postgres", "-d", "postgres",
		"-c", "SELECT count(*) FROM pg_class WHERE relname = '"+secret+"'")
	b, err := psql.CombinedOutput()
	require.NoError(t, err, "%s", b)

	require.Eventually(t, func() bool {
		spans, _ := os.ReadFile(out)
		return bytes.Contains(spans, []byte(`"SELECT pg_class"`)) && bytes.Count(spans, []byte(`"kind":3`)) >= 1
	}, 30*time.Second, 100*time.Millisecond, "the file exporter holds psql's CLIENT span")
	spans, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Contains(t, string(spans), `SELECT count(*) FROM pg_class WHERE relname = ?`)
	require.Contains(t, string(spans), `"kind":2`, "the backend's SERVER span too")
	waitForLog(t, log, "SELECT pg_class")

	logText, err := os.ReadFile(log)
	require.NoError(t, err)
	for what, text := range map[string][]byte{"file exporter output": spans, "collector log": logText} {
		require.False(t, strings.Contains(string(text), secret), "the literal leaked into the %s", what)
	}
}

func waitForLog(t *testing.T, path, text string) {
	t.Helper()
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Contains(b, []byte(text))
	}, 30*time.Second, 50*time.Millisecond, "collector log shows %q", text)
}
