//go:build linux

package receiver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/receiverhelper"
	"go.uber.org/zap"

	"github.com/ebpfotel/ebpfreceiver/internal/capture"
	"github.com/ebpfotel/ebpfreceiver/internal/event"
	"github.com/ebpfotel/ebpfreceiver/internal/mappressure"
	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

var errShutDown = errors.New("ebpf receiver: Start after Shutdown")

// transport names the receiver's data source in obsreport metrics.
const transport = "ebpf"

// engine is the running receiver on Linux: kernel capture, reassembly,
// protocol parsers, and the metrics loop.
type engine struct {
	cfg    *Config
	logger *zap.Logger

	capture *capture.Capture
	asm     *stream.Assembler
	tracer  *tracer // nil without a traces pipeline or with no protocol on

	metrics consumer.Metrics
	obsMet  *receiverhelper.ObsReport
	mb      *metadata.MetricsBuilder

	// Map pressure (nil when off or without a metrics pipeline).
	sampler   *mappressure.Sampler
	tracker   *mappressure.Tracker
	samples   []mappressure.MapSample
	crossings []mappressure.Crossing
	progStats io.Closer // kernel-wide BPF statistics, while ebpf.program.run.* are on
	programs  []mappressure.ProgramStats

	cancel context.CancelFunc
	wg     sync.WaitGroup
	// readerDone is closed when the ring-buffer reader has returned,
	// metricsDone when the metrics loop has.
	readerDone  chan struct{}
	metricsDone chan struct{}

	readerErr error
}

// captureOptions maps the config onto the kernel side's options.
func captureOptions(cfg *Config) capture.Options {
	f := capture.Filter{Comms: cfg.Filter.Executables, Cgroups: cfg.Filter.Cgroups}
	for _, p := range cfg.Filter.PIDs {
		f.PIDs = append(f.PIDs, uint32(p))
	}
	for _, p := range cfg.Filter.Ports {
		f.Ports = append(f.Ports, uint16(p))
	}
	l := cfg.Limits
	return capture.Options{
		Filter:          f,
		RingBufferBytes: uint32(l.RingBufferBytes),
		MaxConnections:  uint32(l.MaxConnections),
		CaptureBytes:    uint32(l.CaptureBytes),
		TailBytes:       uint32(l.CaptureTailBytes),
		WakeupBytes:     l.RingBufferWakeupBytes,
		PollInterval:    l.RingBufferPollInterval,
		ScanExisting:    true,
		TLS:             capture.TLSOptions{OpenSSL: cfg.TLS.OpenSSL, Libraries: cfg.TLS.Libraries, Go: cfg.TLS.Go},
	}
}

