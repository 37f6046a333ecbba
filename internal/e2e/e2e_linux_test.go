//go:build e2e && linux

// Package e2e runs the collector distribution the way a user does, end to
// end: bin/otelcol-ebpf watches a gRPC service (demoapp) that reads from
// PostgreSQL, exports spans over OTLP to Jaeger v2 and metrics to a
// Prometheus endpoint, and the test reads what Jaeger stored through its
// query API. Run it with `make e2e` (root; it builds the collector and
// Jaeger first).
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/cgroup"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/pgserver"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
)

const (
	// calls the client makes: ids 1..5 round robin, items 1..3 exist, so
	// 12 calls find their item and 8 get NOT_FOUND.
	calls        = 20
	okCalls      = 12
	missingCalls = 8
	// maxConnections is the collector's socket table size: the "sockets"
	// map gauge of this collector is told apart from other collectors' by it.
	maxConnections = 4096

	grpcSpanName = "shop.Catalog/GetItem"
	dbSpanName   = "SELECT items"
	queryText    = "SELECT name FROM items WHERE id = $1"
)

func TestEndToEndThroughJaeger(t *testing.T) {
	privileged.Require(t)
	repo, err := filepath.Abs(filepath.Join("..", ".."))
	require.NoError(t, err)
	collector := filepath.Join(repo, "bin", "otelcol-ebpf")
	jaeger := filepath.Join(repo, ".bin", "jaeger")
	for _, bin := range []string{collector, jaeger} {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("%s is missing: run `make e2e` (it runs `make otelcol jaeger` first)", bin)
		}
	}
	demoapp := buildDemoapp(t)

	g := cgroup.New(t)
	pg := pgserver.Start(t, g)
	// The table is made before the collector starts: these queries are
	// not part of what the test counts.
	createItems(t, pg.URL("postgres"))

	query := startJaeger(t, jaeger, filepath.Join(repo, "testdata", "jaeger", "config.yaml"))
	otlpPort, promPort := query.otlpPort, freePort(t)
	startCollector(t, collector, fmt.Sprintf(`
receivers:
  ebpf:
    filter:
      cgroups: [%q]
    map_pressure:
      enabled: true
      collection_interval: 1s
    limits:
      max_connections: %d
processors:
  batch:
    timeout: 200ms
exporters:
  otlp_grpc:
    endpoint: 127.0.0.1:%d
    tls:
      insecure: true
  prometheus:
    endpoint: 127.0.0.1:%d
service:
  telemetry:
    metrics: {level: none}
  pipelines:
    traces: {receivers: [ebpf], processors: [batch], exporters: [otlp_grpc]}
    metrics: {receivers: [ebpf], exporters: [prometheus]}
`, g.Path, maxConnections, otlpPort, promPort))

	// The receiver is running once its own maps are measured.
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", promPort)
	sockets := map[string]string{"ebpf_map_name": "sockets"}
	require.Eventually(t, func() bool {
		text, err := get(metricsURL)
		return err == nil && hasSample(text, "ebpf_map_max_entries", sockets, maxConnections)
	}, 60*time.Second, 200*time.Millisecond, "the collector never exposed ebpf_map_max_entries{ebpf_map_name=\"sockets\"} = %d", maxConnections)

	// The service and its client, both in the test cgroup.
	serverAddr := startDemoServer(t, g, demoapp, pg.URL("postgres"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client := exec.CommandContext(ctx, demoapp, "-mode", "client", "-addr", serverAddr, "-calls", strconv.Itoa(calls), "-ids", "5")
	g.Into(client)
	out, err := client.CombinedOutput()
	require.NoError(t, err, "demoapp client:\n%s", out)
	require.Contains(t, string(out), fmt.Sprintf("ok=%d not_found=%d other=0", okCalls, missingCalls))
	_, serverPort, err := net.SplitHostPort(serverAddr)
	require.NoError(t, err)

	// Wait until Jaeger holds at least what is expected, then a little
	// longer, so that a surplus span would be seen too.
	var spans []span
	want := func(s []span) bool {
		c := classify(s)
		return len(c.grpcClient) >= calls && len(c.grpcServer) >= calls && len(c.dbClient) >= calls && len(c.dbServer) >= calls
	}
	if !assert.Eventually(t, func() bool {
		spans, err = query.spans("demoapp", "postgres")
		return err == nil && want(spans)
	}, 60*time.Second, 500*time.Millisecond, "Jaeger did not receive every span") {
		dumpSpans(t, spans, err)
		t.FailNow()
	}
	time.Sleep(3 * time.Second)
	spans, err = query.spans("demoapp", "postgres")
	require.NoError(t, err)
	defer func() {
		if t.Failed() {
			dumpSpans(t, spans, nil)
		}
	}()

	services, err := query.services()
	require.NoError(t, err)
	assert.Subset(t, services, []string{"demoapp", "postgres"}, "services in Jaeger")

	c := classify(spans)
	require.Empty(t, c.other, "spans that are neither the gRPC call nor the item query")
	require.Len(t, c.grpcClient, calls, "gRPC CLIENT spans: one per call")
	require.Len(t, c.grpcServer, calls, "gRPC SERVER spans: one per call")
	require.Len(t, c.dbClient, calls, "PostgreSQL CLIENT spans: one per item query (the statement is prepared without an Execute: no span)")
	require.Len(t, c.dbServer, calls, "PostgreSQL SERVER spans: one per item query")

	byID := map[string]span{}
	for _, s := range spans {
		byID[s.TraceID+"/"+s.SpanID] = s
	}
	children := map[string][]span{}
	for _, s := range spans {
		if p, ok := s.parent(); ok {
			children[p] = append(children[p], s)
		}
	}

	// gRPC: the server span is the child of the client span, in its trace;
	// NOT_FOUND is an error for the caller only (semantic conventions:
	// server spans are errors for UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
	// INTERNAL, UNAVAILABLE and DATA_LOSS).
	codes := map[string]int{}
	for _, cl := range c.grpcClient {
		_, hasParent := cl.parent()
		assert.False(t, hasParent, "the gRPC client span is a root: the client calls from no span")
		code := cl.tag("rpc.response.status_code")
		codes[code]++
		checkRPC(t, cl, serverPort)
		kids := children[cl.TraceID+"/"+cl.SpanID]
		require.Len(t, kids, 1, "the gRPC client span has one child, the server span")
		sv := kids[0]
		assert.Equal(t, "demoapp", sv.service)
		assert.Equal(t, "server", sv.tag("span.kind"))
		assert.Equal(t, grpcSpanName, sv.OperationName)
		assert.Equal(t, code, sv.tag("rpc.response.status_code"), "both ends saw the same status")
		checkRPC(t, sv, serverPort)
		assert.NotEqual(t, cl.pid, sv.pid, "client and server are two processes")
		switch code {
		case "OK":
			assert.False(t, cl.isError(), "OK client span is not an error")
			assert.False(t, sv.isError(), "OK server span is not an error")
			assert.Empty(t, cl.tag("error.type"))
		case "NOT_FOUND":
			assert.True(t, cl.isError(), "NOT_FOUND is an error for the client")
			assert.Equal(t, "NOT_FOUND", cl.tag("error.type"))
			assert.False(t, sv.isError(), "NOT_FOUND is not an error for the server")
			assert.Empty(t, sv.tag("error.type"))
		default:
			t.Errorf("unexpected rpc.response.status_code %q", code)
		}
	}
	assert.Equal(t, map[string]int{"OK": okCalls, "NOT_FOUND": missingCalls}, codes, "status codes of the gRPC client spans")

	// PostgreSQL: the demoapp server's query (CLIENT) has the backend's
	// span (SERVER) as its child. The receiver does not propagate context
	// inside a process, so the query is not a child of the gRPC server
	// span that ran it: it is the root of a trace of its own, found only by
	// time (it runs during exactly one gRPC server span).
	grpcServerPID := c.grpcServer[0].pid
	rows := map[string]int{}
	for _, db := range c.dbClient {
		_, hasParent := db.parent()
		assert.False(t, hasParent, "the query span is a root (no context propagation inside a process)")
		assert.Equal(t, grpcServerPID, db.pid, "the queries come from the gRPC server process")
		checkDB(t, db, pg.Port)
		rows[db.tag("db.response.returned_rows")]++
		kids := children[db.TraceID+"/"+db.SpanID]
		require.Len(t, kids, 1, "the query span has one child, the backend's span")
		be := kids[0]
		assert.Equal(t, "postgres", be.service)
		assert.Equal(t, "server", be.tag("span.kind"))
		assert.Equal(t, dbSpanName, be.OperationName)
		checkDB(t, be, pg.Port)
		assert.Equal(t, db.tag("db.response.returned_rows"), be.tag("db.response.returned_rows"))

		var during []span
		for _, sv := range c.grpcServer {
			assert.NotEqual(t, sv.TraceID, db.TraceID, "a query and a gRPC call never share a trace")
			if sv.StartTime <= db.StartTime && db.StartTime+db.Duration <= sv.StartTime+sv.Duration {
				during = append(during, sv)
			}
		}
		assert.Len(t, during, 1, "the query runs during exactly one gRPC server span")
	}
	// db.response.returned_rows is left out when no row came back.
	assert.Equal(t, map[string]int{"1": okCalls, "": missingCalls}, rows, "db.response.returned_rows of the query spans")
	for _, be := range c.dbServer {
		_, hasParent := be.parent()
		assert.True(t, hasParent, "every backend span has the query span as parent")
	}

	// The same collector exposes the map gauges on its Prometheus endpoint.
	text, err := get(metricsURL)
	require.NoError(t, err)
	assert.True(t, hasSample(text, "ebpf_map_max_entries", sockets, maxConnections), "ebpf_map_max_entries{ebpf_map_name=\"sockets\"} = %d", maxConnections)
	for _, name := range []string{"ebpf_map_entries", "ebpf_map_utilization_ratio", "ebpf_map_memory_bytes"} {
		assert.True(t, hasSample(text, name, sockets, -1), "%s{ebpf_map_name=\"sockets\"} is exposed", name)
	}
}

// checkRPC checks the attributes both ends of a call carry.
func checkRPC(t *testing.T, s span, serverPort string) {
	t.Helper()
	assert.Equal(t, grpcSpanName, s.OperationName)
	assert.Equal(t, "grpc", s.tag("rpc.system.name"))
	assert.Equal(t, grpcSpanName, s.tag("rpc.method"))
	assert.Equal(t, serverPort, s.tag("server.port"))
	assert.Equal(t, "tcp", s.tag("network.transport"))
}

// checkDB checks the attributes both ends of a query carry.
func checkDB(t *testing.T, s span, port int) {
	t.Helper()
	assert.Equal(t, dbSpanName, s.OperationName)
	assert.Equal(t, "postgresql", s.tag("db.system.name"))
	assert.Equal(t, queryText, s.tag("db.query.text"), "the $1 placeholder is kept")
	assert.Equal(t, "postgres", s.tag("db.namespace"))
	assert.Equal(t, "SELECT", s.tag("db.operation.name"))
	assert.Equal(t, "items", s.tag("db.collection.name"))
	assert.Equal(t, strconv.Itoa(port), s.tag("server.port"))
	assert.True(t, strings.HasPrefix(s.tag("db.postgresql.statement.name"), "stmtcache_"), "pgx's cached prepared statement is executed")
	assert.False(t, s.isError())
}

// spanSet sorts the spans Jaeger returned by what they are.
type spanSet struct {
	grpcClient, grpcServer, dbClient, dbServer, other []span
}

func classify(spans []span) spanSet {
	var c spanSet
	for _, s := range spans {
		kind := s.tag("span.kind")
		switch {
		case s.service == "demoapp" && s.OperationName == grpcSpanName && kind == "client":
			c.grpcClient = append(c.grpcClient, s)
		case s.service == "demoapp" && s.OperationName == grpcSpanName && kind == "server":
			c.grpcServer = append(c.grpcServer, s)
		case s.service == "demoapp" && s.tag("db.system.name") == "postgresql" && kind == "client":
			c.dbClient = append(c.dbClient, s)
		case s.service == "postgres" && s.tag("db.system.name") == "postgresql" && kind == "server":
			c.dbServer = append(c.dbServer, s)
		default:
			c.other = append(c.other, s)
		}
	}
	return c
}

func dumpSpans(t *testing.T, spans []span, err error) {
	t.Helper()
	if err != nil {
		t.Logf("last Jaeger query failed: %v", err)
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].StartTime < spans[j].StartTime })
	t.Logf("%d spans in Jaeger:", len(spans))
	for _, s := range spans {
		p, _ := s.parent()
		tags := make([]string, 0, len(s.Tags))
		for _, tg := range s.Tags {
			tags = append(tags, fmt.Sprintf("%s=%v", tg.Key, tg.Value))
		}
		t.Logf("  %s/%s parent=%s %s pid=%s %q %s", s.TraceID, s.SpanID, p, s.service, s.pid, s.OperationName, strings.Join(tags, " "))
	}
}

