//go:build linux

package receiver

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/cgroup"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/pgserver"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// The PostgreSQL tests run clients as children of this test binary (helper
// mode), inside a test cgroup that also holds the server: the capture is
// filtered to that cgroup, so it sees exactly what the test started.
const (
	pgHelperEnv = "EBPF_PG_HELPER"
	pgURLEnv    = "EBPF_PG_URL"
)

// pgStep is one client action and the span it must produce.
type pgStep struct {
	run func(ctx context.Context, c *pgx.Conn) error
	// spans is how many client spans the step produces (default 1).
	spans int
}

// pgScenario is the pgx client's script: every PostgreSQL feature the
// handler must get right, one after another on one connection.
func pgScenario() []pgStep {
	simple := pgx.QueryExecModeSimpleProtocol
	exec := func(sql string, args ...any) func(context.Context, *pgx.Conn) error {
		return func(ctx context.Context, c *pgx.Conn) error {
			_, err := c.Exec(ctx, sql, args...)
			return err
		}
	}
	wantErr := func(f func(context.Context, *pgx.Conn) error) func(context.Context, *pgx.Conn) error {
		return func(ctx context.Context, c *pgx.Conn) error {
			if err := f(ctx, c); err == nil {
				return fmt.Errorf("expected an error")
			}
			return nil
		}
	}
	query := func(sql string, args ...any) func(context.Context, *pgx.Conn) error {
		return func(ctx context.Context, c *pgx.Conn) error {
			rows, err := c.Query(ctx, sql, args...)
			if err != nil {
				return err
			}
			for rows.Next() {
			}
			return rows.Err()
		}
	}
	steps := []pgStep{
		{run: exec("CREATE TABLE items (id int PRIMARY KEY, name text)", simple)},
		{run: exec("INSERT INTO items VALUES (1, 'alpha'), (2, 'beta')", simple)},
		{run: query("SELECT name FROM items WHERE id = 1", simple)},
		// A multi-statement simple query is one span with the whole text.
		{run: exec("UPDATE items SET name = 'gamma' WHERE id = 2; DELETE FROM items WHERE id = 99", simple)},
		{run: wantErr(exec("SELECT 1/0", simple))},
		// A named prepared statement (pgx's statement cache) reused.
		{run: func(ctx context.Context, c *pgx.Conn) error {
			for i := 0; i < 5; i++ {
				var name string
				if err := c.QueryRow(ctx, "SELECT name FROM items WHERE id = $1", 1).Scan(&name); err != nil {
					return err
				}
			}
			return nil
		}, spans: 5},
		// A pipeline: 50 Bind/Execute pairs before one Sync.
		{run: func(ctx context.Context, c *pgx.Conn) error {
			b := &pgx.Batch{}
			for i := 100; i < 150; i++ {
				b.Queue("INSERT INTO items VALUES ($1, $2)", i, fmt.Sprintf("n%d", i))
			}
			return c.SendBatch(ctx, b).Close()
		}, spans: 50},
		// Errors at Parse, at Bind and at Execute.
		{run: wantErr(exec("SELEC 1"))},
		{run: func(ctx context.Context, c *pgx.Conn) error {
			// Unknown parameter type: the server parses "abc" as int at Bind.
			res := c.PgConn().ExecParams(ctx, "SELECT $1::int", [][]byte{[]byte("abc")}, nil, nil, nil).Read()
			if res.Err == nil {
				return fmt.Errorf("expected a Bind error")
			}
			return nil
		}},
		{run: wantErr(exec("INSERT INTO items VALUES ($1, $2)", 1, "duplicate"))},
		{run: func(ctx context.Context, c *pgx.Conn) error {
			rows := [][]any{{200, "c1"}, {201, "c2"}, {202, "c3"}}
			_, err := c.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"id", "name"}, pgx.CopyFromRows(rows))
			return err
		}},
		// Larger than the 64 KiB capture cap: captured head and tail.
		{run: query("SELECT length('"+strings.Repeat("x", 100000)+"') AS big", simple)},
		{run: func(ctx context.Context, c *pgx.Conn) error {
			tx, err := c.Begin(ctx)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "UPDATE items SET name = $1 WHERE id = $2", "tx", 1); err != nil {
				return err
			}
			return tx.Commit(ctx)
		}, spans: 3},
	}
	for i := range steps {
		if steps[i].spans == 0 {
			steps[i].spans = 1
		}
	}
	return steps
}

// TestPGHelper is not a test: in a child it runs a client scenario.
func TestPGHelper(t *testing.T) {
	mode := os.Getenv(pgHelperEnv)
	if mode == "" {
		t.Skip("helper process only")
	}
	os.Exit(runPGHelper(mode))
}

