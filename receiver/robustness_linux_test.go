//go:build linux

package receiver

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver/receivertest"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcmd "google.golang.org/grpc/metadata"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/cgroup"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/pgserver"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// The reliability tests (robustness, overload, churn, killed peers,
// lifecycle, privileges, privacy) drive traffic from children: this test
// binary run again in TestRobustHelper, inside a test cgroup that the
// receiver is filtered to. Secrets and arguments travel in the environment,
// never on the command line (process.command_line is a span attribute).
const (
	robHelperEnv = "EBPF_ROBUST_HELPER" // the helper's mode
	robArgsEnv   = "EBPF_ROBUST_ARGS"   // space-separated arguments
	robSecretEnv = "EBPF_ROBUST_SECRET" // a value that must never be exported
)

// robService is the gRPC service the helpers serve and call.
const robService = "robust.Probe"

// ---- child side ----

// TestRobustHelper is not a test: in a child process it runs one helper
// mode and exits with its status.
func TestRobustHelper(t *testing.T) {
	mode := os.Getenv(robHelperEnv)
	if mode == "" {
		t.Skip("helper process only")
	}
	args := strings.Fields(os.Getenv(robArgsEnv))
	if err := robRunHelper(mode, args); err != nil {
		fmt.Fprintf(os.Stderr, "robust helper %s: %v\n", mode, err)
		os.Exit(2)
	}
	os.Exit(0)
}

func robRunHelper(mode string, args []string) error {
	arg := func(i int) string {
		if i < len(args) {
			return args[i]
		}
		return ""
	}
	num := func(i int) int {
		n, err := strconv.Atoi(arg(i))
		if err != nil {
			panic(fmt.Sprintf("argument %d: %v", i, err))
		}
		return n
	}
	switch mode {
	case "grpc-server":
		return robGRPCServer()
	case "grpc-call":
		return robGRPCCalls(arg(0), num(1))
	case "pg":
		return robPG(arg(0), arg(1), args[2:])
	case "garbage":
		return robGarbage(arg(0), arg(1))
	case "churn-server":
		return robChurnServer()
	case "churn-client":
		return robChurnClient(arg(0), num(1), num(2))
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// robCodec sends []byte messages as they are.
type robCodec struct{}

func (robCodec) Name() string { return "robbytes" }

func (robCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("robCodec: cannot marshal %T", v)
	}
	return *b, nil
}

func (robCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("robCodec: cannot unmarshal into %T", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

var robDesc = grpc.ServiceDesc{
	ServiceName: robService,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var in []byte
			if err := dec(&in); err != nil {
				return nil, err
			}
			return &in, nil
		},
	}},
}

// robGRPCServer serves robust.Probe/Echo on loopback and prints its address.
func robGRPCServer() error {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(robCodec{}))
	srv.RegisterService(&robDesc, struct{}{})
	fmt.Printf("addr %s\n", ln.Addr())
	return srv.Serve(ln)
}

// robGRPCCalls makes n Echo calls on one connection. With a secret in the
// environment it travels in a custom metadata header and in the payload.
func robGRPCCalls(addr string, n int) error {
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(robCodec{})))
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	payload := []byte("ping")
	if s := os.Getenv(robSecretEnv); s != "" {
		ctx = grpcmd.AppendToOutgoingContext(ctx, "x-robust-token", "hdr-"+s)
		payload = []byte("payload-" + s)
	}
	for range n {
		var out []byte
		if err := cc.Invoke(ctx, "/"+robService+"/Echo", &payload, &out); err != nil {
			return err
		}
		if string(out) != string(payload) {
			return fmt.Errorf("echo returned %q", out)
		}
	}
	fmt.Println("ok")
	return nil
}

