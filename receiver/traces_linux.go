//go:build linux

package receiver

import (
	"context"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver/receiverhelper"
	"go.uber.org/zap"

	"github.com/ebpfotel/ebpfreceiver/internal/capture"
	"github.com/ebpfotel/ebpfreceiver/internal/grpc"
	"github.com/ebpfotel/ebpfreceiver/internal/postgres"
	"github.com/ebpfotel/ebpfreceiver/internal/procmeta"
	"github.com/ebpfotel/ebpfreceiver/internal/spans"
	"github.com/ebpfotel/ebpfreceiver/internal/sqlsan"
	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// Span batching: the reader goroutine builds spans and hands a batch to
// the export goroutine every flushInterval, or sooner when it is big. The
// queue between them is bounded; a full queue drops the batch (counted as
// ebpf.capture.drops{reason=export_queue_full}) rather than stall the ring
// buffer reader, which would drop in the kernel instead.
const (
	flushInterval = 200 * time.Millisecond
	flushSpans    = 1024
	exportQueue   = 64
	procCacheSize = 4096
)

// tracer is the span side of the engine: parsers' sinks, span building and
// export. Its methods up to flush run on the ring-buffer reader goroutine.
type tracer struct {
	logger *zap.Logger
	next   consumer.Traces
	obs    *receiverhelper.ObsReport

	builder *spans.Builder
	procs   *procmeta.Cache
	asm     *stream.Assembler // for PeerObserved; set once the assembler exists

	pg       *postgres.Detector
	pgOpts   spans.PostgresOptions
	pgKinds  [3]bool // by stream.Role: which ends emit spans
	rpc      *grpc.Detector
	rpcOpts  spans.GRPCOptions
	rpcKinds [3]bool

	lastFlush time.Time
	queue     chan ptrace.Traces
	dropped   atomic.Uint64 // spans dropped on a full export queue
	done      chan struct{}
}

func kindsOf(kinds []string) [3]bool {
	var k [3]bool
	k[stream.RoleClient] = slices.Contains(kinds, "client")
	k[stream.RoleServer] = slices.Contains(kinds, "server")
	// A connection whose side is unknown (found open at start-up) reports
	// as a client when clients are wanted.
	k[stream.RoleUnknown] = k[stream.RoleClient]
	return k
}

func newTracer(cfg *Config, logger *zap.Logger, next consumer.Traces, obs *receiverhelper.ObsReport, version string) *tracer {
	host, _ := os.Hostname()
	t := &tracer{
		logger:   logger,
		next:     next,
		obs:      obs,
		builder:  spans.NewBuilder(spans.Options{HostName: host, CommandLine: cfg.Resource.CommandLine, ScopeVersion: version}),
		procs:    procmeta.NewCache("/proc", procCacheSize),
		pgKinds:  kindsOf(cfg.Postgres.SpanKinds),
		rpcKinds: kindsOf(cfg.GRPC.SpanKinds),
		rpcOpts:  spans.GRPCOptions{LegacyAttributes: cfg.GRPC.LegacyAttributes},
		queue:    make(chan ptrace.Traces, exportQueue),
		done:     make(chan struct{}),
	}
	mode, _ := sqlsan.ParseMode(cfg.Postgres.QueryText) // Validate accepted it
	t.pgOpts = spans.PostgresOptions{QueryText: mode}
	if cfg.Postgres.Enabled {
		t.pg = postgres.NewDetector(t.onQuery, postgres.Options{
			MaxStatements: cfg.Postgres.MaxPreparedStatements, MaxPending: cfg.Postgres.MaxPendingRequests,
		})
	}
	if cfg.GRPC.Enabled {
		t.rpc = grpc.NewDetector(grpc.Options{MaxStreams: cfg.GRPC.MaxOpenStreams}, t.onCall)
	}
	t.syncClock()
	return t
}

// detectors lists the protocol handlers that are on.
func (t *tracer) detectors() []stream.Detector {
	var d []stream.Detector
	if t.pg != nil {
		d = append(d, t.pg)
	}
	if t.rpc != nil {
		d = append(d, t.rpc)
	}
	return d
}

// syncClock maps kernel monotonic time onto wall time.
func (t *tracer) syncClock() {
	t.builder.SetClock(time.Now().UnixNano() - int64(capture.MonotonicNow())) //nolint:gosec // monotonic ns fit int64
}

func (t *tracer) onQuery(conn *stream.ConnInfo, q *postgres.Query) {
	if !t.pgKinds[conn.Role] {
		return
	}
	link := spans.Link{Ordinal: q.Ordinal, PeerObserved: t.asm.PeerObserved(conn)}
	t.builder.Query(t.procs.Get(conn.PID, conn.Comm), conn, q, conn.Role == stream.RoleServer, link, t.pgOpts)
	t.maybeFlush(time.Time{})
}

func (t *tracer) onCall(conn *stream.ConnInfo, c *grpc.Call) {
	if !t.rpcKinds[conn.Role] {
		return
	}
	// The HTTP/2 stream id numbers the call on its connection at both ends.
	link := spans.Link{Ordinal: uint64(c.StreamID), PeerObserved: t.asm.PeerObserved(conn)}
	t.builder.Call(t.procs.Get(conn.PID, conn.Comm), conn, c, conn.Role == stream.RoleServer, link, t.rpcOpts)
	t.maybeFlush(time.Time{})
}

// maybeFlush hands the batch over when it is big, or (now set, from the
// reader's idle tick) when it is old enough.
func (t *tracer) maybeFlush(now time.Time) {
	n := t.builder.Len()
	switch {
	case n == 0:
		return
	case n >= flushSpans:
	case now.IsZero() || now.Sub(t.lastFlush) < flushInterval:
		return
	}
	t.flush(now)
}

func (t *tracer) flush(now time.Time) {
	if now.IsZero() {
		now = time.Now()
	}
	t.lastFlush = now
	td := t.builder.Take()
	select {
	case t.queue <- td:
	default:
		t.dropped.Add(uint64(td.SpanCount())) //nolint:gosec // a count
	}
	t.syncClock()
}

// export sends batches downstream until the queue is closed.
func (t *tracer) export() {
	defer close(t.done)
	for td := range t.queue {
		ctx := t.obs.StartTracesOp(context.Background())
		err := t.next.ConsumeTraces(ctx, td)
		t.obs.EndTracesOp(ctx, "ebpf", td.SpanCount(), err)
		if err != nil {
			t.logger.Debug("ebpf receiver: spans refused downstream", zap.Error(err), zap.Int("spans", td.SpanCount()))
		}
	}
}

// stop flushes what is left and waits for the export goroutine. The reader
// must have stopped.
func (t *tracer) stop() {
	if t.builder.Len() > 0 {
		t.flush(time.Time{})
	}
	close(t.queue)
	<-t.done
}

// recordParserEvents reports every parser counter.
func (t *tracer) recordParserEvents(mb *metadata.MetricsBuilder, now pcommon.Timestamp) {
	if t.pg != nil {
		t.pg.Stats().Each(func(name string, v uint64) {
			mb.RecordEbpfProtocolParserEventsDataPoint(now, int64(v), metadata.AttributeProtocolPostgresql, name) //nolint:gosec // a counter
		})
	}
	if t.rpc != nil {
		t.rpc.Stats().Each(func(c grpc.Counter, v uint64) {
			mb.RecordEbpfProtocolParserEventsDataPoint(now, int64(v), metadata.AttributeProtocolGrpc, c.String()) //nolint:gosec // a counter
		})
	}
}