func runPGHelper(mode string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := pgx.Connect(ctx, os.Getenv(pgURLEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer c.Close(ctx)
	switch mode {
	case "scenario":
		for i, s := range pgScenario() {
			if err := s.run(ctx, c); err != nil {
				fmt.Fprintf(os.Stderr, "step %d: %v\n", i, err)
				return 3
			}
		}
	case "preexisting":
		// Prepare and use a named statement before the receiver starts,
		// then wait for the go-ahead and use it again.
		if _, err := c.Prepare(ctx, "byid", "SELECT $1::int + 1"); err != nil {
			return 4
		}
		var n int
		if err := c.QueryRow(ctx, "byid", 1).Scan(&n); err != nil {
			return 5
		}
		fmt.Println("ready")
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			return 6
		}
		for i := 0; i < 3; i++ {
			if err := c.QueryRow(ctx, "byid", i).Scan(&n); err != nil {
				return 7
			}
		}
		if _, err := c.Exec(ctx, "SELECT 42", pgx.QueryExecModeSimpleProtocol); err != nil {
			return 8
		}
	}
	return 0
}

// pgEnv is a receiver watching a test cgroup that holds a PostgreSQL server.
type pgEnv struct {
	g      *cgroup.Group
	pg     *pgserver.Server
	traces *consumertest.TracesSink
}

func startPGEnv(t *testing.T, beforeReceiver func(*pgEnv)) *pgEnv {
	t.Helper()
	privileged.Require(t)
	env := &pgEnv{g: cgroup.New(t), traces: new(consumertest.TracesSink)}
	env.pg = pgserver.Start(t, env.g)
	if beforeReceiver != nil {
		beforeReceiver(env)
	}
	cfg := createDefaultConfig().(*Config)
	cfg.Filter.Cgroups = []string{env.g.Path}
	cfg.MapPressure.Enabled = false
	cfg.Limits.RingBufferPollInterval = time.Millisecond
	set := receivertest.NewNopSettings(metadata.Type)
	r, err := NewFactory().CreateTraces(context.Background(), set, cfg, env.traces)
	require.NoError(t, err)
	require.NoError(t, r.Start(context.Background(), componenttest.NewNopHost()))
	t.Cleanup(func() { require.NoError(t, r.Shutdown(context.Background())) })
	return env
}

func (env *pgEnv) helper(mode string) *exec.Cmd {
	cmd := env.g.Command(os.Args[0], "-test.run=^TestPGHelper$")
	cmd.Env = append(os.Environ(), pgHelperEnv+"="+mode, pgURLEnv+"="+env.pg.URL("postgres"))
	cmd.Stderr = os.Stderr
	return cmd
}

// pgSpan is a span with what the tests look at.
type pgSpan struct {
	span ptrace.Span
	pid  int64
	exe  string
}

func (s pgSpan) attr(k string) string {
	v, ok := s.span.Attributes().Get(k)
	if !ok {
		return ""
	}
	return v.AsString()
}

// spansOf returns the spans of kind from processes matching pid (0: any),
// in start order.
func spansOf(sink *consumertest.TracesSink, kind ptrace.SpanKind, pid int64) []pgSpan {
	var out []pgSpan
	for _, td := range sink.AllTraces() {
		for i := 0; i < td.ResourceSpans().Len(); i++ {
			rs := td.ResourceSpans().At(i)
			p, _ := rs.Resource().Attributes().Get("process.pid")
			exe, _ := rs.Resource().Attributes().Get("process.executable.name")
			if pid != 0 && p.Int() != pid {
				continue
			}
			for j := 0; j < rs.ScopeSpans().Len(); j++ {
				ss := rs.ScopeSpans().At(j).Spans()
				for k := 0; k < ss.Len(); k++ {
					if ss.At(k).Kind() == kind {
						out = append(out, pgSpan{span: ss.At(k), pid: p.Int(), exe: exe.Str()})
					}
				}
			}
		}
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].span.StartTimestamp() < out[b].span.StartTimestamp() })
	return out
}

// awaitSpans waits until want spans of kind from pid arrived, then checks
// that no more come.
func awaitSpans(t *testing.T, sink *consumertest.TracesSink, kind ptrace.SpanKind, pid int64, want int) []pgSpan {
	t.Helper()
	require.Eventually(t, func() bool { return len(spansOf(sink, kind, pid)) >= want }, 20*time.Second, 20*time.Millisecond,
		"want %d %s spans from pid %d", want, kind, pid)
	time.Sleep(500 * time.Millisecond)
	got := spansOf(sink, kind, pid)
	require.Len(t, got, want, "no extra spans")
	return got
}

