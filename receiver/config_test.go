package receiver

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/confmaptest"

	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

func TestLoadConfig(t *testing.T) {
	cm, err := confmaptest.LoadConf(filepath.Join("testdata", "config.yaml"))
	require.NoError(t, err)

	custom := createDefaultConfig().(*Config)
	custom.Filter = FilterConfig{
		Ports:       []int{5432, 50051},
		PIDs:        []int{1234},
		Cgroups:     []string{"/sys/fs/cgroup/system.slice/postgresql.service"},
		Executables: []string{"postgres", "api-server"},
	}
	custom.GRPC.Enabled = false
	custom.MapPressure.CollectionInterval = 30 * time.Second
	custom.MapPressure.WarningThreshold = 0.6
	custom.MapPressure.CriticalThreshold = 0.9
	custom.Limits = LimitsConfig{
		MaxConnections:         1000,
		CaptureBytes:           8192,
		CaptureTailBytes:       1024,
		RingBufferBytes:        4 << 20,
		RingBufferWakeupBytes:  64 << 10,
		RingBufferPollInterval: 5 * time.Millisecond,
		IdleTimeout:            2 * time.Minute,
		RequestIdleTimeout:     time.Minute,
	}
	custom.Postgres.QueryText = "raw"
	custom.Postgres.SpanKinds = []string{"server"}
	custom.Postgres.MaxPreparedStatements = 64
	custom.Postgres.MaxPendingRequests = 128
	custom.GRPC.MaxOpenStreams = 200
	custom.GRPC.LegacyAttributes = true
	custom.Resource.CommandLine = true
	custom.SelfMetricsInterval = 15 * time.Second
	custom.OnStartFailure = "keep_collector_running"
	custom.Metrics.EbpfProgramRunCount.Enabled = true

	tests := []struct {
		id       component.ID
		expected component.Config
	}{
		{id: component.NewID(metadata.Type), expected: createDefaultConfig()},
		{id: component.NewIDWithName(metadata.Type, "custom"), expected: custom},
	}
	for _, tt := range tests {
		t.Run(tt.id.String(), func(t *testing.T) {
			cfg := NewFactory().CreateDefaultConfig()
			sub, err := cm.Sub(tt.id.String())
			require.NoError(t, err)
			require.NoError(t, sub.Unmarshal(cfg))
			require.NoError(t, confmap.Validate(cfg))
			// The generated metric configs remember whether the user set
			// them; compare what the user sees.
			got, want := cfg.(*Config), tt.expected.(*Config)
			require.Equal(t, want.Filter, got.Filter)
			require.Equal(t, want.Postgres, got.Postgres)
			require.Equal(t, want.GRPC, got.GRPC)
			require.Equal(t, want.Resource, got.Resource)
			require.Equal(t, want.MapPressure, got.MapPressure)
			require.Equal(t, want.Limits, got.Limits)
			require.Equal(t, want.SelfMetricsInterval, got.SelfMetricsInterval)
			require.Equal(t, want.OnStartFailure, got.OnStartFailure)
			require.Equal(t, want.Metrics.EbpfProgramRunCount.Enabled, got.Metrics.EbpfProgramRunCount.Enabled)
			require.Equal(t, want.Metrics.EbpfCaptureDrops.Enabled, got.Metrics.EbpfCaptureDrops.Enabled)
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		modify  func(*Config)
		wantErr string
	}{
		{"default is valid", func(*Config) {}, ""},
		{"port zero", func(c *Config) { c.Filter.Ports = []int{0} }, "filter.ports: 0 is not a TCP port"},
		{"port too big", func(c *Config) { c.Filter.Ports = []int{70000} }, "filter.ports: 70000"},
		{"negative pid", func(c *Config) { c.Filter.PIDs = []int{-1} }, "filter.pids: -1 is not a process id"},
		{"relative cgroup", func(c *Config) { c.Filter.Cgroups = []string{"system.slice"} }, "filter.cgroups: \"system.slice\" must be an absolute"},
		{"too many cgroups", func(c *Config) { c.Filter.Cgroups = make([]string, 17) }, "filter.cgroups: at most 16"},
		{"long executable", func(c *Config) { c.Filter.Executables = []string{"a-very-long-process-name"} }, "filter.executables"},
		{"empty executable", func(c *Config) { c.Filter.Executables = []string{""} }, "filter.executables"},
		{"no connections", func(c *Config) { c.Limits.MaxConnections = 0 }, "limits.max_connections"},
		{"capture too small", func(c *Config) { c.Limits.CaptureBytes = 10 }, "limits.capture_bytes"},
		{"capture over kernel cap", func(c *Config) { c.Limits.CaptureBytes = 1 << 20 }, "limits.capture_bytes"},
		{"tail not below capture", func(c *Config) { c.Limits.CaptureTailBytes = c.Limits.CaptureBytes }, "limits.capture_tail_bytes"},
		{"ring not power of two", func(c *Config) { c.Limits.RingBufferBytes = 5000 }, "limits.ring_buffer_bytes"},
		{"ring too small", func(c *Config) { c.Limits.RingBufferBytes = 2048 }, "limits.ring_buffer_bytes"},
		{"wakeup over ring", func(c *Config) { c.Limits.RingBufferWakeupBytes = c.Limits.RingBufferBytes * 2 }, "limits.ring_buffer_wakeup_bytes"},
		{"no prepared statements", func(c *Config) { c.Postgres.MaxPreparedStatements = 0 }, "postgres.max_prepared_statements"},
		{"huge pending table", func(c *Config) { c.Postgres.MaxPendingRequests = 1 << 20 }, "postgres.max_pending_requests"},
		{"negative streams", func(c *Config) { c.GRPC.MaxOpenStreams = -1 }, "grpc.max_open_streams"},
		{"poll under a millisecond", func(c *Config) { c.Limits.RingBufferPollInterval = 100 * time.Microsecond }, "limits.ring_buffer_poll_interval"},
		{"idle too short", func(c *Config) { c.Limits.IdleTimeout = time.Millisecond }, "limits.idle_timeout"},
		{"map interval too short", func(c *Config) { c.MapPressure.CollectionInterval = time.Millisecond }, "map_pressure.collection_interval"},
		{"map interval ignored when off", func(c *Config) { c.MapPressure = MapPressureConfig{Enabled: false} }, ""},
		{"warning above 1", func(c *Config) { c.MapPressure.WarningThreshold = 1.5 }, "map_pressure.warning_threshold"},
		{"warning zero", func(c *Config) { c.MapPressure.WarningThreshold = 0 }, "map_pressure.warning_threshold"},
		{"critical below warning", func(c *Config) { c.MapPressure.CriticalThreshold = 0.5 }, "map_pressure.critical_threshold"},
		{"negative userspace count limit", func(c *Config) { c.MapPressure.UserspaceCountMaxEntries = -1 }, "map_pressure.userspace_count_max_entries"},
		{"self metrics interval", func(c *Config) { c.SelfMetricsInterval = 0 }, "self_metrics_interval"},
		{"request idle too short", func(c *Config) { c.Limits.RequestIdleTimeout = 0 }, "limits.request_idle_timeout"},
		{"query text mode", func(c *Config) { c.Postgres.QueryText = "masked" }, "postgres.query_text: \"masked\""},
		{"span kind", func(c *Config) { c.GRPC.SpanKinds = []string{"producer"} }, "grpc.span_kinds: \"producer\""},
		{"no span kinds", func(c *Config) { c.Postgres.SpanKinds = nil }, "postgres.span_kinds: list client"},
		{"no span kinds when off", func(c *Config) { c.Postgres.SpanKinds, c.Postgres.Enabled = nil, false }, ""},
		{"keep collector running", func(c *Config) { c.OnStartFailure = "keep_collector_running" }, ""},
		{"stop collector", func(c *Config) { c.OnStartFailure = "stop_collector" }, ""},
		{"start failure unknown", func(c *Config) { c.OnStartFailure = "ignore" }, "on_start_failure: \"ignore\" must be stop_collector or keep_collector_running"},
		{"start failure empty", func(c *Config) { c.OnStartFailure = "" }, "on_start_failure: \"\" must be"},
		{"start failure case", func(c *Config) { c.OnStartFailure = "Keep_Collector_Running" }, "on_start_failure: \"Keep_Collector_Running\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := createDefaultConfig().(*Config)
			tt.modify(cfg)
			err := confmap.Validate(cfg)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}
