package grpc

// Fixture generator: records real HTTP/2 connections between grpc-go (and
// curl, and net/http's HTTP/2 server) through recproxy into
// testdata/grpc/*.bin (described in testdata/grpc/README.md). CI only
// replays the committed files; regenerate with
//
//	EBPF_RECORD_FIXTURES=1 go test ./internal/grpc -run TestRecordFixtures -v
//
// then check the expectations in fixtures_test.go: some scenarios race by
// nature (deadline, cancel, server stop).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/recproxy"
)

const (
	echoService  = "ebpfotel.test.v1.Echo"
	fixtureDir   = "../../testdata/grpc"
	recordEnvVar = "EBPF_RECORD_FIXTURES"
	concurrentN  = 250
	churnCalls   = 200
	largeReq     = 1 << 20
	largeResp    = 256 << 10
	notFoundMsg  = `key "a b" not found: 100% ✓`
	internalMsg  = "boom after headers"
	curlReqValue = "hello from curl"
)

// echoServer implements the hand-registered test service.
type echoServer struct {
	arrived atomic.Int32
	all     chan struct{}
	once    sync.Once
	seq     atomic.Int64
}

func newEchoServer() *echoServer { return &echoServer{all: make(chan struct{})} }

type unaryFunc func(s *echoServer, ctx context.Context, in *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error)

func unary(f unaryFunc) func(any, context.Context, func(any) error, ggrpc.UnaryServerInterceptor) (any, error) {
	return func(srv any, ctx context.Context, dec func(any) error, _ ggrpc.UnaryServerInterceptor) (any, error) {
		in := new(wrapperspb.BytesValue)
		if err := dec(in); err != nil {
			return nil, err
		}
		return f(srv.(*echoServer), ctx, in)
	}
}