func TestPostgresPgxScenario(t *testing.T) {
	env := startPGEnv(t, nil)
	cmd := env.helper("scenario")
	require.NoError(t, cmd.Run())
	pid := int64(cmd.Process.Pid)

	want := 0
	for _, s := range pgScenario() {
		want += s.spans
	}
	client := awaitSpans(t, env.traces, ptrace.SpanKindClient, pid, want)

	type expect struct{ name, text, errType string }
	var exp []expect
	add := func(n int, e expect) {
		for i := 0; i < n; i++ {
			exp = append(exp, e)
		}
	}
	add(1, expect{"CREATE TABLE items", "CREATE TABLE items (id int PRIMARY KEY, name text)", ""})
	add(1, expect{"INSERT items", "INSERT INTO items VALUES (?, ?), (?, ?)", ""})
	add(1, expect{"SELECT items", "SELECT name FROM items WHERE id = ?", ""})
	add(1, expect{"UPDATE items DELETE items", "UPDATE items SET name = ? WHERE id = ?; DELETE FROM items WHERE id = ?", ""})
	add(1, expect{"SELECT", "SELECT ?/?", "22012"})
	add(5, expect{"SELECT items", "SELECT name FROM items WHERE id = $1", ""})
	add(50, expect{"INSERT items", "INSERT INTO items VALUES ($1, $2)", ""})
	add(1, expect{"", "SELEC ?", "42601"})
	add(1, expect{"SELECT", "SELECT $1::int", "22P02"})
	add(1, expect{"INSERT items", "INSERT INTO items VALUES ($1, $2)", "23505"})
	add(1, expect{`COPY "items"`, "", ""})
	add(1, expect{"SELECT", "", ""})
	add(1, expect{"BEGIN", "begin", ""})
	add(1, expect{"UPDATE items", "UPDATE items SET name = $1 WHERE id = $2", ""})
	add(1, expect{"COMMIT", "commit", ""})
	require.Len(t, exp, want)

	for i, s := range client {
		e := exp[i]
		if e.name != "" {
			require.Equal(t, e.name, s.span.Name(), "span %d", i)
		}
		if e.text != "" {
			require.Equal(t, e.text, s.attr("db.query.text"), "span %d", i)
		}
		require.Equal(t, "postgresql", s.attr("db.system.name"))
		require.Equal(t, "postgres", s.attr("db.namespace"), "span %d: database from the StartupMessage", i)
		require.Equal(t, "tcp", s.attr("network.transport"))
		require.Equal(t, "127.0.0.1", s.attr("server.address"))
		require.Equal(t, fmt.Sprint(env.pg.Port), s.attr("server.port"))
		require.Equal(t, e.errType, s.attr("error.type"), "span %d (%s)", i, s.span.Name())
		if e.errType != "" {
			require.Equal(t, ptrace.StatusCodeError, s.span.Status().Code(), "span %d", i)
			require.Equal(t, e.errType, s.attr("db.response.status_code"))
			require.NotEmpty(t, s.span.Status().Message())
		} else {
			require.Equal(t, ptrace.StatusCodeUnset, s.span.Status().Code(), "span %d (%s): %s", i, s.span.Name(), s.span.Status().Message())
		}
		require.Less(t, s.span.StartTimestamp(), s.span.EndTimestamp())
		require.NotContains(t, s.attr("db.query.text"), "alpha", "no literal leaves in the default configuration")
	}
	require.Equal(t, "1", client[2].attr("db.response.returned_rows"))
	require.Equal(t, "true", client[len(client)-4].attr("ebpf.capture.query_text_truncated"), "the 100 kB query was cut by the capture cap")

	// The server's backend saw the same queries: each is the child of the
	// client's span, in the same trace.
	server := awaitSpans(t, env.traces, ptrace.SpanKindServer, 0, want)
	byTrace := map[string]pgSpan{}
	for _, s := range server {
		require.Equal(t, "postgres", s.exe)
		byTrace[s.span.TraceID().String()] = s
	}
	for i, c := range client {
		s, ok := byTrace[c.span.TraceID().String()]
		require.True(t, ok, "client span %d (%s) has a server span in its trace", i, c.span.Name())
		require.Equal(t, c.span.SpanID(), s.span.ParentSpanID(), "span %d", i)
		require.Equal(t, c.span.Name(), s.span.Name())
		require.Equal(t, c.attr("error.type"), s.attr("error.type"))
	}
}

