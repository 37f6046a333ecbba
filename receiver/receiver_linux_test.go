//go:build linux

package receiver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/ebpfotel/ebpfreceiver/internal/capture"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// The receiver never captures its own process, so traffic comes from a
// child: this test binary run again in helper mode.
const helperEnv = "EBPF_RECEIVER_TEST_HELPER"

// TestHelperProcess is not a test: in the child it waits for a line on
// stdin naming a TCP address, sends a payload there, reads the echo, and
// exits.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "tcp" {
		t.Skip("helper process only")
	}
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil {
		os.Exit(2)
	}
	var addr string
	var size int
	if _, err := fmt.Sscanf(strings.TrimSpace(line), "%s %d", &addr, &size); err != nil {
		os.Exit(3)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		os.Exit(4)
	}
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	if _, err := c.Write(payload); err != nil {
		os.Exit(5)
	}
	if _, err := io.ReadFull(c, payload); err != nil {
		os.Exit(6)
	}
	c.Close()
	os.Exit(0)
}

type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

func startChild(t *testing.T) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"=tcp")
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return &child{cmd: cmd, stdin: stdin}
}

// echoServer accepts one connection and echoes size bytes.
func echoServer(t *testing.T, size int) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, size)
		if _, err := io.ReadFull(c, buf); err == nil {
			_, _ = c.Write(buf)
		}
	}()
	return ln
}

// newestMetric returns metric name from the newest batch that has it.
func newestMetric(sink *consumertest.MetricsSink, name string) (pmetric.Metric, bool) {
	all := sink.AllMetrics()
	for i := len(all) - 1; i >= 0; i-- {
		rms := all[i].ResourceMetrics()
		for r := 0; r < rms.Len(); r++ {
			sms := rms.At(r).ScopeMetrics()
			for s := 0; s < sms.Len(); s++ {
				ms := sms.At(s).Metrics()
				for m := 0; m < ms.Len(); m++ {
					if ms.At(m).Name() == name {
						return ms.At(m), true
					}
				}
			}
		}
	}
	return pmetric.Metric{}, false
}

// sumPoints sums the integer data points of a sum or gauge whose attributes
// include attrs.
func sumPoints(m pmetric.Metric, attrs map[string]string) int64 {
	var dps pmetric.NumberDataPointSlice
	if m.Type() == pmetric.MetricTypeSum {
		dps = m.Sum().DataPoints()
	} else {
		dps = m.Gauge().DataPoints()
	}
	var total int64
	for d := 0; d < dps.Len(); d++ {
		match := true
		for k, want := range attrs {
			v, ok := dps.At(d).Attributes().Get(k)
			match = match && ok && v.AsString() == want
		}
		if match {
			total += dps.At(d).IntValue()
		}
	}
	return total
}

// latest returns the value of a sum or gauge metric in the newest batch
// that has it, summed over the data points of reason ("" for all).
func latest(sink *consumertest.MetricsSink, name string, reason string) (int64, bool) {
	var attrs map[string]string
	if reason != "" {
		attrs = map[string]string{"reason": reason}
	}
	return robMetric(sink, name, attrs)
}

func TestReceiverCapturesAWatchedProcessAndUnloadsOnShutdown(t *testing.T) {
	privileged.Require(t)
	const size = 3000
	ch := startChild(t)
	ln := echoServer(t, size)

	cfg := createDefaultConfig().(*Config)
	cfg.Filter.PIDs = []int{ch.cmd.Process.Pid}
	cfg.SelfMetricsInterval = 100 * time.Millisecond
	cfg.MapPressure.Enabled = false
	cfg.Limits.RingBufferPollInterval = time.Millisecond

	set := receivertest.NewNopSettings(metadata.Type)
	metrics := new(consumertest.MetricsSink)
	traces := new(consumertest.TracesSink)
	f := NewFactory()
	tr, err := f.CreateTraces(context.Background(), set, cfg, traces)
	require.NoError(t, err)
	mr, err := f.CreateMetrics(context.Background(), set, cfg, metrics)
	require.NoError(t, err)
	require.Same(t, tr, mr, "traces and metrics of one component id share one receiver")

	host := componenttest.NewNopHost()
	require.NoError(t, tr.Start(context.Background(), host))
	require.NoError(t, mr.Start(context.Background(), host))

	_, err = fmt.Fprintf(ch.stdin, "%s %d\n", ln.Addr().String(), size)
	require.NoError(t, err)
	require.NoError(t, ch.cmd.Wait(), "the child's exchange succeeded")

	require.Eventually(t, func() bool {
		b, ok := latest(metrics, "ebpf.capture.bytes", "")
		return ok && b >= 2*size // written and echoed back, seen from the child
	}, 10*time.Second, 20*time.Millisecond, "captured bytes of the watched child are reported")
	records, _ := latest(metrics, "ebpf.capture.records", "")
	require.Positive(t, records)
	drops, ok := latest(metrics, "ebpf.capture.drops", "ringbuf_full")
	require.True(t, ok)
	require.Zero(t, drops)
	require.Eventually(t, func() bool {
		closed, _ := latest(metrics, "ebpf.capture.connections.ended", "closed")
		return closed >= 1
	}, 10*time.Second, 20*time.Millisecond, "the child's close(2) ends its connection")

	names, err := capture.ProgramNames()
	require.NoError(t, err)
	held := privileged.ProgramsHeldBySelf(t)
	require.GreaterOrEqual(t, len(held), len(names))
	require.NoError(t, tr.Shutdown(context.Background()))
	require.NoError(t, mr.Shutdown(context.Background()), "Shutdown is idempotent")
	privileged.RequireUnloaded(t, held)
	require.Empty(t, privileged.ProgramsHeldBySelf(t), "no program of ours stays loaded after Shutdown")
}

func TestShutdownWithoutStart(t *testing.T) {
	set := receivertest.NewNopSettings(metadata.Type)
	r, err := NewFactory().CreateMetrics(context.Background(), set, createDefaultConfig(), consumertest.NewNop())
	require.NoError(t, err)
	require.NoError(t, r.Shutdown(context.Background()))
	require.Error(t, r.Start(context.Background(), componenttest.NewNopHost()), "Start after Shutdown loads nothing")
}

func TestStartFailsClearlyOnABadCgroup(t *testing.T) {
	privileged.Require(t)
	cfg := createDefaultConfig().(*Config)
	cfg.Filter.Cgroups = []string{"/sys/fs/cgroup/does-not-exist-ebpf-test"}
	cfg.MapPressure.Enabled = false
	set := receivertest.NewNopSettings(metadata.Type)
	r, err := NewFactory().CreateTraces(context.Background(), set, cfg, consumertest.NewNop())
	require.NoError(t, err)
	err = r.Start(context.Background(), componenttest.NewNopHost())
	require.ErrorContains(t, err, "filter.cgroups")
	require.NoError(t, r.Shutdown(context.Background()))
	require.Empty(t, privileged.ProgramsHeldBySelf(t), "a failed Start leaves nothing loaded")
}
