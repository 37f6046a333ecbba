package postgres

import (
	"runtime"
	"sort"
	"testing"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

// BenchmarkParserReplay replays every fixture (except the TLS one, which is
// skipped after two messages) through fresh parsers and reports messages
// per second and heap allocations per message.
func BenchmarkParserReplay(b *testing.B) {
	var names []string
	for name := range fixtureWants {
		if name != "tls.bin" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var all [][]capfile.Record
	for _, n := range names {
		all = append(all, loadFixture(b, n))
	}
	det := NewDetector(func(*stream.ConnInfo, *Query) {}, Options{})
	c := clientConn()
	// Messages in one pass.
	for _, recs := range all {
		capfile.Replay(det.New(&c), recs)
	}
	perPass := det.Stats().Messages.Load()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mallocs := ms.Mallocs
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		for _, recs := range all {
			capfile.Replay(det.New(&c), recs)
		}
	}
	b.StopTimer()
	runtime.ReadMemStats(&ms)
	msgs := float64(perPass) * float64(b.N)
	b.ReportMetric(msgs/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(ms.Mallocs-mallocs)/msgs, "allocs/msg")
}

// BenchmarkSteadyState measures one long-lived connection running the
// pgx statement-cache pattern (Bind/Describe/Execute/Sync against a
// prepared statement, one row back), the common hot path.
func BenchmarkSteadyState(b *testing.B) {
	recs := loadFixture(b, "extended.bin")
	// The three INSERT rounds after the statement was prepared.
	var rounds []capfile.Record
	for i, r := range recs {
		if r.Dir == stream.Egress && len(r.Data) > 0 && r.Data[0] == 'B' && i+1 < len(recs) {
			rounds = append(rounds, r, recs[i+1])
		}
	}
	det := NewDetector(func(*stream.ConnInfo, *Query) {}, Options{})
	c := clientConn()
	p := det.New(&c).(*Parser)
	capfile.Replay(p, recs) // learn the statements, then reopen
	p.closed = false
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mallocs := ms.Mallocs
	start := det.Stats().Messages.Load()
	b.ReportAllocs()
	b.ResetTimer()
	ts := uint64(1 << 40)
	for range b.N {
		for _, r := range rounds {
			ts++
			p.Data(r.Dir, ts, r.Data, 0)
		}
	}
	b.StopTimer()
	runtime.ReadMemStats(&ms)
	msgs := float64(det.Stats().Messages.Load() - start)
	b.ReportMetric(msgs/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(ms.Mallocs-mallocs)/msgs, "allocs/msg")
}
