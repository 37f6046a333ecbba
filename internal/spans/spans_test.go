package spans

import (
	"flag"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/golden"
	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/pdatatest/ptracetest"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/ebpfotel/ebpfreceiver/internal/grpc"
	"github.com/ebpfotel/ebpfreceiver/internal/postgres"
	"github.com/ebpfotel/ebpfreceiver/internal/procmeta"
	"github.com/ebpfotel/ebpfreceiver/internal/sqlsan"
	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// A client and the PostgreSQL server it talks to, both on this host.
var (
	clientProc = procmeta.Info{PID: 100, Executable: "api", ExecutablePath: "/usr/bin/api", CommandLine: "api --port 8080", ContainerID: ""}
	serverProc = procmeta.Info{PID: 200, Executable: "postgres", ExecutablePath: "/usr/lib/postgresql/15/bin/postgres", CommandLine: "postgres: app appdb 127.0.0.1(40000) idle"}
	clientConn = stream.ConnInfo{
		ID: 1, PID: 100, FD: 7, Comm: "api", Role: stream.RoleClient, Transport: "tcp",
		Local: netip.MustParseAddrPort("127.0.0.1:40000"), Remote: netip.MustParseAddrPort("127.0.0.1:5432"), Nonce: 0xdeadbeef,
	}
	serverConn = stream.ConnInfo{
		ID: 2, PID: 200, FD: 9, Comm: "postgres", Role: stream.RoleServer, Transport: "tcp",
		Local: netip.MustParseAddrPort("127.0.0.1:5432"), Remote: netip.MustParseAddrPort("127.0.0.1:40000"), Nonce: 0xdeadbeef,
	}
	unixConn = stream.ConnInfo{
		ID: 3, PID: 100, FD: 8, Comm: "psql", Role: stream.RoleClient, Transport: "unix",
		UnixPath: "/var/run/postgresql/.s.PGSQL.5432", Nonce: 77,
	}
)

const epoch = int64(1_700_000_000_000_000_000) // wall time of monotonic 0

func goldenCompare(t *testing.T, name string, got ptrace.Traces) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, golden.WriteTraces(t, path, got))
	}
	want, err := golden.ReadTraces(path)
	require.NoError(t, err)
	require.NoError(t, ptracetest.CompareTraces(want, got,
		ptracetest.IgnoreResourceSpansOrder(), ptracetest.IgnoreSpansOrder()))
}

func TestPostgresSpansGolden(t *testing.T) {
	b := NewBuilder(Options{HostName: "node-1", CommandLine: true, ScopeVersion: "test"})
	b.SetClock(epoch)
	opts := PostgresOptions{QueryText: sqlsan.ModeObfuscated}

	sel := &postgres.Query{Start: 1000, End: 51000, Text: "SELECT name FROM users WHERE id = 42 AND email = 'a@b.c'", Database: "appdb", User: "app", CommandTag: "SELECT 1", RowsAffected: 1, RowsReturned: 1, Extended: true}
	// The same query seen from both ends: linked parent and child.
	b.Query(clientProc, &clientConn, sel, false, Link{Ordinal: 3, PeerObserved: true}, opts)
	b.Query(serverProc, &serverConn, sel, true, Link{Ordinal: 3, PeerObserved: true}, opts)

	failed := &postgres.Query{Start: 60000, End: 70000, Text: "INSERT INTO orders (id, total) VALUES (7, 19.99)", Database: "appdb", RowsAffected: -1,
		Error: &postgres.Error{Severity: "ERROR", Code: "23505", Message: "duplicate key value violates unique constraint \"orders_pkey\""}}
	b.Query(clientProc, &clientConn, failed, false, Link{Ordinal: 4}, opts)

	prepared := &postgres.Query{Start: 80000, End: 90000, TextUnknown: true, StatementName: "stmtcache_1", CommandTag: "UPDATE 2", RowsAffected: 2, Extended: true}
	b.Query(clientProc, &clientConn, prepared, false, Link{Ordinal: 5}, opts)

	multi := &postgres.Query{Start: 100000, End: 130000, Text: "BEGIN; UPDATE accounts SET balance = balance - 100 WHERE id = 1; COMMIT", Database: "bank", CommandTag: "COMMIT", RowsAffected: -1}
	b.Query(clientProc, &unixConn, multi, false, Link{Ordinal: 1}, opts)

	require.Equal(t, 5, b.Len())
	got := b.Take()
	require.Equal(t, 0, b.Len(), "Take starts a new batch")

	// The server span is the client span's child, in the same trace.
	spans := map[ptrace.SpanKind]ptrace.Span{}
	for i := 0; i < got.ResourceSpans().Len(); i++ {
		ss := got.ResourceSpans().At(i).ScopeSpans().At(0).Spans()
		for j := 0; j < ss.Len(); j++ {
			if s := ss.At(j); s.Name() == "SELECT users" {
				spans[s.Kind()] = s
			}
		}
	}
	require.Equal(t, spans[ptrace.SpanKindClient].TraceID(), spans[ptrace.SpanKindServer].TraceID())
	require.Equal(t, spans[ptrace.SpanKindClient].SpanID(), spans[ptrace.SpanKindServer].ParentSpanID())
	goldenCompare(t, "postgres_spans.yaml", got)
}

