//go:build linux

package receiver

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver/receivertest"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/cgroup"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// Every gRPC server and client of these tests is a child process (this test
// binary again, in TestGRPCHelper) started inside a test cgroup: the
// receiver never captures its own process, and tests capture only what
// they start.
const (
	grpcHelperEnv = "EBPF_GRPC_HELPER" // "server" or "client"
	grpcAddrEnv   = "EBPF_GRPC_ADDR"   // the client's target

	probeService   = "ebpftest.Probe"
	concurrentRPCs = 500
	largeMessage   = 1 << 20
	tickerPeriod   = 20 * time.Millisecond
	clientDeadline = 200 * time.Millisecond
	slowHandler    = time.Second
	// notFoundMsg needs percent-encoding in grpc-message ('%' and non-ASCII
	// bytes are sent as %XX, gRPC over HTTP/2 "Responses").
	notFoundMsg = `key "k1" not found: 100% naïve`
	internalMsg = "probe exploded after headers"
	deniedMsg   = "not for you"
	// settle is how long to keep watching once the expected spans arrived:
	// the receiver hands spans over every 200 ms.
	settle = 600 * time.Millisecond
)

func probeMethod(name string) string { return probeService + "/" + name }

// bytesCodec sends []byte messages as they are. grpc-go puts its name in
// content-type ("application/grpc+bytes"), which is still gRPC's media type
// (gRPC over HTTP/2, "Content-Type": application/grpc [("+proto" / "+json"
// / {custom})]).
type bytesCodec struct{}

func (bytesCodec) Name() string { return "bytes" }

func (bytesCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("bytesCodec: cannot marshal %T", v)
	}
	return *b, nil
}

func (bytesCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("bytesCodec: cannot unmarshal into %T", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

// TestGRPCHelper is not a test: in a child process it runs the probe
// server or a client driven by commands on stdin.
func TestGRPCHelper(t *testing.T) {
	switch os.Getenv(grpcHelperEnv) {
	case "server":
		os.Exit(runProbeServer())
	case "client":
		os.Exit(runProbeClient(os.Getenv(grpcAddrEnv)))
	default:
		t.Skip("helper process only")
	}
}

// lineOut writes whole lines to stdout from several goroutines.
type lineOut struct{ mu sync.Mutex }

func (o *lineOut) say(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

// probeServer is the server side of the test service.
type probeServer struct {
	out     *lineOut
	arrived atomic.Int32
	all     chan struct{}
	allOnce sync.Once
}

type unaryProbe func(s *probeServer, ctx context.Context, in []byte) ([]byte, error)

func unaryHandler(f unaryProbe) func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
	return func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		var in []byte
		if err := dec(&in); err != nil {
			return nil, err
		}
		out, err := f(srv.(*probeServer), ctx, in)
		if err != nil {
			return nil, err
		}
		return &out, nil
	}
}

// errorAfterHeaders sends response headers first, so the status travels in
// trailers after them (not as Trailers-Only).
func errorAfterHeaders(ctx context.Context, code codes.Code, msg string) error {
	if err := grpc.SendHeader(ctx, grpcmd.Pairs("x-probe", "headers-first")); err != nil {
		return err
	}
	return status.Error(code, msg)
}

var probeDesc = grpc.ServiceDesc{
	ServiceName: probeService,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Echo", Handler: unaryHandler(func(_ *probeServer, _ context.Context, in []byte) ([]byte, error) {
			return in, nil
		})},
		{MethodName: "NotFound", Handler: unaryHandler(func(_ *probeServer, ctx context.Context, _ []byte) ([]byte, error) {
			return nil, errorAfterHeaders(ctx, codes.NotFound, notFoundMsg)
		})},
		{MethodName: "Internal", Handler: unaryHandler(func(_ *probeServer, ctx context.Context, _ []byte) ([]byte, error) {
			return nil, errorAfterHeaders(ctx, codes.Internal, internalMsg)
		})},
		{MethodName: "Denied", Handler: unaryHandler(func(_ *probeServer, _ context.Context, _ []byte) ([]byte, error) {
			// Nothing sent before the error: grpc-go answers with a single
			// HEADERS frame carrying END_STREAM (Trailers-Only).
			return nil, status.Error(codes.PermissionDenied, deniedMsg)
		})},
		{MethodName: "Slow", Handler: unaryHandler(func(_ *probeServer, _ context.Context, in []byte) ([]byte, error) {
			// Ignores its deadline: the client gives up first.
			time.Sleep(slowHandler)
			return in, nil
		})},
		{MethodName: "Many", Handler: unaryHandler(func(s *probeServer, ctx context.Context, in []byte) ([]byte, error) {
			// Nobody answers until every call arrived: all of them are open
			// on the connection at once.
			if s.arrived.Add(1) == concurrentRPCs {
				s.allOnce.Do(func() { close(s.all) })
			}
			select {
			case <-s.all:
				return in, nil
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		})},
		{MethodName: "Hang", Handler: unaryHandler(func(s *probeServer, ctx context.Context, _ []byte) ([]byte, error) {
			s.out.say("hang")
			<-ctx.Done()
			return nil, status.FromContextError(ctx.Err()).Err()
		})},
	},
	Streams: []grpc.StreamDesc{
		{StreamName: "Fanout", ServerStreams: true, Handler: func(_ any, st grpc.ServerStream) error {
			var in []byte
			if err := st.RecvMsg(&in); err != nil {
				return err
			}
			n, err := strconv.Atoi(string(in))
			if err != nil {
				return status.Error(codes.InvalidArgument, err.Error())
			}
			for i := range n {
				msg := []byte(strconv.Itoa(i))
				if err := st.SendMsg(&msg); err != nil {
					return err
				}
			}
			return nil
		}},
		{StreamName: "Collect", ClientStreams: true, Handler: func(_ any, st grpc.ServerStream) error {
			n := 0
			for {
				var in []byte
				err := st.RecvMsg(&in)
				if errors.Is(err, io.EOF) {
					out := []byte(strconv.Itoa(n))
					return st.SendMsg(&out)
				}
				if err != nil {
					return err
				}
				n++
			}
		}},
		{StreamName: "Chat", ServerStreams: true, ClientStreams: true, Handler: func(_ any, st grpc.ServerStream) error {
			for {
				var in []byte
				err := st.RecvMsg(&in)
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					return err
				}
				if err := st.SendMsg(&in); err != nil {
					return err
				}
			}
		}},
		{StreamName: "Ticker", ServerStreams: true, Handler: func(_ any, st grpc.ServerStream) error {
			var in []byte
			if err := st.RecvMsg(&in); err != nil {
				return err
			}
			for i := 0; ; i++ {
				msg := []byte(strconv.Itoa(i))
				if err := st.SendMsg(&msg); err != nil {
					return err
				}
				select {
				case <-st.Context().Done():
					return status.FromContextError(st.Context().Err()).Err()
				case <-time.After(tickerPeriod):
				}
			}
		}},
	},
}

