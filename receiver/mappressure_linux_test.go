//go:build linux

package receiver

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/receiver/receivertest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/bpfprog"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// mapPoint returns, from the newest batch holding map gauges, the data point
// of metric name for the map with this id, whether the map was in that
// batch, and whether any batch held map gauges.
func mapPoint(sink *consumertest.MetricsSink, name string, id ebpf.MapID) (pmetric.NumberDataPoint, bool, bool) {
	return newestPoint(sink, "ebpf.map.max_entries", name, "ebpf.map.id", int64(id))
}

// newestPoint returns, from the newest batch holding metric marker, the data
// point of metric name (a gauge or a sum) whose int attribute attr equals id,
// whether it was in that batch, and whether any batch held marker.
func newestPoint(sink *consumertest.MetricsSink, marker, name, attr string, id int64) (pmetric.NumberDataPoint, bool, bool) {
	all := sink.AllMetrics()
	for i := len(all) - 1; i >= 0; i-- {
		var found, batchHasMarker bool
		var dp pmetric.NumberDataPoint
		rms := all[i].ResourceMetrics()
		for r := 0; r < rms.Len(); r++ {
			sms := rms.At(r).ScopeMetrics()
			for s := 0; s < sms.Len(); s++ {
				ms := sms.At(s).Metrics()
				for m := 0; m < ms.Len(); m++ {
					if ms.At(m).Name() == marker {
						batchHasMarker = true
					}
					if ms.At(m).Name() != name {
						continue
					}
					var dps pmetric.NumberDataPointSlice
					switch ms.At(m).Type() {
					case pmetric.MetricTypeGauge:
						dps = ms.At(m).Gauge().DataPoints()
					case pmetric.MetricTypeSum:
						dps = ms.At(m).Sum().DataPoints()
					default:
						continue
					}
					for d := 0; d < dps.Len(); d++ {
						v, ok := dps.At(d).Attributes().Get(attr)
						if ok && v.Int() == id {
							dp, found = dps.At(d), true
						}
					}
				}
			}
		}
		if batchHasMarker {
			return dp, found, true
		}
	}
	return pmetric.NewNumberDataPoint(), false, false
}

