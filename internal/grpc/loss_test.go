package grpc

import (
	"encoding/binary"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"golang.org/x/net/http2"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

// replayWithLoss replays recs, but the bytes [from, to) of dir's stream
// (all of dir's records concatenated) are reported as lost instead of
// delivered, as reassembly does for a truncated or dropped record.
func replayWithLoss(p stream.Parser, recs []capfile.Record, dir stream.Direction, from, to int) {
	off := 0
	var last uint64
	for _, r := range recs {
		last = r.Time
		if r.Dir != dir {
			p.Data(r.Dir, r.Time, r.Data, 0)
			continue
		}
		start, end := off, off+len(r.Data)
		off = end
		lo, hi := max(start, from), min(end, to)
		if lo >= hi { // no overlap with the loss
			p.Data(r.Dir, r.Time, r.Data, 0)
			continue
		}
		p.Data(r.Dir, r.Time, r.Data[:lo-start], uint64(hi-lo))
		if hi < end {
			p.Data(r.Dir, r.Time, r.Data[hi-start:], 0)
		}
	}
	p.Close(last)
}

type span struct {
	typ        http2.FrameType
	start, end int
}

// frameSpans lists the payload spans of the frames in one direction's
// concatenated bytes (after the client preface, if any).
func frameSpans(recs []capfile.Record, dir stream.Direction) []span {
	var b []byte
	for _, r := range recs {
		if r.Dir == dir {
			b = append(b, r.Data...)
		}
	}
	off := 0
	if len(b) >= len(clientPreface) && string(b[:len(clientPreface)]) == http2.ClientPreface {
		off = len(clientPreface)
	}
	var spans []span
	for off+frameHeaderLen <= len(b) {
		l := int(binary.BigEndian.Uint32(append([]byte{0}, b[off:off+3]...)))
		spans = append(spans, span{http2.FrameType(b[off+3]), off + frameHeaderLen, off + frameHeaderLen + l})
		off += frameHeaderLen + l
	}
	return spans
}

func dataSpans(spans []span, minLen int) []span {
	var out []span
	for _, s := range spans {
		if s.typ == http2.FrameData && s.end-s.start >= minLen {
			out = append(out, s)
		}
	}
	return out
}

// Lost bytes inside a DATA frame of known length are skipped without losing
// frame sync; inside a message of known length, message counting holds too.
func TestLostInsideData(t *testing.T) {
	recs := loadFixture(t, "large")
	for _, view := range []string{"client", "server"} {
		conn, r, dir := clientConn(), recs, stream.Egress
		if view == "server" {
			conn, r, dir = serverConn(), serverView(recs), stream.Ingress
		}
		ds := dataSpans(frameSpans(r, dir), 10000)
		if len(ds) < 20 {
			t.Fatalf("%d large DATA frames", len(ds))
		}
		target := ds[10]
		from := target.start + 1000
		det, col := newTestDetector(Options{})
		replayWithLoss(det.New(conn), r, dir, from, from+3000)
		st := det.Stats()
		if len(col.calls) != 1 {
			t.Fatalf("%s: %d calls", view, len(col.calls))
		}
		c := col.calls[0]
		if c.Method != echoService+"/Size" || c.GRPCStatus != 0 || c.ReqMessages != 1 || c.RespMessages != 1 ||
			c.ReqBytes != largeReq+4 || !c.Lost {
			t.Errorf("%s: %+v", view, c)
		}
		if st.Get(CounterLostInData) != 3000 || st.Get(CounterResyncs) != 0 || st.Get(CounterLostBytes) != 3000 {
			t.Errorf("%s: %v", view, statsMap(st))
		}
	}
}

// A loss across a frame boundary loses sync: the direction resynchronises
// on the next plausible frame, counts it, and later calls never get a wrong
// method or status.
func TestLostAcrossFrames(t *testing.T) {
	recs := loadFixture(t, "large")
	ds := dataSpans(frameSpans(recs, stream.Egress), 10000)
	det, col := newTestDetector(Options{})
	replayWithLoss(det.New(clientConn()), recs, stream.Egress, ds[5].start+100, ds[6].start+100)
	st := det.Stats()
	if st.Get(CounterResyncs) != 1 || st.Get(CounterBytesSkipped) == 0 {
		t.Errorf("%v", statsMap(st))
	}
	if len(col.calls) != 1 || col.calls[0].Method != echoService+"/Size" || col.calls[0].GRPCStatus != 0 || !col.calls[0].Lost {
		t.Errorf("calls %+v", col.calls)
	}

	churn := loadFixture(t, "churn")
	truth := truthOf(t, churn)
	for _, dir := range []stream.Direction{stream.Egress, stream.Ingress} {
		spans := frameSpans(churn, dir)
		for i := 50; i < len(spans)/2; i += 97 {
			det, col := newTestDetector(Options{})
			replayWithLoss(det.New(clientConn()), churn, dir, spans[i].start+1, spans[i+3].start+2)
			st := det.Stats()
			checkAgainstTruth(t, col.calls, st, truth)
			if st.Get(CounterResyncs) == 0 {
				t.Errorf("dir %v frame %d: no resync counted", dir, i)
			}
			if n := len(col.calls); n < churnCalls-10 {
				t.Errorf("dir %v frame %d: only %d calls", dir, i, n)
			}
			// The tables turn over, so the last calls are fully known
			// again. (Calls whose END_STREAM was in the lost bytes stay
			// open until the connection closes.)
			var done []Call
			for _, c := range col.calls {
				if c.EndReason == EndTrailers {
					done = append(done, c)
				}
			}
			for _, c := range done[len(done)-5:] {
				if c.MethodUnknown || !c.HasStatus {
					t.Errorf("dir %v frame %d: not recovered: %+v", dir, i, c)
				}
			}
		}
	}
}

// Garbage written into either direction: counted, resynchronised, never a
// wrong call.
func TestGarbage(t *testing.T) {
	for _, name := range []string{"churn", "streaming", "unary_ok"} {
		recs := loadFixture(t, name)
		truth := truthOf(t, recs)
		for seed := uint64(1); seed <= 20; seed++ {
			rng := rand.New(rand.NewPCG(seed, 5))
			var r []capfile.Record
			injected := 0
			for i, rec := range recs {
				r = append(r, rec)
				if i > 2 && rng.IntN(8) == 0 {
					junk := randomBytes(rng, 300)
					r = append(r, capfile.Record{Dir: rec.Dir, Time: rec.Time, Data: junk})
					injected++
				}
			}
			det, col := newTestDetector(Options{})
			capfile.Replay(det.New(clientConn()), r)
			st := det.Stats()
			checkAgainstTruth(t, col.calls, st, truth)
			if injected > 0 && st.Get(CounterResyncs)+st.Get(CounterProtocolErrors) == 0 {
				t.Errorf("%s seed %d: %d garbage records not noticed: %v", name, seed, injected, statsMap(st))
			}
			// Resynchronisation does not depend on how the bytes were cut.
			if seed <= 5 {
				for _, next := range []func() int{func() int { return 1 }, func() int { return 1 + rng.IntN(50) }} {
					calls, st2 := replayFixture(splitRecords(r, next), clientConn(), Options{})
					if !reflect.DeepEqual(calls, col.calls) || !reflect.DeepEqual(statsMap(st2), statsMap(st)) {
						t.Fatalf("%s seed %d: split delivery differs:\n%v\n%v", name, seed, statsMap(st2), statsMap(st))
					}
				}
			}
			if t.Failed() {
				t.Fatalf("%s seed %d", name, seed)
			}
		}
	}
}

// A loss while searching for a frame boundary, a loss inside a buffered
// HEADERS frame, and a loss right at a frame boundary.
func TestLossPlaces(t *testing.T) {
	recs := loadFixture(t, "churn")
	truth := truthOf(t, recs)
	spans := frameSpans(recs, stream.Egress)
	var headers []span
	for _, s := range spans {
		if s.typ == http2.FrameHeaders {
			headers = append(headers, s)
		}
	}
	cases := map[string][2]int{
		"inside_headers": {headers[40].start + 2, headers[40].start + 4},
		"headers_tail":   {headers[41].start + 1, headers[41].end},
		"at_boundary":    {headers[42].start - frameHeaderLen, headers[42].start - frameHeaderLen + 30},
		"whole_frames":   {headers[43].start - frameHeaderLen, headers[44].start - frameHeaderLen},
	}
	for name, c := range cases {
		det, col := newTestDetector(Options{})
		replayWithLoss(det.New(clientConn()), recs, stream.Egress, c[0], c[1])
		st := det.Stats()
		checkAgainstTruth(t, col.calls, st, truth)
		if st.Get(CounterLostBytes) != uint64(c[1]-c[0]) {
			t.Errorf("%s: lost bytes %d", name, st.Get(CounterLostBytes))
		}
		if len(col.calls) < churnCalls-3 {
			t.Errorf("%s: %d calls", name, len(col.calls))
		}
		flagged := 0
		for _, cl := range col.calls {
			if cl.Lost || cl.Partial {
				flagged++
			}
		}
		if flagged == 0 {
			t.Errorf("%s: no call flagged Lost or Partial", name)
		}
	}
	// Losses inside a frame whose length we know do not cost sync.
	for _, name := range []string{"inside_headers", "headers_tail"} {
		det, _ := newTestDetector(Options{})
		replayWithLoss(det.New(clientConn()), recs, stream.Egress, cases[name][0], cases[name][1])
		if n := det.Stats().Get(CounterResyncs); n != 0 {
			t.Errorf("%s: %d resyncs", name, n)
		}
		if det.Stats().Get(CounterHPACKUntrusted) == 0 {
			t.Errorf("%s: a lost header block must make the table untrusted", name)
		}
	}
}

// Lost bytes reported with no data at all, repeatedly, and while already
// searching, and a connection that is nothing but losses.
func TestLossOnly(t *testing.T) {
	det, col := newTestDetector(Options{})
	p := det.New(clientConn())
	for i := 0; i < 100; i++ {
		p.Data(stream.Egress, uint64(i), nil, 1000)
		p.Data(stream.Ingress, uint64(i), []byte{1, 2, 3}, 7)
	}
	p.Close(200)
	if len(col.calls) != 0 || det.Stats().Get(CounterLostBytes) != 100*1007 {
		t.Errorf("calls %v stats %v", col.calls, statsMap(det.Stats()))
	}
	recs := loadFixture(t, "unary_ok")
	det, col = newTestDetector(Options{})
	p = det.New(clientConn())
	p.Data(stream.Egress, 1, nil, 5) // before anything
	for _, r := range slices.Clone(recs) {
		p.Data(r.Dir, r.Time, r.Data, 0)
	}
	p.Close(recs[len(recs)-1].Time)
	checkAgainstTruth(t, col.calls, det.Stats(), truthOf(t, recs))
}

// A frame header rejected after the frame order was checked (reserved bit
// set, or a stream id far above any opened) must not leave the order check
// waiting for its CONTINUATION: such a header is garbage, and the calls
// after it are parsed once sync is found again (RFC 9113 section 6.10 only
// constrains frames that are part of the connection).
func TestRejectedHeadersOpenNoBlock(t *testing.T) {
	for name, garbage := range map[string][]byte{
		// HEADERS without END_HEADERS, reserved bit set (section 4.1).
		"reserved": {0, 0, 4, byte(http2.FrameHeaders), 0, 0x80, 0, 0, 3, 0x82, 0x86, 0x84, 0x41},
		// HEADERS without END_HEADERS opening a stream 2^24 ids away.
		"jump": {0, 0, 4, byte(http2.FrameHeaders), 0, 1, 0, 0, 3, 0x82, 0x86, 0x84, 0x41},
	} {
		s := newSynth()
		s.start()
		s.request(1, "/pkg.Svc/A")
		s.response(1, 0)
		s.raw(stream.Egress, garbage)
		s.request(5, "/pkg.Svc/B")
		s.response(5, 0)
		s.request(7, "/pkg.Svc/C")
		s.response(7, 0)
		calls, st := s.replay(clientConn(), Options{})
		m := byID(calls)
		if len(calls) != 3 || m[5].Method != "pkg.Svc/B" || m[7].Method != "pkg.Svc/C" {
			t.Errorf("%s: calls %+v, %v", name, calls, statsMap(st))
		}
		if st.Get(CounterProtocolErrors) != 1 || st.Get(CounterResyncs) != 1 {
			t.Errorf("%s: %v", name, statsMap(st))
		}
	}
}