// runProbeServer serves the probe service on loopback and prints
// "addr HOST:PORT" once it listens.
func runProbeServer() int {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpc helper server:", err)
		return 2
	}
	out := new(lineOut)
	srv := grpc.NewServer(grpc.ForceServerCodec(bytesCodec{}))
	srv.RegisterService(&probeDesc, &probeServer{out: out, all: make(chan struct{})})
	out.say("addr %s", ln.Addr())
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "grpc helper server:", err)
		return 3
	}
	return 0
}

// runProbeClient keeps one connection to addr and runs the case named by
// each line of stdin, answering "CASE CODE DETAIL" where CODE is the gRPC
// status code the client saw (google.golang.org/grpc/codes numbering).
func runProbeClient(addr string) int {
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(bytesCodec{}), grpc.MaxCallRecvMsgSize(4*largeMessage)),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpc helper client:", err)
		return 2
	}
	defer cc.Close()
	// Connect now rather than on the first call, so that no case (one with
	// a 200 ms deadline in particular) spends its time setting up the
	// connection.
	cc.Connect()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for st := cc.GetState(); st != connectivity.Ready; st = cc.GetState() {
		if !cc.WaitForStateChange(ctx, st) {
			fmt.Fprintln(os.Stderr, "grpc helper client: not connected:", st)
			return 3
		}
	}
	out := new(lineOut)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		name := strings.TrimSpace(sc.Text())
		code, detail := clientCase(cc, name)
		out.say("%s %d %s", name, uint32(code), detail)
	}
	return 0
}

func invoke(ctx context.Context, cc *grpc.ClientConn, method string, in []byte) ([]byte, error) {
	var out []byte
	err := cc.Invoke(ctx, "/"+probeMethod(method), &in, &out)
	return out, err
}

// clientCase runs one case; detail reports what else the client saw.
func clientCase(cc *grpc.ClientConn, name string) (codes.Code, string) {
	ctx := context.Background()
	switch name {
	case "Echo", "NotFound", "Internal", "Denied", "Missing", "Hang":
		out, err := invoke(ctx, cc, name, []byte("ping"))
		return status.Code(err), fmt.Sprintf("%q", out)
	case "Slow":
		ctx, cancel := context.WithTimeout(ctx, clientDeadline)
		defer cancel()
		_, err := invoke(ctx, cc, name, []byte("ping"))
		return status.Code(err), "-"
	case "Large":
		in := bytes.Repeat([]byte("0123456789abcdef"), largeMessage/16)
		out, err := invoke(ctx, cc, "Echo", in)
		return status.Code(err), strconv.FormatBool(bytes.Equal(in, out))
	case "Many":
		var wg sync.WaitGroup
		var mu sync.Mutex
		okCalls, worst := 0, codes.OK
		for i := range concurrentRPCs {
			wg.Go(func() {
				_, err := invoke(ctx, cc, name, []byte(strconv.Itoa(i)))
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					worst = status.Code(err)
					return
				}
				okCalls++
			})
		}
		wg.Wait()
		return worst, fmt.Sprintf("ok=%d", okCalls)
	case "Fanout":
		st, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/"+probeMethod(name))
		if err != nil {
			return status.Code(err), "-"
		}
		req := []byte("5")
		if err := st.SendMsg(&req); err != nil {
			return status.Code(err), "send"
		}
		if err := st.CloseSend(); err != nil {
			return status.Code(err), "close"
		}
		n, err := recvAll(st)
		return status.Code(err), fmt.Sprintf("received=%d", n)
	case "Collect":
		st, err := cc.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true}, "/"+probeMethod(name))
		if err != nil {
			return status.Code(err), "-"
		}
		for i := range 4 {
			msg := []byte(strconv.Itoa(i))
			if err := st.SendMsg(&msg); err != nil {
				return status.Code(err), "send"
			}
		}
		if err := st.CloseSend(); err != nil {
			return status.Code(err), "close"
		}
		var out []byte
		err = st.RecvMsg(&out)
		return status.Code(err), fmt.Sprintf("count=%s", out)
	case "Chat":
		st, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/"+probeMethod(name))
		if err != nil {
			return status.Code(err), "-"
		}
		// Strictly alternating: each answer arrives before the next
		// request is sent.
		for i := range 3 {
			msg := []byte(strconv.Itoa(i))
			if err := st.SendMsg(&msg); err != nil {
				return status.Code(err), "send"
			}
			var back []byte
			if err := st.RecvMsg(&back); err != nil {
				return status.Code(err), "recv"
			}
		}
		if err := st.CloseSend(); err != nil {
			return status.Code(err), "close"
		}
		n, err := recvAll(st)
		return status.Code(err), fmt.Sprintf("extra=%d", n)
	case "Cancel":
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/"+probeMethod("Ticker"))
		if err != nil {
			return status.Code(err), "-"
		}
		req := []byte("go")
		if err := st.SendMsg(&req); err != nil {
			return status.Code(err), "send"
		}
		if err := st.CloseSend(); err != nil {
			return status.Code(err), "close"
		}
		for range 2 {
			var msg []byte
			if err := st.RecvMsg(&msg); err != nil {
				return status.Code(err), "recv"
			}
		}
		cancel()
		n, err := recvAll(st)
		return status.Code(err), fmt.Sprintf("after_cancel=%d", n)
	default:
		return codes.Unknown, "no such case"
	}
}

// recvAll reads messages until the stream ends; a clean end is OK.
func recvAll(st grpc.ClientStream) (int, error) {
	n := 0
	for {
		var msg []byte
		err := st.RecvMsg(&msg)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
	}
}

// ---- the test side ----

// grpcChild is a helper process and the lines it printed.
type grpcChild struct {
	cmd   *exec.Cmd
	pid   int
	stdin io.WriteCloser
	lines chan string
}

func startGRPCChild(t *testing.T, g *cgroup.Group, mode, addr string) *grpcChild {
	t.Helper()
	cmd := g.Command(os.Args[0], "-test.run=^TestGRPCHelper$")
	cmd.Env = append(os.Environ(), grpcHelperEnv+"="+mode, grpcAddrEnv+"="+addr)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	c := &grpcChild{cmd: cmd, pid: cmd.Process.Pid, stdin: stdin, lines: make(chan string, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		_ = cmd.Wait()
	})
	return c
}

func (c *grpcChild) line(t *testing.T, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		require.True(t, ok, "helper %d exited", c.pid)
		return l
	case <-time.After(timeout):
		require.FailNow(t, "helper did not answer", "pid %d, %s", c.pid, timeout)
		return ""
	}
}

// startProbeServer starts the server child and returns it with its address.
func startProbeServer(t *testing.T, g *cgroup.Group) (*grpcChild, string) {
	t.Helper()
	s := startGRPCChild(t, g, "server", "")
	addr, ok := strings.CutPrefix(s.line(t, 10*time.Second), "addr ")
	require.True(t, ok)
	return s, addr
}

// run sends a case to the client child and requires the status code the
// client saw; it returns the client's detail.
func (c *grpcChild) run(t *testing.T, name string, want codes.Code) string {
	t.Helper()
	c.send(t, name)
	return c.result(t, name, want, 20*time.Second)
}

