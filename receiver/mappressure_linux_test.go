//go:build linux

package receiver

import (
	"context"
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

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// mapPoints returns, from the newest batch holding map gauges, the value of
// metric name for the map with this id, and whether the map was present.
func mapPoint(sink *consumertest.MetricsSink, name string, id ebpf.MapID) (pmetric.NumberDataPoint, bool, bool) {
	all := sink.AllMetrics()
	for i := len(all) - 1; i >= 0; i-- {
		var found, batchHasMaps bool
		var dp pmetric.NumberDataPoint
		rms := all[i].ResourceMetrics()
		for r := 0; r < rms.Len(); r++ {
			sms := rms.At(r).ScopeMetrics()
			for s := 0; s < sms.Len(); s++ {
				ms := sms.At(s).Metrics()
				for m := 0; m < ms.Len(); m++ {
					if ms.At(m).Name() == "ebpf.map.max_entries" {
						batchHasMaps = true
					}
					if ms.At(m).Name() != name {
						continue
					}
					dps := ms.At(m).Gauge().DataPoints()
					for d := 0; d < dps.Len(); d++ {
						v, ok := dps.At(d).Attributes().Get("ebpf.map.id")
						if ok && v.Int() == int64(id) {
							dp, found = dps.At(d), true
						}
					}
				}
			}
		}
		if batchHasMaps {
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
