package receiver

import (
	"context"
	"time"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/receiver"

	"github.com/ebpfotel/ebpfreceiver/internal/grpc"
	"github.com/ebpfotel/ebpfreceiver/internal/postgres"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// NewFactory returns the factory of the `ebpf` receiver.
func NewFactory() receiver.Factory {
	return receiver.NewFactory(
		metadata.Type,
		createDefaultConfig,
		receiver.WithTraces(createTraces, metadata.TracesStability),
		receiver.WithMetrics(createMetrics, metadata.MetricsStability),
	)
}

func createDefaultConfig() component.Config {
	return &Config{
		Postgres: PostgresConfig{
			Enabled: true, QueryText: "obfuscated", SpanKinds: []string{"client", "server"},
			MaxPreparedStatements: postgres.DefaultMaxStatements, MaxPendingRequests: postgres.DefaultMaxPending,
		},
		GRPC:     GRPCConfig{Enabled: true, SpanKinds: []string{"client", "server"}, MaxOpenStreams: grpc.DefaultMaxStreams},
		Resource: ResourceConfig{CommandLine: false},
		TLS:      TLSConfig{OpenSSL: true, Go: true},
		MapPressure: MapPressureConfig{
			Enabled:                  true,
			CollectionInterval:       10 * time.Second,
			WarningThreshold:         0.7,
			CriticalThreshold:        0.8,
			UserspaceCountMaxEntries: 65536,
		},
		Limits: LimitsConfig{
			MaxConnections:         65536,
			CaptureBytes:           65536,
			CaptureTailBytes:       4096,
			RingBufferBytes:        4 << 20,
			RingBufferWakeupBytes:  1 << 20,
			RingBufferPollInterval: 10 * time.Millisecond,
			IdleTimeout:            10 * time.Minute,
			RequestIdleTimeout:     5 * time.Minute,
		},
		SelfMetricsInterval:  10 * time.Second,
		OnStartFailure:       stopCollector,
		MetricsBuilderConfig: metadata.NewDefaultMetricsBuilderConfig(),
	}
}

func createTraces(_ context.Context, set receiver.Settings, cfg component.Config, next consumer.Traces) (receiver.Traces, error) {
	r := instances.get(set, cfg.(*Config))
	r.setTraces(next)
	return r, nil
}

func createMetrics(_ context.Context, set receiver.Settings, cfg component.Config, next consumer.Metrics) (receiver.Metrics, error) {
	r := instances.get(set, cfg.(*Config))
	r.setMetrics(next)
	return r, nil
}