func (c *grpcChild) send(t *testing.T, name string) {
	t.Helper()
	_, err := fmt.Fprintln(c.stdin, name)
	require.NoError(t, err)
}

func (c *grpcChild) result(t *testing.T, name string, want codes.Code, timeout time.Duration) string {
	t.Helper()
	f := strings.SplitN(c.line(t, timeout), " ", 3)
	require.Len(t, f, 3)
	require.Equal(t, name, f[0])
	code, err := strconv.ParseUint(f[1], 10, 32)
	require.NoError(t, err)
	require.Equal(t, want, codes.Code(code), "status the client saw (%s)", f[2])
	return f[2]
}

// grpcReceiver starts the receiver through its factory, traces and metrics
// into sinks, capturing only the processes of g.
func grpcReceiver(t *testing.T, g *cgroup.Group, tune func(*Config)) (*consumertest.TracesSink, *consumertest.MetricsSink) {
	t.Helper()
	cfg := createDefaultConfig().(*Config)
	cfg.Filter.Cgroups = []string{g.Path}
	cfg.MapPressure.Enabled = false
	cfg.Limits.RingBufferPollInterval = 2 * time.Millisecond
	cfg.SelfMetricsInterval = 500 * time.Millisecond
	if tune != nil {
		tune(cfg)
	}
	require.NoError(t, cfg.Validate())
	set := receivertest.NewNopSettings(metadata.Type)
	if os.Getenv("EBPF_TEST_LOG") != "" {
		set.Logger = zaptest.NewLogger(t) // the receiver's log in the test's output
	}
	traces := new(consumertest.TracesSink)
	metrics := new(consumertest.MetricsSink)
	f := NewFactory()
	tr, err := f.CreateTraces(context.Background(), set, cfg, traces)
	require.NoError(t, err)
	mr, err := f.CreateMetrics(context.Background(), set, cfg, metrics)
	require.NoError(t, err)
	host := componenttest.NewNopHost()
	require.NoError(t, tr.Start(context.Background(), host))
	require.NoError(t, mr.Start(context.Background(), host))
	t.Cleanup(func() {
		require.NoError(t, tr.Shutdown(context.Background()))
		require.NoError(t, mr.Shutdown(context.Background()))
	})
	return traces, metrics
}

// seenSpan is a gRPC span with the process it came from.
type seenSpan struct {
	pid  int64
	span ptrace.Span
}

func grpcSpans(sink *consumertest.TracesSink) []seenSpan {
	var out []seenSpan
	for _, td := range sink.AllTraces() {
		rss := td.ResourceSpans()
		for i := 0; i < rss.Len(); i++ {
			rs := rss.At(i)
			pid, _ := rs.Resource().Attributes().Get("process.pid")
			sss := rs.ScopeSpans()
			for j := 0; j < sss.Len(); j++ {
				spans := sss.At(j).Spans()
				for k := 0; k < spans.Len(); k++ {
					sp := spans.At(k)
					if v, ok := sp.Attributes().Get("rpc.system.name"); ok && v.Str() == "grpc" {
						out = append(out, seenSpan{pid: pid.Int(), span: sp})
					}
				}
			}
		}
	}
	return out
}

func strAttr(sp ptrace.Span, key string) string {
	v, ok := sp.Attributes().Get(key)
	if !ok {
		return "<none>"
	}
	return v.AsString()
}

// dumpSpans logs every gRPC span and the parser counters, for a failure.
func dumpSpans(t *testing.T, traces *consumertest.TracesSink, metrics *consumertest.MetricsSink) {
	t.Helper()
	all := grpcSpans(traces)
	groups := map[string]int{}
	for _, s := range all {
		sp := s.span
		groups[fmt.Sprintf("pid=%d %s method=%s status=%s end=%s", s.pid, sp.Kind(), strAttr(sp, "rpc.method"),
			strAttr(sp, "rpc.response.status_code"), strAttr(sp, "ebpf.rpc.end_reason"))]++
	}
	for _, k := range slices.Sorted(maps.Keys(groups)) {
		t.Logf("%4d spans: %s", groups[k], k)
	}
	const maxLines = 40
	for i, s := range all {
		if i == maxLines {
			t.Logf("... %d more spans", len(all)-maxLines)
			break
		}
		sp := s.span
		t.Logf("pid=%d dur=%s %s %q method=%s status=%s end=%s req=%s resp=%s err=%s %s/%q trace=%s span=%s parent=%s",
			s.pid, time.Duration(sp.EndTimestamp()-sp.StartTimestamp()), sp.Kind(), sp.Name(), strAttr(sp, "rpc.method"), strAttr(sp, "rpc.response.status_code"),
			strAttr(sp, "ebpf.rpc.end_reason"), strAttr(sp, "ebpf.rpc.request.messages"), strAttr(sp, "ebpf.rpc.response.messages"),
			strAttr(sp, "error.type"), sp.Status().Code(), sp.Status().Message(), sp.TraceID(), sp.SpanID(), sp.ParentSpanID())
	}
	batches := metrics.AllMetrics()
	// The newest batch holds the latest values of every counter.
	for i := len(batches) - 1; i >= 0; i-- {
		found := false
		rms := batches[i].ResourceMetrics()
		for r := 0; r < rms.Len(); r++ {
			sms := rms.At(r).ScopeMetrics()
			for s := 0; s < sms.Len(); s++ {
				ms := sms.At(s).Metrics()
				for m := 0; m < ms.Len(); m++ {
					met := ms.At(m)
					var dps pmetric.NumberDataPointSlice
					switch met.Type() {
					case pmetric.MetricTypeSum:
						dps = met.Sum().DataPoints()
					case pmetric.MetricTypeGauge:
						dps = met.Gauge().DataPoints()
					default:
						continue
					}
					for d := 0; d < dps.Len(); d++ {
						if dps.At(d).IntValue() != 0 {
							found = true
							t.Logf("%s %v = %d", met.Name(), dps.At(d).Attributes().AsRaw(), dps.At(d).IntValue())
						}
					}
				}
			}
		}
		if found {
			return
		}
	}
}

// spanSel selects the spans of one kind from one process whose rpc.method
// is one of methods and that started after since.
type spanSel struct {
	kind    ptrace.SpanKind
	pid     int
	methods []string
	since   pcommon.Timestamp
}

func (q spanSel) pick(all []seenSpan) []ptrace.Span {
	var out []ptrace.Span
	for _, s := range all {
		if s.pid != int64(q.pid) || s.span.Kind() != q.kind || s.span.StartTimestamp() < q.since {
			continue
		}
		m, _ := s.span.Attributes().Get("rpc.method")
		for _, want := range q.methods {
			if m.Str() == want {
				out = append(out, s.span)
				break
			}
		}
	}
	return out
}

// grpcRig is one receiver, one server child and its clients.
type grpcRig struct {
	dumped  bool // the spans were logged for a failure already
	traces  *consumertest.TracesSink
	metrics *consumertest.MetricsSink
	server  *grpcChild
	addr    string
}