func TestQueryTextModes(t *testing.T) {
	q := &postgres.Query{Start: 1, End: 2, Text: "SELECT * FROM t WHERE secret = 'hunter2'", CommandTag: "SELECT 0", RowsAffected: 0}
	for _, tt := range []struct {
		mode sqlsan.Mode
		want string
		has  bool
	}{
		{sqlsan.ModeObfuscated, "SELECT * FROM t WHERE secret = ?", true},
		{sqlsan.ModeRaw, q.Text, true},
		{sqlsan.ModeOff, "", false},
	} {
		t.Run(tt.mode.String(), func(t *testing.T) {
			b := NewBuilder(Options{})
			b.Query(clientProc, &clientConn, q, false, Link{}, PostgresOptions{QueryText: tt.mode})
			attrs := b.Take().ResourceSpans().At(0).ScopeSpans().At(0).Spans().At(0).Attributes()
			v, ok := attrs.Get("db.query.text")
			require.Equal(t, tt.has, ok)
			if ok {
				require.Equal(t, tt.want, v.Str())
			}
			s, _ := attrs.Get("db.query.summary")
			require.Equal(t, "SELECT t", s.Str(), "the summary never depends on the mode")
		})
	}
}

func TestGRPCSpansGolden(t *testing.T) {
	b := NewBuilder(Options{HostName: "node-1", ScopeVersion: "test"})
	b.SetClock(epoch)
	cli := stream.ConnInfo{ID: 10, PID: 100, FD: 5, Comm: "api", Role: stream.RoleClient, Transport: "tcp",
		Local: netip.MustParseAddrPort("[::1]:50000"), Remote: netip.MustParseAddrPort("[::1]:50051"), Nonce: 42}
	srv := stream.ConnInfo{ID: 11, PID: 300, FD: 6, Comm: "greeter", Role: stream.RoleServer, Transport: "tcp",
		Local: netip.MustParseAddrPort("[::1]:50051"), Remote: netip.MustParseAddrPort("[::1]:50000"), Nonce: 42}
	greeter := procmeta.Info{PID: 300, Executable: "greeter", ExecutablePath: "/srv/greeter"}
	opts := GRPCOptions{LegacyAttributes: true}

	ok := &grpc.Call{Start: 1000, End: 9000, StreamID: 1, Method: "helloworld.Greeter/SayHello", Authority: "greeter.internal:50051",
		HTTPStatus: 200, GRPCStatus: 0, HasStatus: true, StatusSource: grpc.StatusTrailers, ReqMessages: 1, RespMessages: 1, EndReason: grpc.EndTrailers}
	b.Call(clientProc, &cli, ok, false, Link{Ordinal: 1, PeerObserved: true}, opts)
	b.Call(greeter, &srv, ok, true, Link{Ordinal: 1, PeerObserved: true}, opts)

	notFound := &grpc.Call{Start: 10000, End: 12000, StreamID: 3, Method: "helloworld.Greeter/SayHello", HTTPStatus: 200,
		GRPCStatus: 5, HasStatus: true, GRPCMessage: "no such greeting", StatusSource: grpc.StatusTrailers, ReqMessages: 1, EndReason: grpc.EndTrailersOnly}
	// NOT_FOUND is the caller's problem: an error for the client, not for the server.
	b.Call(clientProc, &cli, notFound, false, Link{Ordinal: 3, PeerObserved: true}, opts)
	b.Call(greeter, &srv, notFound, true, Link{Ordinal: 3, PeerObserved: true}, opts)

	internal := &grpc.Call{Start: 20000, End: 25000, StreamID: 5, Method: "helloworld.Greeter/SayHello", HTTPStatus: 200,
		GRPCStatus: 13, HasStatus: true, GRPCMessage: "boom", ReqMessages: 1, EndReason: grpc.EndTrailers}
	b.Call(greeter, &srv, internal, true, Link{Ordinal: 5, PeerObserved: true}, opts)

	unknown := &grpc.Call{Start: 30000, End: 31000, StreamID: 7, Method: grpc.MethodOther, MethodUnknown: true, HTTPStatus: 200, GRPCStatus: 0, HasStatus: true, EndReason: grpc.EndTrailers}
	b.Call(clientProc, &cli, unknown, false, Link{Ordinal: 7}, opts)

	killed := &grpc.Call{Start: 40000, End: 90000, StreamID: 9, Method: "helloworld.Greeter/SayHello", EndReason: grpc.EndConnClosed}
	b.Call(clientProc, &cli, killed, false, Link{Ordinal: 9}, opts)

	goldenCompare(t, "grpc_spans.yaml", b.Take())
}

