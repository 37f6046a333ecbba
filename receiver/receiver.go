package receiver

import (
	"context"
	"sync"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componentstatus"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/receiver"
	"go.uber.org/zap"
)

// ebpfReceiver is one running receiver. Its traces and metrics pipelines
// share it: the kernel programs are loaded once per component id.
type ebpfReceiver struct {
	cfg *Config
	set receiver.Settings

	mu      sync.Mutex
	traces  consumer.Traces
	metrics consumer.Metrics

	startOnce sync.Once
	startErr  error
	stopOnce  sync.Once
	stopErr   error

	eng *engine // platform part, nil until started
}

func (r *ebpfReceiver) setTraces(next consumer.Traces) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.traces = next
}

func (r *ebpfReceiver) setMetrics(next consumer.Metrics) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.metrics = next
}

// Start loads and attaches the programs the first time it is called; the
// second pipeline's Start returns the first one's result.
//
// A failure (missing capabilities, kernel features, programs the verifier
// rejects) is returned, which makes the collector shut every pipeline down,
// unless on_start_failure is keep_collector_running: then it is logged
// once, reported to each pipeline's host as a permanent error status, and
// Start returns nil with nothing loaded (startEngine unloaded what it had
// loaded), so that the collector's other pipelines run on.
func (r *ebpfReceiver) Start(ctx context.Context, host component.Host) error {
	r.startOnce.Do(func() {
		r.mu.Lock()
		traces, metrics := r.traces, r.metrics
		r.mu.Unlock()
		r.eng, r.startErr = startEngine(ctx, r.cfg, r.set, traces, metrics)
		if r.startFailureTolerated() {
			// Without a stack trace, as the collector logs a component
			// that failed to start: the error says what is missing.
			r.set.Logger.WithOptions(zap.AddStacktrace(zap.DPanicLevel)).Error(
				"ebpf receiver: not started; the collector's other pipelines keep running (on_start_failure: keep_collector_running)",
				zap.Error(r.startErr))
		}
	})
	if r.startFailureTolerated() {
		// The receiver stays inert. The traces and the metrics pipeline
		// each have their own status (one instance id per pipeline
		// signal): report it to both.
		componentstatus.ReportStatus(host, componentstatus.NewPermanentErrorEvent(r.startErr))
		return nil
	}
	return r.startErr
}

// startFailureTolerated: Start failed, and on_start_failure keeps the
// collector running without this receiver.
func (r *ebpfReceiver) startFailureTolerated() bool {
	return r.startErr != nil && r.cfg.OnStartFailure == keepCollectorRunning
}

// Shutdown detaches and unloads everything and waits for the goroutines.
// It is idempotent and safe without Start.
func (r *ebpfReceiver) Shutdown(ctx context.Context) error {
	instances.remove(r.set.ID, r)
	r.stopOnce.Do(func() {
		// A Shutdown that comes before any Start must keep a later Start
		// from loading programs nobody would unload.
		r.startOnce.Do(func() { r.startErr = errShutDown })
		if r.eng != nil {
			r.stopErr = r.eng.shutdown(ctx)
		}
	})
	return r.stopErr
}

// registry hands out one receiver per component id, so that the traces
// and the metrics pipeline of `ebpf` (or `ebpf/name`) share one set of
// kernel programs.
type registry struct {
	mu sync.Mutex
	m  map[component.ID]*ebpfReceiver
}

var instances = &registry{m: map[component.ID]*ebpfReceiver{}}

func (g *registry) get(set receiver.Settings, cfg *Config) *ebpfReceiver {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r, ok := g.m[set.ID]; ok {
		return r
	}
	r := &ebpfReceiver{cfg: cfg, set: set}
	g.m[set.ID] = r
	return r
}

func (g *registry) remove(id component.ID, r *ebpfReceiver) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m[id] == r {
		delete(g.m, id)
	}
}
