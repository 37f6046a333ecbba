//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// collectorConfig is the B side: the ebpf receiver filtered to one cgroup,
// spans to a cheap sink, map pressure on (default 10 s interval), the
// receiver's own counters every second on a Prometheus endpoint.
func collectorConfig(filterCgroup string, promPort, telPort int, sink string) string {
	exporter := "debug"
	exporterCfg := "  debug:\n    verbosity: basic\n"
	if sink == "file" {
		exporter = "file"
		exporterCfg = "  file:\n    path: /dev/null\n    format: proto\n"
	}
	return fmt.Sprintf(`receivers:
  ebpf:
    filter:
      cgroups: [%q]
    map_pressure:
      enabled: true
    self_metrics_interval: 1s
exporters:
%s  prometheus:
    endpoint: 127.0.0.1:%d
service:
  telemetry:
    logs:
      level: info
    metrics:
      level: basic
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: %d
  pipelines:
    traces:
      receivers: [ebpf]
      exporters: [%s]
    metrics:
      receivers: [ebpf]
      exporters: [prometheus]
`, filterCgroup, exporterCfg, promPort, telPort, exporter)
}

// lastCollectorConfig is reported with the results.
var lastCollectorConfig atomic.Pointer[string]

type collector struct {
	cmd      *exec.Cmd
	Pid      int
	LogPath  string
	promURL  string
	telURL   string
	done     chan struct{}
	StartSec float64 // from exec to the first self-metrics scrape
	// SettleSec and SettleCPU: from ready until the collector's own CPU
	// use fell to idle (its start-up work done: the /proc scan for open
	// sockets, inspecting the watched processes' executables and
	// libraries for TLS probes), and the CPU seconds it used meanwhile.
	SettleSec, SettleCPU float64
	lastHWM              int64 // VmHWM (kB) at the last read
}

type collectorOpts struct {
	Bin          string
	Dir          string // for config and log
	FilterCgroup string
	Sink         string
	Cgroup       *cgroup // the cgroup the collector process runs in (for CPU accounting)
}

func startCollector(ctx context.Context, o collectorOpts) (*collector, error) {
	promPort, err := freePort()
	if err != nil {
		return nil, err
	}
	telPort, err := freePort()
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(o.Dir, "collector.yaml")
	cfg := collectorConfig(o.FilterCgroup, promPort, telPort, o.Sink)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	recordCommand("collector (B runs)", []string{o.Bin, "--config", "collector.yaml"})
	lastCollectorConfig.Store(&cfg)
	logPath := filepath.Join(o.Dir, "collector.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	name, args := niced(o.Bin, "--config", cfgPath)
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if o.Cgroup != nil {
		o.Cgroup.into(cmd)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	c := &collector{
		cmd: cmd, Pid: cmd.Process.Pid, LogPath: logPath,
		promURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", promPort),
		telURL:  fmt.Sprintf("http://127.0.0.1:%d/metrics", telPort),
		done:    make(chan struct{}),
	}
	go func() { _ = cmd.Wait(); logFile.Close(); close(c.done) }()
	atExit(func() { c.stop() })

	// Ready: the receiver's self metrics are on the Prometheus endpoint.
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-c.done:
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("collector exited during start-up:\n%s", tail(b, 3000))
		default:
		}
		if m, err := scrape(c.promURL); err == nil {
			if _, ok := m.get("ebpf_capture_records_total", nil); ok {
				c.StartSec = time.Since(t0).Seconds()
				return c, c.settle(ctx)
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("collector not ready after 60 s:\n%s", tail(b, 3000))
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// stop sends SIGTERM (the receiver detaches and unloads its programs),
// SIGKILL after 90 s. Detaching tracepoint programs waits for RCU grace
// periods: on a loaded machine a stop can take tens of seconds.
func (c *collector) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(90 * time.Second):
		logf("collector did not stop in 90 s: killed")
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// metrics is a parsed Prometheus text exposition: name -> samples.
type metrics map[string][]sample

type sample struct {
	Labels map[string]string
	Value  float64
}

func (m metrics) get(name string, want map[string]string) (float64, bool) {
	for _, s := range m[name] {
		ok := true
		for k, v := range want {
			ok = ok && s.Labels[k] == v
		}
		if ok {
			return s.Value, true
		}
	}
	return 0, false
}

// byLabel sums the samples of name by the value of one label.
func (m metrics) byLabel(name, label string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range m[name] {
		out[s.Labels[label]] += s.Value
	}
	return out
}

func (m metrics) sum(name string) float64 {
	var t float64
	for _, s := range m[name] {
		t += s.Value
	}
	return t
}

func scrape(url string) (metrics, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, http.NoBody)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return parseExposition(b), nil
}

func parseExposition(b []byte) metrics {
	m := metrics{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		var name, labels, rest string
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			name, labels, rest = line[:i], line[i+1:j], strings.TrimSpace(line[j+1:])
		} else {
			var ok bool
			name, rest, ok = strings.Cut(line, " ")
			if !ok {
				continue
			}
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		m[name] = append(m[name], sample{Labels: parseLabels(labels), Value: v})
	}
	return m
}

func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for s != "" {
		k, rest, ok := strings.Cut(s, "=\"")
		if !ok {
			break
		}
		var v strings.Builder
		i := 0
		for ; i < len(rest); i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
				v.WriteByte(rest[i])
				continue
			}
			if rest[i] == '"' {
				break
			}
			v.WriteByte(rest[i])
		}
		out[strings.TrimSpace(k)] = v.String()
		s = strings.TrimPrefix(rest[min(i+1, len(rest)):], ",")
	}
	return out
}

// Settling: the collector is idle when it used less than settleIdle of a
// core over settleWindow; settleMax bounds the wait.
const (
	settleWindow = 500 * time.Millisecond
	settleIdle   = 0.05
	settleMax    = 15 * time.Second
)

// settle waits until the collector's start-up work is done, so that the
// B runs measure its steady state: the first workload of a B block would
// otherwise share the cores with a second or more of start-up work (most
// of it inspecting the Go executables in the server cgroup for TLS
// probes). What start-up cost is reported on its own.
func (c *collector) settle(ctx context.Context) error {
	t0, cpu0 := time.Now(), procCPU(c.Pid)
	prev := cpu0
	for time.Since(t0) < settleMax {
		if err := sleep(ctx, settleWindow); err != nil {
			return err
		}
		cur := procCPU(c.Pid)
		if (cur-prev)/settleWindow.Seconds() < settleIdle {
			break
		}
		prev = cur
	}
	c.SettleSec, c.SettleCPU = time.Since(t0).Seconds(), procCPU(c.Pid)-cpu0
	return nil
}