func TestRandomIDsWithoutNonce(t *testing.T) {
	b := NewBuilder(Options{})
	conn := clientConn
	conn.Nonce = 0
	q := &postgres.Query{Start: 1, End: 2, Text: "SELECT 1"}
	b.Query(clientProc, &conn, q, false, Link{Ordinal: 1}, PostgresOptions{})
	b.Query(clientProc, &conn, q, false, Link{Ordinal: 1}, PostgresOptions{})
	ss := b.Take().ResourceSpans().At(0).ScopeSpans().At(0).Spans()
	require.NotEqual(t, ss.At(0).TraceID(), ss.At(1).TraceID(), "no nonce: no shared identity to derive ids from")
	require.False(t, ss.At(0).TraceID().IsEmpty())
}

// A query that got no response at all ends as an error (its peer was
// killed, or its connection broke); one cut short by lost bytes does not.
func TestUnansweredQueryIsAnError(t *testing.T) {
	for _, tt := range []struct {
		why     postgres.Unanswered
		code    ptrace.StatusCode
		errType string
		message string
	}{
		{postgres.UnansweredExpired, ptrace.StatusCodeError, "_OTHER", "no response: request idle timeout"},
		{postgres.UnansweredClosed, ptrace.StatusCodeError, "_OTHER", "no response: connection closed"},
		{postgres.NotUnanswered, ptrace.StatusCodeUnset, "", ""},
	} {
		b := NewBuilder(Options{})
		q := &postgres.Query{Start: 1, End: 2, Text: "SELECT pg_sleep(60)", Incomplete: true, Unanswered: tt.why}
		b.Query(clientProc, &clientConn, q, false, Link{}, PostgresOptions{})
		span := b.Take().ResourceSpans().At(0).ScopeSpans().At(0).Spans().At(0)
		require.Equal(t, tt.code, span.Status().Code(), tt.why.String())
		require.Equal(t, tt.message, span.Status().Message())
		et, _ := span.Attributes().Get("error.type")
		require.Equal(t, tt.errType, et.Str())
		inc, _ := span.Attributes().Get("ebpf.capture.incomplete")
		require.True(t, inc.Bool())
	}
}

// A connection joined mid-stream gets random ids even when its nonce is
// known, so a server span on it names no parent: the client's id would be
// nobody's.
func TestNoParentOnAConnectionJoinedMidStream(t *testing.T) {
	b := NewBuilder(Options{})
	conn := serverConn
	conn.Preexisting = true
	q := &postgres.Query{Start: 1, End: 2, Text: "SELECT 1"}
	b.Query(serverProc, &conn, q, true, Link{Ordinal: 1, PeerObserved: true}, PostgresOptions{})
	span := b.Take().ResourceSpans().At(0).ScopeSpans().At(0).Spans().At(0)
	require.True(t, span.ParentSpanID().IsEmpty())

	b.Query(serverProc, &serverConn, q, true, Link{Ordinal: 1, PeerObserved: true}, PostgresOptions{})
	span = b.Take().ResourceSpans().At(0).ScopeSpans().At(0).Spans().At(0)
	require.False(t, span.ParentSpanID().IsEmpty(), "from its start, the connection's ends share ids")
}

func TestErrorMessagesLoseQuotedValues(t *testing.T) {
	q := &postgres.Query{Start: 1, End: 2, Text: "SELECT $1::int", Error: &postgres.Error{Code: "22P02", Message: `invalid input syntax for type integer: "hunter2"`}}
	for _, tt := range []struct {
		mode sqlsan.Mode
		want string
	}{
		{sqlsan.ModeObfuscated, `invalid input syntax for type integer: "?"`},
		{sqlsan.ModeOff, `invalid input syntax for type integer: "?"`},
		{sqlsan.ModeRaw, `invalid input syntax for type integer: "hunter2"`},
	} {
		b := NewBuilder(Options{})
		b.Query(clientProc, &clientConn, q, false, Link{}, PostgresOptions{QueryText: tt.mode})
		span := b.Take().ResourceSpans().At(0).ScopeSpans().At(0).Spans().At(0)
		require.Equal(t, tt.want, span.Status().Message(), tt.mode.String())
	}
	require.Equal(t, `a "?" b "?"`, scrubQuoted(`a "x" b "y`), "an unterminated quote hides the rest")
}