func TestMapPressureGaugesAndCrossings(t *testing.T) {
	privileged.Require(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "rcv_test_hash", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 10})
	require.NoError(t, err)
	defer m.Close()
	info, err := m.Info()
	require.NoError(t, err)
	id, ok := info.ID()
	require.True(t, ok)
	for k := uint32(0); k < 8; k++ {
		require.NoError(t, m.Put(k, k))
	}
	// A second map keeps the host from having no map at all once the first
	// is deleted (a scrape of no maps emits nothing).
	witness, err := ebpf.NewMap(&ebpf.MapSpec{Name: "rcv_witness", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	require.NoError(t, err)
	defer witness.Close()

	core, logs := observer.New(zapcore.InfoLevel)
	set := receivertest.NewNopSettings(metadata.Type)
	set.Logger = zap.New(core)
	cfg := createDefaultConfig().(*Config)
	cfg.Filter.PIDs = []int{os.Getpid()} // the receiver never captures itself: no traffic
	cfg.MapPressure.CollectionInterval = 100 * time.Millisecond
	sink := new(consumertest.MetricsSink)
	r, err := NewFactory().CreateMetrics(context.Background(), set, cfg, sink)
	require.NoError(t, err)
	require.NoError(t, r.Start(context.Background(), componenttest.NewNopHost()))
	defer func() { require.NoError(t, r.Shutdown(context.Background())) }()

	// Start says how hash maps are counted. The iterator calling the
	// bpf_map_sum_elem_count kfunc loads on Linux >= 6.6 (mode kfunc); an
	// older kernel refuses it and the sampler counts from user space with
	// BPF_MAP_LOOKUP_BATCH (mode userspace, default
	// userspace_count_max_entries) and says why (docs/map-pressure.md).
	loaded := logs.FilterMessage("ebpf receiver: map pressure sampler loaded").All()
	require.Len(t, loaded, 1, "Start logs the sampler's mode once")
	fields := loaded[0].ContextMap()
	if kernelAtLeast(t, 6, 6) {
		require.Equal(t, "kfunc", fields["mode"])
		require.NotContains(t, fields, "fallback_reason")
	} else {
		require.Equal(t, "userspace", fields["mode"])
		require.Contains(t, fields, "fallback_reason")
	}

	require.Eventually(t, func() bool {
		dp, found, _ := mapPoint(sink, "ebpf.map.entries", id)
		return found && dp.IntValue() == 8
	}, 10*time.Second, 20*time.Millisecond, "the map's exact element count is reported")
	dp, found, _ := mapPoint(sink, "ebpf.map.max_entries", id)
	require.True(t, found)
	require.Equal(t, int64(10), dp.IntValue())
	attrs := dp.Attributes().AsRaw()
	require.Equal(t, "rcv_test_hash", attrs["ebpf.map.name"])
	require.Equal(t, "hash", attrs["ebpf.map.type"])
	dp, found, _ = mapPoint(sink, "ebpf.map.utilization", id)
	require.True(t, found)
	require.InDelta(t, 0.8, dp.DoubleValue(), 1e-9)
	dp, found, _ = mapPoint(sink, "ebpf.map.memory", id)
	require.True(t, found)
	require.Positive(t, dp.IntValue())

	// Several scrapes at 0.8 give one warning for the crossing, not one
	// per scrape.
	time.Sleep(500 * time.Millisecond)
	crossings := func(level zapcore.Level) int {
		n := 0
		for _, e := range logs.FilterMessage("ebpf receiver: eBPF map pressure level changed").All() {
			if e.Level == level && e.ContextMap()["ebpf.map.id"] == uint32(id) {
				n++
			}
		}
		return n
	}
	require.Equal(t, 1, crossings(zapcore.WarnLevel))

	for k := uint32(0); k < 6; k++ {
		require.NoError(t, m.Delete(k))
	}
	require.Eventually(t, func() bool {
		dp, found, _ := mapPoint(sink, "ebpf.map.entries", id)
		return found && dp.IntValue() == 2
	}, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { return crossings(zapcore.InfoLevel) == 1 }, 5*time.Second, 20*time.Millisecond,
		"falling back below the thresholds is logged once")
	require.Equal(t, 1, crossings(zapcore.WarnLevel))

	require.NoError(t, m.Close())
	require.Eventually(t, func() bool {
		_, found, batch := mapPoint(sink, "ebpf.map.max_entries", id)
		return batch && !found
	}, 10*time.Second, 20*time.Millisecond, "a deleted map is no longer reported")
}

// TestMapPressureRingBufferGauges fills a ring buffer of the test's own to a
// known byte count from the kernel side and checks what the receiver
// records for it through the MetricsBuilder.
func TestMapPressureRingBufferGauges(t *testing.T) {
	privileged.Require(t)
	// A ring buffer's max_entries is its data size in bytes: a power of two
	// and a multiple of the page size.
	const rbSize = 16384
	rb, err := ebpf.NewMap(&ebpf.MapSpec{Name: "rcv_test_ring", Type: ebpf.RingBuf, MaxEntries: rbSize})
	require.NoError(t, err)
	defer rb.Close()
	info, err := rb.Info()
	require.NoError(t, err)
	id, ok := info.ID()
	require.True(t, ok)
	// bpf_ringbuf_output reserves round_up(len + BPF_RINGBUF_HDR_SZ, 8):
	// 13 payload bytes + the 8-byte header = 21, rounded up to 24. Nobody
	// consumes, so producer_pos - consumer_pos = runs * 24.
	const runs, payload, recBytes = 100, 13, 24
	writer := bpfprog.RingbufWriter(t, "rcv_rb_writer", rb, payload)
	_, err = writer.Run(&ebpf.RunOptions{Data: make([]byte, 14), Repeat: runs})
	require.NoError(t, err)

	cfg := createDefaultConfig().(*Config)
	cfg.Filter.PIDs = []int{os.Getpid()} // the receiver never captures itself: no traffic
	cfg.MapPressure.CollectionInterval = 100 * time.Millisecond
	sink := new(consumertest.MetricsSink)
	r, err := NewFactory().CreateMetrics(context.Background(), receivertest.NewNopSettings(metadata.Type), cfg, sink)
	require.NoError(t, err)
	require.NoError(t, r.Start(context.Background(), componenttest.NewNopHost()))
	defer func() { require.NoError(t, r.Shutdown(context.Background())) }()

	require.Eventually(t, func() bool {
		_, found, _ := mapPoint(sink, "ebpf.ringbuf.used", id)
		return found
	}, 10*time.Second, 20*time.Millisecond, "the ring buffer's fill is reported")
	wantAttrs := map[string]any{"ebpf.map.id": int64(id), "ebpf.map.name": "rcv_test_ring", "ebpf.map.type": "ringbuf"}
	point := func(name string) pmetric.NumberDataPoint {
		t.Helper()
		dp, found, _ := mapPoint(sink, name, id)
		require.True(t, found, "%s for the ring buffer", name)
		require.Equal(t, wantAttrs, dp.Attributes().AsRaw(), name)
		return dp
	}
	require.Equal(t, int64(runs*recBytes), point("ebpf.ringbuf.used").IntValue())
	require.Equal(t, int64(rbSize), point("ebpf.ringbuf.size").IntValue())
	require.Equal(t, int64(rbSize), point("ebpf.map.max_entries").IntValue())
	// docs/map-pressure.md: a ring buffer's utilization is used / size
	// bytes, and it has no element count.
	require.InDelta(t, float64(runs*recBytes)/rbSize, point("ebpf.map.utilization").DoubleValue(), 1e-9)
	_, found, batch := mapPoint(sink, "ebpf.map.entries", id)
	require.True(t, batch)
	require.False(t, found, "a ring buffer reports no ebpf.map.entries")
}

// kernelAtLeast reports whether the running kernel is major.minor or newer.
func kernelAtLeast(t testing.TB, major, minor int) bool {
	t.Helper()
	var u unix.Utsname
	require.NoError(t, unix.Uname(&u))
	release := unix.ByteSliceToString(u.Release[:])
	var ma, mi int
	_, err := fmt.Sscanf(release, "%d.%d", &ma, &mi)
	require.NoError(t, err, "kernel release %q", release)
	return ma > major || (ma == major && mi >= minor)
}