// robPG runs one PostgreSQL script against url.
func robPG(url, script string, args []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	simple := pgx.QueryExecModeSimpleProtocol
	switch script {
	case "query":
		// One recognisable query: span "SELECT pg_class".
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_class WHERE relname = 'robust'", simple).Scan(&n); err != nil {
			return err
		}
	case "batch":
		// Pipelined queries, as fast as the server answers: n Execute
		// messages per Sync, rounds times.
		n, err := strconv.Atoi(args[0])
		if err != nil {
			return err
		}
		rounds, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		for range rounds {
			b := &pgx.Batch{}
			for i := range n {
				b.Queue("SELECT $1::int", i)
			}
			if err := c.SendBatch(ctx, b).Close(); err != nil {
				return err
			}
		}
	case "load":
		// Large results: the backend writes them in big syscalls, the
		// client reads them back; rounds times about 16 MB each way.
		rounds, err := strconv.Atoi(args[0])
		if err != nil {
			return err
		}
		for range rounds {
			rows, err := c.Query(ctx, "SELECT repeat('x', 65536) FROM generate_series(1, 256)", simple)
			if err != nil {
				return err
			}
			for rows.Next() {
			}
			if err := rows.Err(); err != nil {
				return err
			}
		}
	case "sleep":
		// A query that stays in flight; the test kills this process or
		// the backend. The backend's pid goes first.
		var pid int
		if err := c.QueryRow(ctx, "SELECT pg_backend_pid()", simple).Scan(&pid); err != nil {
			return err
		}
		fmt.Printf("backend %d\n", pid)
		_, err := c.Exec(ctx, "SELECT pg_sleep(60)", simple)
		fmt.Printf("sleep ended: %v\n", err)
		if err == nil {
			return fmt.Errorf("pg_sleep(60) was not interrupted")
		}
		return nil
	case "secrets":
		return robPGSecrets(ctx, c)
	default:
		return fmt.Errorf("unknown script %q", script)
	}
	fmt.Println("ok")
	return nil
}

// robSecretQueries are the PostgreSQL statements of the privacy test. Each
// plants its own secret (a suffix of the environment's secret) where only a
// literal or a bind parameter holds it; ok says whether the server accepts
// the statement.
func robSecretQueries(secret string) []struct {
	tag, sql string
	args     []any
	ok       bool
} {
	s := func(tag string) string { return tag + secret }
	return []struct {
		tag, sql string
		args     []any
		ok       bool
	}{
		{"lit-simple", "SELECT count(*) FROM pg_class WHERE relname = '" + s("lit-simple") + "'", []any{pgx.QueryExecModeSimpleProtocol}, true},
		{"lit-extended", "SELECT count(*) FROM pg_class WHERE relname = '" + s("lit-extended") + "'", nil, true},
		{"lit-escape", "SELECT E'" + s("lit-escape") + "\\n' AS v", []any{pgx.QueryExecModeSimpleProtocol}, true},
		{"lit-dollar", "SELECT $$" + s("lit-dollar") + "$$ AS v", []any{pgx.QueryExecModeSimpleProtocol}, true},
		{"bind-text", "SELECT count(*) FROM pg_class WHERE relname = $1", []any{s("bind-text")}, true},
		{"bind-insert", "INSERT INTO robust_secrets (v) VALUES ($1)", []any{s("bind-insert")}, true},
		{"lit-insert", "INSERT INTO robust_secrets (v) VALUES ('" + s("lit-insert") + "')", []any{pgx.QueryExecModeSimpleProtocol}, true},
		{"comment", "SELECT 1 AS v /* " + s("comment") + " */", []any{pgx.QueryExecModeSimpleProtocol}, true},
		// The server's error message quotes the offending value.
		{"bind-error", "SELECT $1::int", []any{s("bind-error")}, false},
		{"lit-error", "SELECT '" + s("lit-error") + "'::int", []any{pgx.QueryExecModeSimpleProtocol}, false},
	}
}

func robPGSecrets(ctx context.Context, c *pgx.Conn) error {
	secret := os.Getenv(robSecretEnv)
	if _, err := c.Exec(ctx, "CREATE TABLE IF NOT EXISTS robust_secrets (v text)", pgx.QueryExecModeSimpleProtocol); err != nil {
		return err
	}
	for _, q := range robSecretQueries(secret) {
		_, err := c.Exec(ctx, q.sql, q.args...)
		if (err == nil) != q.ok {
			return fmt.Errorf("%s: want ok=%v, error: %w", q.tag, q.ok, err)
		}
	}
	fmt.Println("ok")
	return nil
}

