package receiver

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// Config is the receiver's configuration (`receivers: ebpf:` in YAML).
type Config struct {
	// Filter selects what is captured, in the kernel. All lists empty
	// watches the whole host.
	Filter FilterConfig `mapstructure:"filter"`
	// Postgres turns PostgreSQL wire-protocol traffic into spans.
	Postgres PostgresConfig `mapstructure:"postgres"`
	// GRPC turns gRPC over HTTP/2 into spans.
	GRPC GRPCConfig `mapstructure:"grpc"`
	// TLS captures plaintext where applications hand it to their TLS
	// library.
	TLS TLSConfig `mapstructure:"tls"`
	// Resource shapes the resource attributes of spans.
	Resource ResourceConfig `mapstructure:"resource"`
	// MapPressure samples every eBPF map on the host.
	MapPressure MapPressureConfig `mapstructure:"map_pressure"`
	// Limits bound every table and buffer.
	Limits LimitsConfig `mapstructure:"limits"`
	// SelfMetricsInterval is how often the receiver's own counters
	// (records, bytes, drops by reason, connections) are emitted.
	SelfMetricsInterval time.Duration `mapstructure:"self_metrics_interval"`
	// OnStartFailure is what a failed Start does to the collector:
	// "stop_collector" returns the error, and the collector (every
	// pipeline) exits; "keep_collector_running" reports the error as the
	// receiver's permanent error status, logs it, and leaves the receiver
	// inert while the other components run.
	OnStartFailure string `mapstructure:"on_start_failure"`

	metadata.MetricsBuilderConfig `mapstructure:",squash"`

	// prevent unkeyed literal initialization
	_ struct{}
}

// FilterConfig lists what to watch. Non-empty lists combine with AND,
// entries of one list with OR.
type FilterConfig struct {
	// Ports are TCP ports matched against the local or the remote end.
	Ports []int `mapstructure:"ports"`
	// PIDs are process ids (thread-group ids).
	PIDs []int `mapstructure:"pids"`
	// Cgroups are cgroup v2 directories (e.g. /sys/fs/cgroup/kubepods.slice/...);
	// processes in them or below them match.
	Cgroups []string `mapstructure:"cgroups"`
	// Executables are process names as the kernel keeps them (comm, at
	// most 15 bytes).
	Executables []string `mapstructure:"executables"`
}

// PostgresConfig configures PostgreSQL spans.
type PostgresConfig struct {
	Enabled bool `mapstructure:"enabled"`
	// QueryText is what db.query.text holds: "obfuscated" (literals
	// replaced by ?), "raw" (as sent: may hold secrets) or "off".
	QueryText string `mapstructure:"query_text"`
	// SpanKinds lists which ends emit spans: "client" (from the process
	// that sent the query), "server" (from the PostgreSQL backend).
	SpanKinds []string `mapstructure:"span_kinds"`
	// MaxPreparedStatements bounds the named prepared statements (and,
	// separately, the named portals) remembered per connection; the least
	// recently used is forgotten first, and a later execution of it gets
	// a span without its text.
	MaxPreparedStatements int `mapstructure:"max_prepared_statements"`
	// MaxPendingRequests bounds the requests per connection that wait for
	// their responses (a pipeline); those beyond it are reported without
	// their outcome.
	MaxPendingRequests int `mapstructure:"max_pending_requests"`
}

// GRPCConfig configures gRPC spans.
type GRPCConfig struct {
	Enabled bool `mapstructure:"enabled"`
	// LegacyAttributes also emits rpc.system, rpc.service and
	// rpc.grpc.status_code for backends that expect the older conventions.
	LegacyAttributes bool `mapstructure:"legacy_attributes"`
	// SpanKinds lists which ends emit spans: "client", "server".
	SpanKinds []string `mapstructure:"span_kinds"`
	// MaxOpenStreams bounds the HTTP/2 streams (calls in progress) tracked
	// per connection; a call beyond it gets no span and is counted.
	MaxOpenStreams int `mapstructure:"max_open_streams"`
}

// TLSConfig configures TLS plaintext capture.
type TLSConfig struct {
	// OpenSSL attaches uprobes to SSL_read/SSL_write(_ex) of the libssl
	// that watched processes load (every process's, with no filter).
	OpenSSL bool `mapstructure:"openssl"`
	// Libraries are further libraries exporting the OpenSSL API (paths or
	// file names), e.g. a vendored libssl.
	Libraries []string `mapstructure:"libraries"`
	// Go attaches uprobes to crypto/tls (*Conn).Read and Write in the Go
	// executables of watched processes (every process's, with no filter).
	Go bool `mapstructure:"go"`
}

// ResourceConfig shapes resource attributes.
type ResourceConfig struct {
	// CommandLine adds process.command_line (arguments can hold secrets).
	CommandLine bool `mapstructure:"command_line"`
}

