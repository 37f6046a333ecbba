package grpc

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

// want is the expected shape of one reported call.
type want struct {
	id        uint32
	method    string
	status    int
	source    StatusSource
	http      int
	req, resp uint64
	end       EndReason
	reset     uint32
	message   string
	streaming Streaming
}

func ok(id uint32, m string) want {
	return want{id: id, method: m, status: 0, source: StatusTrailers, http: 200, req: 1, resp: 1, end: EndTrailers}
}

const (
	mUnary  = echoService + "/Unary"
	mFail   = echoService + "/Fail"
	mStream = echoService + "/ServerStream"
)

// fixtureWants are the calls each recording must produce, in report order.
var fixtureWants = map[string][]want{
	"unary_ok": {ok(1, mUnary), ok(3, mUnary), ok(5, mUnary)},
	"errors": {
		{id: 1, method: mFail, status: 5, source: StatusTrailers, http: 200, req: 1, end: EndTrailersOnly, message: notFoundMsg},
		{id: 3, method: mFail, status: 13, source: StatusTrailers, http: 200, req: 1, end: EndTrailers, message: internalMsg},
		ok(5, mUnary),
	},
	"deadline": {
		ok(1, mUnary),
		// The client's timer fires: it resets the stream with CANCEL after
		// its grpc-timeout, which reads as DEADLINE_EXCEEDED.
		{id: 3, method: echoService + "/Sleep", status: 4, source: StatusReset, req: 1, end: EndReset, reset: 0x8},
	},
	"unimplemented": {
		{id: 1, method: echoService + "/Missing", status: 12, source: StatusTrailers, http: 200, req: 1, end: EndTrailersOnly,
			message: "unknown method Missing for service " + echoService},
		{id: 3, method: "ebpfotel.test.v1.Nope/Call", status: 12, source: StatusTrailers, http: 200, req: 1, end: EndTrailersOnly,
			message: "unknown service ebpfotel.test.v1.Nope"},
	},
	"streaming": {
		{id: 1, method: mStream, status: 0, source: StatusTrailers, http: 200, req: 1, resp: 5, end: EndTrailers, streaming: StreamingServer},
		{id: 3, method: echoService + "/ClientStream", status: 0, source: StatusTrailers, http: 200, req: 5, resp: 1, end: EndTrailers, streaming: StreamingClient},
		{id: 5, method: echoService + "/Bidi", status: 0, source: StatusTrailers, http: 200, req: 4, resp: 4, end: EndTrailers,
			streaming: StreamingClient | StreamingServer | StreamingInterleaved},
	},
	"large": {ok(1, echoService+"/Size")},
	"cancel": {
		{id: 1, method: echoService + "/Bidi", status: 1, source: StatusReset, http: 200, req: 2, resp: 2, end: EndReset, reset: 0x8,
			streaming: StreamingClient | StreamingServer | StreamingInterleaved},
		ok(3, mUnary),
	},
	"curl":       {ok(1, mUnary)},
	"curl_plain": nil,
	"http_status": {
		{id: 1, method: echoService + "/Unavailable", status: 14, source: StatusHTTP, http: 503, req: 1, end: EndTrailersOnly},
		{id: 3, method: echoService + "/NoStatus", status: -1, source: StatusNone, http: 200, req: 1, resp: 1, end: EndNoTrailers},
		ok(5, mUnary),
	},
	"graceful_stop": {
		{id: 1, method: mStream, status: 0, source: StatusTrailers, http: 200, req: 1, resp: 6, end: EndTrailers, streaming: StreamingServer},
	},
	"server_stop": {
		{id: 1, method: mStream, status: -1, source: StatusNone, http: 200, req: 1, resp: 1, end: EndConnClosed},
	},
}

func churnWants() []want {
	w := make([]want, churnCalls)
	for i := range w {
		m := echoService + "/Churn"
		if i%3 == 2 {
			m = mUnary
		}
		w[i] = ok(uint32(2*i+1), m)
	}
	return w
}

func concurrentWants() []want {
	w := make([]want, concurrentN)
	for i := range w {
		w[i] = ok(uint32(2*i+1), echoService+"/Barrier")
	}
	return w
}

