//go:build linux

package receiver

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/cgroup"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/pgserver"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
)

const (
	killRequestIdle = 2 * time.Second
	killConnIdle    = 10 * time.Second
	sleepQueryText  = "SELECT pg_sleep(?)"
)

// sleepingClient is a helper whose `SELECT pg_sleep(60)` is running.
type sleepingClient struct {
	proc    *robProc
	backend int
}

// startSleeper starts a client whose query stays in flight and waits until
// the server runs it.
func startSleeper(t *testing.T, g *cgroup.Group, pg *pgserver.Server, admin *pgx.Conn) *sleepingClient {
	t.Helper()
	p := robStart(t, g, nil, "pg", pg.URL("postgres"), "sleep")
	var backend int
	_, err := fmt.Sscanf(p.line(t, 30*time.Second), "backend %d", &backend)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		var n int
		err := admin.QueryRow(context.Background(),
			"SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE 'SELECT pg_sleep%'", backend).Scan(&n)
		return err == nil && n == 1
	}, 10*time.Second, 20*time.Millisecond, "backend %d runs pg_sleep", backend)
	return &sleepingClient{proc: p, backend: backend}
}

// sleepSpans returns the spans of kind from pid whose query is pg_sleep.
func sleepSpans(sink *consumertest.TracesSink, kind ptrace.SpanKind, pid int) []ptrace.Span {
	var out []ptrace.Span
	for _, sp := range robSpans(sink, kind, pid, "") {
		if robAttr(sp, "db.query.text") == sleepQueryText {
			out = append(out, sp)
		}
	}
	return out
}

// TestPeersKilledMidQuery: two PostgreSQL queries are in flight when a peer
// dies. In one the client is SIGKILLed, in the other the backend is
// terminated by pg_terminate_backend from another connection. A process
// that dies closes its sockets without close(2), so the end that vanished
// is never seen closing: its pending query must end by
// limits.request_idle_timeout, as an incomplete span, and its connection
// must leave the receiver by limits.idle_timeout.
func TestPeersKilledMidQuery(t *testing.T) {
	privileged.Require(t)
	g := cgroup.New(t)
	// The backend of a killed client notices it while pg_sleep runs, and
	// exits instead of sleeping on.
	pg := pgserver.Start(t, g, "client_connection_check_interval=200ms")
	traces := new(consumertest.TracesSink)
	rig := robReceiver(t, g, traces, func(cfg *Config) {
		cfg.Limits.RequestIdleTimeout = killRequestIdle
		cfg.Limits.IdleTimeout = killConnIdle
	})
	baseline := rig.settled(t, "ebpf.capture.connections", nil)

	// The test's own connection (not captured: this process is outside the
	// cgroup; its backend is, and ends like any other).
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, pg.URL("postgres"))
	require.NoError(t, err)
	defer admin.Close(ctx)

	victim := startSleeper(t, g, pg, admin)    // its client is killed
	abandoned := startSleeper(t, g, pg, admin) // its backend is terminated
	require.NoError(t, victim.proc.cmd.Process.Kill())
	var terminated bool
	require.NoError(t, admin.QueryRow(ctx, "SELECT pg_terminate_backend($1)", abandoned.backend).Scan(&terminated))
	require.True(t, terminated)
	killed := time.Now()
	<-victim.proc.done
	line := abandoned.proc.line(t, 10*time.Second)
	require.Contains(t, line, "57P01", "the client saw the administrator's termination: %s", line)
	abandoned.proc.wait(t, 10*time.Second)
	require.NoError(t, admin.Close(ctx))

	// The client of the terminated backend got FATAL 57P01 and closed its
	// socket: close(2) ends its query at once, with the error, incomplete
	// (no ReadyForQuery came).
	t.Run("client of the terminated backend", func(t *testing.T) {
		sp := awaitOne(t, traces, ptrace.SpanKindClient, abandoned.proc.pid, 10*time.Second)
		checkKilled(t, sp, "57P01")
	})

	// Both ends that vanished without close(2): the killed client, and the
	// terminated backend. Nothing more will come on their connections; the
	// assembler's request expiry must end their queries once they saw no
	// traffic for limits.request_idle_timeout (swept once a second, spans
	// handed over every 200 ms).
	deadline := killed.Add(killRequestIdle + 3*time.Second)
	ends := []struct {
		name string
		kind ptrace.SpanKind
		pid  int
		code string
	}{
		{"killed client's query", ptrace.SpanKindClient, victim.proc.pid, ""},
		{"killed client's backend", ptrace.SpanKindServer, victim.backend, ""},
		{"terminated backend's query", ptrace.SpanKindServer, abandoned.backend, "57P01"},
	}
	t.Run("pending queries end by request_idle_timeout", func(t *testing.T) {
		for _, e := range ends {
			ok := assert.Eventually(t, func() bool { return len(sleepSpans(traces, e.kind, e.pid)) > 0 }, time.Until(deadline), 20*time.Millisecond,
				"%s (%s, pid %d): no span within request_idle_timeout (%s) + 3 s of the kill", e.name, e.kind, e.pid, killRequestIdle)
			if !ok {
				// Say when it did end, if it did: at the connection's expiry.
				if assert.Eventually(t, func() bool { return len(sleepSpans(traces, e.kind, e.pid)) > 0 }, killConnIdle+5*time.Second, 50*time.Millisecond) {
					t.Logf("%s: the span came %.1f s after the kill, with the connection's expiry (limits.idle_timeout %s)",
						e.name, time.Since(killed).Seconds(), killConnIdle)
				}
			}
		}
	})

	// Whichever expiry ended them, each is one span that says the answer
	// never came.
	t.Run("spans of the vanished ends", func(t *testing.T) {
		for _, e := range ends {
			sp := awaitOne(t, traces, e.kind, e.pid, killConnIdle+5*time.Second)
			t.Logf("%s: %s span, %s, incomplete=%s, status %s %q", e.name, sp.Kind(), robAttr(sp, "db.query.text"),
				robAttr(sp, "ebpf.capture.incomplete"), sp.Status().Code(), sp.Status().Message())
			checkKilled(t, sp, e.code)
		}
	})

	t.Run("no connection left in the receiver", func(t *testing.T) {
		// No close(2) comes from a dead process: its connections leave by
		// limits.idle_timeout.
		rig.await(t, "ebpf.capture.connections", nil, "back to the baseline", func(v int64) bool { return v == baseline })
		require.Equal(t, baseline, rig.rcv.eng.asm.Stats.LiveConns.Load())
		expired, _ := rig.metric("ebpf.capture.connections.ended", map[string]string{"reason": "expired"})
		require.GreaterOrEqual(t, expired, int64(2), "the killed client's and the terminated backend's connections expired")
	})
}

