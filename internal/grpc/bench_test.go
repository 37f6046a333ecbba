package grpc

import (
	"bytes"
	"runtime"
	"testing"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

// BenchmarkParserReplay replays each recording through a fresh parser per
// iteration (so per-connection setup is included) and reports frames and
// gRPC messages per second and heap allocations per frame.
func BenchmarkParserReplay(b *testing.B) {
	for _, name := range fixtureNames() {
		recs := loadFixture(b, name)
		var bytes int64
		for _, r := range recs {
			bytes += int64(len(r.Data))
		}
		b.Run(name, func(b *testing.B) {
			det := NewDetector(Options{}, func(*stream.ConnInfo, *Call) {})
			conn := clientConn()
			var msgs uint64
			det.sink = func(_ *stream.ConnInfo, c *Call) { msgs += c.ReqMessages + c.RespMessages }
			b.SetBytes(bytes)
			b.ReportAllocs()
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				capfile.Replay(det.NewParser(conn), recs)
			}
			b.StopTimer()
			runtime.ReadMemStats(&ms1)
			frames := float64(det.Stats().Get(CounterFrames))
			secs := b.Elapsed().Seconds()
			b.ReportMetric(frames/secs, "frames/s")
			b.ReportMetric(float64(msgs)/secs, "msgs/s")
			b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/frames, "allocs/frame")
		})
	}
}

// BenchmarkResyncAdversarial feeds bytes built to make the boundary search
// confirm a sync point that fails two frames later, over and over: the
// search resumes in place, so the cost stays linear in the input.
func BenchmarkResyncAdversarial(b *testing.B) {
	ping := []byte{0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8} // PING, plausible
	bad := []byte{0xff, 0xff, 0xff, 0x00, 0, 0, 0, 0, 1}              // DATA longer than SETTINGS_MAX_FRAME_SIZE
	var unit []byte
	unit = append(unit, ping...)
	unit = append(unit, ping...)
	unit = append(unit, bad...)
	data := bytes.Repeat(unit, (1<<20)/len(unit))
	det := NewDetector(Options{}, nil)
	// The server's frames on a client connection: the frame size limit is
	// the initial 16384, so the bad header loses sync.
	conn := clientConn()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		p := det.NewParser(conn)
		for off := 0; off < len(data); off += 4096 {
			p.Data(stream.Ingress, uint64(off), data[off:min(off+4096, len(data))], 0)
		}
		p.Close(0)
	}
	b.ReportMetric(float64(det.Stats().Get(CounterResyncs))/float64(b.N), "resyncs/op")
}