// await waits until n CLIENT spans of the client child and n SERVER spans of
// the server child match methods (and since), then watches a little longer
// and requires that exactly n of each arrived.
func (r *grpcRig) await(t *testing.T, client *grpcChild, n int, since pcommon.Timestamp, methods ...string) (clients, servers []ptrace.Span) {
	t.Helper()
	cq := spanSel{kind: ptrace.SpanKindClient, pid: client.pid, methods: methods, since: since}
	sq := spanSel{kind: ptrace.SpanKindServer, pid: r.server.pid, methods: methods, since: since}
	ok := assert.Eventually(t, func() bool {
		all := grpcSpans(r.traces)
		return len(cq.pick(all)) >= n && len(sq.pick(all)) >= n
	}, 8*time.Second, 10*time.Millisecond, "%d CLIENT and %d SERVER spans of %v", n, n, methods)
	if ok {
		time.Sleep(settle)
	}
	all := grpcSpans(r.traces)
	clients, servers = cq.pick(all), sq.pick(all)
	if !ok || len(clients) != n || len(servers) != n {
		r.dumpOnFailure(t)
		require.Len(t, clients, n, "CLIENT spans of %v from pid %d", methods, client.pid)
		require.Len(t, servers, n, "SERVER spans of %v from pid %d", methods, r.server.pid)
	}
	return clients, servers
}

// callWant is what both spans of one call must say.
type callWant struct {
	method string
	// code is rpc.response.status_code; "" when the call has no status.
	code string
	// message is the grpc-message, the status message of an error span.
	message   string
	endReason string // ebpf.rpc.end_reason at both ends; "" not checked
	// reqMsgs and respMsgs are the gRPC messages each way; -1 not checked.
	reqMsgs, respMsgs int64
}

// semconvError says whether a span ends in error: on a CLIENT span every
// code but OK; on a SERVER span only the codes that say the server failed
// (OpenTelemetry semantic conventions for gRPC).
func semconvError(code string, server bool) bool {
	if code == "" {
		return true // no status at all: the call did not end properly
	}
	if !server {
		return code != "OK"
	}
	switch code {
	case "UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS":
		return true
	}
	return false
}

func checkSpan(t *testing.T, sp ptrace.Span, server bool, w callWant) {
	t.Helper()
	kind := "CLIENT"
	if server {
		kind = "SERVER"
	}
	attrs := sp.Attributes()
	get := attrs.Get
	name := w.method
	if w.method == "_OTHER" {
		name = "grpc"
	}
	assert.Equal(t, name, sp.Name(), "%s span name is rpc.method", kind)
	v, _ := get("rpc.system.name")
	assert.Equal(t, "grpc", v.Str(), kind)
	v, _ = get("rpc.method")
	assert.Equal(t, w.method, v.Str(), "%s rpc.method", kind)
	code, hasCode := get("rpc.response.status_code")
	if w.code == "" {
		assert.False(t, hasCode, "%s: no status was sent, got rpc.response.status_code=%s", kind, code.Str())
	} else {
		assert.Equal(t, w.code, code.Str(), "%s rpc.response.status_code", kind)
	}
	errType, hasErrType := get("error.type")
	if semconvError(w.code, server) {
		assert.Equal(t, ptrace.StatusCodeError, sp.Status().Code(), "%s span status for %q", kind, w.code)
		wantType := w.code
		if w.code == "" {
			wantType = "_OTHER"
		}
		assert.Equal(t, wantType, errType.Str(), "%s error.type", kind)
		if w.code != "" {
			assert.Equal(t, w.message, sp.Status().Message(), "%s status message is the grpc-message", kind)
		}
	} else {
		assert.Equal(t, ptrace.StatusCodeUnset, sp.Status().Code(), "%s span status for %q", kind, w.code)
		assert.False(t, hasErrType, "%s: %q is no error here, got error.type=%s", kind, w.code, errType.Str())
	}
	if w.endReason != "" {
		v, _ = get("ebpf.rpc.end_reason")
		assert.Equal(t, w.endReason, v.Str(), "%s ebpf.rpc.end_reason", kind)
	}
	if w.reqMsgs >= 0 {
		v, _ = get("ebpf.rpc.request.messages")
		assert.Equal(t, w.reqMsgs, v.Int(), "%s ebpf.rpc.request.messages", kind)
	}
	if w.respMsgs >= 0 {
		v, _ = get("ebpf.rpc.response.messages")
		assert.Equal(t, w.respMsgs, v.Int(), "%s ebpf.rpc.response.messages", kind)
	}
}

// checkParent: both ends of the connection are watched, so the SERVER span
// continues the CLIENT span's trace and names it as its parent.
func checkParent(t *testing.T, client, server ptrace.Span) {
	t.Helper()
	assert.False(t, client.TraceID().IsEmpty())
	assert.True(t, client.ParentSpanID().IsEmpty(), "the CLIENT span is a root: nothing upstream is known")
	assert.Equal(t, client.TraceID(), server.TraceID(), "SERVER span in the CLIENT span's trace")
	assert.Equal(t, client.SpanID(), server.ParentSpanID(), "SERVER span's parent is the CLIENT span")
	assert.NotEqual(t, client.SpanID(), server.SpanID())
}

// checkNested: a request is written before it is read and the trailers
// before they are read, so the server's span lies within the client's.
func checkNested(t *testing.T, client, server ptrace.Span) {
	t.Helper()
	assert.LessOrEqual(t, client.StartTimestamp(), server.StartTimestamp(), "request written before it is read")
	assert.LessOrEqual(t, server.EndTimestamp(), client.EndTimestamp(), "response ends at the server first")
	assert.LessOrEqual(t, client.StartTimestamp(), client.EndTimestamp())
}

func checkCall(t *testing.T, client, server ptrace.Span, w callWant) {
	t.Helper()
	checkSpan(t, client, false, w)
	checkSpan(t, server, true, w)
	checkParent(t, client, server)
}

func newGRPCRig(t *testing.T, g *cgroup.Group, tune func(*Config)) *grpcRig {
	t.Helper()
	traces, metrics := grpcReceiver(t, g, tune)
	server, addr := startProbeServer(t, g)
	return &grpcRig{traces: traces, metrics: metrics, server: server, addr: addr}
}