// MapPressureConfig configures the eBPF map sampler. Per-program run
// statistics (ebpf.program.run.*) are collected when those metrics are
// enabled under `metrics:`; that turns on the kernel's BPF statistics for
// the whole host while the receiver runs.
type MapPressureConfig struct {
	Enabled            bool          `mapstructure:"enabled"`
	CollectionInterval time.Duration `mapstructure:"collection_interval"`
	// WarningThreshold and CriticalThreshold are utilization ratios; a map
	// crossing one is logged once per crossing, not once per scrape.
	WarningThreshold  float64 `mapstructure:"warning_threshold"`
	CriticalThreshold float64 `mapstructure:"critical_threshold"`
	// UserspaceCountMaxEntries applies on kernels without the
	// bpf_map_sum_elem_count kfunc (< 6.6): hash maps up to this capacity
	// are counted from user space, larger ones report capacity only.
	UserspaceCountMaxEntries int `mapstructure:"userspace_count_max_entries"`
}

// LimitsConfig bounds memory in the kernel and in the receiver.
type LimitsConfig struct {
	// MaxConnections is the capacity of the kernel socket table and of
	// the receiver's connection table.
	MaxConnections int `mapstructure:"max_connections"`
	// CaptureBytes is the most payload captured per syscall. A larger
	// read or write is captured head and tail (CaptureTailBytes of it from
	// the tail) and the hole is counted.
	CaptureBytes     int `mapstructure:"capture_bytes"`
	CaptureTailBytes int `mapstructure:"capture_tail_bytes"`
	// RingBufferBytes is the kernel-to-receiver ring buffer: a power of
	// two, at least one page.
	RingBufferBytes int `mapstructure:"ring_buffer_bytes"`
	// RingBufferWakeupBytes: the reader drains the ring buffer every
	// RingBufferPollInterval, and the kernel wakes it sooner only once this
	// many bytes wait (a wakeup per record costs more than the record); a
	// pass that found this many bytes or more is followed by another at
	// once instead of a sleep.
	RingBufferWakeupBytes  int           `mapstructure:"ring_buffer_wakeup_bytes"`
	RingBufferPollInterval time.Duration `mapstructure:"ring_buffer_poll_interval"`
	// IdleTimeout forgets a connection with no traffic for this long
	// (its close was not seen, or its process exited).
	IdleTimeout time.Duration `mapstructure:"idle_timeout"`
	// RequestIdleTimeout ends a request (query, gRPC stream) that saw no
	// traffic for this long as an incomplete span: its answer never came.
	RequestIdleTimeout time.Duration `mapstructure:"request_idle_timeout"`
}

// The values of on_start_failure.
const (
	stopCollector        = "stop_collector"
	keepCollectorRunning = "keep_collector_running"
)

// Bounds checked by Validate.
const (
	maxCgroups        = 16        // slots of the kernel's cgroup array
	maxCommLen        = 15        // TASK_COMM_LEN - 1
	maxCaptureBytes   = 256 << 10 // MAX_CAPTURE_BYTES in bpf/event.h
	minRingBuffer     = 4096
	maxRingBuffer     = 1 << 30
	maxConnectionsCap = 1 << 22
	maxFilterEntries  = 1024 // filter_pids / filter_ports map sizes
	maxExecutables    = 256  // filter_comms map size
	// maxPerConnection bounds the per-connection parser tables: at the
	// cap, a few thousand connections could hold gigabytes.
	maxPerConnection = 65536
)

