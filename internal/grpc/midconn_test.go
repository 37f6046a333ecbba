package grpc

import (
	"testing"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

// checkAgainstTruth verifies that calls from a damaged or partial replay
// never contradict the full replay: a reported method or status is the
// true one, counts are lower bounds, and every _OTHER is counted.
func checkAgainstTruth(t *testing.T, calls []Call, st *Stats, truth map[uint32]Call) {
	t.Helper()
	unknown := 0
	for _, c := range calls {
		tr, found := truth[c.StreamID]
		if !found {
			t.Errorf("stream %d reported but not in the full replay", c.StreamID)
			continue
		}
		if c.MethodUnknown {
			unknown++
			if c.Method != MethodOther {
				t.Errorf("stream %d: unknown method reported as %q", c.StreamID, c.Method)
			}
		} else if c.Method != tr.Method {
			t.Errorf("stream %d: WRONG METHOD %q, truth %q", c.StreamID, c.Method, tr.Method)
		}
		if c.StatusSource == StatusTrailers && (c.GRPCStatus != tr.GRPCStatus || tr.StatusSource != StatusTrailers) {
			t.Errorf("stream %d: WRONG STATUS %d, truth %d", c.StreamID, c.GRPCStatus, tr.GRPCStatus)
		}
		if c.Authority != "" && c.Authority != tr.Authority {
			t.Errorf("stream %d: wrong authority %q", c.StreamID, c.Authority)
		}
		if c.ReqMessages > tr.ReqMessages || c.RespMessages > tr.RespMessages {
			t.Errorf("stream %d: messages %d/%d above truth %d/%d", c.StreamID, c.ReqMessages, c.RespMessages, tr.ReqMessages, tr.RespMessages)
		}
	}
	if got := st.Get(CounterCallsUnknownMethod); got != uint64(unknown) {
		t.Errorf("unknown-method counter %d, %d calls with %s", got, unknown, MethodOther)
	}
}

func truthOf(t *testing.T, recs []capfile.Record) map[uint32]Call {
	calls, _ := replayFixture(recs, clientConn(), Options{})
	m := make(map[uint32]Call, len(calls))
	for _, c := range calls {
		m[c.StreamID] = c
	}
	return m
}

// A connection whose beginning was missed: drop the first N records, for
// every N, in every role.
func TestMidConnection(t *testing.T) {
	for _, name := range []string{"churn", "concurrent", "streaming", "errors", "unary_ok", "cancel", "large", "curl", "http_status", "graceful_stop"} {
		recs := loadFixture(t, name)
		truth := truthOf(t, recs)
		step := 1
		if len(recs) > 100 {
			step = 7
		}
		for drop := 1; drop < len(recs); drop += step {
			for _, role := range []stream.Role{stream.RoleClient, stream.RoleServer, stream.RoleUnknown} {
				r := recs[drop:]
				if role == stream.RoleServer {
					r = serverView(r)
				}
				conn := &stream.ConnInfo{Role: role, Preexisting: true, Transport: "tcp"}
				calls, st := replayFixture(r, conn, Options{})
				checkAgainstTruth(t, calls, st, truth)
				if t.Failed() {
					t.Fatalf("%s: first %d records dropped, role %v", name, drop, role)
				}
			}
		}
	}
}

// Do better than "unknown forever": the churn recording's dynamic tables
// turn over (grpc-timeout and x-req values on requests, x-seq trailers on
// responses), so entries decoded after the gap take over and methods and
// statuses become known again on the same connection.
func TestMidConnectionRecovers(t *testing.T) {
	recs := loadFixture(t, "churn")
	truth := truthOf(t, recs)
	for _, drop := range []int{20, 40, 77, 150} {
		conn := &stream.ConnInfo{Role: stream.RoleClient, Preexisting: true}
		calls, st := replayFixture(recs[drop:], conn, Options{})
		checkAgainstTruth(t, calls, st, truth)
		if st.Get(CounterCallsUnknownMethod) == 0 || st.Get(CounterHPACKUnknownRefs) == 0 {
			t.Errorf("drop %d: expected unknown methods right after the gap: %v", drop, statsMap(st))
		}
		if len(calls) < 60 {
			t.Fatalf("drop %d: %d calls", drop, len(calls))
		}
		for _, c := range calls[len(calls)-40:] {
			if c.MethodUnknown || !c.HasStatus || c.StatusSource != StatusTrailers {
				t.Errorf("drop %d: stream %d not recovered: %+v", drop, c.StreamID, c)
			}
		}
	}
}

// The first unknown-method calls are followed, on a fresh connection, by
// fully known calls; a preexisting connection that shows its preface after
// all is decoded as a fresh one.
func TestMidConnectionFreshConnection(t *testing.T) {
	recs := loadFixture(t, "unary_ok")
	det, col := newTestDetector(Options{})
	capfile.Replay(det.New(&stream.ConnInfo{Role: stream.RoleClient, Preexisting: true}), recs[4:])
	before := len(col.calls)
	unknown := det.Stats().Get(CounterCallsUnknownMethod)
	if unknown == 0 {
		t.Fatalf("expected %s calls from the cut connection: %+v", MethodOther, col.calls)
	}
	capfile.Replay(det.New(clientConn()), recs)
	for _, c := range col.calls[before:] {
		if c.MethodUnknown || c.Method != mUnary {
			t.Errorf("fresh connection: %+v", c)
		}
	}
	if det.Stats().Get(CounterCallsUnknownMethod) != unknown {
		t.Error("fresh connection added unknown methods")
	}
	// Preexisting, but the capture started before the connection did.
	calls, st := replayFixture(recs, &stream.ConnInfo{Role: stream.RoleClient, Preexisting: true}, Options{})
	checkCalls(t, calls, fixtureWants["unary_ok"], true)
	if st.Get(CounterHPACKUnknownRefs) != 0 {
		t.Errorf("unknown refs on a connection seen from its preface: %v", statsMap(st))
	}
}