// TestGRPCCallsBetweenWatchedProcesses drives every kind of call between a
// watched client and a watched server, with the receiver's default limits,
// and checks both spans of each call. The sequential cases share one
// connection; the 500 concurrent calls and the 1 MiB messages each get a
// connection of their own, so that what happens to one of them cannot
// spill into the others.
func TestGRPCCallsBetweenWatchedProcesses(t *testing.T) {
	privileged.Require(t)
	g := cgroup.New(t)
	r := newGRPCRig(t, g, nil)
	client := startGRPCChild(t, g, "client", r.addr)

	cases := []struct {
		name string
		call string // the client case
		code codes.Code
		want callWant
	}{
		{"unary OK", "Echo", codes.OK, callWant{method: probeMethod("Echo"), code: "OK", endReason: "trailers", reqMsgs: 1, respMsgs: 1}},
		// Headers, then the status in trailers: NOT_FOUND is the caller's
		// problem, so only the CLIENT span is an error.
		{"NOT_FOUND after headers", "NotFound", codes.NotFound, callWant{method: probeMethod("NotFound"), code: "NOT_FOUND", message: notFoundMsg, endReason: "trailers", reqMsgs: 1, respMsgs: 0}},
		{"INTERNAL after headers", "Internal", codes.Internal, callWant{method: probeMethod("Internal"), code: "INTERNAL", message: internalMsg, endReason: "trailers", reqMsgs: 1, respMsgs: 0}},
		// A single HEADERS frame with END_STREAM carries :status,
		// content-type and grpc-status together.
		{"trailers-only PERMISSION_DENIED", "Denied", codes.PermissionDenied, callWant{method: probeMethod("Denied"), code: "PERMISSION_DENIED", message: deniedMsg, endReason: "trailers_only", reqMsgs: 1, respMsgs: 0}},
		// grpc-go answers an unknown method with Trailers-Only UNIMPLEMENTED;
		// the :path still names what was asked for.
		{"UNIMPLEMENTED unknown method", "Missing", codes.Unimplemented, callWant{method: probeMethod("Missing"), code: "UNIMPLEMENTED", message: "unknown method Missing for service " + probeService, endReason: "trailers_only", reqMsgs: 1, respMsgs: 0}},
		// The deadline passes while the server sleeps: the stream is reset
		// with CANCEL once the grpc-timeout has elapsed (by the client's
		// timer, or first by grpc-go's server timer for the grpc-timeout it
		// received), which both ends report as DEADLINE_EXCEEDED; no
		// grpc-message travels.
		{"DEADLINE_EXCEEDED", "Slow", codes.DeadlineExceeded, callWant{method: probeMethod("Slow"), code: "DEADLINE_EXCEEDED", endReason: "reset", reqMsgs: 1, respMsgs: 0}},
		{"server streaming", "Fanout", codes.OK, callWant{method: probeMethod("Fanout"), code: "OK", endReason: "trailers", reqMsgs: 1, respMsgs: 5}},
		{"client streaming", "Collect", codes.OK, callWant{method: probeMethod("Collect"), code: "OK", endReason: "trailers", reqMsgs: 4, respMsgs: 1}},
		{"bidi streaming", "Chat", codes.OK, callWant{method: probeMethod("Chat"), code: "OK", endReason: "trailers", reqMsgs: 3, respMsgs: 3}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer r.dumpOnFailure(t)
			since := pcommon.NewTimestampFromTime(time.Now())
			client.run(t, tc.call, tc.code)
			clients, servers := r.await(t, client, 1, since, tc.want.method)
			checkCall(t, clients[0], servers[0], tc.want)
			if tc.want.endReason != "reset" {
				checkNested(t, clients[0], servers[0])
			}
		})
	}

	t.Run("client cancels mid-stream", func(t *testing.T) {
		defer r.dumpOnFailure(t)
		client.run(t, "Cancel", codes.Canceled)
		clients, servers := r.await(t, client, 1, 0, probeMethod("Ticker"))
		// The client's RST_STREAM CANCEL ends the stream; the client maps
		// it to CANCELLED, which is the caller's doing, so the SERVER span
		// is no error.
		w := callWant{method: probeMethod("Ticker"), code: "CANCELLED", endReason: "reset", reqMsgs: 1, respMsgs: -1}
		checkCall(t, clients[0], servers[0], w)
		// The client read two messages before cancelling; it cannot have
		// read more than the server wrote before the reset reached it.
		cm, sm := intAttr(clients[0], "ebpf.rpc.response.messages"), intAttr(servers[0], "ebpf.rpc.response.messages")
		assert.GreaterOrEqual(t, cm, int64(2))
		assert.LessOrEqual(t, cm, sm)
		// The reset is written by the client before the server reads it.
		assert.LessOrEqual(t, clients[0].EndTimestamp(), servers[0].EndTimestamp())
	})

	t.Run("no other spans", func(t *testing.T) {
		// Only the two children make calls, each call once; the test
		// process itself is never captured.
		time.Sleep(settle)
		perKind := map[ptrace.SpanKind]int{}
		for _, s := range grpcSpans(r.traces) {
			switch {
			case s.span.Kind() == ptrace.SpanKindClient && s.pid == int64(client.pid):
			case s.span.Kind() == ptrace.SpanKindServer && s.pid == int64(r.server.pid):
			default:
				t.Errorf("unexpected span: pid %d kind %s %q", s.pid, s.span.Kind(), s.span.Name())
			}
			perKind[s.span.Kind()]++
		}
		assert.Equal(t, len(cases)+1, perKind[ptrace.SpanKindClient], "CLIENT spans")
		assert.Equal(t, len(cases)+1, perKind[ptrace.SpanKindServer], "SERVER spans")
	})

	t.Run("500 concurrent unary calls on one connection", func(t *testing.T) {
		defer r.dumpOnFailure(t)
		concurrentCalls(t, r, startGRPCChild(t, g, "client", r.addr))
	})
	t.Run("1 MiB request and response", func(t *testing.T) {
		defer r.dumpOnFailure(t)
		largeCall(t, r, startGRPCChild(t, g, "client", r.addr))
	})
}