// ---- garbage ----

// robGarbage sends malformed traffic to a PostgreSQL server (pgAddr) and a
// gRPC server (grpcAddr), one connection per kind of garbage, and reports
// each kind on stdout as it is done.
func robGarbage(pgAddr, grpcAddr string) error {
	steps := []struct {
		name string
		addr string
		run  func(net.Conn) error
	}{
		{"pg-random", pgAddr, func(c net.Conn) error { return robWriteRandom(c, 64<<10) }},
		{"pg-random-after-startup", pgAddr, func(c net.Conn) error {
			if err := robPGStartup(c); err != nil {
				return err
			}
			// A valid Query first, so both parsers are in step, then
			// random bytes where the next message belongs.
			if _, err := c.Write(robPGQuery("SELECT 1")); err != nil {
				return err
			}
			if err := robPGUntilReady(c); err != nil {
				return err
			}
			return robWriteRandom(c, 32<<10)
		}},
		{"pg-truncated", pgAddr, func(c net.Conn) error {
			if err := robPGStartup(c); err != nil {
				return err
			}
			q := robPGQuery("SELECT 'truncated message' AS cut")
			_, err := c.Write(q[:len(q)/2]) // the rest never comes
			return err
		}},
		{"pg-absurd-length", pgAddr, func(c net.Conn) error {
			if err := robPGStartup(c); err != nil {
				return err
			}
			// A Query whose length field claims almost 1 GiB (the largest
			// the server accepts), followed by 4 MiB of text: a parser must
			// skip it by its length, not buffer it.
			hdr := []byte{'Q', 0, 0, 0, 0}
			binary.BigEndian.PutUint32(hdr[1:], 0x3ffffff0)
			if _, err := c.Write(append(hdr, "SELECT '"...)); err != nil {
				return err
			}
			chunk := []byte(strings.Repeat("a", 64<<10))
			for range 64 {
				if _, err := c.Write(chunk); err != nil {
					return nil // the server may give up first
				}
			}
			return nil
		}},
		{"pg-invalid-length", pgAddr, func(c net.Conn) error {
			if err := robPGStartup(c); err != nil {
				return err
			}
			// Lengths no message may have: 0xffffffff and 3 (under its own size).
			bad := []byte{'Q', 0xff, 0xff, 0xff, 0xff, 'S', 'E', 'L', 'E', 'C', 'T', 0, 'P', 0, 0, 0, 3}
			if _, err := c.Write(bad); err != nil {
				return err
			}
			return robDrain(c)
		}},
		{"pg-absurd-startup", pgAddr, func(c net.Conn) error {
			// A start-up packet that claims 2 GiB.
			_, err := c.Write([]byte{0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0})
			if err != nil {
				return err
			}
			return robDrain(c)
		}},
		{"grpc-random", grpcAddr, func(c net.Conn) error { return robWriteRandom(c, 64<<10) }},
		{"grpc-random-after-preface", grpcAddr, func(c net.Conn) error {
			if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
				return err
			}
			fr := http2.NewFramer(c, c)
			if err := fr.WriteSettings(); err != nil {
				return err
			}
			return robWriteRandom(c, 32<<10)
		}},
		{"grpc-truncated-frame", grpcAddr, func(c net.Conn) error {
			if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
				return err
			}
			fr := http2.NewFramer(c, c)
			if err := fr.WriteSettings(); err != nil {
				return err
			}
			// A HEADERS frame header announcing 16000 bytes, then 10 of them.
			_, err := c.Write([]byte{0x00, 0x3e, 0x80, 0x01, 0x04, 0, 0, 0, 1, 0x82, 0x86, 0x44, 1, 2, 3, 4, 5, 6, 7})
			return err
		}},
		{"grpc-table-size-bomb", grpcAddr, func(c net.Conn) error {
			// The client allows the server's encoder a 2 GiB dynamic table
			// (legal: SETTINGS values are 32-bit) ...
			fr, enc, buf, err := robH2Start(c, http2.Setting{ID: http2.SettingHeaderTableSize, Val: 1 << 31})
			if err != nil {
				return err
			}
			// ... and its own block starts with dynamic table size updates
			// far above the server's SETTINGS (a decoding error), then an
			// ordinary request.
			block := robHPACKInt(nil, 0x20, 5, 1<<31)
			block = robHPACKInt(block, 0x20, 5, 1<<40)
			buf.Reset()
			robRequestHeaders(enc, "/"+robService+"/Echo")
			block = append(block, buf.Bytes()...)
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true}); err != nil {
				return err
			}
			return robDrain(c)
		}},
		{"grpc-hpack-bomb", grpcAddr, func(c net.Conn) error {
			fr, enc, buf, err := robH2Start(c)
			if err != nil {
				return err
			}
			// One 4000-byte value enters the dynamic table; then 50000
			// one-byte references to it, in CONTINUATION frames: a 53 KB
			// block that decodes to a 200 MB header list.
			buf.Reset()
			robRequestHeaders(enc, "/"+robService+"/Echo")
			if err := enc.WriteField(hpack.HeaderField{Name: "x-bomb", Value: strings.Repeat("b", 4000)}); err != nil {
				return err
			}
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: buf.Bytes()}); err != nil {
				return err
			}
			// The newest dynamic entry has index 62 (indexed field: 0x80|62).
			refs := make([]byte, 10000)
			for i := range refs {
				refs[i] = 0x80 | 62
			}
			for i := range 5 {
				if err := fr.WriteContinuation(1, i == 4, refs); err != nil {
					return nil // the server may close first
				}
			}
			return robDrain(c)
		}},
		{"grpc-oversize-block", grpcAddr, func(c net.Conn) error {
			fr, enc, buf, err := robH2Start(c)
			if err != nil {
				return err
			}
			buf.Reset()
			robRequestHeaders(enc, "/"+robService+"/Echo")
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: buf.Bytes()}); err != nil {
				return err
			}
			// 40 CONTINUATION frames of 16000-byte literal fields: a 640 KB
			// block, over any sane header block and header list bound.
			for i := range 40 {
				buf.Reset()
				if err := enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-pad-%d", i), Value: strings.Repeat("p", 16000), Sensitive: true}); err != nil {
					return err
				}
				if err := fr.WriteContinuation(1, i == 39, buf.Bytes()); err != nil {
					return nil // the server may close first
				}
			}
			return robDrain(c)
		}},
	}
	for _, s := range steps {
		c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		err = s.run(c)
		c.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		fmt.Println(s.name)
	}
	fmt.Println("done")
	return nil
}

