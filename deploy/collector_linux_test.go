//go:build linux

package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
	"github.com/ebpfotel/ebpfreceiver/receiver"
)

// collectorBinary is built by `make otelcol` (a prerequisite of `make test`).
func collectorBinary(t *testing.T) string {
	t.Helper()
	bin, err := filepath.Abs(filepath.Join("..", "bin", "otelcol-ebpf"))
	require.NoError(t, err)
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s is missing: build it with `make otelcol` (`make test` does)", bin)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startCollector runs bin/otelcol-ebpf with config and stops it (SIGTERM,
// then SIGKILL after 10 s) when the test ends. It returns the path of the
// collector's log.
func startCollector(t *testing.T, config string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte(config), 0o600))
	logPath := filepath.Join(dir, "collector.log")
	logFile, err := os.Create(logPath)
	require.NoError(t, err)
	cmd := exec.Command(collectorBinary(t), "--config", path)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("collector log:\n%s", b)
		}
	})
	return logPath
}

// scrape fetches a Prometheus text exposition.
func scrape(url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, http.NoBody)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// sample finds the value of metric name whose labels include all of want.
func sample(exposition, name string, want map[string]string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(exposition))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		labels, value, ok := strings.Cut(line[len(name)+1:], "} ")
		if !ok {
			continue
		}
		match := true
		for k, v := range want {
			match = match && strings.Contains(labels, fmt.Sprintf("%s=%q", k, v))
		}
		if match {
			f, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
			return f, err == nil
		}
	}
	return 0, false
}

var (
	metricName = regexp.MustCompile(`\bebpf_[a-z_]+\b`)
	// Label names are not metrics: drop label matchers, grouping clauses
	// and label_values' label argument before looking for metric names.
	notMetrics = regexp.MustCompile(`\{[^}]*\}|\b(by|without) \([^)]*\)|,\s*[a-z_]+\)`)
)

// metricsIn lists the metric names a PromQL expression (or a Grafana
// label_values query) reads.
func metricsIn(expr string) []string {
	return metricName.FindAllString(notMetrics.ReplaceAllString(expr, " "), -1)
}

// families lists the metric names that have samples in an exposition.
func families(exposition string) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(exposition, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			out[line[:i]] = true
		}
	}
	return out
}

func TestCollectorExportsMapPressureForDashboardsAndAlerts(t *testing.T) {
	privileged.Require(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "e2e_pressure", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 10})
	require.NoError(t, err)
	defer m.Close()
	for k := uint32(0); k < 8; k++ {
		require.NoError(t, m.Put(k, k))
	}
	info, err := m.Info()
	require.NoError(t, err)
	id, _ := info.ID()

	port := freePort(t)
	// Capture is filtered to this test process, which the collector does
	// not trace (it makes no PostgreSQL or gRPC calls): only maps matter.
	startCollector(t, fmt.Sprintf(`
receivers:
  ebpf:
    filter: {pids: [%d]}
    map_pressure: {collection_interval: 200ms}
    self_metrics_interval: 200ms
exporters:
  prometheus:
    endpoint: 127.0.0.1:%d
  debug: {}
service:
  telemetry:
    metrics: {level: none}
  pipelines:
    metrics: {receivers: [ebpf], exporters: [prometheus]}
    traces: {receivers: [ebpf], exporters: [debug]}
`, os.Getpid(), port))

	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	labels := map[string]string{"ebpf_map_id": strconv.Itoa(int(id)), "ebpf_map_name": "e2e_pressure", "ebpf_map_type": "hash"}
	var text string
	require.Eventually(t, func() bool {
		text, err = scrape(url)
		v, ok := sample(text, "ebpf_map_entries", labels)
		return err == nil && ok && v == 8 && families(text)["ebpf_capture_drops_total"]
	}, 30*time.Second, 100*time.Millisecond, "the collector exposes the test map's element count and its own counters")
	maxEntries, ok := sample(text, "ebpf_map_max_entries", labels)
	require.True(t, ok)
	require.InDelta(t, 10.0, maxEntries, 0)
	util, ok := sample(text, "ebpf_map_utilization_ratio", labels)
	require.True(t, ok)
	require.InDelta(t, 0.8, util, 1e-9)
	mem, ok := sample(text, "ebpf_map_memory_bytes", labels)
	require.True(t, ok)
	require.Positive(t, mem)

	// Every metric the dashboard and the alert rules query is exposed.
	exposed := families(text)
	for _, name := range dashboardMetrics(t) {
		require.True(t, exposed[name], "dashboard queries %s, which the collector does not expose", name)
	}
	rules := alertRules(t)
	for _, r := range rules {
		for _, name := range metricsIn(r.Expr) {
			require.True(t, exposed[name], "alert %s queries %s, which the collector does not expose", r.Alert, name)
		}
	}

	// The alert thresholds are the receiver's defaults.
	def := receiver.NewFactory().CreateDefaultConfig().(*receiver.Config)
	thresholds := map[string]float64{}
	for _, r := range rules {
		if v := regexp.MustCompile(`>= ([0-9.]+)`).FindStringSubmatch(r.Expr); v != nil {
			thresholds[r.Alert], _ = strconv.ParseFloat(v[1], 64)
		}
	}
	require.InDelta(t, def.MapPressure.WarningThreshold, thresholds["EBPFMapPressureWarning"], 0)
	require.InDelta(t, def.MapPressure.CriticalThreshold, thresholds["EBPFMapPressureCritical"], 0)
}

func dashboardMetrics(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("grafana", "ebpf-map-pressure.json"))
	require.NoError(t, err)
	var dash struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Query any `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	require.NoError(t, json.Unmarshal(b, &dash))
	var names []string
	for _, p := range dash.Panels {
		require.NotEmpty(t, p.Targets)
		for _, tg := range p.Targets {
			found := metricsIn(tg.Expr)
			require.NotEmpty(t, found, "panel query %q names no metric", tg.Expr)
			names = append(names, found...)
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(string); ok {
			names = append(names, metricsIn(q)...)
		}
	}
	return names
}

type alertRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func alertRules(t *testing.T) []alertRule {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("prometheus", "ebpf-alerts.yaml"))
	require.NoError(t, err)
	var doc struct {
		Groups []struct {
			Name  string      `yaml:"name"`
			Rules []alertRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	require.NoError(t, dec.Decode(&doc))
	var rules []alertRule
	for _, g := range doc.Groups {
		rules = append(rules, g.Rules...)
	}
	require.NotEmpty(t, rules)
	return rules
}
