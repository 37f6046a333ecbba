package grpc

import (
	"bytes"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

type capfileRecord = capfile.Record

func rec(dir stream.Direction, ts uint64, b []byte) capfile.Record {
	return capfile.Record{Dir: dir, Time: ts, Data: b}
}

func byID(calls []Call) map[uint32]Call {
	m := map[uint32]Call{}
	for _, c := range calls {
		m[c.StreamID] = c
	}
	return m
}

// RFC 9113 section 6.8: streams above the GOAWAY's last stream id were not
// processed; those at or below it complete normally. A client's GOAWAY
// names server-initiated streams and ends none of ours.
func TestGoAway(t *testing.T) {
	s := newSynth()
	s.start()
	for id := uint32(1); id <= 7; id += 2 {
		blk := s.block(stream.Egress, reqHeaders("/pkg.Svc/M")...)
		s.send(stream.Egress, func(fr *http2.Framer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndHeaders: true})
		})
	}
	s.send(stream.Egress, func(fr *http2.Framer) { _ = fr.WriteGoAway(0, http2.ErrCodeNo, nil) })
	s.send(stream.Ingress, func(fr *http2.Framer) { _ = fr.WriteGoAway(3, http2.ErrCodeNo, []byte("draining")) })
	for _, id := range []uint32{1, 3} {
		s.send(stream.Egress, func(fr *http2.Framer) { _ = fr.WriteData(id, true, grpcMsg([]byte("x"))) })
		s.response(id, 0)
	}
	calls, _ := s.replay(clientConn(), Options{})
	if len(calls) != 4 {
		t.Fatalf("calls %+v", calls)
	}
	// Refused streams are reported when the GOAWAY arrives, in id order.
	for i, id := range []uint32{5, 7} {
		c := calls[i]
		if c.StreamID != id || c.EndReason != EndGoAway || c.GRPCStatus != codeUnavailable || c.StatusSource != StatusGoAway {
			t.Errorf("call %d: %+v", i, c)
		}
	}
	for i, id := range []uint32{1, 3} {
		c := calls[2+i]
		if c.StreamID != id || c.EndReason != EndTrailers || c.GRPCStatus != 0 || c.ReqMessages != 1 {
			t.Errorf("call %d: %+v", 2+i, c)
		}
	}
}

// RFC 9113 section 6.4 and the gRPC error code mapping.
func TestReset(t *testing.T) {
	cases := []struct {
		code     http2.ErrCode
		byClient bool
		want     int
	}{
		{http2.ErrCodeCancel, true, codeCancelled},
		{http2.ErrCodeRefusedStream, false, codeUnavailable},
		{http2.ErrCodeEnhanceYourCalm, false, codeResourceExhausted},
		{http2.ErrCodeInternal, false, codeInternal},
		{http2.ErrCodeNo, false, codeInternal},
	}
	for _, tc := range cases {
		s := newSynth()
		s.start()
		s.request(1, "/pkg.Svc/M")
		dir := stream.Ingress
		if tc.byClient {
			dir = stream.Egress
		}
		s.send(dir, func(fr *http2.Framer) { _ = fr.WriteRSTStream(1, tc.code) })
		calls, _ := s.replay(clientConn(), Options{})
		if len(calls) != 1 {
			t.Fatalf("%v: calls %+v", tc.code, calls)
		}
		c := calls[0]
		if c.EndReason != EndReset || c.GRPCStatus != tc.want || c.ResetCode != uint32(tc.code) || c.ResetByClient != tc.byClient ||
			c.StatusSource != StatusReset || c.Method != "pkg.Svc/M" {
			t.Errorf("%v: %+v", tc.code, c)
		}
	}
}