// robWriteRandom writes n random bytes (stopping early if the peer closes)
// and reads whatever comes back until the peer closes or a second passes.
func robWriteRandom(c net.Conn, n int) error {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	for len(b) > 0 {
		k := min(len(b), 4096)
		if _, err := c.Write(b[:k]); err != nil {
			return nil
		}
		b = b[k:]
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, c)
	return nil
}

// robDrain reads until the peer closes or two seconds pass.
func robDrain(c net.Conn) error {
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, _ = io.Copy(io.Discard, c)
	return nil
}

// robPGStartup opens a session (trust authentication) and waits for
// ReadyForQuery.
func robPGStartup(c net.Conn) error {
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		return err
	}
	return robPGReady(fe)
}

func robPGReady(fe *pgproto3.Frontend) error {
	for {
		m, err := fe.Receive()
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *pgproto3.ReadyForQuery:
			return nil
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("server error %s: %s", m.Code, m.Message)
		}
	}
}

func robPGUntilReady(c net.Conn) error { return robPGReady(pgproto3.NewFrontend(c, c)) }

func robPGQuery(sql string) []byte {
	b := []byte{'Q', 0, 0, 0, 0}
	b = append(b, sql...)
	b = append(b, 0)
	binary.BigEndian.PutUint32(b[1:], uint32(len(b)-1)) //nolint:gosec // short
	return b
}