// TestGRPCLargeMessagesCutAtCaptureCap: a 1 MiB request echoed back under a
// 16 KiB capture cap. grpc-go reads and writes through 32 KiB buffers (its
// writer flushes whenever 32 KiB are buffered, its reader asks for 32 KiB),
// so nearly every syscall of the call is longer than the cap and is
// captured head (12 KiB) and tail (capture_tail_bytes, 4 KiB) with the
// hole between them counted. The hole is 16 KiB and DATA frames are 16 KiB
// + 9 bytes apart (SETTINGS_MAX_FRAME_SIZE's default), so most holes also
// swallow a frame header and the parser must find the next frame again.
// The request HEADERS begin the connection's first write and the trailers
// end the last write of the response (inside its captured tail), and as
// this is the connection's first call every field in them is a literal
// (RFC 7541 section 6.2.1) or a static table entry: method and status are
// exact. How many messages went each way is not: a message is counted when
// all of its bytes were seen, and here they were not.
func TestGRPCLargeMessagesCutAtCaptureCap(t *testing.T) {
	privileged.Require(t)
	g := cgroup.New(t)
	const capBytes = 16 << 10
	r := newGRPCRig(t, g, func(cfg *Config) { cfg.Limits.CaptureBytes = capBytes })
	m := &robRig{metrics: r.metrics} // its metric helpers read only the sink
	client := startGRPCChild(t, g, "client", r.addr)
	since := pcommon.NewTimestampFromTime(time.Now())
	require.Equal(t, "true", client.run(t, "Large", codes.OK), "the 1 MiB echo came back intact")
	clients, servers := r.await(t, client, 1, since, probeMethod("Echo"))
	t.Run("method and status exact, counts flagged incomplete", func(t *testing.T) {
		defer r.dumpOnFailure(t)
		// respMsgs and reqMsgs are checked below: they are lower bounds.
		w := callWant{method: probeMethod("Echo"), code: "OK", endReason: "trailers", reqMsgs: -1, respMsgs: -1}
		checkCall(t, clients[0], servers[0], w)
		checkNested(t, clients[0], servers[0])
		for _, sp := range []ptrace.Span{clients[0], servers[0]} {
			assert.Equal(t, "true", strAttr(sp, "ebpf.capture.incomplete"), "%s: bytes of the call were not captured", sp.Kind())
			req, resp := intAttr(sp, "ebpf.rpc.request.messages"), intAttr(sp, "ebpf.rpc.response.messages")
			assert.LessOrEqual(t, req, int64(1), "%s: one request message was sent", sp.Kind())
			assert.LessOrEqual(t, resp, int64(1), "%s: one response message was sent", sp.Kind())
			t.Logf("%s span: request messages %d, response messages %d", sp.Kind(), req, resp)
		}
	})
	t.Run("the cut is counted", func(t *testing.T) {
		defer r.dumpOnFailure(t)
		cut := m.settled(t, "ebpf.capture.drops", map[string]string{"reason": "capture_cap"})
		lost := m.settled(t, "ebpf.capture.lost_bytes", map[string]string{"reason": "capture_cap"})
		gap := m.parserEvent("grpc", "lost_bytes")
		resyncs := m.parserEvent("grpc", "resyncs")
		inData := m.parserEvent("grpc", "lost_in_data")
		t.Logf("syscalls cut %d, bytes left out %d; gRPC parser: lost_bytes %d (lost_in_data %d), resyncs %d", cut, lost, gap, inData, resyncs)
		assert.Positive(t, cut, "syscalls cut at capture_bytes")
		// Four 1 MiB crossings (written and read at each end), each in
		// 32 KiB syscalls of which 16 KiB are captured: about half of 4 MiB
		// is left out.
		assert.Greater(t, lost, int64(largeMessage), "bytes left out by the cap")
		// Every byte the cap left out reached the parser as a counted gap
		// (nothing else was lost here), and holes across a frame header
		// cost frame sync.
		assert.Equal(t, lost, gap, "gRPC parser lost_bytes")
		assert.Positive(t, resyncs, "resynchronisations on a frame boundary")
	})
}

// concurrentCalls: 500 unary calls open at once on one connection (the
// server answers none before all arrived) give 500 CLIENT and 500 SERVER
// spans, each pair in its own trace.
func concurrentCalls(t *testing.T, r *grpcRig, client *grpcChild) {
	t.Helper()
	since := pcommon.NewTimestampFromTime(time.Now())
	detail := client.run(t, "Many", codes.OK)
	require.Equal(t, fmt.Sprintf("ok=%d", concurrentRPCs), detail)
	clients, servers := r.await(t, client, concurrentRPCs, since, probeMethod("Many"))
	byTrace := make(map[pcommon.TraceID]ptrace.Span, len(clients))
	w := callWant{method: probeMethod("Many"), code: "OK", endReason: "trailers", reqMsgs: 1, respMsgs: 1}
	for _, c := range clients {
		checkSpan(t, c, false, w)
		byTrace[c.TraceID()] = c
	}
	require.Len(t, byTrace, concurrentRPCs, "one trace per call")
	for _, s := range servers {
		checkSpan(t, s, true, w)
		c, ok := byTrace[s.TraceID()]
		if !assert.True(t, ok, "SERVER span %s has no CLIENT span in its trace", s.SpanID()) {
			continue
		}
		checkParent(t, c, s)
		delete(byTrace, s.TraceID())
	}
	assert.Empty(t, byTrace, "every CLIENT span has its SERVER span")
}

// largeCall: a 1 MiB request echoed back is one message each way.
func largeCall(t *testing.T, r *grpcRig, client *grpcChild) {
	t.Helper()
	// The server has answered Echo before: select by start time.
	since := pcommon.NewTimestampFromTime(time.Now())
	require.Equal(t, "true", client.run(t, "Large", codes.OK), "the 1 MiB echo came back intact")
	clients, servers := r.await(t, client, 1, since, probeMethod("Echo"))
	checkCall(t, clients[0], servers[0], callWant{method: probeMethod("Echo"), code: "OK", endReason: "trailers", reqMsgs: 1, respMsgs: 1})
	checkNested(t, clients[0], servers[0])
}

// dumpOnFailure logs the spans and counters once, when t failed.
func (r *grpcRig) dumpOnFailure(t *testing.T) {
	if t.Failed() && !r.dumped {
		r.dumped = true
		dumpSpans(t, r.traces, r.metrics)
	}
}

// TestGRPCServerKilledMidCall kills the server while a call is in flight:
// no status is ever sent, so both spans end in error without one.
func TestGRPCServerKilledMidCall(t *testing.T) {
	privileged.Require(t)
	g := cgroup.New(t)
	const requestIdle = 2 * time.Second
	r := newGRPCRig(t, g, func(cfg *Config) { cfg.Limits.RequestIdleTimeout = requestIdle })
	client := startGRPCChild(t, g, "client", r.addr)

	client.send(t, "Hang")
	require.Equal(t, "hang", r.server.line(t, 10*time.Second), "the call reached the handler")
	require.NoError(t, r.server.cmd.Process.Signal(syscall.SIGKILL))
	// The kernel closes the dead server's socket; grpc-go fails the call
	// with UNAVAILABLE and closes its end.
	client.result(t, "Hang", codes.Unavailable, 10*time.Second)

	clients, servers := r.await(t, client, 1, 0, probeMethod("Hang"))
	t.Run("both spans end in error without a status", func(t *testing.T) {
		w := callWant{method: probeMethod("Hang"), code: "", reqMsgs: 1, respMsgs: 0}
		checkSpan(t, clients[0], false, w)
		checkSpan(t, servers[0], true, w)
		for _, sp := range []ptrace.Span{clients[0], servers[0]} {
			v, _ := sp.Attributes().Get("ebpf.capture.incomplete")
			assert.True(t, v.Bool(), "%s: the call never ended on the wire", sp.Kind())
		}
		// The client closed its socket (close(2)); the server's end vanished
		// with its process (exit closes no fd through close(2)), so its call
		// ends by the request idle timeout.
		assert.Equal(t, "conn_closed", strAttr(clients[0], "ebpf.rpc.end_reason"))
		assert.Equal(t, "expired", strAttr(servers[0], "ebpf.rpc.end_reason"))
	})
	t.Run("SERVER span names the CLIENT span as parent", func(t *testing.T) {
		defer r.dumpOnFailure(t)
		checkParent(t, clients[0], servers[0])
	})
}