// Padding, priority, a header block split over CONTINUATION frames, a
// message split over DATA frames and two messages in one DATA frame.
func TestFramingFeatures(t *testing.T) {
	s := newSynth()
	s.start()
	blk := s.block(stream.Egress, reqHeaders("/pkg.Svc/Padded", "x-long", string(bytes.Repeat([]byte("z"), 200)))...)
	msg1 := grpcMsg(bytes.Repeat([]byte("a"), 50))
	msg2 := grpcMsg([]byte("bb"))
	msg3 := grpcMsg(nil)
	s.send(stream.Egress, func(fr *http2.Framer) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:10], PadLength: 7,
			Priority: http2.PriorityParam{StreamDep: 0, Weight: 200, Exclusive: true}})
		_ = fr.WriteContinuation(1, false, blk[10:100])
		_ = fr.WriteContinuation(1, true, blk[100:])
		_ = fr.WritePriority(1, http2.PriorityParam{Weight: 10})
		_ = fr.WriteDataPadded(1, false, msg1[:3], []byte{0, 0, 0})     // split inside the prefix
		_ = fr.WriteDataPadded(1, false, msg1[3:20], make([]byte, 255)) // maximum padding
		_ = fr.WriteData(1, false, append(msg1[20:], msg2...))          // end of one, all of another
		_ = fr.WriteData(1, false, msg3)                                // empty message
		_ = fr.WriteData(1, true, nil)                                  // END_STREAM on an empty frame
		_ = fr.WritePing(false, [8]byte{1})
		_ = fr.WriteWindowUpdate(0, 1000)
		_ = fr.WriteRawFrame(0xfa, 0, 0, []byte("extension frames are ignored"))
	})
	s.response(1, 0)
	calls, st := s.replay(clientConn(), Options{})
	if len(calls) != 1 {
		t.Fatalf("calls %+v %v", calls, statsMap(st))
	}
	c := calls[0]
	if c.Method != "pkg.Svc/Padded" || c.ReqMessages != 3 || c.ReqBytes != 52 || c.RespMessages != 1 || c.GRPCStatus != 0 {
		t.Errorf("%+v", c)
	}
	if st.Get(CounterProtocolErrors) != 0 || st.Get(CounterResyncs) != 0 {
		t.Errorf("%v", statsMap(st))
	}
}

// Trailers-Only, compressed flag, grpc-timeout, percent-encoded message.
func TestResponseShapes(t *testing.T) {
	s := newSynth()
	s.start()
	s.request(1, "/pkg.Svc/Fail", "grpc-timeout", "250m")
	blk := s.block(stream.Ingress, ":status", "200", "content-type", "application/grpc+proto",
		"grpc-status", "3", "grpc-message", "bad%20arg%3A%20%E2%9C%93%zz%4")
	s.send(stream.Ingress, func(fr *http2.Framer) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true, EndStream: true})
	})
	s.request(3, "/pkg.Svc/Zip")
	s.send(stream.Ingress, func(fr *http2.Framer) {
		h := s.block(stream.Ingress, ":status", "200", "content-type", "application/grpc")
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: h, EndHeaders: true})
		m := grpcMsg([]byte("gz"))
		m[0] = 1 // Compressed-Flag
		_ = fr.WriteData(3, false, m)
		tr := s.block(stream.Ingress, "grpc-status", "0")
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: tr, EndHeaders: true, EndStream: true})
	})
	calls, _ := s.replay(clientConn(), Options{})
	m := byID(calls)
	if c := m[1]; c.EndReason != EndTrailersOnly || c.GRPCStatus != 3 || c.Timeout != uint64(250*time.Millisecond) ||
		c.GRPCMessage != "bad arg: ✓%zz%4" || c.HTTPStatus != 200 {
		t.Errorf("%+v", c)
	}
	if c := m[3]; !c.RespCompressed || c.ReqCompressed || c.RespMessages != 1 {
		t.Errorf("%+v", c)
	}
}

