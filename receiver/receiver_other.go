//go:build !linux

package receiver

import (
	"context"
	"errors"

	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/receiver"
)

var errShutDown = errors.New("ebpf receiver: Start after Shutdown")

type engine struct{}

func (*engine) shutdown(context.Context) error { return nil }

func startEngine(context.Context, *Config, receiver.Settings, consumer.Traces, consumer.Metrics) (*engine, error) {
	return nil, errors.New("the ebpf receiver runs only on Linux (it loads eBPF programs into the kernel)")
}