var echoDesc = ggrpc.ServiceDesc{
	ServiceName: echoService,
	HandlerType: (*any)(nil),
	Methods: []ggrpc.MethodDesc{
		{MethodName: "Unary", Handler: unary(func(_ *echoServer, _ context.Context, in *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
			return in, nil
		})},
		{MethodName: "Size", Handler: unary(func(_ *echoServer, _ context.Context, in *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
			n := binary.BigEndian.Uint32(in.Value[:4])
			return wrapperspb.Bytes(make([]byte, n)), nil
		})},
		{MethodName: "Fail", Handler: unary(func(_ *echoServer, ctx context.Context, in *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
			switch string(in.Value) {
			case "notfound": // nothing sent yet: grpc-go answers Trailers-Only
				return nil, status.Error(codes.NotFound, notFoundMsg)
			default: // headers first, then an error in the trailers
				if err := ggrpc.SendHeader(ctx, metadata.Pairs("x-phase", "started")); err != nil {
					return nil, err
				}
				return nil, status.Error(codes.Internal, internalMsg)
			}
		})},
		{MethodName: "Sleep", Handler: unary(func(_ *echoServer, ctx context.Context, _ *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
			<-ctx.Done()
			return nil, status.FromContextError(ctx.Err()).Err()
		})},
		{MethodName: "Barrier", Handler: unary(func(s *echoServer, ctx context.Context, in *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
			if s.arrived.Add(1) == concurrentN {
				s.once.Do(func() { close(s.all) })
			}
			select {
			case <-s.all:
				return in, nil
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		})},
		{MethodName: "Churn", Handler: unary(func(s *echoServer, ctx context.Context, in *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
			// A trailer value unique per call makes the server's dynamic
			// table turn over, as the client's grpc-timeout values do.
			_ = ggrpc.SetTrailer(ctx, metadata.Pairs("x-seq", fmt.Sprint(s.seq.Add(1))))
			return in, nil
		})},
	},
	Streams: []ggrpc.StreamDesc{
		{StreamName: "ServerStream", ServerStreams: true, Handler: func(_ any, st ggrpc.ServerStream) error {
			in := new(wrapperspb.BytesValue)
			if err := st.RecvMsg(in); err != nil {
				return err
			}
			var count, delayMs int
			if _, err := fmt.Sscanf(string(in.Value), "%d %d", &count, &delayMs); err != nil {
				return status.Error(codes.InvalidArgument, err.Error())
			}
			for i := 0; i < count; i++ {
				if err := st.SendMsg(wrapperspb.Bytes(make([]byte, 10*(i+1)))); err != nil {
					return err
				}
				time.Sleep(time.Duration(delayMs) * time.Millisecond)
			}
			return nil
		}},
		{StreamName: "ClientStream", ClientStreams: true, Handler: func(_ any, st ggrpc.ServerStream) error {
			n := 0
			for {
				in := new(wrapperspb.BytesValue)
				if err := st.RecvMsg(in); errors.Is(err, io.EOF) {
					return st.SendMsg(wrapperspb.Bytes([]byte(fmt.Sprint(n))))
				} else if err != nil {
					return err
				}
				n++
			}
		}},
		{StreamName: "Bidi", ServerStreams: true, ClientStreams: true, Handler: func(_ any, st ggrpc.ServerStream) error {
			for {
				in := new(wrapperspb.BytesValue)
				if err := st.RecvMsg(in); errors.Is(err, io.EOF) {
					return nil
				} else if err != nil {
					return err
				}
				if err := st.SendMsg(in); err != nil {
					return err
				}
			}
		}},
	},
}

func startEchoServer(t *testing.T, opts ...ggrpc.ServerOption) (*ggrpc.Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := ggrpc.NewServer(opts...)
	srv.RegisterService(&echoDesc, newEchoServer())
	go func() { _ = srv.Serve(ln) }()
	return srv, ln.Addr().String()
}

func dial(t *testing.T, addr string) *ggrpc.ClientConn {
	t.Helper()
	cc, err := ggrpc.NewClient("passthrough:///"+addr, ggrpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

func method(name string) string { return "/" + echoService + "/" + name }

func callUnary(ctx context.Context, cc *ggrpc.ClientConn, name string, v []byte) (*wrapperspb.BytesValue, error) {
	out := new(wrapperspb.BytesValue)
	err := cc.Invoke(ctx, method(name), wrapperspb.Bytes(v), out)
	return out, err
}

func wantCode(t *testing.T, err error, c codes.Code) {
	t.Helper()
	if status.Code(err) != c {
		t.Errorf("got %v, want %v", err, c)
	}
}

// record runs one scenario through a recording proxy in front of target and
// writes the single connection it made.
func record(t *testing.T, name, target string, run func(addr string)) {
	t.Helper()
	px, err := recproxy.Start(target)
	if err != nil {
		t.Fatal(err)
	}
	run(px.Addr())
	conns := px.Close()
	if len(conns) != 1 {
		t.Fatalf("%s: %d connections recorded, want 1", name, len(conns))
	}
	path := filepath.Join(fixtureDir, name+".bin")
	if err := capfile.WriteFile(path, conns[0]); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d records", path, len(conns[0]))
}

func TestRecordFixtures(t *testing.T) {
	if os.Getenv(recordEnvVar) != "1" {
		t.Skipf("set %s=1 to record testdata/grpc fixtures from live servers", recordEnvVar)
	}
	if err := os.MkdirAll(fixtureDir, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, target := startEchoServer(t)
	defer srv.Stop()
	bg := context.Background()

	record(t, "unary_ok", target, func(addr string) {
		cc := dial(t, addr)
		defer cc.Close()
		for i, v := range []string{"one", "two", "three"} {
			out, err := callUnary(bg, cc, "Unary", []byte(v))
			if err != nil || string(out.Value) != v {
				t.Fatalf("call %d: %v %q", i, err, out.GetValue())
			}
		}
	})

	record(t, "errors", target, func(addr string) {
		cc := dial(t, addr)
		defer cc.Close()
		_, err := callUnary(bg, cc, "Fail", []byte("notfound"))
		wantCode(t, err, codes.NotFound)
		_, err = callUnary(bg, cc, "Fail", []byte("internal"))
		wantCode(t, err, codes.Internal)
		_, err = callUnary(bg, cc, "Unary", []byte("ok"))
		wantCode(t, err, codes.OK)
	})

	record(t, "deadline", target, func(addr string) {
		cc := dial(t, addr)
		defer cc.Close()
		_, err := callUnary(bg, cc, "Unary", []byte("warm up")) // connection up before the clock starts
		wantCode(t, err, codes.OK)
		ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
		_, err = callUnary(ctx, cc, "Sleep", nil)
		cancel()
		wantCode(t, err, codes.DeadlineExceeded)
		time.Sleep(50 * time.Millisecond) // let the server's side of the race reach the wire
	})

	record(t, "unimplemented", target, func(addr string) {
		cc := dial(t, addr)
		defer cc.Close()
		err := cc.Invoke(bg, method("Missing"), wrapperspb.Bytes(nil), new(wrapperspb.BytesValue))
		wantCode(t, err, codes.Unimplemented)
		err = cc.Invoke(bg, "/ebpfotel.test.v1.Nope/Call", wrapperspb.Bytes(nil), new(wrapperspb.BytesValue))
		wantCode(t, err, codes.Unimplemented)
	})

	record(t, "streaming", target, func(addr string) {
		cc := dial(t, addr)
		defer cc.Close()
		// Server streaming: one request, five responses.
		st, err := cc.NewStream(bg, &ggrpc.StreamDesc{ServerStreams: true}, method("ServerStream"))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.SendMsg(wrapperspb.Bytes([]byte("5 0"))); err != nil {
			t.Fatal(err)
		}
		_ = st.CloseSend()
		n := 0
		for {
			if err := st.RecvMsg(new(wrapperspb.BytesValue)); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				break
			}
			n++
		}
		if n != 5 {
			t.Fatalf("server stream: %d messages", n)
		}
		// Client streaming: five requests, one response.
		st, err = cc.NewStream(bg, &ggrpc.StreamDesc{ClientStreams: true}, method("ClientStream"))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 5; i++ {
			if err := st.SendMsg(wrapperspb.Bytes([]byte("x"))); err != nil {
				t.Fatal(err)
			}
		}
		_ = st.CloseSend()
		out := new(wrapperspb.BytesValue)
		if err := st.RecvMsg(out); err != nil || string(out.Value) != "5" {
			t.Fatalf("client stream: %v %q", err, out.GetValue())
		}
		// Bidirectional: four ping-pongs.
		st, err = cc.NewStream(bg, &ggrpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method("Bidi"))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 4; i++ {
			if err := st.SendMsg(wrapperspb.Bytes([]byte{byte(i)})); err != nil {
				t.Fatal(err)
			}
			if err := st.RecvMsg(new(wrapperspb.BytesValue)); err != nil {
				t.Fatal(err)
			}
		}
		_ = st.CloseSend()
		if err := st.RecvMsg(new(wrapperspb.BytesValue)); !errors.Is(err, io.EOF) {
			t.Fatalf("bidi end: %v", err)
		}
	})

	record(t, "concurrent", target, func(addr string) {
		cc := dial(t, addr)
		defer cc.Close()
		ctx, cancel := context.WithTimeout(bg, 20*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		errs := make(chan error, concurrentN)
		for i := 0; i < concurrentN; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := callUnary(ctx, cc, "Barrier", []byte(fmt.Sprint(i)))
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	})

	record(t, "large", target, func(addr string) {
		cc := dial(t, addr)
		defer cc.Close()
		req := make([]byte, largeReq)
		binary.BigEndian.PutUint32(req, largeResp)
		out, err := callUnary(bg, cc, "Size", req)
		if err != nil || len(out.Value) != largeResp {
			t.Fatalf("large: %v %d", err, len(out.GetValue()))
		}
	})

	record(t, "cancel", target, func(addr string) {
		cc := dial(t, addr)
		defer cc.Close()
		ctx, cancel := context.WithCancel(bg)
		st, err := cc.NewStream(ctx, &ggrpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method("Bidi"))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if err := st.SendMsg(wrapperspb.Bytes([]byte("ping"))); err != nil {
				t.Fatal(err)
			}
			if err := st.RecvMsg(new(wrapperspb.BytesValue)); err != nil {
				t.Fatal(err)
			}
		}
		cancel() // the client resets the stream (RST_STREAM CANCEL)
		wantCode(t, st.RecvMsg(new(wrapperspb.BytesValue)), codes.Canceled)
		time.Sleep(50 * time.Millisecond)
		_, err = callUnary(bg, cc, "Unary", []byte("after cancel"))
		wantCode(t, err, codes.OK)
	})

	record(t, "churn", target, func(addr string) {
		cc := dial(t, addr)
		defer cc.Close()
		for i := 0; i < churnCalls; i++ {
			ctx, cancel := context.WithTimeout(bg, 10*time.Second)
			name := "Churn"
			if i%3 == 2 {
				name = "Unary"
			}
			_, err := callUnary(metadata.AppendToOutgoingContext(ctx, "x-req", fmt.Sprint(i)), cc, name, []byte{byte(i)})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
		}
	})

	recordCurl(t, target)
	recordHTTPStatus(t)
	recordServerStops(t)
}

// recordCurl makes a gRPC call with curl (nghttp2's HTTP/2 and HPACK), and
// a plain HTTP/2 request that is not gRPC.
func recordCurl(t *testing.T, target string) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Log("curl not installed: no non-Go fixture")
		return
	}
	if out, err := exec.Command(curl, "--version").Output(); err != nil || !strings.Contains(string(out), "HTTP2") {
		t.Log("curl lacks HTTP/2 support: no non-Go fixture")
		return
	}
	msg, err := proto.Marshal(wrapperspb.Bytes([]byte(curlReqValue)))
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 5+len(msg)) // gRPC length prefix: flag 0, big-endian length
	binary.BigEndian.PutUint32(body[1:], uint32(len(msg)))
	copy(body[5:], msg)
	bodyFile := filepath.Join(t.TempDir(), "req.bin")
	if err := os.WriteFile(bodyFile, body, 0o644); err != nil {
		t.Fatal(err)
	}
	// curl 7.88 fails ("Error in the HTTP2 framing layer") when it reuses
	// a prior-knowledge connection, so each request is its own connection.
	run := func(args ...string) func(addr string) {
		return func(addr string) {
			args := append([]string{"-sS", "--http2-prior-knowledge", "-o", os.DevNull}, args...)
			args[len(args)-1] = "http://" + addr + args[len(args)-1]
			if out, err := exec.Command(curl, args...).CombinedOutput(); err != nil {
				t.Fatalf("curl: %v: %s", err, out)
			}
		}
	}
	record(t, "curl", target, run("-X", "POST", "-H", "content-type: application/grpc", "-H", "te: trailers",
		"--data-binary", "@"+bodyFile, method("Unary")))
	record(t, "curl_plain", target, run("-H", "content-type: text/plain", "--data-binary", "not grpc", "/healthz"))
}