// ---------------------------------------------------------------- Jaeger

// span is a span of Jaeger's query API (/api/traces), with its process.
type span struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	StartTime int64  `json:"startTime"` // microseconds
	Duration  int64  `json:"duration"`
	Tags      []tag  `json:"tags"`
	ProcessID string `json:"processID"`

	service, pid string
}

type tag struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

func (s span) tag(key string) string {
	for _, tg := range s.Tags {
		if tg.Key == key {
			return fmt.Sprint(tg.Value)
		}
	}
	return ""
}

// isError is Jaeger's rendering of span status Error.
func (s span) isError() bool {
	return s.tag("otel.status_code") == "ERROR" || s.tag("error") == "true"
}

// parent is "traceID/spanID" of the CHILD_OF reference.
func (s span) parent() (string, bool) {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.TraceID + "/" + r.SpanID, true
		}
	}
	return "", false
}

type jaegerQuery struct {
	base     string
	otlpPort int
}

func (q jaegerQuery) services() ([]string, error) {
	var out struct {
		Data []string `json:"data"`
	}
	err := getJSON(q.base+"/api/services", &out)
	return out.Data, err
}

// spans returns every span of the traces that hold a span of one of the
// services, each once.
func (q jaegerQuery) spans(services ...string) ([]span, error) {
	seen := map[string]bool{}
	var all []span
	for _, svc := range services {
		var out struct {
			Data []struct {
				Spans     []span `json:"spans"`
				Processes map[string]struct {
					ServiceName string `json:"serviceName"`
					Tags        []tag  `json:"tags"`
				} `json:"processes"`
			} `json:"data"`
		}
		if err := getJSON(fmt.Sprintf("%s/api/traces?service=%s&limit=10000&lookback=1h", q.base, svc), &out); err != nil {
			return nil, err
		}
		for _, tr := range out.Data {
			for _, s := range tr.Spans {
				if seen[s.TraceID+"/"+s.SpanID] {
					continue
				}
				seen[s.TraceID+"/"+s.SpanID] = true
				p := tr.Processes[s.ProcessID]
				s.service = p.ServiceName
				for _, tg := range p.Tags {
					if tg.Key == "process.pid" {
						s.pid = fmt.Sprint(tg.Value)
					}
				}
				all = append(all, s)
			}
		}
	}
	return all, nil
}

