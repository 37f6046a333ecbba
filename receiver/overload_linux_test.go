//go:build linux

package receiver

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/cgroup"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/pgserver"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
)

// TestOverloadRingBufferOverflowAndRecovery: a 16 KiB ring buffer read
// every 50 ms cannot carry a PostgreSQL server and client moving tens of
// megabytes. Every lost record and byte must be counted, and once the load
// stops ordinary queries must turn into correct spans again.
func TestOverloadRingBufferOverflowAndRecovery(t *testing.T) {
	privileged.Require(t)
	g := cgroup.New(t)
	pg := pgserver.Start(t, g)
	traces := new(consumertest.TracesSink)
	rig := robReceiver(t, g, traces, func(cfg *Config) {
		cfg.Limits.RingBufferBytes = 16 << 10
		cfg.Limits.RingBufferWakeupBytes = 16 << 10 // never drains again before the poll
		cfg.Limits.RingBufferPollInterval = 50 * time.Millisecond
	})
	server, addr := robGRPCServerIn(t, g)

	// 4 rounds of 256 rows of 64 KiB: 64 MiB written by the backend and
	// read by the client, both captured.
	robRun(t, g, 2*time.Minute, nil, "pg", pg.URL("postgres"), "load", "4")
	rig.await(t, "ebpf.capture.drops", map[string]string{"reason": "ringbuf_full"}, "records lost to the full ring buffer", func(v int64) bool { return v > 0 })
	// The load is over; wait for the counters to settle.
	drops := rig.settled(t, "ebpf.capture.drops", map[string]string{"reason": "ringbuf_full"})
	lost, _ := rig.metric("ebpf.capture.lost_bytes", map[string]string{"reason": "ringbuf_full"})
	require.Positive(t, lost, "the payload bytes of the dropped records are counted")
	records, _ := rig.metric("ebpf.capture.records", nil)
	gap, _ := rig.metric("ebpf.capture.lost_bytes", map[string]string{"reason": "stream_gap"})
	t.Logf("under load: %d records delivered, %d dropped (ringbuf_full) with %d payload bytes; %d bytes missing from reassembled streams",
		records, drops, lost, gap)
	require.Positive(t, gap, "the holes the drops left in the byte streams are counted too")
	require.Positive(t, rig.parserEvent("postgresql", "bytes_lost"), "the PostgreSQL parsers were told about the holes")

	// Recovery: the load is over, the reader drained the ring; new
	// connections parse from their first byte.
	robNormalTraffic(t, g, traces, pg, server, addr)
	// The recovery traffic fitted in the small ring: the drops stopped with
	// the load.
	after := rig.settled(t, "ebpf.capture.drops", map[string]string{"reason": "ringbuf_full"})
	require.Equal(t, drops, after, "no record dropped after the load")
}

// robGate is a traces consumer that passes spans to a sink, refuses them
// (consumertest.NewErr), or blocks until released.
type robGate struct {
	sink    consumertest.TracesSink
	refuse  consumer.Traces
	mode    atomic.Int32 // robPass, robRefuse, robBlock
	release chan struct{}
	once    sync.Once

	refused atomic.Int64 // spans refused
	blocked atomic.Int64 // calls that blocked
}

const (
	robPass int32 = iota
	robRefuse
	robBlock
)

var errRobRefused = errors.New("downstream refuses spans")

func newRobGate() *robGate {
	return &robGate{refuse: consumertest.NewErr(errRobRefused), release: make(chan struct{})}
}

func (g *robGate) Capabilities() consumer.Capabilities { return consumer.Capabilities{} }

func (g *robGate) ConsumeTraces(ctx context.Context, td ptrace.Traces) error {
	switch g.mode.Load() {
	case robRefuse:
		g.refused.Add(int64(td.SpanCount()))
		return g.refuse.ConsumeTraces(ctx, td)
	case robBlock:
		g.blocked.Add(1)
		<-g.release
	}
	return g.sink.ConsumeTraces(ctx, td)
}

// unblock lets blocked and later calls through.
func (g *robGate) unblock() {
	g.once.Do(func() {
		g.mode.Store(robPass)
		close(g.release)
	})
}