func TestOperationName(t *testing.T) {
	for _, tt := range []struct {
		name           string
		q              postgres.Query
		mode           sqlsan.Mode
		op, collection string // "" means absent
	}{
		{name: "one statement", q: postgres.Query{Text: "UPDATE t SET a = 1", CommandTag: "UPDATE 3"}, op: "UPDATE", collection: "t"},
		// The semantic conventions set db.operation.name and
		// db.collection.name only when the statement names exactly one;
		// the last command tag (COMMIT) must not stand for the whole text.
		{name: "multi-statement", q: postgres.Query{Text: "BEGIN; UPDATE t SET a = 1; COMMIT", CommandTag: "COMMIT"}},
		{name: "multi-statement text off", q: postgres.Query{Text: "BEGIN; UPDATE t SET a = 1; COMMIT", CommandTag: "COMMIT"}, mode: sqlsan.ModeOff},
		// With query_text off the text is still read: the operation comes
		// from the statement, not from the tag.
		{name: "one statement text off", q: postgres.Query{Text: "SELECT * FROM t", CommandTag: "SELECT 2"}, mode: sqlsan.ModeOff, op: "SELECT", collection: "t"},
		// Prepared before capture started: the tag is all we know, and an
		// Execute runs exactly one statement.
		{name: "execute of unknown statement", q: postgres.Query{TextUnknown: true, Extended: true, StatementName: "s1", CommandTag: "DELETE 1"}, op: "DELETE"},
		// A simple query whose text could not be read may have held
		// several statements: its last tag does not name it.
		{name: "simple query of unknown text", q: postgres.Query{TextUnknown: true, CommandTag: "COMMIT"}},
		{name: "no tag", q: postgres.Query{TextUnknown: true, Extended: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBuilder(Options{})
			q := tt.q
			q.Start, q.End = 1, 2
			b.Query(clientProc, &clientConn, &q, false, Link{}, PostgresOptions{QueryText: tt.mode})
			attrs := b.Take().ResourceSpans().At(0).ScopeSpans().At(0).Spans().At(0).Attributes()
			for key, want := range map[string]string{"db.operation.name": tt.op, "db.collection.name": tt.collection} {
				v, ok := attrs.Get(key)
				require.Equal(t, want != "", ok, "%s present", key)
				if ok {
					require.Equal(t, want, v.Str(), key)
				}
			}
		})
	}
}

// The RPC conventions after v1.37 renamed rpc.system to rpc.system.name and
// rpc.grpc.status_code to rpc.response.status_code, and dropped
// rpc.service (rpc.method carries it): the older names appear only when
// asked for, and the zero GRPCOptions (the receiver's default) leaves them out.
func TestGRPCLegacyAttributes(t *testing.T) {
	legacy := []string{"rpc.system", "rpc.service", "rpc.grpc.status_code"}
	call := &grpc.Call{Start: 1, End: 2, StreamID: 1, Method: "helloworld.Greeter/SayHello", HTTPStatus: 200,
		GRPCStatus: 5, HasStatus: true, StatusSource: grpc.StatusTrailers, ReqMessages: 1, EndReason: grpc.EndTrailers}
	for _, tt := range []struct {
		name string
		opts GRPCOptions
	}{
		{"default", GRPCOptions{}},
		{"legacy", GRPCOptions{LegacyAttributes: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBuilder(Options{})
			b.Call(clientProc, &clientConn, call, false, Link{}, tt.opts)
			b.Call(serverProc, &serverConn, call, true, Link{}, tt.opts)
			n := 0
			got := b.Take()
			for i := 0; i < got.ResourceSpans().Len(); i++ {
				ss := got.ResourceSpans().At(i).ScopeSpans().At(0).Spans()
				for j := 0; j < ss.Len(); j++ {
					n++
					attrs := ss.At(j).Attributes()
					v, _ := attrs.Get("rpc.system.name")
					require.Equal(t, "grpc", v.Str(), "the current name is always there")
					v, _ = attrs.Get("rpc.response.status_code")
					require.Equal(t, "NOT_FOUND", v.Str())
					for _, k := range legacy {
						_, ok := attrs.Get(k)
						require.Equal(t, tt.opts.LegacyAttributes, ok, "%s on a %s span", k, ss.At(j).Kind())
					}
					if tt.opts.LegacyAttributes {
						v, _ = attrs.Get("rpc.system")
						require.Equal(t, "grpc", v.Str())
						v, _ = attrs.Get("rpc.service")
						require.Equal(t, "helloworld.Greeter", v.Str())
						v, _ = attrs.Get("rpc.grpc.status_code")
						require.Equal(t, int64(5), v.Int())
					}
				}
			}
			require.Equal(t, 2, n, "a CLIENT and a SERVER span")
		})
	}
}