// robH2Start writes the client preface and SETTINGS and returns a framer and
// an HPACK encoder writing into buf.
func robH2Start(c net.Conn, settings ...http2.Setting) (*http2.Framer, *hpack.Encoder, *robBuf, error) {
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		return nil, nil, nil, err
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(settings...); err != nil {
		return nil, nil, nil, err
	}
	buf := new(robBuf)
	return fr, hpack.NewEncoder(buf), buf, nil
}

type robBuf struct{ b []byte }

func (b *robBuf) Write(p []byte) (int, error) { b.b = append(b.b, p...); return len(p), nil }
func (b *robBuf) Bytes() []byte               { return b.b }
func (b *robBuf) Reset()                      { b.b = b.b[:0] }

func robRequestHeaders(enc *hpack.Encoder, path string) {
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: path}, {Name: ":authority", Value: "robust"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	} {
		_ = enc.WriteField(f)
	}
}

// robHPACKInt appends an HPACK integer (RFC 7541 section 5.1) with an n-bit
// prefix after the pattern bits of first.
func robHPACKInt(b []byte, first byte, n uint, v uint64) []byte {
	limit := uint64(1)<<n - 1
	if v < limit {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(limit))
	v -= limit
	for v >= 128 {
		b = append(b, byte(v%128)|0x80)
		v /= 128
	}
	return append(b, byte(v))
}

// ---- churn ----

// robChurnServer accepts connections on loopback: it answers 16 bytes with
// 16 bytes and closes, unless the request starts with "idle", in which case
// it keeps the connection until the client closes it.
func robChurnServer() error {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("addr %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			var req [16]byte
			if _, err := io.ReadFull(c, req[:]); err != nil {
				return
			}
			if _, err := c.Write(req[:]); err != nil {
				return
			}
			if string(req[:4]) == "idle" {
				_, _ = io.Copy(io.Discard, c)
			}
		}()
	}
}

// robChurnClient makes short connections (request, answer, the server
// closes first so no TIME_WAIT holds the client's ports), then opens idle
// ones and holds them until a line arrives on stdin.
func robChurnClient(addr string, short, idle int) error {
	const workers = 8
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	next := make(chan struct{}, 1024)
	go func() {
		for range short {
			next <- struct{}{}
		}
		close(next)
	}()
	for range workers {
		wg.Go(func() {
			req := []byte("short-connection")
			var resp [16]byte
			for range next {
				c, err := net.Dial("tcp4", addr)
				if err != nil {
					errs <- err
					return
				}
				if _, err := c.Write(req); err != nil {
					c.Close()
					errs <- err
					return
				}
				if _, err := io.ReadFull(c, resp[:]); err != nil {
					c.Close()
					errs <- err
					return
				}
				_, _ = c.Read(resp[:]) // EOF: the server closed
				c.Close()
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	fmt.Printf("short %d %d\n", short, time.Since(start).Milliseconds())

	conns := make([]net.Conn, 0, idle)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	req := []byte("idle-connection!")
	var resp [16]byte
	for range idle {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			return err
		}
		conns = append(conns, c)
		if _, err := c.Write(req); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, resp[:]); err != nil {
			return err
		}
	}
	fmt.Printf("idle %d\n", idle)
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return err
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	fmt.Println("closed")
	return nil
}

// ---- test side ----

// robProc is a helper child and the lines it printed.
type robProc struct {
	cmd   *exec.Cmd
	pid   int
	stdin io.WriteCloser
	lines chan string
	done  chan struct{}
	err   error // exit status, once done is closed
}

// helperCommand runs this test binary's helper test in g (nil: outside
// any test cgroup).
func helperCommand(g *cgroup.Group, helper string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^"+helper+"$")
	if g != nil {
		g.Into(cmd)
	}
	return cmd
}

// robStart runs a helper in g (nil: outside any test cgroup).
func robStart(t *testing.T, g *cgroup.Group, env []string, mode string, args ...string) *robProc {
	t.Helper()
	cmd := helperCommand(g, "TestRobustHelper")
	cmd.Env = append(append(os.Environ(), robHelperEnv+"="+mode, robArgsEnv+"="+strings.Join(args, " ")), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &robProc{cmd: cmd, pid: cmd.Process.Pid, stdin: stdin, lines: make(chan string, 64), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	return p
}

// line returns the next line the helper printed.
func (p *robProc) line(t *testing.T, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			<-p.done
			require.FailNow(t, "helper exited", "pid %d: %v", p.pid, p.err)
		}
		return l
	case <-time.After(timeout):
		require.FailNow(t, "helper did not answer", "pid %d within %s", p.pid, timeout)
	}
	return ""
}

// wait requires the helper to exit successfully within timeout.
func (p *robProc) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-p.done:
		require.NoError(t, p.err, "helper %d", p.pid)
	case <-time.After(timeout):
		require.FailNow(t, "helper did not finish", "pid %d within %s", p.pid, timeout)
	}
}

