package grpc

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"testing"

	"golang.org/x/net/http2"

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

// steadyCall is one complete call of a recording, split out so that it can
// be replayed as new calls on the same connection.
type steadyCall struct {
	setup []capfile.Record // every record before the call's first
	recs  []capfile.Record // the call's request and response records
	// idAt lists, per call record, the offsets of the frame headers that
	// carry the call's stream id.
	idAt [][]int
	// firstStream is the index of the first record with a frame on a
	// stream: where a capture that missed the connection's setup begins.
	firstStream int
}

// splitCall finds the records of stream id, from its first frame to the
// response's END_STREAM (recs as the client recorded them). Each record
// must hold whole frames (grpc-go writes whole frames), so that frame
// headers sit at known offsets, and no other stream may be interleaved.
func splitCall(tb testing.TB, recs []capfile.Record, id uint32) steadyCall {
	tb.Helper()
	first, last, firstStream := -1, -1, -1
	offs := make([][]int, len(recs))
	for i, r := range recs {
		b := r.Data
		off := 0
		if i == 0 && bytes.HasPrefix(b, clientPreface) {
			off = len(clientPreface) // RFC 9113 section 3.4
		}
		for off < len(b) {
			if len(b)-off < frameHeaderLen {
				tb.Fatalf("record %d: frame header cut at %d", i, off)
			}
			// RFC 9113 section 4.1: length 24, type 8, flags 8, R + stream id 31.
			h := b[off : off+frameHeaderLen]
			n := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
			if off+frameHeaderLen+n > len(b) {
				tb.Fatalf("record %d: frame at %d continues in the next record", i, off)
			}
			typ, flags := http2.FrameType(h[3]), http2.Flags(h[4])
			sid := binary.BigEndian.Uint32(h[5:9]) & (1<<31 - 1)
			if sid != 0 && firstStream < 0 {
				firstStream = i
			}
			switch {
			case sid == id:
				if first < 0 {
					first = i
				}
				offs[i] = append(offs[i], off)
				// END_STREAM is bit 0 of DATA and HEADERS (sections 6.1, 6.2).
				if r.Dir == stream.Ingress && flags.Has(http2.FlagDataEndStream) && (typ == http2.FrameData || typ == http2.FrameHeaders) {
					last = i
				}
			case sid != 0 && first >= 0 && last < 0:
				tb.Fatalf("record %d: stream %d interleaved with stream %d", i, sid, id)
			}
			off += frameHeaderLen + n
		}
	}
	if first < 0 || last < 0 {
		tb.Fatalf("stream %d: no complete call", id)
	}
	return steadyCall{setup: recs[:first], recs: recs[first : last+1], idAt: offs[first : last+1], firstStream: firstStream}
}

// BenchmarkParserSteady is the server end of one long-lived connection
// carrying unary calls: the parser alone, for profiling. The last call of
// unary_ok.bin is replayed as new calls, its stream id rewritten in every
// frame header (client stream ids are odd and increase, RFC 9113 section
// 5.1.1); its header blocks reference, and re-insert, what they did the
// first time, so the HPACK state stays valid. Every pass must report
// exactly that call again. "fresh" sees the connection from its preface;
// "joined" joins it after the SETTINGS exchange, as for a connection open
// before capture began, so header blocks are decoded against the shadow
// model of the dynamic tables (RFC 7541 section 2.3.2: the tables are
// built from what the parser saw since).
func BenchmarkParserSteady(b *testing.B) {
	wants := fixtureWants["unary_ok"]
	w := wants[len(wants)-1]
	call := splitCall(b, loadFixture(b, "unary_ok"), w.id)
	for _, joined := range []bool{false, true} {
		name, setup, conn := "fresh", serverView(call.setup), serverConn()
		if joined {
			name, setup = "joined", setup[call.firstStream:]
			conn.Preexisting = true
		}
		b.Run(name, func(b *testing.B) {
			recs := serverView(call.recs)
			var got, bad int
			det := NewDetector(Options{}, func(_ *stream.ConnInfo, c *Call) {
				got++
				if c.Method != w.method || c.GRPCStatus != w.status || c.EndReason != w.end ||
					c.ReqMessages != w.req || c.RespMessages != w.resp || c.Lost || c.Partial {
					bad++
				}
			})
			p := det.NewParser(conn)
			ts := uint64(0)
			for _, r := range setup {
				p.Data(r.Dir, r.Time, r.Data, 0)
				ts = r.Time
			}
			if joined && p.dirs[0].hp.trusted {
				b.Fatal("joined mid-connection, yet the table is trusted")
			}
			id := w.id
			frames0 := det.Stats().Get(CounterFrames)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				id += 2
				got = 0
				for k, r := range recs {
					for _, off := range call.idAt[k] {
						binary.BigEndian.PutUint32(r.Data[off+5:off+frameHeaderLen], id)
					}
					ts += 1000
					p.Data(r.Dir, ts, r.Data, 0)
				}
				if got != 1 || bad != 0 {
					b.Fatalf("stream %d: %d calls (%d not %s as recorded), want 1", id, got, bad, w.method)
				}
			}
			b.StopTimer()
			frames := float64(det.Stats().Get(CounterFrames) - frames0)
			b.ReportMetric(frames/b.Elapsed().Seconds(), "frames/s")
			b.ReportMetric(frames/float64(b.N), "frames/op")
		})
	}
}