// TestOverloadSlowAndFailingConsumer: a downstream that refuses every batch,
// then one that blocks. The receiver keeps reading the ring buffer in both
// cases (no kernel drops, the parsers keep counting queries), drops whole
// batches at its bounded export queue while blocked, counts them as
// ebpf.capture.drops{reason=export_queue_full}, and delivers spans again
// once the downstream recovers.
func TestOverloadSlowAndFailingConsumer(t *testing.T) {
	privileged.Require(t)
	g := cgroup.New(t)
	pg := pgserver.Start(t, g)
	gate := newRobGate()
	// Pipelined batches go out in one write of a few kilobytes per hundred
	// queries: a capture cap above that keeps every byte. The ring buffer
	// holds the whole load, so that a reader descheduled on a busy machine
	// loses nothing and every query must be parsed.
	rig := robReceiver(t, g, gate, func(cfg *Config) {
		cfg.Limits.CaptureBytes = 64 << 10
		cfg.Limits.RingBufferBytes = 64 << 20
	})
	t.Cleanup(gate.unblock) // before the receiver's Shutdown (cleanups run last first)
	queries := func() int64 { return rig.parserEvent("postgresql", "queries") }
	drops := func(reason string) int64 {
		v, _ := rig.metric("ebpf.capture.drops", map[string]string{"reason": reason})
		return v
	}

	// Refusing downstream: every span is refused, none is queued or lost
	// on the way.
	gate.mode.Store(robRefuse)
	before := queries()
	robRun(t, g, time.Minute, nil, "pg", pg.URL("postgres"), "batch", "200", "10")
	// 2000 queries, each seen by the client and by its backend.
	rig.await(t, "ebpf.protocol.parser.events", map[string]string{"protocol": "postgresql", "event": "queries"},
		"the parsers saw every query", func(v int64) bool { return v >= before+4000 })
	require.Eventually(t, func() bool { return gate.refused.Load() >= 4000 }, 10*time.Second, 20*time.Millisecond,
		"the spans reached the consumer and were refused (refused %d)", gate.refused.Load())
	require.Zero(t, drops("export_queue_full"), "a refusal is not a queue overflow")
	require.Zero(t, drops("ringbuf_full"), "nothing lost in the kernel")
	require.Zero(t, gate.sink.SpanCount())
	t.Logf("refusing consumer: %d spans refused, none queued or dropped", gate.refused.Load())

	// Blocking downstream: the first batch blocks the export goroutine,
	// the queue of 64 batches fills, later batches are dropped whole.
	gate.mode.Store(robBlock)
	before = queries()
	heapBefore := robHeapInuse()
	robRun(t, g, 2*time.Minute, nil, "pg", pg.URL("postgres"), "batch", "200", "300")
	rig.await(t, "ebpf.protocol.parser.events", map[string]string{"protocol": "postgresql", "event": "queries"},
		"the parsers kept going while the consumer blocked", func(v int64) bool { return v >= before+120000 })
	rig.await(t, "ebpf.capture.drops", map[string]string{"reason": "export_queue_full"},
		"spans dropped at the full export queue", func(v int64) bool { return v > 0 })
	// The last spans are handed over within 200 ms; then nothing moves.
	time.Sleep(time.Second)
	dropped := drops("export_queue_full")
	heapBlocked := robHeapInuse()
	require.Equal(t, int64(1), gate.blocked.Load(), "one ConsumeTraces call blocked; nothing else reached the consumer")
	require.Zero(t, drops("ringbuf_full"), "nothing lost in the kernel")
	t.Logf("blocking consumer: %d spans dropped at the export queue; heap in use %d KiB before, %d KiB while blocked",
		dropped, heapBefore>>10, heapBlocked>>10)
	// The queue holds at most 64 batches of up to 1024 spans.
	require.Less(t, int64(heapBlocked)-int64(heapBefore), int64(256<<20), "the export queue bounds what is held")

	// Unblocked: the queued batches go through, then new spans flow.
	gate.unblock()
	// Every span of the blocked phase is delivered or counted as dropped.
	const spans = 120000 // 60000 queries, a CLIENT and a SERVER span each
	for deadline := time.Now().Add(20 * time.Second); int64(gate.sink.SpanCount())+dropped != spans; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			require.FailNow(t, "spans unaccounted for", "%d spans: %d delivered + %d dropped", spans, gate.sink.SpanCount(), dropped)
		}
	}
	queued := gate.sink.SpanCount()
	// Kept: the blocked batch, the queue's 64, and the batch still being
	// built when the consumer recovered (it finds room in the queue).
	require.Less(t, queued, (exportQueue+2)*flushSpans, "at most the queue, the blocked batch and the one being built were kept")
	robNormalTraffic(t, g, &gate.sink, pg, nil, "")
	final, _ := rig.metric("ebpf.capture.drops", map[string]string{"reason": "export_queue_full"})
	require.Equal(t, dropped, final, "nothing dropped once the consumer recovered")
	t.Logf("after unblocking: %d queued spans delivered, then new spans flow", queued)
}