// robRun starts a helper and waits for it to succeed.
func robRun(t *testing.T, g *cgroup.Group, timeout time.Duration, env []string, mode string, args ...string) *robProc {
	t.Helper()
	p := robStart(t, g, env, mode, args...)
	p.wait(t, timeout)
	return p
}

// robGRPCServerIn starts the gRPC helper server in g and returns its address.
func robGRPCServerIn(t *testing.T, g *cgroup.Group) (*robProc, string) {
	t.Helper()
	p := robStart(t, g, nil, "grpc-server")
	addr, ok := strings.CutPrefix(p.line(t, 10*time.Second), "addr ")
	require.True(t, ok)
	return p, addr
}

// robRig is a receiver (traces into next, metrics into a sink) filtered to
// a test cgroup.
type robRig struct {
	g       *cgroup.Group
	rcv     *ebpfReceiver
	metrics *consumertest.MetricsSink
}

func robReceiver(t *testing.T, g *cgroup.Group, next consumer.Traces, tune func(*Config)) *robRig {
	t.Helper()
	cfg := createDefaultConfig().(*Config)
	cfg.Filter.Cgroups = []string{g.Path}
	cfg.MapPressure.Enabled = false
	cfg.Limits.RingBufferPollInterval = 2 * time.Millisecond
	cfg.SelfMetricsInterval = 200 * time.Millisecond
	if tune != nil {
		tune(cfg)
	}
	require.NoError(t, cfg.Validate())
	set := receivertest.NewNopSettings(metadata.Type)
	metrics := new(consumertest.MetricsSink)
	f := NewFactory()
	tr, err := f.CreateTraces(context.Background(), set, cfg, next)
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
	return &robRig{g: g, rcv: tr.(*ebpfReceiver), metrics: metrics}
}

// metric returns the newest value of a metric, summed over the data points
// whose attributes include attrs.
func (r *robRig) metric(name string, attrs map[string]string) (int64, bool) {
	return robMetric(r.metrics, name, attrs)
}

func robMetric(sink *consumertest.MetricsSink, name string, attrs map[string]string) (int64, bool) {
	m, ok := newestMetric(sink, name)
	if !ok {
		return 0, false
	}
	return sumPoints(m, attrs), true
}