// TestGRPCClientKilledMidCall SIGKILLs the client while a unary call is in
// flight (the server's handler waits for its context). A process that dies
// closes its sockets without close(2), and the kernel sends no HTTP/2 frame
// for it: no RST_STREAM, no status. The server's grpc-go transport reads
// EOF, cancels the handler and closes its socket with close(2), which ends
// the SERVER span at once; the dead client's end is never seen closing, so
// its CLIENT span ends by limits.request_idle_timeout and its connection
// leaves the receiver by limits.idle_timeout.
func TestGRPCClientKilledMidCall(t *testing.T) {
	privileged.Require(t)
	g := cgroup.New(t)
	r := newGRPCRig(t, g, func(cfg *Config) {
		cfg.Limits.RequestIdleTimeout = killRequestIdle
		cfg.Limits.IdleTimeout = killConnIdle
	})
	m := &robRig{metrics: r.metrics} // its metric helpers read only the sink
	baseline := m.settled(t, "ebpf.capture.connections", nil)
	ended := func(reason string) int64 {
		v, _ := m.metric("ebpf.capture.connections.ended", map[string]string{"reason": reason})
		return v
	}
	closedBefore, expiredBefore := ended("closed"), ended("expired")

	client := startGRPCChild(t, g, "client", r.addr)
	client.send(t, "Hang")
	require.Equal(t, "hang", r.server.line(t, 10*time.Second), "the call reached the handler")
	require.NoError(t, client.cmd.Process.Signal(syscall.SIGKILL))
	killed := time.Now()
	// Its stdout closes when it is gone.
	for gone := false; !gone; {
		select {
		case _, ok := <-client.lines:
			gone = !ok
		case <-time.After(10 * time.Second):
			require.FailNow(t, "the killed client did not exit", "pid %d", client.pid)
		}
	}

	// When each span arrived, measured from the kill.
	arrival := func(kind ptrace.SpanKind, pid int) time.Duration {
		q := spanSel{kind: kind, pid: pid, methods: []string{probeMethod("Hang")}}
		require.Eventually(t, func() bool { return len(q.pick(grpcSpans(r.traces))) > 0 }, killRequestIdle+8*time.Second, 10*time.Millisecond,
			"a %s span of Hang from pid %d", kind, pid)
		return time.Since(killed)
	}
	serverAt := arrival(ptrace.SpanKindServer, r.server.pid)
	clientAt := arrival(ptrace.SpanKindClient, client.pid)
	clients, servers := r.await(t, client, 1, 0, probeMethod("Hang"))
	c, s := clients[0], servers[0]
	t.Logf("SERVER span %.2f s after the kill (end_reason %s), CLIENT span %.2f s after (end_reason %s, %.2f s long)",
		serverAt.Seconds(), strAttr(s, "ebpf.rpc.end_reason"), clientAt.Seconds(), strAttr(c, "ebpf.rpc.end_reason"),
		time.Duration(c.EndTimestamp()-c.StartTimestamp()).Seconds())

	t.Run("both spans end in error without a status", func(t *testing.T) {
		defer r.dumpOnFailure(t)
		// No grpc-status ever travelled: an error at both ends
		// (error.type _OTHER), the call flagged incomplete.
		w := callWant{method: probeMethod("Hang"), code: "", reqMsgs: 1, respMsgs: 0}
		checkSpan(t, c, false, w)
		checkSpan(t, s, true, w)
		for _, sp := range []ptrace.Span{c, s} {
			assert.Equal(t, "true", strAttr(sp, "ebpf.capture.incomplete"), "%s: the call never ended on the wire", sp.Kind())
		}
		// The server closed its socket (close(2)) once grpc-go read EOF; the
		// client's end vanished with its process.
		assert.Equal(t, "conn_closed", strAttr(s, "ebpf.rpc.end_reason"))
		assert.Equal(t, "expired", strAttr(c, "ebpf.rpc.end_reason"))
		assert.Equal(t, "no grpc-status: call ended by conn_closed", s.Status().Message())
		assert.Equal(t, "no grpc-status: call ended by expired", c.Status().Message())
		assert.Less(t, serverAt, killRequestIdle, "the SERVER span does not wait for the request idle timeout")
		// The request was the call's last frame on the client's connection:
		// expiry needs request_idle_timeout of silence after it.
		assert.GreaterOrEqual(t, time.Duration(c.EndTimestamp()-c.StartTimestamp()), killRequestIdle, "CLIENT span ends by the idle timeout")
	})
	t.Run("SERVER span names the CLIENT span as parent", func(t *testing.T) {
		defer r.dumpOnFailure(t)
		checkParent(t, c, s)
	})
	t.Run("no other span", func(t *testing.T) {
		assert.Len(t, grpcSpans(r.traces), 2, "the call's CLIENT and SERVER span")
	})
	t.Run("no connection left in the receiver", func(t *testing.T) {
		// The client's end leaves by limits.idle_timeout: no close(2) comes
		// from a dead process.
		m.await(t, "ebpf.capture.connections", nil, "back to the baseline", func(v int64) bool { return v == baseline })
		t.Logf("connections back to the baseline (%d) %.1f s after the kill", baseline, time.Since(killed).Seconds())
		assert.Equal(t, int64(1), ended("closed")-closedBefore, "the server's end closed")
		assert.Equal(t, int64(1), ended("expired")-expiredBefore, "the killed client's end expired")
	})
}