// recordHTTPStatus drives grpc-go against net/http's own HTTP/2 server
// (cleartext, prior knowledge) that answers one call with 503 and no
// grpc-status, one with a message but no trailers, and one properly.
func recordHTTPStatus(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc(method("Unavailable"), func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	reply := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		msg, _ := proto.Marshal(wrapperspb.Bytes([]byte("from net/http")))
		frame := make([]byte, 5+len(msg))
		binary.BigEndian.PutUint32(frame[1:], uint32(len(msg)))
		copy(frame[5:], msg)
		w.Header().Set("Content-Type", "application/grpc")
		if r.URL.Path == method("Unary") {
			w.Header().Set("Trailer", "Grpc-Status")
		}
		_, _ = w.Write(frame)
		if r.URL.Path == method("Unary") {
			w.Header().Set("Grpc-Status", "0")
		}
	}
	mux.HandleFunc(method("NoStatus"), reply)
	mux.HandleFunc(method("Unary"), reply)
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: mux, Protocols: &protos}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()
	record(t, "http_status", ln.Addr().String(), func(addr string) {
		cc := dial(t, addr)
		defer cc.Close()
		bg := context.Background()
		_, err := callUnary(bg, cc, "Unavailable", []byte("a"))
		wantCode(t, err, codes.Unavailable)
		_, err = callUnary(bg, cc, "NoStatus", []byte("b"))
		if err == nil {
			t.Error("NoStatus: want an error for a response without grpc-status")
		}
		_, err = callUnary(bg, cc, "Unary", []byte("c"))
		wantCode(t, err, codes.OK)
	})
}

// recordServerStops records a graceful stop (GOAWAY, the open stream
// completes) and a hard stop (the connection drops under an open stream).
func recordServerStops(t *testing.T) {
	bg := context.Background()
	for _, graceful := range []bool{true, false} {
		srv, target := startEchoServer(t)
		name := "server_stop"
		if graceful {
			name = "graceful_stop"
		}
		record(t, name, target, func(addr string) {
			cc := dial(t, addr)
			defer cc.Close()
			st, err := cc.NewStream(bg, &ggrpc.StreamDesc{ServerStreams: true}, method("ServerStream"))
			if err != nil {
				t.Fatal(err)
			}
			if err := st.SendMsg(wrapperspb.Bytes([]byte("6 40"))); err != nil {
				t.Fatal(err)
			}
			_ = st.CloseSend()
			if err := st.RecvMsg(new(wrapperspb.BytesValue)); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() {
				if graceful {
					srv.GracefulStop()
				} else {
					srv.Stop()
				}
				close(done)
			}()
			n := 1
			for st.RecvMsg(new(wrapperspb.BytesValue)) == nil {
				n++
			}
			<-done
			if graceful && n != 6 {
				t.Errorf("graceful stop: %d of 6 messages", n)
			}
		})
		srv.Stop()
	}
}
