//go:build linux

package receiver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/receiverhelper"
	"go.uber.org/zap"

	"github.com/ebpfotel/ebpfreceiver/internal/capture"
	"github.com/ebpfotel/ebpfreceiver/internal/event"
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

	metrics consumer.Metrics
	obsMet  *receiverhelper.ObsReport
	mb      *metadata.MetricsBuilder

	cancel context.CancelFunc
	wg     sync.WaitGroup

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
		WakeupBytes:     uint64(l.RingBufferWakeupBytes),
		PollInterval:    l.RingBufferPollInterval,
		ScanExisting:    true,
	}
}

func startEngine(_ context.Context, cfg *Config, set receiver.Settings, _ consumer.Traces, metrics consumer.Metrics) (*engine, error) {
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

	opts := captureOptions(cfg)
	c, err := capture.Open(opts, set.Logger)
	if err != nil {
		return nil, fmt.Errorf("ebpf receiver: %w", err)
	}
	e.capture = c
	e.asm = stream.NewAssembler(stream.Config{
		MaxConnections: cfg.Limits.MaxConnections,
		IdleTimeoutNs:  uint64(cfg.Limits.IdleTimeout),
	}, e.detectors(), c.Forget)

	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.wg.Add(1)
	go e.read()
	if metrics != nil {
		e.wg.Add(1)
		go e.metricsLoop(ctx)
	}
	set.Logger.Info("ebpf receiver started",
		zap.Bool("whole_host", opts.Filter.Empty()),
		zap.Int("ring_buffer_bytes", cfg.Limits.RingBufferBytes),
		zap.Int("capture_bytes", cfg.Limits.CaptureBytes))
	return e, nil
}

// detectors lists the protocol handlers switched on in the config.
func (e *engine) detectors() []stream.Detector {
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
	// Processes that exit close their sockets without close(2): drop their
	// kernel table entries now and then.
	if now.Sub(s.lastSweep) >= 30*time.Second {
		s.lastSweep = now
		s.e.capture.Sweep()
	}
}

func (e *engine) read() {
	defer e.wg.Done()
	if err := e.capture.Run(&readerSink{e: e, lastSweep: time.Now()}); err != nil {
		e.readerErr = err
		e.logger.Error("ebpf receiver: ring buffer reader stopped", zap.Error(err))
	}
}

func (e *engine) metricsLoop(ctx context.Context) {
	defer e.wg.Done()
	self := time.NewTicker(e.cfg.SelfMetricsInterval)
	defer self.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-self.C:
			e.emitSelfMetrics(ctx)
		}
	}
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
	e.cancel()
	err := e.capture.Close()
	e.wg.Wait()
	e.asm.CloseAll(capture.MonotonicNow())
	return errors.Join(err, e.readerErr)
}