// startJaeger runs Jaeger v2 (in memory) on free loopback ports and stops
// it when the test ends: SIGTERM, then SIGKILL after 5 s (its shutdown can
// hang).
func startJaeger(t *testing.T, bin, config string) jaegerQuery {
	t.Helper()
	ports := map[string]int{}
	cmd := exec.Command(bin, "--config", config)
	cmd.Env = os.Environ()
	for _, env := range []string{"JAEGER_OTLP_GRPC_PORT", "JAEGER_OTLP_HTTP_PORT", "JAEGER_QUERY_HTTP_PORT", "JAEGER_QUERY_GRPC_PORT"} {
		ports[env] = freePort(t)
		cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", env, ports[env]))
	}
	logPath := startLogged(t, "jaeger", cmd, 5*time.Second)
	q := jaegerQuery{base: fmt.Sprintf("http://127.0.0.1:%d", ports["JAEGER_QUERY_HTTP_PORT"]), otlpPort: ports["JAEGER_OTLP_GRPC_PORT"]}
	require.Eventually(t, func() bool {
		_, err := q.services()
		return err == nil && logContains(logPath, "Everything is ready")
	}, 60*time.Second, 200*time.Millisecond, "Jaeger did not start")
	return q
}

// ---------------------------------------------------------------- processes