// fixtureNames lists every recording with its expectations.
func fixtureNames() []string {
	names := []string{"churn", "concurrent"}
	for n := range fixtureWants {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func wantsFor(name string) (w []want, ordered bool) {
	switch name {
	case "churn":
		return churnWants(), true
	case "concurrent":
		// 250 calls released together: responses complete in whatever
		// order the server wrote them; compare by stream id.
		return concurrentWants(), false
	}
	return fixtureWants[name], true
}

func checkCalls(t *testing.T, got []Call, wants []want, ordered bool) {
	t.Helper()
	if len(got) != len(wants) {
		t.Fatalf("got %d calls, want %d", len(got), len(wants))
	}
	if !ordered {
		got = slices.Clone(got)
		slices.SortFunc(got, func(a, b Call) int { return int(a.StreamID) - int(b.StreamID) })
	}
	for i, w := range wants {
		c := got[i]
		g := want{id: c.StreamID, method: c.Method, status: c.GRPCStatus, source: c.StatusSource, http: c.HTTPStatus,
			req: c.ReqMessages, resp: c.RespMessages, end: c.EndReason, reset: c.ResetCode, message: c.GRPCMessage, streaming: c.Streaming}
		if g != w {
			t.Errorf("call %d:\n got %+v\nwant %+v", i, g, w)
		}
		if c.MethodUnknown || c.Partial || c.Lost || c.HasStatus != (w.status >= 0) {
			t.Errorf("call %d: unknown=%v partial=%v lost=%v hasStatus=%v", i, c.MethodUnknown, c.Partial, c.Lost, c.HasStatus)
		}
		if !strings.HasPrefix(c.Authority, "127.0.0.1:") {
			t.Errorf("call %d: authority %q", i, c.Authority)
		}
	}
}

// checkTimes: Start is the time of a record the client wrote (its first
// HEADERS) and End the time of a record carrying the end.
func checkTimes(t *testing.T, calls []Call, recs []capfile.Record, clientDir stream.Direction) {
	t.Helper()
	client := map[uint64]bool{}
	all := map[uint64]bool{}
	for _, r := range recs {
		all[r.Time] = true
		if r.Dir == clientDir {
			client[r.Time] = true
		}
	}
	for i, c := range calls {
		if !client[c.Start] || !all[c.End] || c.End < c.Start {
			t.Errorf("call %d (stream %d): start %d (client record: %v) end %d", i, c.StreamID, c.Start, client[c.Start], c.End)
		}
	}
}

func TestFixtures(t *testing.T) {
	for _, name := range fixtureNames() {
		recs := loadFixture(t, name)
		wants, ordered := wantsFor(name)
		views := []struct {
			view      string
			conn      *stream.ConnInfo
			recs      []capfile.Record
			clientDir stream.Direction
		}{
			{"client", clientConn(), recs, stream.Egress},
			{"server", serverConn(), serverView(recs), stream.Ingress},
			// Role unknown: the side is inferred from the preface.
			{"unknown_role", &stream.ConnInfo{Transport: "tcp"}, serverView(recs), stream.Ingress},
		}
		for _, v := range views {
			t.Run(name+"/"+v.view, func(t *testing.T) {
				calls, st := replayFixture(v.recs, v.conn, Options{})
				checkCalls(t, calls, wants, ordered)
				checkTimes(t, calls, v.recs, v.clientDir)
				for _, c := range []Counter{CounterResyncs, CounterHPACKErrors, CounterProtocolErrors, CounterCallsUnknownMethod,
					CounterBytesSkipped, CounterPendingOverflow, CounterHPACKUnknownRefs, CounterMessageFramingErrors} {
					if n := st.Get(c); n != 0 {
						t.Errorf("%s = %d, want 0", c, n)
					}
				}
				if n := st.Get(CounterCalls); n != uint64(len(wants)) {
					t.Errorf("calls counter %d", n)
				}
				var total uint64
				for _, r := range v.recs {
					total += uint64(len(r.Data))
				}
				if n := st.Get(CounterBytes); n != total {
					t.Errorf("bytes counter %d, want %d", n, total)
				}
			})
		}
	}
}

// Byte counts of the large fixture: a 1 MiB request and a 256 KiB reply,
// each a wrapperspb.BytesValue (4 bytes of protobuf tag and length).
func TestFixtureLargeBytes(t *testing.T) {
	calls, st := replayFixture(loadFixture(t, "large"), clientConn(), Options{})
	if len(calls) != 1 || calls[0].ReqBytes != largeReq+4 || calls[0].RespBytes != largeResp+4 {
		t.Fatalf("calls %+v", calls)
	}
	// 1 MiB in frames of at most 16 KiB (SETTINGS_MAX_FRAME_SIZE default).
	if n := st.Get(CounterDataFrames); n < (largeReq+largeResp)/16384 {
		t.Errorf("data frames %d", n)
	}
}

func TestFixtureNonGRPC(t *testing.T) {
	calls, st := replayFixture(loadFixture(t, "curl_plain"), clientConn(), Options{})
	if len(calls) != 0 || st.Get(CounterNonGRPCStreams) != 1 {
		t.Fatalf("calls %v stats %v", calls, statsMap(st))
	}
}

// splitRecords re-cuts each record into pieces of the sizes next returns,
// keeping its direction and time.
func splitRecords(recs []capfile.Record, next func() int) []capfile.Record {
	var out []capfile.Record
	for _, r := range recs {
		for d := r.Data; len(d) > 0; {
			n := min(max(next(), 1), len(d))
			out = append(out, capfile.Record{Dir: r.Dir, Time: r.Time, Data: d[:n]})
			d = d[n:]
		}
	}
	return out
}

// Frames split across reads, or many frames in one read, must not change
// anything: byte-by-byte and random chunks give the same calls and frame
// counts as the recorded reads.
func TestSplitDelivery(t *testing.T) {
	for _, name := range fixtureNames() {
		recs := loadFixture(t, name)
		base, baseStats := replayFixture(recs, clientConn(), Options{})
		frames := baseStats.Get(CounterFrames)
		cuts := map[string]func() int{
			"bytewise": func() int { return 1 },
		}
		for seed := uint64(1); seed <= 3; seed++ {
			rng := rand.New(rand.NewPCG(seed, 99))
			cuts[fmt.Sprintf("random%d", seed)] = func() int { return 1 + rng.IntN(64) }
		}
		rng := rand.New(rand.NewPCG(7, 7))
		cuts["large_chunks"] = func() int { return 1 + rng.IntN(40000) }
		for cut, next := range cuts {
			if name == "large" && cut == "bytewise" && testing.Short() {
				continue
			}
			t.Run(name+"/"+cut, func(t *testing.T) {
				calls, st := replayFixture(splitRecords(recs, next), clientConn(), Options{})
				if !reflect.DeepEqual(calls, base) {
					t.Fatalf("split delivery changed the calls:\n got %+v\nwant %+v", calls, base)
				}
				if st.Get(CounterFrames) != frames {
					t.Fatalf("frames %d, want %d", st.Get(CounterFrames), frames)
				}
			})
		}
	}
}

// Coalescing: every run of reads in one direction delivered as a single
// read gives the same calls (times aside: a merged read has one time).
func TestCoalescedDelivery(t *testing.T) {
	noTimes := func(calls []Call) []Call {
		for i := range calls {
			calls[i].Start, calls[i].End = 0, 0
		}
		return calls
	}
	for _, name := range fixtureNames() {
		if name == "deadline" {
			// Merging gives the client's RST_STREAM an earlier time, and
			// DEADLINE_EXCEEDED is derived from when it was sent.
			continue
		}
		recs := loadFixture(t, name)
		base, _ := replayFixture(recs, clientConn(), Options{})
		var merged []capfile.Record
		for _, r := range recs {
			if n := len(merged); n > 0 && merged[n-1].Dir == r.Dir {
				merged[n-1].Data = append(merged[n-1].Data, r.Data...)
				continue
			}
			merged = append(merged, capfile.Record{Dir: r.Dir, Time: r.Time, Data: slices.Clone(r.Data)})
		}
		if len(merged) == len(recs) {
			continue
		}
		calls, _ := replayFixture(merged, clientConn(), Options{})
		if !reflect.DeepEqual(noTimes(calls), noTimes(base)) {
			t.Errorf("%s: coalesced delivery changed the calls", name)
		}
	}
}