// TestGRPCConnectionOpenBeforeStart: a connection with calls made before the
// receiver started. Its HPACK dynamic tables (RFC 7541 section 2.3.2) were
// filled before capture, so a field sent as a reference to an entry made
// then cannot be decoded. grpc-go encodes with x/net's hpack.Encoder: a
// field whose name and value are in a table goes out as an indexed field
// (section 6.1); any other as a literal with incremental indexing (section
// 6.2.1) whose name is a static entry when the static table has the name
// (:path is index 4), else a dynamic entry with the name, else a literal
// name. What the receiver can know on this connection follows:
//
//   - Echo (called before the start): every request and trailer field is a
//     reference to an entry made before the start, :path and grpc-status: 0
//     included: rpc.method _OTHER (span name "grpc"), never a wrong method,
//     and the status unknown;
//   - Internal, first call: :path is a literal under the static :path name
//     and decodes exactly; grpc-status: 13 is a literal whose name refers to
//     the grpc-status entry made before the start: status unknown;
//   - Internal, second call: :path refers to the entry the first call added
//     after capture began, which the parser modelled: exact again; its
//     grpc-status: 13 refers to the entry the first call's trailers added
//     under a name we could not resolve: status still unknown.
//
// Every _OTHER is counted (calls_unknown_method), and a connection opened
// after the start is decoded exactly from its preface.
func TestGRPCConnectionOpenBeforeStart(t *testing.T) {
	privileged.Require(t)
	g := cgroup.New(t)
	server, addr := startProbeServer(t, g)
	client := startGRPCChild(t, g, "client", addr)
	for range 3 {
		client.run(t, "Echo", codes.OK)
	}

	traces, metrics := grpcReceiver(t, g, nil)
	r := &grpcRig{traces: traces, metrics: metrics, server: server, addr: addr}
	m := &robRig{metrics: metrics} // its metric helpers read only the sink
	unknown := map[string]string{"protocol": "grpc", "event": "calls_unknown_method"}
	// Long-lived connections are often idle when a receiver starts: let
	// its reader go idle (and tick) before the connection carries a call.
	time.Sleep(300 * time.Millisecond)

	// grpc-go's reader goroutines were blocked in read(2) when the
	// tracepoints were attached: those two reads entered the kernel before
	// capture began, so their bytes (the next request at the server, the
	// next response at the client) cannot be captured. One call passes
	// them; only calls after it are checked, and counted from the value the
	// counter settles at after it.
	client.run(t, "Echo", codes.OK)
	unknownBefore := m.settled(t, "ebpf.protocol.parser.events", unknown)
	since := pcommon.NewTimestampFromTime(time.Now())

	const echoes, internals = 3, 2
	for range echoes {
		client.run(t, "Echo", codes.OK)
	}
	for range internals {
		client.run(t, "Internal", codes.Internal)
	}

	t.Run("method called before start is _OTHER", func(t *testing.T) {
		defer r.dumpOnFailure(t)
		clients, servers := r.await(t, client, echoes, since, "_OTHER")
		w := callWant{method: "_OTHER", reqMsgs: 1, respMsgs: 1}
		for i := range echoes {
			checkStatusUnknown(t, clients[i], false, w)
			checkStatusUnknown(t, servers[i], true, w)
			checkUnlinked(t, clients[i], servers[i])
		}
	})
	t.Run("method never called before start is exact", func(t *testing.T) {
		defer r.dumpOnFailure(t)
		clients, servers := r.await(t, client, internals, since, probeMethod("Internal"))
		w := callWant{method: probeMethod("Internal"), reqMsgs: 1, respMsgs: 0}
		for i := range internals {
			checkStatusUnknown(t, clients[i], false, w)
			checkStatusUnknown(t, servers[i], true, w)
			checkUnlinked(t, clients[i], servers[i])
		}
	})

	// A connection opened after the start: its preface, SETTINGS and every
	// table entry are seen, so every field decodes.
	fresh := startGRPCChild(t, g, "client", addr)
	sinceFresh := pcommon.NewTimestampFromTime(time.Now())
	for range echoes {
		fresh.run(t, "Echo", codes.OK)
	}
	fresh.run(t, "Internal", codes.Internal)
	t.Run("a new connection is exact", func(t *testing.T) {
		defer r.dumpOnFailure(t)
		clients, servers := r.await(t, fresh, echoes, sinceFresh, probeMethod("Echo"))
		sortByStart(clients)
		sortByStart(servers)
		for i := range echoes {
			checkCall(t, clients[i], servers[i], callWant{method: probeMethod("Echo"), code: "OK", endReason: "trailers", reqMsgs: 1, respMsgs: 1})
			checkNested(t, clients[i], servers[i])
		}
		clients, servers = r.await(t, fresh, 1, sinceFresh, probeMethod("Internal"))
		checkCall(t, clients[0], servers[0], callWant{method: probeMethod("Internal"), code: "INTERNAL", message: internalMsg, endReason: "trailers", reqMsgs: 1, respMsgs: 0})
		checkNested(t, clients[0], servers[0])
	})

	t.Run("every _OTHER counted, no other span", func(t *testing.T) {
		defer r.dumpOnFailure(t)
		got := m.settled(t, "ebpf.protocol.parser.events", unknown)
		// One _OTHER at each end of each Echo on the old connection.
		assert.Equal(t, int64(2*echoes), got-unknownBefore, "calls_unknown_method since the checked calls began")
		perEnd := map[string]int{}
		for _, s := range grpcSpans(r.traces) {
			if s.span.StartTimestamp() < since {
				continue
			}
			who := "server"
			switch s.pid {
			case int64(client.pid):
				who = "old client"
			case int64(fresh.pid):
				who = "new client"
			}
			perEnd[fmt.Sprintf("%s %s %s", who, s.span.Kind(), strAttr(s.span, "rpc.method"))]++
		}
		assert.Equal(t, map[string]int{
			"old client Client _OTHER":                     echoes,
			"old client Client " + probeMethod("Internal"): internals,
			"new client Client " + probeMethod("Echo"):     echoes,
			"new client Client " + probeMethod("Internal"): 1,
			"server Server _OTHER":                         echoes,
			"server Server " + probeMethod("Echo"):         echoes,
			"server Server " + probeMethod("Internal"):     internals + 1,
		}, perEnd, "spans by process, kind and method since the checked calls began")
	})
}

func sortByStart(s []ptrace.Span) {
	slices.SortFunc(s, func(a, b ptrace.Span) int { return cmp.Compare(a.StartTimestamp(), b.StartTimestamp()) })
}

// checkStatusUnknown checks a span of a call on a connection that predates
// the capture, whose trailers ended the call (END_STREAM on HEADERS after
// the response) but referred to table entries we could not resolve: the
// outcome is unknown, which is not an error (status Unset, no error.type,
// no rpc.response.status_code), and ebpf.capture.incomplete says so.
func checkStatusUnknown(t *testing.T, sp ptrace.Span, server bool, w callWant) {
	t.Helper()
	name := w.method
	if w.method == "_OTHER" {
		name = "grpc"
	}
	assert.Equal(t, name, sp.Name(), "%s span name", sp.Kind())
	assert.Equal(t, w.method, strAttr(sp, "rpc.method"), sp.Kind())
	wantKind := ptrace.SpanKindClient
	if server {
		wantKind = ptrace.SpanKindServer
	}
	assert.Equal(t, wantKind, sp.Kind())
	assert.Equal(t, "true", strAttr(sp, "ebpf.capture.joined_mid_stream"), "%s: the connection predates the capture", sp.Kind())
	assert.Equal(t, "trailers", strAttr(sp, "ebpf.rpc.end_reason"), sp.Kind())
	assert.Equal(t, w.reqMsgs, intAttr(sp, "ebpf.rpc.request.messages"), "%s request messages", sp.Kind())
	assert.Equal(t, w.respMsgs, intAttr(sp, "ebpf.rpc.response.messages"), "%s response messages", sp.Kind())
	assert.Equal(t, "<none>", strAttr(sp, "rpc.response.status_code"), "%s: the status could not be decoded", sp.Kind())
	assert.Equal(t, ptrace.StatusCodeUnset, sp.Status().Code(), "%s: an unknown status is no error: %q", sp.Kind(), sp.Status().Message())
	assert.Equal(t, "<none>", strAttr(sp, "error.type"), sp.Kind())
	assert.Equal(t, "true", strAttr(sp, "ebpf.capture.incomplete"), "%s: the status could not be decoded", sp.Kind())
}

func intAttr(sp ptrace.Span, key string) int64 {
	v, _ := sp.Attributes().Get(key)
	return v.Int()
}

// checkUnlinked: a connection found open at start has no nonce (its
// client's initial sequence number was not seen), so its ends cannot derive
// shared ids: each span is the root of a trace of its own, never a SERVER
// span under a wrong parent.
func checkUnlinked(t *testing.T, client, server ptrace.Span) {
	t.Helper()
	assert.True(t, client.ParentSpanID().IsEmpty(), "CLIENT span is a root")
	assert.True(t, server.ParentSpanID().IsEmpty(), "SERVER span names no parent")
	assert.NotEqual(t, client.TraceID(), server.TraceID(), "random trace ids at each end")
}