// Streams that are not gRPC are counted, not reported: another content
// type (gRPC-Web frames its trailers differently), or none at all.
func TestNotGRPC(t *testing.T) {
	s := newSynth()
	s.start()
	for i, ct := range []string{"application/json", "application/grpc-web+proto", "", "application/grpcx"} {
		id := uint32(2*i + 1)
		kv := []string{":method", "POST", ":scheme", "http", ":path", "/api/thing", ":authority", "web"}
		if ct != "" {
			kv = append(kv, "content-type", ct)
		}
		blk := s.block(stream.Egress, kv...)
		s.send(stream.Egress, func(fr *http2.Framer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndHeaders: true, EndStream: true})
		})
		h := s.block(stream.Ingress, ":status", "404")
		s.send(stream.Ingress, func(fr *http2.Framer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h, EndHeaders: true, EndStream: true})
		})
	}
	s.request(9, "/pkg.Svc/Real")
	s.response(9, 0)
	calls, st := s.replay(clientConn(), Options{})
	if len(calls) != 1 || calls[0].StreamID != 9 || st.Get(CounterNonGRPCStreams) != 4 {
		t.Errorf("calls %+v stats %v", calls, statsMap(st))
	}
}

// A request whose :path is missing or not "/Service/Method".
func TestBadPath(t *testing.T) {
	s := newSynth()
	s.start()
	for i, path := range []string{"", "/", "/noslash", "//M", "/S/"} {
		id := uint32(2*i + 1)
		kv := []string{":method", "POST", "content-type", "application/grpc"}
		if path != "" {
			kv = append(kv, ":path", path)
		}
		blk := s.block(stream.Egress, kv...)
		s.send(stream.Egress, func(fr *http2.Framer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndHeaders: true, EndStream: true})
		})
		s.response(id, 12)
	}
	calls, st := s.replay(clientConn(), Options{})
	if len(calls) != 5 || st.Get(CounterCallsUnknownMethod) != 5 {
		t.Fatalf("calls %+v", calls)
	}
	for _, c := range calls {
		if c.Method != MethodOther || !c.MethodUnknown {
			t.Errorf("%+v", c)
		}
	}
}

// The table of open streams is bounded; overflowing streams are counted.
func TestPendingOverflow(t *testing.T) {
	s := newSynth()
	s.start()
	for id := uint32(1); id <= 7; id += 2 {
		blk := s.block(stream.Egress, reqHeaders("/pkg.Svc/M")...)
		s.send(stream.Egress, func(fr *http2.Framer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndHeaders: true})
		})
	}
	for id := uint32(1); id <= 7; id += 2 {
		s.send(stream.Egress, func(fr *http2.Framer) { _ = fr.WriteData(id, true, grpcMsg(nil)) })
		s.response(id, 0)
	}
	calls, st := s.replay(clientConn(), Options{MaxStreams: 2})
	if len(calls) != 2 || calls[0].StreamID != 1 || calls[1].StreamID != 3 {
		t.Errorf("calls %+v", calls)
	}
	if st.Get(CounterPendingOverflow) != 2 || st.Get(CounterUntrackedFrames) == 0 {
		t.Errorf("%v", statsMap(st))
	}
}

// Stale streams end as expired calls, explicitly or as time moves on.
func TestExpire(t *testing.T) {
	s := newSynth()
	s.start()
	s.request(1, "/pkg.Svc/Hang")
	det, col := newTestDetector(Options{StreamIdle: uint64(time.Minute)})
	p := det.NewParser(clientConn())
	for _, r := range s.recs {
		p.Data(r.Dir, r.Time, r.Data, 0)
	}
	p.Expire(s.ts+uint64(time.Second), uint64(time.Minute)) // not idle long enough
	if len(col.calls) != 0 {
		t.Fatal("expired too early")
	}
	p.Expire(s.ts+uint64(2*time.Minute), uint64(time.Minute))
	if len(col.calls) != 1 || col.calls[0].EndReason != EndExpired || col.calls[0].Method != "pkg.Svc/Hang" {
		t.Fatalf("calls %+v", col.calls)
	}
	// Automatic: a later frame far in the future sweeps the stale stream.
	s2 := newSynth()
	s2.start()
	s2.request(1, "/pkg.Svc/Hang")
	s2.ts += uint64(time.Hour)
	s2.request(3, "/pkg.Svc/Live")
	s2.response(3, 0)
	calls, st := s2.replay(clientConn(), Options{StreamIdle: uint64(time.Minute)})
	if len(calls) != 2 || calls[0].StreamID != 1 || calls[0].EndReason != EndExpired || st.Get(CounterStreamsExpired) != 1 {
		t.Errorf("calls %+v", calls)
	}
}