// await waits until the metric satisfies ok and returns its value.
func (r *robRig) await(t *testing.T, name string, attrs map[string]string, what string, ok func(int64) bool) int64 {
	t.Helper()
	var v int64
	var found bool
	deadline := time.Now().Add(20 * time.Second)
	for {
		v, found = r.metric(name, attrs)
		if found && ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			require.FailNow(t, "metric never got there", "%s %v: %s (found %v, last value %d)", name, attrs, what, found, v)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settled waits until a metric's value stayed the same over a second (three
// self-metric intervals and more) and returns it.
func (r *robRig) settled(t *testing.T, name string, attrs map[string]string) int64 {
	t.Helper()
	last, _ := r.metric(name, attrs)
	since := time.Now()
	deadline := since.Add(30 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		v, _ := r.metric(name, attrs)
		if v != last {
			last, since = v, time.Now()
			continue
		}
		if time.Since(since) >= time.Second {
			return v
		}
	}
	require.FailNow(t, "metric never settled", "%s %v (last %d)", name, attrs, last)
	return 0
}

// parserEvent is a protocol parser counter.
func (r *robRig) parserEvent(protocol, event string) int64 {
	v, _ := r.metric("ebpf.protocol.parser.events", map[string]string{"protocol": protocol, "event": event})
	return v
}

// robSpans returns the spans of kind from pid (0: any process) named name
// ("" any name).
func robSpans(sink *consumertest.TracesSink, kind ptrace.SpanKind, pid int, name string) []ptrace.Span {
	var out []ptrace.Span
	for _, td := range sink.AllTraces() {
		rss := td.ResourceSpans()
		for i := 0; i < rss.Len(); i++ {
			p, _ := rss.At(i).Resource().Attributes().Get("process.pid")
			if pid != 0 && p.Int() != int64(pid) {
				continue
			}
			sss := rss.At(i).ScopeSpans()
			for j := 0; j < sss.Len(); j++ {
				spans := sss.At(j).Spans()
				for k := 0; k < spans.Len(); k++ {
					if sp := spans.At(k); sp.Kind() == kind && (name == "" || sp.Name() == name) {
						out = append(out, sp)
					}
				}
			}
		}
	}
	return out
}

// robAwaitSpans waits for n spans of kind from pid named name.
func robAwaitSpans(t *testing.T, sink *consumertest.TracesSink, kind ptrace.SpanKind, pid int, name string, n int) []ptrace.Span {
	t.Helper()
	require.Eventually(t, func() bool { return len(robSpans(sink, kind, pid, name)) >= n }, 20*time.Second, 20*time.Millisecond,
		"%d %s spans %q from pid %d", n, kind, name, pid)
	return robSpans(sink, kind, pid, name)
}

func robAttr(sp ptrace.Span, key string) string {
	v, ok := sp.Attributes().Get(key)
	if !ok {
		return ""
	}
	return v.AsString()
}

// robHeapInuse is the heap in use after a collection.
func robHeapInuse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// robNormalTraffic makes one ordinary query and one ordinary gRPC call from
// fresh children and requires their spans, proving the receiver still
// works.
func robNormalTraffic(t *testing.T, g *cgroup.Group, traces *consumertest.TracesSink, pg *pgserver.Server, grpcServer *robProc, grpcAddr string) {
	t.Helper()
	if pg != nil {
		q := robRun(t, g, 30*time.Second, nil, "pg", pg.URL("postgres"), "query")
		sp := robAwaitSpans(t, traces, ptrace.SpanKindClient, q.pid, "SELECT pg_class", 1)
		require.Len(t, sp, 1)
		require.Equal(t, "SELECT count(*) FROM pg_class WHERE relname = ?", robAttr(sp[0], "db.query.text"))
		require.Equal(t, ptrace.StatusCodeUnset, sp[0].Status().Code())
		require.Empty(t, robAttr(sp[0], "ebpf.capture.incomplete"))
	}
	if grpcServer != nil {
		c := robRun(t, g, 30*time.Second, nil, "grpc-call", grpcAddr, "1")
		method := robService + "/Echo"
		cs := robAwaitSpans(t, traces, ptrace.SpanKindClient, c.pid, method, 1)
		require.Equal(t, "OK", robAttr(cs[0], "rpc.response.status_code"))
		ss := robAwaitSpans(t, traces, ptrace.SpanKindServer, grpcServer.pid, method, 1)
		found := false
		for _, s := range ss {
			found = found || s.ParentSpanID() == cs[0].SpanID()
		}
		require.True(t, found, "the server span of the call is the client span's child")
	}
}

// TestRobustnessGarbageOnWatchedPorts sends malformed PostgreSQL and HTTP/2
// traffic to a real PostgreSQL server and a real grpc-go server, both
// watched: the receiver must survive it with bounded memory, count what it
// skipped, and still turn ordinary traffic into spans afterwards.
func TestRobustnessGarbageOnWatchedPorts(t *testing.T) {
	privileged.Require(t)
	g := cgroup.New(t)
	pg := pgserver.Start(t, g)
	traces := new(consumertest.TracesSink)
	rig := robReceiver(t, g, traces, nil)
	server, addr := robGRPCServerIn(t, g)

	heapBefore := robHeapInuse()
	garbage := robStart(t, g, nil, "garbage", pg.Addr(), addr)
	var done []string
	for {
		l := garbage.line(t, 60*time.Second)
		if l == "done" {
			break
		}
		done = append(done, l)
	}
	garbage.wait(t, 10*time.Second)
	require.Len(t, done, 12, "every kind of garbage was sent: %v", done)

	// Everything the garbage produced is parsed once the counters say the
	// last connection ended (close(2) seen at both ends of 12 connections).
	rig.await(t, "ebpf.capture.connections.ended", map[string]string{"reason": "closed"}, "the garbage connections closed", func(v int64) bool { return v >= 12 })
	time.Sleep(500 * time.Millisecond)

	robNormalTraffic(t, g, traces, pg, server, addr)

	heapAfter := robHeapInuse()
	t.Logf("collector heap in use: before %d KiB, after %d KiB", heapBefore>>10, heapAfter>>10)
	// 4 MiB of a message with a 1 GiB length, a 200 MB HPACK bomb and a
	// 640 KB header block went through: none of it may be held.
	require.Less(t, int64(heapAfter)-int64(heapBefore), int64(32<<20), "heap growth")

	ev := func(p, e string) int64 { return rig.parserEvent(p, e) }
	for _, p := range []string{"postgresql", "grpc"} {
		for _, e := range []string{"resyncs", "bytes_skipped", "oversized_messages", "decode_errors", "protocol_errors", "hpack_errors",
			"table_size_over_cap", "header_list_oversize", "header_block_oversize", "frame_oversize", "queries", "calls", "connections"} {
			if v := ev(p, e); v != 0 {
				t.Logf("%s %s = %d", p, e, v)
			}
		}
	}
	drops := func(reason string) int64 {
		v, _ := rig.metric("ebpf.capture.drops", map[string]string{"reason": reason})
		return v
	}
	require.Zero(t, drops("parser_panic"), "no parser panicked")
	require.Zero(t, drops("decode_error"))
	ignored, _ := rig.metric("ebpf.capture.connections.ended", map[string]string{"reason": "ignored"})
	t.Logf("connections ignored (no protocol recognised): %d", ignored)

	// PostgreSQL: random bytes after a valid session and invalid length
	// fields make the parsers lose the message boundary and search for the
	// next one; the 1 GiB Query is skipped by its length.
	require.Positive(t, ev("postgresql", "resyncs"), "PostgreSQL resynchronisations")
	require.Positive(t, ev("postgresql", "bytes_skipped"), "PostgreSQL bytes skipped")
	require.Positive(t, ev("postgresql", "oversized_messages"), "the 1 GiB Query is oversized")
	// HTTP/2: the 2 GiB SETTINGS_HEADER_TABLE_SIZE is capped, the size
	// updates above the peer's SETTINGS fail the block's decoding, the
	// bomb's decoded list and the padded block exceed their bounds.
	require.Positive(t, ev("grpc", "table_size_over_cap"), "SETTINGS_HEADER_TABLE_SIZE over the receiver's cap")
	require.Positive(t, ev("grpc", "hpack_errors"), "size updates over the allowed table size")
	require.Positive(t, ev("grpc", "header_list_oversize"), "the HPACK bomb's header list")
	require.Positive(t, ev("grpc", "header_block_oversize"), "the 640 KB header block")
	require.Positive(t, ev("grpc", "resyncs")+ev("grpc", "protocol_errors"), "random bytes after the preface")
}