// awaitOne waits for the one pg_sleep span of kind from pid.
func awaitOne(t *testing.T, sink *consumertest.TracesSink, kind ptrace.SpanKind, pid int, within time.Duration) ptrace.Span {
	t.Helper()
	require.Eventually(t, func() bool { return len(sleepSpans(sink, kind, pid)) > 0 }, within, 20*time.Millisecond,
		"a %s span of pg_sleep from pid %d", kind, pid)
	time.Sleep(300 * time.Millisecond)
	spans := sleepSpans(sink, kind, pid)
	require.Len(t, spans, 1)
	return spans[0]
}

// checkKilled: the span of a query whose answer never (fully) came. code is
// the SQLSTATE the server sent, "" when it sent nothing.
func checkKilled(t *testing.T, sp ptrace.Span, code string) {
	t.Helper()
	assert.Equal(t, "true", robAttr(sp, "ebpf.capture.incomplete"), "the answer never came")
	assert.Less(t, sp.StartTimestamp(), sp.EndTimestamp())
	if code == "" {
		// Nothing was answered before the request idle timeout: an error
		// without a code.
		assert.Equal(t, ptrace.StatusCodeError, sp.Status().Code())
		assert.Equal(t, "_OTHER", robAttr(sp, "error.type"))
		assert.Equal(t, "no response: request idle timeout", sp.Status().Message())
		assert.Empty(t, robAttr(sp, "db.response.status_code"))
		return
	}
	assert.Equal(t, ptrace.StatusCodeError, sp.Status().Code())
	assert.Equal(t, code, robAttr(sp, "error.type"))
	assert.Equal(t, code, robAttr(sp, "db.response.status_code"))
	assert.True(t, strings.Contains(sp.Status().Message(), "terminating connection"), "status message %q", sp.Status().Message())
}