// SETTINGS_MAX_FRAME_SIZE (RFC 9113 section 6.5.2) raises the largest
// frame a peer may send; a larger frame without it means lost sync.
func TestMaxFrameSize(t *testing.T) {
	for _, raise := range []bool{true, false} {
		s := newSynth()
		s.raw(stream.Egress, append([]byte(http2.ClientPreface), settingsFrame()...))
		if raise {
			s.raw(stream.Ingress, settingsFrame(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20}))
		} else {
			s.raw(stream.Ingress, settingsFrame())
		}
		blk := s.block(stream.Egress, reqHeaders("/pkg.Svc/Big")...)
		s.send(stream.Egress, func(fr *http2.Framer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true})
			_ = fr.WriteData(1, true, grpcMsg(make([]byte, 100000)))
		})
		s.response(1, 0)
		calls, st := s.replay(clientConn(), Options{})
		if raise {
			if len(calls) != 1 || calls[0].ReqMessages != 1 || st.Get(CounterResyncs) != 0 {
				t.Errorf("raised: %+v %v", calls, statsMap(st))
			}
		} else if st.Get(CounterProtocolErrors) == 0 || st.Get(CounterResyncs) == 0 {
			t.Errorf("not raised: %v", statsMap(st))
		}
	}
}

// Without a role or a preface, the side is inferred from :path and
// :status; frames before the first plausible boundary are skipped.
func TestRoleInference(t *testing.T) {
	s := newSynth()
	s.start()
	s.request(1, "/pkg.Svc/A")
	s.response(1, 0)
	s.request(3, "/pkg.Svc/B")
	s.response(3, 7)
	recs := serverView(s.recs[2:]) // no preface, no SETTINGS; directions as a server sees them
	recs[0].Data = append([]byte{0xde, 0xad}, recs[0].Data...)
	calls, st := replayFixture(recs, &stream.ConnInfo{Preexisting: true}, Options{})
	m := byID(calls)
	if len(calls) != 2 || m[3].GRPCStatus != 7 || m[1].ReqMessages != 1 || m[1].RespMessages != 1 {
		t.Errorf("calls %+v", calls)
	}
	if st.Get(CounterBytesSkipped) != 2 || st.Get(CounterResyncs) != 0 {
		t.Errorf("%v", statsMap(st))
	}
}