// startCollector runs bin/otelcol-ebpf with config; it is stopped with
// SIGTERM, then SIGQUIT and SIGKILL after 30 s, when the test ends.
// Detaching TLS uprobes (one set per process that maps libssl: every
// PostgreSQL backend) can take the receiver's Shutdown several seconds.
func startCollector(t *testing.T, bin, config string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "collector.yaml")
	require.NoError(t, os.WriteFile(path, []byte(config), 0o600))
	logPath := startLogged(t, "collector", exec.Command(bin, "--config", path), 30*time.Second)
	require.Eventually(t, func() bool { return logContains(logPath, "Everything is ready") },
		60*time.Second, 100*time.Millisecond, "the collector did not start")
}

// startLogged starts cmd with its output in a file and stops it when the
// test ends (SIGTERM, then SIGKILL after grace). The log is printed when
// the test failed.
func startLogged(t *testing.T, name string, cmd *exec.Cmd, grace time.Duration) string {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logFile, err := os.Create(logPath)
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	require.NoError(t, cmd.Start(), "start %s", name)
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		killed := stop(t, name, cmd, done, grace)
		logFile.Close()
		if t.Failed() || killed {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log (%s):\n%s", name, logPath, b)
		}
	})
	return logPath
}

// stop ends cmd: SIGTERM, then, after grace, SIGQUIT (a Go program prints
// every goroutine's stack: the log shows where it hung) and SIGKILL. It
// reports whether cmd had to be killed.
func stop(t *testing.T, name string, cmd *exec.Cmd, done <-chan struct{}, grace time.Duration) (killed bool) {
	t.Helper()
	start := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		t.Logf("%s stopped in %s", name, time.Since(start).Round(time.Millisecond))
		return false
	case <-time.After(grace):
	}
	t.Logf("%s still running %s after SIGTERM: SIGQUIT, then SIGKILL", name, grace)
	_ = cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	return true
}