// Validate checks the configuration; every error names the field.
func (cfg *Config) Validate() error {
	var errs []error
	f := cfg.Filter
	if len(f.Ports) > maxFilterEntries {
		errs = append(errs, fmt.Errorf("filter.ports: at most %d ports, got %d", maxFilterEntries, len(f.Ports)))
	}
	for _, p := range f.Ports {
		if p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("filter.ports: %d is not a TCP port (1-65535)", p))
		}
	}
	if len(f.PIDs) > maxFilterEntries {
		errs = append(errs, fmt.Errorf("filter.pids: at most %d pids, got %d", maxFilterEntries, len(f.PIDs)))
	}
	for _, p := range f.PIDs {
		if p < 1 || p > 1<<22 {
			errs = append(errs, fmt.Errorf("filter.pids: %d is not a process id (1-%d)", p, 1<<22))
		}
	}
	if len(f.Cgroups) > maxCgroups {
		errs = append(errs, fmt.Errorf("filter.cgroups: at most %d cgroups, got %d", maxCgroups, len(f.Cgroups)))
	}
	for _, c := range f.Cgroups {
		if !filepath.IsAbs(c) {
			errs = append(errs, fmt.Errorf("filter.cgroups: %q must be an absolute cgroup v2 directory, e.g. /sys/fs/cgroup/system.slice/postgresql.service", c))
		}
	}
	if len(f.Executables) > maxExecutables {
		errs = append(errs, fmt.Errorf("filter.executables: at most %d names, got %d", maxExecutables, len(f.Executables)))
	}
	for _, e := range f.Executables {
		if e == "" || len(e) > maxCommLen {
			errs = append(errs, fmt.Errorf("filter.executables: %q must be 1 to %d bytes, the kernel's process name (comm) is cut there", e, maxCommLen))
		}
	}

	l := cfg.Limits
	if l.MaxConnections < 1 || l.MaxConnections > maxConnectionsCap {
		errs = append(errs, fmt.Errorf("limits.max_connections: %d is outside 1-%d", l.MaxConnections, maxConnectionsCap))
	}
	if l.CaptureBytes < 64 || l.CaptureBytes > maxCaptureBytes {
		errs = append(errs, fmt.Errorf("limits.capture_bytes: %d is outside 64-%d", l.CaptureBytes, maxCaptureBytes))
	}
	if l.CaptureTailBytes < 0 || l.CaptureTailBytes >= l.CaptureBytes {
		errs = append(errs, fmt.Errorf("limits.capture_tail_bytes: %d must be at least 0 and less than limits.capture_bytes (%d)", l.CaptureTailBytes, l.CaptureBytes))
	}
	if l.RingBufferBytes < minRingBuffer || l.RingBufferBytes > maxRingBuffer || l.RingBufferBytes&(l.RingBufferBytes-1) != 0 {
		errs = append(errs, fmt.Errorf("limits.ring_buffer_bytes: %d must be a power of two from %d to %d", l.RingBufferBytes, minRingBuffer, maxRingBuffer))
	}
	if l.RingBufferWakeupBytes < 0 || l.RingBufferWakeupBytes > l.RingBufferBytes {
		errs = append(errs, fmt.Errorf("limits.ring_buffer_wakeup_bytes: %d must be from 0 to limits.ring_buffer_bytes (%d)", l.RingBufferWakeupBytes, l.RingBufferBytes))
	}
	if l.RingBufferPollInterval < time.Millisecond || l.RingBufferPollInterval > time.Second {
		// Shorter sleeps make the reader a busy loop on an idle host.
		errs = append(errs, fmt.Errorf("limits.ring_buffer_poll_interval: %s must be from 1ms to 1s", l.RingBufferPollInterval))
	}
	if l.IdleTimeout < time.Second {
		errs = append(errs, fmt.Errorf("limits.idle_timeout: %s must be at least 1s", l.IdleTimeout))
	}
	if l.RequestIdleTimeout < time.Second {
		errs = append(errs, fmt.Errorf("limits.request_idle_timeout: %s must be at least 1s", l.RequestIdleTimeout))
	}
	switch cfg.Postgres.QueryText {
	case "obfuscated", "raw", "off":
	default:
		errs = append(errs, fmt.Errorf("postgres.query_text: %q must be obfuscated, raw or off", cfg.Postgres.QueryText))
	}
	for _, b := range []struct {
		field string
		v     int
	}{
		{"postgres.max_prepared_statements", cfg.Postgres.MaxPreparedStatements},
		{"postgres.max_pending_requests", cfg.Postgres.MaxPendingRequests},
		{"grpc.max_open_streams", cfg.GRPC.MaxOpenStreams},
	} {
		if b.v < 1 || b.v > maxPerConnection {
			errs = append(errs, fmt.Errorf("%s: %d is outside 1-%d", b.field, b.v, maxPerConnection))
		}
	}
	errs = append(errs, validateKinds("postgres.span_kinds", cfg.Postgres.Enabled, cfg.Postgres.SpanKinds)...)
	errs = append(errs, validateKinds("grpc.span_kinds", cfg.GRPC.Enabled, cfg.GRPC.SpanKinds)...)
	if mp := cfg.MapPressure; mp.Enabled {
		if mp.CollectionInterval < 100*time.Millisecond {
			errs = append(errs, fmt.Errorf("map_pressure.collection_interval: %s must be at least 100ms", mp.CollectionInterval))
		}
		if !(mp.WarningThreshold > 0 && mp.WarningThreshold <= 1) {
			errs = append(errs, fmt.Errorf("map_pressure.warning_threshold: %g must be above 0 and at most 1", mp.WarningThreshold))
		}
		if !(mp.CriticalThreshold >= mp.WarningThreshold && mp.CriticalThreshold <= 1) {
			errs = append(errs, fmt.Errorf("map_pressure.critical_threshold: %g must be from map_pressure.warning_threshold (%g) to 1", mp.CriticalThreshold, mp.WarningThreshold))
		}
		if mp.UserspaceCountMaxEntries < 0 {
			errs = append(errs, fmt.Errorf("map_pressure.userspace_count_max_entries: %d must not be negative", mp.UserspaceCountMaxEntries))
		}
	}
	if cfg.SelfMetricsInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("self_metrics_interval: %s must be at least 100ms", cfg.SelfMetricsInterval))
	}
	switch cfg.OnStartFailure {
	case stopCollector, keepCollectorRunning:
	default:
		errs = append(errs, fmt.Errorf("on_start_failure: %q must be %s or %s", cfg.OnStartFailure, stopCollector, keepCollectorRunning))
	}
	return errors.Join(errs...)
}

func validateKinds(field string, enabled bool, kinds []string) []error {
	var errs []error
	for _, k := range kinds {
		if k != "client" && k != "server" {
			errs = append(errs, fmt.Errorf("%s: %q must be client or server", field, k))
		}
	}
	if enabled && len(kinds) == 0 {
		errs = append(errs, fmt.Errorf("%s: list client, server or both (or disable the protocol)", field))
	}
	return errs
}