func TestHelpers(t *testing.T) {
	for in, want := range map[string]string{
		"":             "",
		"plain":        "plain",
		"a%20b":        "a b",
		"%E2%9C%93":    "✓",
		"100%":         "100%",
		"%zz%2":        "%zz%2",
		"%41%42%43%":   "ABC%",
		"%e2%9c%93 ok": "✓ ok",
	} {
		if got := percentDecode(in); got != want {
			t.Errorf("percentDecode(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]uint64{"1H": 3600e9, "2M": 120e9, "3S": 3e9, "4m": 4e6, "5u": 5e3, "6n": 6, "99999999m": 99999999e6} {
		if got, ok := parseTimeout(in); !ok || got != want {
			t.Errorf("parseTimeout(%q) = %d %v", in, got, ok)
		}
	}
	for _, bad := range []string{"", "m", "1", "123456789S", "1x", "-1S"} {
		if _, ok := parseTimeout(bad); ok {
			t.Errorf("parseTimeout(%q) accepted", bad)
		}
	}
	for in, want := range map[string]bool{
		"application/grpc": true, "application/grpc+proto": true, "Application/GRPC;charset=x": true,
		"application/grpc-web": false, "application/grpcx": false, "application/json": false, "": false,
	} {
		if isGRPCContentType(in) != want {
			t.Errorf("isGRPCContentType(%q) != %v", in, want)
		}
	}
	for in, want := range map[string]string{"/a.B/C": "a.B/C", "/S/M": "S/M"} {
		if got, ok := methodFromPath(in); !ok || got != want {
			t.Errorf("methodFromPath(%q) = %q %v", in, got, ok)
		}
	}
	for _, bad := range []string{"", "/", "/x", "//M", "/S/", "S/M"} {
		if _, ok := methodFromPath(bad); ok {
			t.Errorf("methodFromPath(%q) accepted", bad)
		}
	}
}

// The client preface is matched across reads; bytes that only start like
// it are parsed again (role unknown) or searched (preexisting), and a
// client that skips it is counted and resynchronised.
func TestPrefacePaths(t *testing.T) {
	s := newSynth()
	s.start()
	s.request(1, "/pkg.Svc/A")
	s.response(1, 0)
	full := s.recs

	// The preface split across three reads.
	var split []capfileRecord
	for i, r := range full {
		if i == 0 {
			split = append(split, rec(r.Dir, r.Time, r.Data[:3]), rec(r.Dir, r.Time, r.Data[3:20]), rec(r.Dir, r.Time, r.Data[20:]))
			continue
		}
		split = append(split, r)
	}
	calls, st := replayFixture(split, &stream.ConnInfo{}, Options{})
	if len(calls) != 1 || calls[0].Method != "pkg.Svc/A" || st.Get(CounterProtocolErrors) != 0 {
		t.Errorf("split preface: %+v %v", calls, statsMap(st))
	}

	// "PRI * HTTP/2.0\r\n" and then something else, on a preexisting
	// connection: searched like any other bytes.
	odd := append([]byte("PRI * HTTP/2.0\r\n"), full[2].Data...)
	recs := append([]capfileRecord{rec(stream.Egress, 1, odd[:5]), rec(stream.Egress, 2, odd[5:])}, full[3:]...)
	calls, st = replayFixture(recs, &stream.ConnInfo{Role: stream.RoleClient, Preexisting: true}, Options{})
	if len(calls) != 1 || calls[0].ReqMessages != 1 || st.Get(CounterBytesSkipped) != 16 || st.Get(CounterResyncs) != 0 {
		t.Errorf("preexisting: %+v %v", calls, statsMap(st))
	}

	// A client connection seen from its start must begin with the preface.
	calls, st = replayFixture(full[2:], clientConn(), Options{})
	if st.Get(CounterProtocolErrors) != 1 || st.Get(CounterResyncs) != 1 || len(calls) != 1 || calls[0].ReqMessages != 1 {
		t.Errorf("missing preface: %+v %v", calls, statsMap(st))
	}
}

// A header block split into 1-byte CONTINUATION fragments (RFC 9113 section
// 6.10 puts no lower bound on them) decodes like the unsplit block, in
// linear time: the block is assembled, then decoded once.
func TestTinyContinuations(t *testing.T) {
	s := newSynth()
	s.start()
	blk := s.block(stream.Egress, reqHeaders("/pkg.Svc/Split", "x-meta", string(bytes.Repeat([]byte("m"), 20000)))...)
	s.send(stream.Egress, func(fr *http2.Framer) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:1]})
		for i := 1; i < len(blk); i++ {
			_ = fr.WriteContinuation(1, i == len(blk)-1, blk[i:i+1])
		}
		_ = fr.WriteData(1, true, grpcMsg(nil))
	})
	s.response(1, 0)
	s.request(3, "/pkg.Svc/Split") // indexed references into the table the split block built
	s.response(3, 0)
	calls, st := s.replay(clientConn(), Options{})
	if len(calls) != 2 || calls[0].Method != "pkg.Svc/Split" || calls[1].Method != "pkg.Svc/Split" || st.Get(CounterHPACKErrors) != 0 {
		t.Errorf("calls %+v %v", calls, statsMap(st))
	}
}