func logContains(path, s string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.Contains(string(b), s)
}

// buildDemoapp compiles ./demoapp: the executable's name, demoapp, is the
// service.name of its spans.
func buildDemoapp(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "demoapp")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./demoapp").CombinedOutput()
	require.NoError(t, err, "go build ./demoapp:\n%s", out)
	return bin
}

// startDemoServer starts the demoapp server in g and returns its address.
func startDemoServer(t *testing.T, g *cgroup.Group, bin, dsn string) string {
	t.Helper()
	cmd := g.Command(bin, "-mode", "server", "-dsn", dsn)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				addr <- a
			}
		}
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		stop(t, "demoapp server", cmd, done, 5*time.Second)
		if t.Failed() {
			t.Logf("demoapp server stderr:\n%s", stderr.String())
		}
	})
	select {
	case a := <-addr:
		return a
	case <-done:
		t.Fatalf("demoapp server exited: %s", stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("demoapp server did not listen within 30 s")
	}
	return ""
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func createItems(t *testing.T, dsn string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
		INSERT INTO items VALUES (1, 'kettle'), (2, 'teapot'), (3, 'mug')`)
	require.NoError(t, err)
}

// ---------------------------------------------------------------- HTTP

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func get(url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, http.NoBody)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b), err
}

func getJSON(url string, v any) error {
	body, err := get(url)
	if err != nil {
		return err
	}
	return json.Unmarshal([]byte(body), v)
}

// hasSample reports whether the exposition has a sample of metric name
// whose labels include want, with value (any value when value < 0).
func hasSample(exposition, name string, want map[string]string, value float64) bool {
	for _, line := range strings.Split(exposition, "\n") {
		labels, rest, ok := strings.Cut(strings.TrimPrefix(line, name+"{"), "} ")
		if !ok || !strings.HasPrefix(line, name+"{") {
			continue
		}
		match := true
		for k, v := range want {
			match = match && strings.Contains(labels, fmt.Sprintf("%s=%q", k, v))
		}
		f, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if match && err == nil && (value < 0 || f == value) {
			return true
		}
	}
	return false
}
