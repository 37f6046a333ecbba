//go:build linux

package receiver

import (
	"bytes"
	"context"
	"encoding/binary"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver/receiverhelper"
	"go.opentelemetry.io/collector/receiver/receivertest"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ebpfotel/ebpfreceiver/internal/event"
	"github.com/ebpfotel/ebpfreceiver/internal/grpc"
	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// The user-space pipeline end to end, as the ring-buffer reader drives it:
// raw records (the kernel's wire format, built with event.EncodeConn and
// event.EncodeData from the recorded streams in testdata/) go through
// stream.Assembler, the PostgreSQL and gRPC parsers, and the receiver's
// tracer (span building with spans.Builder, batching, hand-off to a no-op
// consumer on the export goroutine). Used by `make bench` (bench/harness).
//
// Reported per benchmark:
//   msgs/s         protocol messages (PostgreSQL messages + HTTP/2 frames)
//                  per wall second, on the reader goroutine
//   msgs/cpu-s     the same per second of CPU of the whole process (GC and
//                  the export goroutine included): messages/s/core
//   allocs/msg     heap allocations per message
//   spans/op, records/op

// kernelCaptureCap and kernelTailBytes are the receiver's defaults
// (limits.capture_bytes, limits.capture_tail_bytes): larger syscalls are
// captured head and tail, as the kernel side does.
const (
	kernelCaptureCap = 16384
	kernelTailBytes  = 4096
)

// recordBuilder turns one recorded connection into kernel records.
type recordBuilder struct {
	id     uint64
	pid    uint32
	role   uint8
	tuple  event.CaptureConnTuple
	seq    [2]uint64
	lastTS uint64
	out    [][]byte
}

func loopbackTuple(sport, dport uint16) event.CaptureConnTuple {
	t := event.CaptureConnTuple{Sport: sport, Dport: dport, Family: event.AFInet}
	copy(t.Saddr[:], []byte{127, 0, 0, 1})
	copy(t.Daddr[:], []byte{127, 0, 0, 1})
	return t
}

func (rb *recordBuilder) open(ts, nonce uint64) {
	ev := event.CaptureConnEvent{
		Type: event.TypeConnOpen, Role: rb.role, Pid: rb.pid, Tid: rb.pid, Fd: 9,
		ConnId: rb.id, TsNs: ts, Nonce: nonce, Tuple: rb.tuple,
	}
	for i, c := range "bench" {
		ev.Comm[i] = int8(c)
	}
	rb.out = append(rb.out, event.EncodeConn(&ev))
}

// data cuts one syscall's bytes into records as the kernel does: chunks
// of event.DATA_CHUNK, head and tail only beyond the capture cap.
func (rb *recordBuilder) data(dir stream.Direction, ts uint64, b []byte) {
	total := len(b)
	skipAt, skipTo := total, total
	var flags uint8
	if total > kernelCaptureCap {
		skipAt, skipTo = kernelCaptureCap-kernelTailBytes, total-kernelTailBytes
		flags = event.FlagTruncated
	}
	var ev event.CaptureDataEvent
	chunk := len(ev.Payload)
	for pos := 0; pos < total; {
		if pos == skipAt && skipTo > skipAt {
			pos = skipTo
			continue
		}
		limit := total
		if pos < skipAt {
			limit = skipAt
		}
		n := min(limit-pos, chunk)
		ev = event.CaptureDataEvent{
			Type: event.TypeData, Direction: uint8(dir), Flags: flags, Pid: rb.pid, Tid: rb.pid, Fd: 9,
			ConnId: rb.id, TsNs: ts, Seq: rb.seq[dir-1] + uint64(pos), TotalLen: uint32(total), Offset: uint32(pos), //nolint:gosec // small
			Tuple: rb.tuple,
		}
		if pos+n >= total {
			ev.Flags |= event.FlagLast
		}
		rb.out = append(rb.out, event.EncodeData(&ev, b[pos:pos+n]))
		pos += n
	}
	rb.seq[dir-1] += uint64(total)
	rb.lastTS = ts
}

func (rb *recordBuilder) close() {
	ev := event.CaptureConnEvent{
		Type: event.TypeConnClose, Role: rb.role, Pid: rb.pid, Tid: rb.pid, Fd: 9, ConnId: rb.id,
		TsNs: rb.lastTS + 1, SeqEgress: rb.seq[0], SeqIngress: rb.seq[1], Tuple: rb.tuple,
	}
	rb.out = append(rb.out, event.EncodeConn(&ev))
}

// connRecords builds the records of one recorded client connection seen
// from the client (role client) or from the server (directions swapped).
func connRecords(recs []capfile.Record, id uint64, server bool, sport, dport uint16, nonce uint64) [][]byte {
	rb := &recordBuilder{id: id, pid: 1000, role: uint8(stream.RoleClient), tuple: loopbackTuple(sport, dport)}
	if server {
		rb.pid, rb.role, rb.tuple = 2000, uint8(stream.RoleServer), loopbackTuple(dport, sport)
	}
	rb.open(recs[0].Time, nonce)
	for _, r := range recs {
		dir := r.Dir
		if server {
			dir = stream.Egress + stream.Ingress - dir
		}
		rb.data(dir, r.Time, r.Data)
	}
	rb.close()
	return rb.out
}

func fixtureFiles(tb testing.TB, proto string) []string {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join("..", "testdata", proto, "*.bin"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no fixtures in testdata/%s", proto)
	}
	sort.Strings(files)
	var out []string
	for _, f := range files {
		if strings.HasSuffix(f, "tls.bin") {
			continue // a TLS session: nothing for the parsers past the SSLRequest
		}
		out = append(out, f)
	}
	return out
}

// pipelineRecords builds every fixture of the protocols, each seen from
// both ends (client and server span per request, linked).
func pipelineRecords(tb testing.TB, protos ...string) [][]byte {
	tb.Helper()
	var all [][]byte
	id := uint64(1)
	for _, proto := range protos {
		port := uint16(5432)
		if proto == "grpc" {
			port = 50051
		}
		for _, f := range fixtureFiles(tb, proto) {
			recs, err := capfile.ReadFile(f)
			if err != nil || len(recs) == 0 {
				tb.Fatalf("%s: %v", f, err)
			}
			sport := uint16(40000 + id)
			all = append(all, connRecords(recs, id, false, sport, port, 7000+id)...)
			all = append(all, connRecords(recs, id+1, true, sport, port, 7000+id)...)
			id += 2
		}
	}
	return all
}

// pipeline is the receiver's tracer and assembler, as startCapture wires
// them, without the kernel.
type pipeline struct {
	t     *tracer
	asm   *stream.Assembler
	spans atomic.Uint64 // spans that reached the consumer
	// check, when set, is applied to every span on the export goroutine;
	// bad counts the spans it rejected.
	check func(ptrace.Span) bool
	bad   atomic.Uint64
	// setupSpans are spans built before measure's first pass, left out of
	// spans/op.
	setupSpans uint64
}

// noSpans configures a pipeline whose parsers run but whose protocols emit
// no span.
func noSpans(cfg *Config) { cfg.Postgres.SpanKinds, cfg.GRPC.SpanKinds = nil, nil }

// spansIf is nil (the default configuration) when spans is set, else noSpans.
func spansIf(spans bool) func(*Config) {
	if spans {
		return nil
	}
	return noSpans
}

// newPipeline builds the receiver's tracer and assembler from the default
// configuration changed by configure (nil: unchanged).
func newPipeline(tb testing.TB, configure func(*Config), check func(ptrace.Span) bool) *pipeline {
	tb.Helper()
	cfg := createDefaultConfig().(*Config)
	if configure != nil {
		configure(cfg)
	}
	set := receivertest.NewNopSettings(metadata.Type)
	obs, err := receiverhelper.NewObsReport(receiverhelper.ObsReportSettings{ReceiverID: set.ID, Transport: transport, ReceiverCreateSettings: set})
	if err != nil {
		tb.Fatal(err)
	}
	p := &pipeline{check: check}
	next, err := consumer.NewTraces(func(_ context.Context, td ptrace.Traces) error {
		p.spans.Add(uint64(td.SpanCount())) //nolint:gosec // a count
		if p.check != nil {
			p.bad.Add(countRejected(td, p.check))
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	t := newTracer(cfg, set.Logger, next, obs, "bench")
	asm := stream.NewAssembler(stream.Config{
		MaxConnections: cfg.Limits.MaxConnections,
		IdleTimeoutNs:  uint64(cfg.Limits.IdleTimeout),
		RequestIdleNs:  uint64(cfg.Limits.RequestIdleTimeout),
	}, t.detectors(), nil)
	t.asm = asm
	go t.export()
	p.t, p.asm = t, asm
	return p
}

// messages counts protocol messages parsed so far: PostgreSQL messages and
// HTTP/2 frames.
func (p *pipeline) messages() uint64 {
	return p.t.pg.Stats().Messages.Load() + p.t.rpc.Stats().Get(grpc.CounterFrames)
}

// countRejected counts the spans of td that check rejects.
func countRejected(td ptrace.Traces, check func(ptrace.Span) bool) uint64 {
	var n uint64
	for _, rs := range td.ResourceSpans().All() {
		for _, ss := range rs.ScopeSpans().All() {
			for _, sp := range ss.Spans().All() {
				if !check(sp) {
					n++
				}
			}
		}
	}
	return n
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure runs pass b.N times and reports the pipeline metrics.
func measure(b *testing.B, p *pipeline, records int, pass func()) {
	b.Helper()
	pass() // warm up: connection tables, pools, statement caches
	m0 := p.messages()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	mallocs := ms.Mallocs
	cpu0 := cpuTime()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		pass()
	}
	b.StopTimer()
	cpu := cpuTime() - cpu0
	runtime.ReadMemStats(&ms)
	msgs := float64(p.messages() - m0)
	if msgs == 0 {
		b.Fatal("no protocol messages parsed")
	}
	b.ReportMetric(msgs/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(msgs/cpu.Seconds(), "msgs/cpu-s")
	b.ReportMetric(float64(ms.Mallocs-mallocs)/msgs, "allocs/msg")
	b.ReportMetric(msgs/float64(b.N), "msgs/op")
	b.ReportMetric(float64(records), "records/op")
	// Every pass (the warm-up one too) builds the same spans.
	p.t.stop()
	b.ReportMetric(float64(p.spans.Load()+p.t.dropped.Load()-p.setupSpans)/float64(b.N+1), "spans/op")
	if d := p.t.dropped.Load(); d > 0 {
		b.Logf("%d spans dropped on a full export queue", d)
	}
}

// BenchmarkPipelineReplay replays every recorded connection (setup,
// queries or calls, close) from both ends per iteration.
func BenchmarkPipelineReplay(b *testing.B) {
	for _, tc := range []struct {
		name   string
		protos []string
		spans  bool
	}{
		{"all", []string{"postgres", "grpc"}, true},
		{"postgres", []string{"postgres"}, true},
		{"grpc", []string{"grpc"}, true},
		{"all_nospans", []string{"postgres", "grpc"}, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			recs := pipelineRecords(b, tc.protos...)
			p := newPipeline(b, spansIf(tc.spans), nil)
			measure(b, p, len(recs), func() {
				for _, r := range recs {
					p.asm.Record(r)
				}
			})
		})
	}
}

// BenchmarkPipelineSteady is the pgbench -M prepared server end on one
// long-lived connection: Bind/Describe/Execute/Sync in, one row back, the
// statement prepared once. Stream offsets and times advance as the kernel
// would write them.
func BenchmarkPipelineSteady(b *testing.B) {
	withAndWithoutSpans(b, "postgres", func(b *testing.B, spans bool) {
		recs, err := capfile.ReadFile(filepath.Join("..", "testdata", "postgres", "extended.bin"))
		if err != nil {
			b.Fatal(err)
		}
		var rounds []capfile.Record
		for i, r := range recs {
			if r.Dir == stream.Egress && len(r.Data) > 0 && r.Data[0] == 'B' && i+1 < len(recs) {
				rounds = append(rounds, r, recs[i+1])
			}
		}
		if len(rounds) == 0 {
			b.Fatal("no Bind rounds in extended.bin")
		}
		p := newPipeline(b, spansIf(spans), nil)
		// Open the connection (server view) and prepare the statements,
		// but leave it open.
		setup := connRecords(recs, 1, true, 40001, 5432, 99)
		for _, r := range setup[:len(setup)-1] {
			p.asm.Record(r)
		}
		// One record per round trip message, patched in place.
		rp := newReplay(b, recs, rounds, 5432)
		measure(b, p, len(rp.raws), func() {
			for i := range rp.raws {
				p.asm.Record(rp.next(i))
			}
		})
	})
}

// withAndWithoutSpans runs bench as the sub-benchmarks name (spans built
// and exported) and name_nospans (span building off: the parser alone),
// the pair every pipeline figure is reported as.
func withAndWithoutSpans(b *testing.B, name string, bench func(b *testing.B, spans bool)) {
	for _, spans := range []bool{true, false} {
		sub := name
		if !spans {
			sub += "_nospans"
		}
		b.Run(sub, func(b *testing.B) { bench(b, spans) })
	}
}

// replay holds the server end's kernel records of calls recorded on
// connection 1, one single-chunk record per recorded write or read, to be
// sent again and again with their headers patched in place.
type replay struct {
	raws     [][]byte
	evs      []*event.CaptureDataEvent // the header inside each raw
	payloads [][]byte                  // the payload inside each raw
	seq      [2]uint64                 // next stream offset per direction
	ts       uint64
}

// newReplay encodes calls as seen from the server on port: a recorded
// egress (client write) arrives as ingress. before is every record sent on
// the connection ahead of the first replay; its bytes set the streams'
// starting offsets.
func newReplay(b *testing.B, before, calls []capfile.Record, port uint16) *replay {
	b.Helper()
	rp := &replay{ts: uint64(1) << 40}
	for _, r := range before {
		rp.seq[stream.Egress+stream.Ingress-r.Dir-1] += uint64(len(r.Data))
	}
	for _, r := range calls {
		dir := stream.Egress + stream.Ingress - r.Dir
		ev := event.CaptureDataEvent{
			Type: event.TypeData, Direction: uint8(dir), Flags: event.FlagLast, Pid: 2000, Tid: 2000, Fd: 9,
			ConnId: 1, TotalLen: uint32(len(r.Data)), Tuple: loopbackTuple(port, 40001), //nolint:gosec // small
		}
		if len(r.Data) > len(ev.Payload) {
			b.Fatalf("a record of %d bytes needs more than one chunk", len(r.Data))
		}
		raw := event.EncodeData(&ev, r.Data)
		e, payload, err := event.Data(raw)
		if err != nil {
			b.Fatal(err)
		}
		rp.raws, rp.evs, rp.payloads = append(rp.raws, raw), append(rp.evs, e), append(rp.payloads, payload)
	}
	return rp
}

// next stamps record i as the kernel would write it now: at its
// direction's next stream offset, 1 µs after the previous record.
func (rp *replay) next(i int) []byte {
	e := rp.evs[i]
	d := e.Direction - 1
	rp.ts += 1000
	e.Seq, e.TsNs = rp.seq[d], rp.ts
	rp.seq[d] += uint64(e.CapLen)
	return rp.raws[i]
}

// unaryCall is the last complete unary call of a recorded HTTP/2
// connection, split out so that it can be replayed as new calls.
type unaryCall struct {
	setup []capfile.Record // every record before the call's first
	recs  []capfile.Record // the call: request and response records
	// idAt lists, per call record, the offsets of the frame headers that
	// carry the call's stream id.
	idAt   [][]int
	id     uint32
	method string // the request's :path without its leading '/'
}

// lastUnaryCall finds the highest stream a client opened in recs and the
// records from its first frame to the response's END_STREAM. Each record
// must hold whole frames (true of these recordings: grpc-go writes whole
// frames), so that frame headers sit at known offsets.
func lastUnaryCall(tb testing.TB, recs []capfile.Record) unaryCall {
	tb.Helper()
	type frameAt struct {
		rec, off int
		typ      http2.FrameType
		flags    http2.Flags
		id       uint32
	}
	var frames []frameAt
	// The client's HPACK decoding context (RFC 7541 section 2.2): one
	// dynamic table for everything the client sent.
	dec := hpack.NewDecoder(4096, nil)
	paths := map[uint32]string{}
	for i, r := range recs {
		b := r.Data
		off := 0
		if i == 0 && bytes.HasPrefix(b, []byte(http2.ClientPreface)) {
			off = len(http2.ClientPreface) // RFC 9113 section 3.4
		}
		for off < len(b) {
			if len(b)-off < 9 {
				tb.Fatalf("record %d: frame header cut at %d", i, off)
			}
			h := b[off : off+9] // RFC 9113 section 4.1: length 24, type 8, flags 8, R + stream id 31
			n := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
			if off+9+n > len(b) {
				tb.Fatalf("record %d: frame at %d continues in the next record", i, off)
			}
			f := frameAt{rec: i, off: off, typ: http2.FrameType(h[3]), flags: http2.Flags(h[4]), id: binary.BigEndian.Uint32(h[5:9]) & (1<<31 - 1)}
			if r.Dir == stream.Egress && f.typ == http2.FrameHeaders {
				if !f.flags.Has(http2.FlagHeadersEndHeaders) {
					tb.Fatalf("record %d: header block continues in CONTINUATION frames", i)
				}
				frag := b[off+9 : off+9+n]
				if f.flags.Has(http2.FlagHeadersPadded) { // section 6.2: Pad Length, padding at the end
					frag = frag[1 : len(frag)-int(frag[0])]
				}
				if f.flags.Has(http2.FlagHeadersPriority) { // section 6.2: Exclusive, Stream Dependency, Weight
					frag = frag[5:]
				}
				fields, err := dec.DecodeFull(frag)
				if err != nil {
					tb.Fatalf("record %d: request headers: %v", i, err)
				}
				for _, hf := range fields {
					if hf.Name == ":path" {
						paths[f.id] = hf.Value
					}
				}
			}
			frames = append(frames, f)
			off += 9 + n
		}
	}
	var id uint32
	for sid := range paths {
		id = max(id, sid)
	}
	if id == 0 {
		tb.Fatal("no request in the recording")
	}
	first, last := -1, -1
	for _, f := range frames {
		if f.id != id {
			continue
		}
		if first < 0 {
			first = f.rec
		}
		if recs[f.rec].Dir == stream.Ingress && f.flags.Has(http2.FlagDataEndStream) && (f.typ == http2.FrameHeaders || f.typ == http2.FrameData) {
			last = f.rec // END_STREAM is bit 0 on both (sections 6.1, 6.2)
		}
	}
	if last < 0 {
		tb.Fatalf("stream %d: no response END_STREAM", id)
	}
	c := unaryCall{setup: recs[:first], recs: recs[first : last+1], idAt: make([][]int, last+1-first), id: id}
	c.method = strings.TrimPrefix(paths[id], "/")
	for _, f := range frames {
		if f.rec < first || f.rec > last || f.id == 0 {
			continue
		}
		if f.id != id {
			tb.Fatalf("record %d: stream %d interleaved with stream %d", f.rec, f.id, id)
		}
		c.idAt[f.rec-first] = append(c.idAt[f.rec-first], f.off)
	}
	return c
}

// BenchmarkPipelineSteadyGRPC is the server end of one long-lived grpc-go
// connection carrying unary calls (as ghz against a grpc-go server): the
// records of the last call in testdata/grpc/unary_ok.bin are replayed
// again and again as new calls. Each pass rewrites the stream id in every
// frame header of the call (client stream ids are odd and increase, RFC
// 9113 section 5.1.1; the next call takes id+2) and advances stream offsets
// and times as the kernel would write them. The HPACK state stays valid:
// a replayed header block references what it referenced before and
// re-inserts what it inserted. Every pass must end exactly one call, and
// every span must be a SERVER span carrying the recorded rpc.method.
func BenchmarkPipelineSteadyGRPC(b *testing.B) {
	withAndWithoutSpans(b, "grpc", func(b *testing.B, spans bool) {
		recs, err := capfile.ReadFile(filepath.Join("..", "testdata", "grpc", "unary_ok.bin"))
		if err != nil {
			b.Fatal(err)
		}
		call := lastUnaryCall(b, recs)
		var check func(ptrace.Span) bool
		if spans {
			check = func(sp ptrace.Span) bool {
				m, ok := sp.Attributes().Get("rpc.method")
				return ok && m.Str() == call.method && sp.Name() == call.method && sp.Kind() == ptrace.SpanKindServer
			}
		}
		p := newPipeline(b, spansIf(spans), check)
		stats := p.t.rpc.Stats()
		// Open the connection (server view) and replay the calls before
		// the repeated one, but leave it open.
		setup := connRecords(call.setup, 1, true, 40001, 50051, 99)
		for _, r := range setup[:len(setup)-1] {
			p.asm.Record(r)
		}
		setupCalls := stats.Get(grpc.CounterCalls)
		if spans {
			p.setupSpans = setupCalls
		}
		// One kernel record per recorded write or read, patched in place.
		rp := newReplay(b, call.setup, call.recs, 50051)
		id := call.id
		unknown0 := stats.Get(grpc.CounterCallsUnknownMethod)
		measure(b, p, len(rp.raws), func() {
			id += 2
			calls := stats.Get(grpc.CounterCalls)
			for i := range rp.raws {
				for _, off := range call.idAt[i] {
					binary.BigEndian.PutUint32(rp.payloads[i][off+5:off+9], id)
				}
				p.asm.Record(rp.next(i))
			}
			if n := stats.Get(grpc.CounterCalls) - calls; n != 1 {
				b.Fatalf("stream %d: %d calls ended, want 1", id, n)
			}
		})
		if n := stats.Get(grpc.CounterCallsUnknownMethod) - unknown0; n != 0 {
			b.Fatalf("%d calls without a method", n)
		}
		if !spans {
			return
		}
		// measure stopped the tracer: every span was exported or dropped.
		want := setupCalls + uint64(b.N) + 1
		if bad := p.bad.Load(); bad != 0 {
			b.Fatalf("%d spans not SERVER %q", bad, call.method)
		}
		if got := p.spans.Load() + p.t.dropped.Load(); got != want {
			b.Fatalf("%d spans, want %d", got, want)
		}
	})
}