func TestPostgresPsqlOverUnixSocket(t *testing.T) {
	env := startPGEnv(t, nil)
	cmd := env.g.Command(filepath.Join("/usr/bin", "psql"), "-X", "-h", env.pg.SocketDir, "-p", fmt.Sprint(env.pg.Port),
		"-U", "postgres", "-d", "postgres", "-c", "SELECT count(*) FROM pg_class WHERE relname = 'secret_table'")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	client := awaitSpans(t, env.traces, ptrace.SpanKindClient, int64(cmd.Process.Pid), 1)
	s := client[0]
	require.Equal(t, "psql", s.exe)
	require.Equal(t, "SELECT pg_class", s.span.Name())
	require.Equal(t, "SELECT count(*) FROM pg_class WHERE relname = ?", s.attr("db.query.text"))
	require.Equal(t, "unix", s.attr("network.transport"))
	require.Equal(t, env.pg.SocketPath(), s.attr("server.address"))
	require.Equal(t, "1", s.attr("db.response.returned_rows"))
	server := awaitSpans(t, env.traces, ptrace.SpanKindServer, 0, 1)
	require.Equal(t, s.span.SpanID(), server[0].span.ParentSpanID(), "client and server linked over a Unix socket too")
}

func TestPostgresPgbenchModes(t *testing.T) {
	env := startPGEnv(t, func(env *pgEnv) {
		// Initialise outside the capture's view (no cgroup) is not possible:
		// the server is watched. Its spans are not counted below.
		cmd := exec.Command(filepath.Join(pgserver.BinDir, "pgbench"), "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", fmt.Sprint(env.pg.Port), "-U", "postgres", "postgres")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
	})
	const transactions = 20
	for _, mode := range []string{"simple", "extended", "prepared"} {
		t.Run(mode, func(t *testing.T) {
			cmd := env.g.Command(filepath.Join(pgserver.BinDir, "pgbench"), "-n", "-M", mode, "-c", "1", "-t", fmt.Sprint(transactions),
				"-h", "127.0.0.1", "-p", fmt.Sprint(env.pg.Port), "-U", "postgres", "postgres")
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "%s", out)
			// TPC-B-like: BEGIN, three UPDATEs, a SELECT, an INSERT, END per
			// transaction.
			spans := spansOf(env.traces, ptrace.SpanKindClient, int64(cmd.Process.Pid))
			require.Eventually(t, func() bool {
				spans = spansOf(env.traces, ptrace.SpanKindClient, int64(cmd.Process.Pid))
				return countNamed(spans, "END") == transactions
			}, 20*time.Second, 20*time.Millisecond)
			for name, n := range map[string]int{"BEGIN": 1, "UPDATE pgbench_accounts": 1, "SELECT pgbench_accounts": 1, "UPDATE pgbench_tellers": 1, "UPDATE pgbench_branches": 1, "INSERT pgbench_history": 1, "END": 1} {
				require.Equal(t, n*transactions, countNamed(spans, name), "%s spans in -M %s", name, mode)
			}
			for _, s := range spans {
				require.Empty(t, s.attr("error.type"), "%s: %s", s.span.Name(), s.span.Status().Message())
			}
			// Before the transactions pgbench asks the server about the
			// pgbench_accounts partitioning and the scale (pgbench_branches):
			// two more queries, nothing else.
			require.Len(t, spans, 7*transactions+2)
			require.Equal(t, 1, countNamed(spans, "SELECT pgbench_branches"), "the scale query")
		})
	}
}

func countNamed(spans []pgSpan, name string) int {
	n := 0
	for _, s := range spans {
		if s.span.Name() == name {
			n++
		}
	}
	return n
}

func TestPostgresConnectionOpenedBeforeStart(t *testing.T) {
	var cmd *exec.Cmd
	var stdin *os.File
	env := startPGEnv(t, func(env *pgEnv) {
		cmd = env.helper("preexisting")
		r, w, err := os.Pipe()
		require.NoError(t, err)
		cmd.Stdin, stdin = r, w
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		line, err := bufio.NewReader(out).ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "ready\n", line)
	})
	_, err := stdin.WriteString("go\n")
	require.NoError(t, err)
	require.NoError(t, cmd.Wait())
	client := awaitSpans(t, env.traces, ptrace.SpanKindClient, int64(cmd.Process.Pid), 4)
	for _, s := range client[:3] {
		// The statement was prepared before capture started: its text is
		// unknown, its name and the joined-mid-stream mark say so.
		require.Equal(t, "byid", s.attr("db.postgresql.statement.name"))
		require.Empty(t, s.attr("db.query.text"))
		require.Equal(t, "true", s.attr("ebpf.capture.joined_mid_stream"))
		require.Equal(t, "SELECT", s.span.Name(), "the command tag still names the operation")
	}
	require.Equal(t, "SELECT ?", client[3].attr("db.query.text"))
}
