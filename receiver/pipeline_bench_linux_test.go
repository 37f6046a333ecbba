//go:build linux

package receiver

import (
	"context"
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
}

func newPipeline(tb testing.TB, spans bool) *pipeline {
	tb.Helper()
	cfg := createDefaultConfig().(*Config)
	if !spans {
		cfg.Postgres.SpanKinds, cfg.GRPC.SpanKinds = nil, nil
	}
	set := receivertest.NewNopSettings(metadata.Type)
	obs, err := receiverhelper.NewObsReport(receiverhelper.ObsReportSettings{ReceiverID: set.ID, Transport: transport, ReceiverCreateSettings: set})
	if err != nil {
		tb.Fatal(err)
	}
	p := &pipeline{}
	next, err := consumer.NewTraces(func(_ context.Context, td ptrace.Traces) error {
		p.spans.Add(uint64(td.SpanCount())) //nolint:gosec // a count
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
	b.ReportMetric(float64(p.spans.Load()+p.t.dropped.Load())/float64(b.N+1), "spans/op")
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
			p := newPipeline(b, tc.spans)
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
	for _, spans := range []bool{true, false} {
		name := "postgres"
		if !spans {
			name = "postgres_nospans"
		}
		b.Run(name, func(b *testing.B) {
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
			p := newPipeline(b, spans)
			// Open the connection (server view) and prepare the statements,
			// but leave it open.
			setup := connRecords(recs, 1, true, 40001, 5432, 99)
			for _, r := range setup[:len(setup)-1] {
				p.asm.Record(r)
			}
			seq := [2]uint64{}
			for _, r := range recs {
				seq[stream.Egress+stream.Ingress-r.Dir-1] += uint64(len(r.Data))
			}
			// One record per round trip message, patched in place.
			var raws [][]byte
			var evs []*event.CaptureDataEvent
			for _, r := range rounds {
				dir := stream.Egress + stream.Ingress - r.Dir
				ev := event.CaptureDataEvent{
					Type: event.TypeData, Direction: uint8(dir), Flags: event.FlagLast, Pid: 2000, Tid: 2000, Fd: 9,
					ConnId: 1, TotalLen: uint32(len(r.Data)), Tuple: loopbackTuple(5432, 40001), //nolint:gosec // small
				}
				raw := event.EncodeData(&ev, r.Data)
				e, _, err := event.Data(raw)
				if err != nil {
					b.Fatal(err)
				}
				raws, evs = append(raws, raw), append(evs, e)
			}
			ts := uint64(1) << 40
			measure(b, p, len(raws), func() {
				for i, raw := range raws {
					e := evs[i]
					d := e.Direction - 1
					ts += 1000
					e.Seq, e.TsNs = seq[d], ts
					seq[d] += uint64(e.CapLen)
					p.asm.Record(raw)
				}
			})
		})
	}
}
