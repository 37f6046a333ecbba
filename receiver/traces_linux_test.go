//go:build linux

package receiver

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace"
)

// postgres.span_kinds and grpc.span_kinds select which ends of a
// connection emit spans. Every recorded PostgreSQL and gRPC connection in
// testdata/ is replayed seen from both ends (the client process and the
// server process), so each request could give a CLIENT and a SERVER span.
func TestSpanKindsSelectTheEnds(t *testing.T) {
	count := func(t *testing.T, pgKinds, grpcKinds []string) map[string]map[ptrace.SpanKind]int {
		t.Helper()
		var mu sync.Mutex
		got := map[string]map[ptrace.SpanKind]int{"postgresql": {}, "grpc": {}}
		p := newPipeline(t, func(cfg *Config) {
			cfg.Postgres.SpanKinds, cfg.GRPC.SpanKinds = pgKinds, grpcKinds
		}, func(sp ptrace.Span) bool {
			proto := "grpc"
			if _, ok := sp.Attributes().Get("db.system.name"); ok {
				proto = "postgresql"
			}
			mu.Lock()
			got[proto][sp.Kind()]++
			mu.Unlock()
			return true
		})
		for _, raw := range pipelineRecords(t, "postgres", "grpc") {
			p.asm.Record(raw)
		}
		p.t.stop() // flushes and waits for the export goroutine
		return got
	}
	both := []string{"client", "server"}
	all := count(t, both, both)
	for _, proto := range []string{"postgresql", "grpc"} {
		require.Positive(t, all[proto][ptrace.SpanKindClient], "%s client spans", proto)
		require.Positive(t, all[proto][ptrace.SpanKindServer], "%s server spans", proto)
	}

	for _, tc := range []struct {
		name            string
		pgKinds, grpc   []string
		wantPG, wantRPC map[ptrace.SpanKind]int
	}{
		{"clients only", []string{"client"}, []string{"client"},
			map[ptrace.SpanKind]int{ptrace.SpanKindClient: all["postgresql"][ptrace.SpanKindClient]},
			map[ptrace.SpanKind]int{ptrace.SpanKindClient: all["grpc"][ptrace.SpanKindClient]}},
		{"servers only", []string{"server"}, []string{"server"},
			map[ptrace.SpanKind]int{ptrace.SpanKindServer: all["postgresql"][ptrace.SpanKindServer]},
			map[ptrace.SpanKind]int{ptrace.SpanKindServer: all["grpc"][ptrace.SpanKindServer]}},
		{"PostgreSQL servers, gRPC clients", []string{"server"}, []string{"client"},
			map[ptrace.SpanKind]int{ptrace.SpanKindServer: all["postgresql"][ptrace.SpanKindServer]},
			map[ptrace.SpanKind]int{ptrace.SpanKindClient: all["grpc"][ptrace.SpanKindClient]}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := count(t, tc.pgKinds, tc.grpc)
			require.Equal(t, tc.wantPG, got["postgresql"])
			require.Equal(t, tc.wantRPC, got["grpc"])
		})
	}
}