func startEngine(_ context.Context, cfg *Config, set receiver.Settings, traces consumer.Traces, metrics consumer.Metrics) (*engine, error) {
	e := &engine{cfg: cfg, logger: set.Logger, metrics: metrics}
	if metrics != nil {
		obs, err := receiverhelper.NewObsReport(receiverhelper.ObsReportSettings{
			ReceiverID: set.ID, Transport: transport, ReceiverCreateSettings: set,
		})
		if err != nil {
			return nil, fmt.Errorf("ebpf receiver: obsreport: %w", err)
		}
		e.obsMet = obs
		e.mb = metadata.NewMetricsBuilder(cfg.MetricsBuilderConfig, set)
	}

	ok := false
	defer func() {
		if !ok {
			_ = e.shutdown(context.Background())
		}
	}()
	// Socket capture runs only when spans are wanted: its programs see
	// every read and write on the host.
	wantCapture := traces != nil && (cfg.Postgres.Enabled || cfg.GRPC.Enabled)
	wantMapPressure := metrics != nil && cfg.MapPressure.Enabled
	// Both load eBPF programs: the capabilities are checked before the
	// first load, so that their absence is named rather than reported as
	// the bare EPERM of whichever load comes first.
	if wantCapture || wantMapPressure {
		if err := capture.CheckPrivileges(); err != nil {
			return nil, fmt.Errorf("ebpf receiver: %w", err)
		}
	}
	if wantMapPressure {
		if err := e.startMapPressure(); err != nil {
			return nil, err
		}
	}

	if wantCapture {
		obs, err := receiverhelper.NewObsReport(receiverhelper.ObsReportSettings{
			ReceiverID: set.ID, Transport: transport, ReceiverCreateSettings: set,
		})
		if err != nil {
			return nil, fmt.Errorf("ebpf receiver: obsreport: %w", err)
		}
		e.tracer = newTracer(cfg, set.Logger, traces, obs, set.BuildInfo.Version)
		if err := e.startCapture(); err != nil {
			return nil, err
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	if e.capture != nil {
		e.readerDone = make(chan struct{})
		e.wg.Add(1)
		go e.read()
		go e.tracer.export()
	}
	if metrics != nil {
		e.wg.Add(1)
		e.metricsDone = make(chan struct{})
		go e.metricsLoop(ctx)
	}
	ok = true
	return e, nil
}

func (e *engine) startCapture() error {
	cfg := e.cfg
	opts := captureOptions(cfg)
	c, err := capture.Open(opts, e.logger)
	if err != nil {
		return fmt.Errorf("ebpf receiver: %w", err)
	}
	e.capture = c
	e.asm = stream.NewAssembler(stream.Config{
		MaxConnections: cfg.Limits.MaxConnections,
		IdleTimeoutNs:  uint64(cfg.Limits.IdleTimeout),
		RequestIdleNs:  uint64(cfg.Limits.RequestIdleTimeout),
	}, e.tracer.detectors(), c.Forget)
	e.tracer.asm = e.asm
	e.logger.Info("ebpf receiver: capture started",
		zap.Bool("whole_host", opts.Filter.Empty()),
		zap.Bool("postgres", cfg.Postgres.Enabled), zap.Bool("grpc", cfg.GRPC.Enabled),
		zap.Int("ring_buffer_bytes", cfg.Limits.RingBufferBytes),
		zap.Int("capture_bytes", cfg.Limits.CaptureBytes))
	return nil
}

// startMapPressure loads the map iterator and, when the program metrics
// are on, turns on the kernel's BPF statistics.
func (e *engine) startMapPressure() error {
	mp := e.cfg.MapPressure
	opts := mappressure.DefaultOptions()
	opts.UserspaceCountMaxEntries = uint32(mp.UserspaceCountMaxEntries)
	s, err := mappressure.New(opts)
	if err != nil {
		return fmt.Errorf("ebpf receiver: map_pressure: %w", err)
	}
	e.sampler = s
	th := mappressure.DefaultThresholds()
	th.Warning, th.Critical = mp.WarningThreshold, mp.CriticalThreshold
	if th.Hysteresis >= th.Warning {
		th.Hysteresis = th.Warning / 2
	}
	if e.tracker, err = mappressure.NewTracker(th); err != nil {
		return fmt.Errorf("ebpf receiver: map_pressure thresholds: %w", err)
	}
	fields := []zap.Field{zap.String("mode", string(s.Mode()))}
	if r := s.FallbackReason(); r != nil {
		fields = append(fields, zap.NamedError("fallback_reason", r))
	}
	e.logger.Info("ebpf receiver: map pressure sampler loaded", fields...)
	m := e.cfg.Metrics
	if m.EbpfProgramRunCount.Enabled || m.EbpfProgramRunTime.Enabled {
		closer, err := mappressure.EnableProgramStats()
		if err != nil {
			return fmt.Errorf("ebpf receiver: enable kernel BPF statistics for ebpf.program.run.* metrics: %w", err)
		}
		e.progStats = closer
		e.logger.Info("ebpf receiver: kernel-wide BPF run statistics turned on for ebpf.program.run.* (they cost a little on every BPF program run)")
	}
	return nil
}

// readerSink is the ring-buffer reader's view of the engine.
type readerSink struct {
	e         *engine
	lastSweep time.Time
}

func (s *readerSink) Record(raw []byte) { s.e.asm.Record(raw) }

func (s *readerSink) Tick(now time.Time) {
	s.e.asm.Tick(capture.MonotonicNow())
	s.e.tracer.maybeFlush(now)
	// Processes that exit close their sockets without close(2): drop their
	// kernel table entries now and then.
	if now.Sub(s.lastSweep) >= 30*time.Second {
		s.lastSweep = now
		s.e.capture.Sweep()
	}
}

func (e *engine) read() {
	defer e.wg.Done()
	defer close(e.readerDone)
	if err := e.capture.Run(&readerSink{e: e, lastSweep: time.Now()}); err != nil {
		e.readerErr = err
		e.logger.Error("ebpf receiver: ring buffer reader stopped", zap.Error(err))
	}
}

func (e *engine) metricsLoop(ctx context.Context) {
	defer e.wg.Done()
	defer close(e.metricsDone)
	self := time.NewTicker(e.cfg.SelfMetricsInterval)
	defer self.Stop()
	var maps <-chan time.Time
	if e.sampler != nil {
		t := time.NewTicker(e.cfg.MapPressure.CollectionInterval)
		defer t.Stop()
		maps = t.C
		e.emitMapPressure(ctx) // a first sample right away
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-self.C:
			if e.capture != nil {
				e.emitSelfMetrics(ctx)
			}
		case <-maps:
			e.emitMapPressure(ctx)
		}
	}
}

// emitMapPressure samples every map on the host and records the gauges;
// maps that disappeared are simply not in the sample any more.
func (e *engine) emitMapPressure(ctx context.Context) {
	var err error
	e.samples, err = e.sampler.Sample(e.samples[:0])
	if err != nil {
		e.logger.Warn("ebpf receiver: sample eBPF maps", zap.Error(err))
		return
	}
	now := pcommon.NewTimestampFromTime(time.Now())
	mb := e.mb
	for i := range e.samples {
		s := &e.samples[i]
		id, name, typ := int64(s.ID), s.Name, s.TypeName()
		mb.RecordEbpfMapMaxEntriesDataPoint(now, int64(s.MaxEntries), id, name, typ)
		if s.EntriesKnown {
			mb.RecordEbpfMapEntriesDataPoint(now, int64(s.Entries), id, name, typ)
		}
		if s.UtilizationKnown {
			mb.RecordEbpfMapUtilizationDataPoint(now, s.Utilization, id, name, typ)
		}
		source := metadata.AttributeEbpfMapMemorySourceEstimate
		if s.MemorySource == mappressure.MemoryFdinfo {
			source = metadata.AttributeEbpfMapMemorySourceFdinfo
		}
		mb.RecordEbpfMapMemoryDataPoint(now, int64(s.MemoryBytes), id, name, typ, source)
		if s.RingbufKnown {
			mb.RecordEbpfRingbufUsedDataPoint(now, int64(s.RingbufUsed), id, name, typ)
			mb.RecordEbpfRingbufSizeDataPoint(now, int64(s.RingbufSize), id, name, typ)
		}
	}
	e.crossings = e.tracker.Update(e.samples, e.crossings[:0])
	for _, c := range e.crossings {
		log := e.logger.Warn
		if c.To < c.From {
			log = e.logger.Info
		}
		log("ebpf receiver: eBPF map pressure level changed",
			zap.Uint32("ebpf.map.id", c.ID), zap.String("ebpf.map.name", c.Name),
			zap.String("ebpf.map.type", c.Type.String()),
			zap.String("from", c.From.String()), zap.String("to", c.To.String()),
			zap.Float64("utilization", c.Utilization))
	}
	if e.progStats != nil {
		if e.programs, err = mappressure.SampleProgramStats(e.programs[:0]); err != nil {
			e.logger.Warn("ebpf receiver: sample eBPF program statistics", zap.Error(err))
		}
		for _, p := range e.programs {
			mb.RecordEbpfProgramRunCountDataPoint(now, int64(p.RunCount), int64(p.ID), p.Name, p.Type)
			mb.RecordEbpfProgramRunTimeDataPoint(now, p.RunTime.Nanoseconds(), int64(p.ID), p.Name, p.Type)
		}
	}
	e.consumeMetrics(ctx)
}

// emitSelfMetrics reports the kernel's and the assembler's counters.
func (e *engine) emitSelfMetrics(ctx context.Context) {
	now := pcommon.NewTimestampFromTime(time.Now())
	k, err := e.capture.Counters()
	if err != nil {
		e.logger.Warn("ebpf receiver: read kernel counters", zap.Error(err))
		return
	}
	mb, s := e.mb, &e.asm.Stats
	i := func(c event.CaptureCounter) int64 { return int64(k[c]) }
	mb.RecordEbpfCaptureRecordsDataPoint(now, i(event.CaptureCounterCNT_RECORDS))
	mb.RecordEbpfCaptureBytesDataPoint(now, i(event.CaptureCounterCNT_BYTES))
	drops := []struct {
		v int64
		r metadata.AttributeReason
	}{
		{i(event.CaptureCounterCNT_DROP_RINGBUF), metadata.AttributeReasonRingbufFull},
		{i(event.CaptureCounterCNT_DROP_CONN_EVENT), metadata.AttributeReasonConnEventRingbufFull},
		{i(event.CaptureCounterCNT_DROP_SOCKTAB_FULL), metadata.AttributeReasonSocketTableFull},
		{i(event.CaptureCounterCNT_DROP_ARGS_FULL), metadata.AttributeReasonInflightTableFull},
		{i(event.CaptureCounterCNT_TRUNCATED), metadata.AttributeReasonCaptureCap},
		{int64(s.OutOfOrder.Load()), metadata.AttributeReasonOutOfOrder},
		{int64(s.DecodeErrors.Load() + s.UnknownRecords.Load()), metadata.AttributeReasonDecodeError},
		{int64(s.ParserPanics.Load()), metadata.AttributeReasonParserPanic},
		{int64(e.tracer.dropped.Load()), metadata.AttributeReasonExportQueueFull},
		{i(event.CaptureCounterCNT_TLS_NO_FD), metadata.AttributeReasonTLSFdUnknown},
		{i(event.CaptureCounterCNT_TLS_BUSY), metadata.AttributeReasonTLSBusy},
		{int64(s.CiphertextRecords.Load()), metadata.AttributeReasonTLSCiphertext},
		{int64(e.capture.ProgramMisses()), metadata.AttributeReasonProgramMissed},
	}
	for _, d := range drops {
		mb.RecordEbpfCaptureDropsDataPoint(now, d.v, d.r)
	}
	mb.RecordEbpfCaptureLostBytesDataPoint(now, i(event.CaptureCounterCNT_DROP_RINGBUF_BYTES), metadata.AttributeReasonRingbufFull)
	mb.RecordEbpfCaptureLostBytesDataPoint(now, i(event.CaptureCounterCNT_TRUNCATED_BYTES), metadata.AttributeReasonCaptureCap)
	mb.RecordEbpfCaptureLostBytesDataPoint(now, int64(s.LostBytes.Load()), metadata.AttributeReasonStreamGap)
	mb.RecordEbpfCaptureConnectionsDataPoint(now, s.LiveConns.Load())
	ended := []struct {
		v int64
		r metadata.AttributeReason
	}{
		{int64(s.ConnsClosed.Load()), metadata.AttributeReasonClosed},
		{int64(s.ConnsExpired.Load()), metadata.AttributeReasonExpired},
		{int64(s.ConnsEvicted.Load()), metadata.AttributeReasonEvicted},
		{int64(s.ConnsIgnored.Load()), metadata.AttributeReasonIgnored},
		{i(event.CaptureCounterCNT_STALE_FD), metadata.AttributeReasonStaleFd},
	}
	for _, d := range ended {
		mb.RecordEbpfCaptureConnectionsEndedDataPoint(now, d.v, d.r)
	}
	mb.RecordEbpfCaptureRingbufUsedDataPoint(now, int64(e.capture.RingBufferUsed()))
	mb.RecordEbpfCaptureTLSConnectionsDataPoint(now, int64(s.TLSConns.Load()))
	mb.RecordEbpfCaptureTLSProbedDataPoint(now, int64(e.capture.TLSTargets()))
	e.tracer.recordParserEvents(mb, now)
	e.consumeMetrics(ctx)
}

func (e *engine) consumeMetrics(ctx context.Context) {
	md := e.mb.Emit()
	n := md.DataPointCount()
	if n == 0 {
		return
	}
	ctx = e.obsMet.StartMetricsOp(ctx)
	err := e.metrics.ConsumeMetrics(ctx, md)
	e.obsMet.EndMetricsOp(ctx, metadata.Type.String(), n, err)
	if err != nil {
		e.logger.Debug("ebpf receiver: metrics refused downstream", zap.Error(err))
	}
}

// shutdown reverses startEngine: it detaches and unloads the programs
// (interrupting the reader), waits for the goroutines, and closes parsers.
func (e *engine) shutdown(context.Context) error {
	var errs []error
	if e.cancel != nil {
		e.cancel()
	}
	if e.metricsDone != nil {
		// The metrics loop reads the capture's counters and ring buffer:
		// it must be done before they are closed.
		<-e.metricsDone
	}
	if e.capture != nil {
		errs = append(errs, e.capture.Close())
		// The reader returns once the ring buffer is closed; the export
		// goroutine ends when the tracer's queue is closed.
		if e.readerDone != nil {
			<-e.readerDone
		}
		e.asm.CloseAll(capture.MonotonicNow())
		e.tracer.stop()
	}
	e.wg.Wait()
	if e.sampler != nil {
		errs = append(errs, e.sampler.Close())
	}
	if e.progStats != nil {
		errs = append(errs, e.progStats.Close())
	}
	return errors.Join(append(errs, e.readerErr)...)
}
