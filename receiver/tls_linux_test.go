//go:build linux && amd64

package receiver

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver/receivertest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ebpfotel/ebpfreceiver/internal/event"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/cgroup"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/pgserver"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
	"github.com/ebpfotel/ebpfreceiver/receiver/internal/metadata"
)

// selfSigned writes a self-signed certificate and key for 127.0.0.1 into
// dir, readable by uid/gid (PostgreSQL wants its key 0600 and its own).
func selfSigned(t *testing.T, dir string, uid, gid int) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certPath, keyPath = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	require.NoError(t, os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	for _, p := range []string{dir, certPath, keyPath} {
		require.NoError(t, os.Chown(p, uid, gid))
	}
	return certPath, keyPath
}

// ownCertDir is a temporary directory with a self-signed certificate for
// this test's own TLS helpers.
func ownCertDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	selfSigned(t, dir, os.Getuid(), os.Getgid())
	return dir
}

// pgCertDir is a directory the postgres user can reach (t.TempDir's parent
// is private to root).
func pgCertDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgcert-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// tlsReceiver starts the receiver on the cgroup g with OpenSSL probes on.
func tlsReceiver(t *testing.T, g *cgroup.Group) *consumertest.TracesSink {
	t.Helper()
	sink := new(consumertest.TracesSink)
	cfg := createDefaultConfig().(*Config)
	cfg.Filter.Cgroups = []string{g.Path}
	cfg.MapPressure.Enabled = false
	cfg.Limits.RingBufferPollInterval = time.Millisecond
	r, err := NewFactory().CreateTraces(context.Background(), receivertest.NewNopSettings(metadata.Type), cfg, sink)
	require.NoError(t, err)
	require.NoError(t, r.Start(context.Background(), componenttest.NewNopHost()))
	t.Cleanup(func() { require.NoError(t, r.Shutdown(context.Background())) })
	return sink
}

// delayed runs argv in g after a second: the receiver looks at new
// processes of the cgroup every half second and sets the OpenSSL probes on
// them before they load the library.
func delayed(g *cgroup.Group, argv ...string) *exec.Cmd {
	script := `sleep 1; exec "$@"`
	return g.Command("/bin/sh", append([]string{"-c", script, "sh"}, argv...)...)
}

func TestTLSPostgresOverOpenSSL(t *testing.T) {
	privileged.Require(t)
	pgUser, err := user.Lookup("postgres")
	require.NoError(t, err)
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	cert, key := selfSigned(t, pgCertDir(t), uid, gid)

	g := cgroup.New(t)
	pg := pgserver.Start(t, g, "ssl=on", "ssl_cert_file="+cert, "ssl_key_file="+key)
	sink := tlsReceiver(t, g)

	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=require", pg.Port)
	psql := delayed(g, "/usr/bin/psql", "-X", dsn, "-c", "SELECT 1 AS over_tls", "-c", "SELECT pg_sleep(2)", "-c", "SELECT 'tls-secret' AS x")
	out, err := psql.CombinedOutput()
	require.NoError(t, err, "%s", out)

	client := awaitSpans(t, sink, ptrace.SpanKindClient, int64(psql.Process.Pid), 3)
	texts := []string{"SELECT ? AS over_tls", "SELECT pg_sleep(?)", "SELECT ? AS x"}
	for i, s := range client {
		require.Equal(t, texts[i], s.attr("db.query.text"), "psql's queries decrypted from libssl")
		require.Equal(t, "true", s.attr("tls.established"))
		require.Equal(t, "postgres", s.attr("db.namespace"), "the StartupMessage went through SSL_write too")
		require.Empty(t, s.attr("ebpf.capture.joined_mid_stream"))
		require.Equal(t, ptrace.StatusCodeUnset, s.span.Status().Code())
	}

	// The backend was forked before the probes reached it: its plaintext is
	// joined mid-stream, and the last query (after a two-second pause) is
	// seen on the server side too.
	require.Eventually(t, func() bool {
		for _, s := range spansOf(sink, ptrace.SpanKindServer, 0) {
			if s.attr("db.query.text") == "SELECT ? AS x" && s.attr("tls.established") == "true" {
				return true
			}
		}
		return false
	}, 20*time.Second, 20*time.Millisecond, "the PostgreSQL backend's SERVER span from its libssl")
}

// TLS helper: a grpc-go health server over TLS, or with tlsClientEnv set
// to the server's address a grpc-go client making three Health/Check
// calls, in a child process. Both encrypt with Go's crypto/tls.
const (
	tlsGRPCEnv   = "EBPF_TLS_GRPC_HELPER"
	tlsClientEnv = "EBPF_TLS_GRPC_CLIENT"
	// tlsHoldEnv set: the client keeps its connection open after its calls
	// until its standard input closes.
	tlsHoldEnv = "EBPF_TLS_GRPC_HOLD"
	tlsCalls   = 3
)

func TestTLSGRPCHelper(t *testing.T) {
	dir := os.Getenv(tlsGRPCEnv)
	if dir == "" {
		t.Skip("helper process only")
	}
	if addr := os.Getenv(tlsClientEnv); addr != "" {
		os.Exit(runTLSClient(dir, addr))
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"))
	if err != nil {
		os.Exit(2)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		os.Exit(3)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})))
	grpc_health_v1.RegisterHealthServer(srv, health.NewServer())
	fmt.Println(ln.Addr().String())
	_ = srv.Serve(ln)
}

// runTLSClient calls Health/Check tlsCalls times over one TLS connection
// that trusts the certificate in dir.
func runTLSClient(dir, addr string) int {
	// Wait for the test's word that the receiver has probed this process.
	stdin := bufio.NewReader(os.Stdin)
	if _, err := stdin.ReadString('\n'); err != nil {
		return 5
	}
	pem, err := os.ReadFile(filepath.Join(dir, "server.crt"))
	if err != nil {
		return 2
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})))
	if err != nil {
		return 3
	}
	defer cc.Close()
	h := grpc_health_v1.NewHealthClient(cc)
	for i := 0; i < tlsCalls; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := h.Check(ctx, &grpc_health_v1.HealthCheckRequest{})
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "tls client:", err)
			return 4
		}
	}
	if os.Getenv(tlsHoldEnv) != "" {
		_, _ = io.Copy(io.Discard, stdin)
	}
	return 0
}

// runTLSGoClient runs the grpc-go TLS client helper in g (nil: outside
// any test cgroup) to its end; it dials once ready has returned.
func runTLSGoClient(t *testing.T, g *cgroup.Group, certDir, addr string, ready func()) *exec.Cmd {
	t.Helper()
	client := helperCommand(g, "TestTLSGRPCHelper")
	client.Env = append(os.Environ(), tlsGRPCEnv+"="+certDir, tlsClientEnv+"="+addr)
	var out strings.Builder
	client.Stdout, client.Stderr = &out, &out
	dial, err := client.StdinPipe()
	require.NoError(t, err)
	require.NoError(t, client.Start())
	ready()
	_, err = fmt.Fprintln(dial, "dial")
	require.NoError(t, err)
	require.NoError(t, client.Wait(), "%s", out.String())
	return client
}

// startTLSServer starts the grpc-go TLS server helper in g (nil: outside
// any test cgroup) and returns it with its address.
func startTLSServer(t *testing.T, g *cgroup.Group, certDir string) (*exec.Cmd, string) {
	t.Helper()
	server := helperCommand(g, "TestTLSGRPCHelper")
	server.Env = append(os.Environ(), tlsGRPCEnv+"="+certDir)
	stdout, err := server.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, server.Start())
	t.Cleanup(func() { _ = server.Process.Kill(); _ = server.Wait() })
	var addr string
	_, err = fmt.Fscanln(stdout, &addr)
	require.NoError(t, err)
	return server, addr
}

// awaitTLSProbed waits until the receiver reports n probe sets attached.
func awaitTLSProbed(t *testing.T, metrics *consumertest.MetricsSink, n int64) {
	t.Helper()
	require.Eventually(t, func() bool {
		v, _ := latest(metrics, "ebpf.capture.tls.probed", "")
		return v >= n
	}, 20*time.Second, 50*time.Millisecond, "%d probe sets", n)
}

func TestTLSGoGRPC(t *testing.T) {
	privileged.Require(t)
	certDir := ownCertDir(t)
	g := cgroup.New(t)
	sink, metrics := grpcReceiver(t, g, nil)
	t.Cleanup(func() {
		if t.Failed() {
			dumpSpans(t, sink, metrics)
		}
	})
	server, addr := startTLSServer(t, g, certDir)

	// The receiver looks at new processes every half second. Each helper
	// gets two probe sets (crypto/tls, and libssl, which every watched
	// process is given): the client dials once both helpers have theirs.
	awaitTLSProbed(t, metrics, 2)
	client := runTLSGoClient(t, g, certDir, addr, func() { awaitTLSProbed(t, metrics, 4) })

	clients := awaitSpans(t, sink, ptrace.SpanKindClient, int64(client.Process.Pid), tlsCalls)
	servers := awaitSpans(t, sink, ptrace.SpanKindServer, int64(server.Process.Pid), tlsCalls)
	for i := range clients {
		for _, s := range []pgSpan{clients[i], servers[i]} {
			require.Equal(t, "grpc.health.v1.Health/Check", s.span.Name())
			require.Equal(t, "grpc", s.attr("rpc.system.name"))
			require.Equal(t, "OK", s.attr("rpc.response.status_code"))
			require.Equal(t, "true", s.attr("tls.established"), "plaintext from crypto/tls")
			require.Empty(t, s.attr("ebpf.capture.joined_mid_stream"), "the connection was seen from its start")
			require.Equal(t, ptrace.StatusCodeUnset, s.span.Status().Code())
		}
		checkParent(t, clients[i].span, servers[i].span)
		// Writes are stamped when Write was called: the request is
		// written before the server reads it.
		require.LessOrEqual(t, clients[i].span.StartTimestamp(), servers[i].span.StartTimestamp())
	}
}

// goCallsOf counts the Go crypto/tls calls in flight that the receiver's
// kernel table go_tls_calls holds for process tgid.
func goCallsOf(t *testing.T, tgid int) int {
	t.Helper()
	n := 0
	for id := range heldFDs(t).maps {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue
		}
		if info, err := m.Info(); err == nil && info.Name == "go_tls_calls" {
			var (
				key  event.TlsGoCallKey
				val  event.TlsGoCall
				iter = m.Iterate()
			)
			for iter.Next(&key, &val) {
				if int(key.Tgid) == tgid {
					n++
				}
			}
			require.NoError(t, iter.Err())
		}
		m.Close()
	}
	return n
}

// TestTLSGoCallsOfAKilledProcessAreForgotten kills a grpc-go TLS server
// while its connection's reader goroutine is blocked in tls.Conn.Read: no
// return probe will ever run for that call, and the kernel table of calls
// in flight is a plain hash (full means counted drops), so the receiver
// deletes the dead process's entries itself.
func TestTLSGoCallsOfAKilledProcessAreForgotten(t *testing.T) {
	privileged.Require(t)
	certDir := ownCertDir(t)
	g := cgroup.New(t)
	sink, metrics := grpcReceiver(t, g, nil)
	server, addr := startTLSServer(t, g, certDir)
	awaitTLSProbed(t, metrics, 2)
	client := helperCommand(g, "TestTLSGRPCHelper")
	client.Env = append(os.Environ(), tlsGRPCEnv+"="+certDir, tlsClientEnv+"="+addr, tlsHoldEnv+"=1")
	var out strings.Builder
	client.Stdout, client.Stderr = &out, &out
	stdin, err := client.StdinPipe()
	require.NoError(t, err)
	require.NoError(t, client.Start())
	t.Cleanup(func() { _ = client.Process.Kill(); _ = client.Wait() })
	awaitTLSProbed(t, metrics, 4)
	_, err = fmt.Fprintln(stdin, "dial")
	require.NoError(t, err)
	awaitSpans(t, sink, ptrace.SpanKindServer, int64(server.Process.Pid), tlsCalls)

	// The calls are done, the connection stays open: the server reads on.
	require.Eventually(t, func() bool { return goCallsOf(t, server.Process.Pid) > 0 },
		10*time.Second, 50*time.Millisecond, "the server's Read in flight is in go_tls_calls")
	require.NoError(t, server.Process.Kill())
	_ = server.Wait()
	require.Eventually(t, func() bool { return goCallsOf(t, server.Process.Pid) == 0 },
		10*time.Second, 50*time.Millisecond, "the killed server's calls are deleted")
	// The client's Read ends with the connection: its return probe deletes
	// its own entry.
	require.NoError(t, stdin.Close())
	require.NoError(t, client.Wait(), "%s", out.String())
	require.Eventually(t, func() bool { return goCallsOf(t, client.Process.Pid) == 0 },
		10*time.Second, 50*time.Millisecond, "no call of the client is left")
}

func TestTLSCurlHTTP2ToGRPC(t *testing.T) {
	privileged.Require(t)
	certDir := ownCertDir(t)
	g := cgroup.New(t)

	server, addr := startTLSServer(t, nil, certDir)

	sink := tlsReceiver(t, g)
	// A gRPC message: compressed flag, 4-byte length, then an empty
	// HealthCheckRequest (no fields set encodes to zero bytes).
	frame := make([]byte, 5)
	binary.BigEndian.PutUint32(frame[1:], 0)
	body := filepath.Join(certDir, "req.bin")
	require.NoError(t, os.WriteFile(body, frame, 0o644))
	curl := delayed(g, "/usr/bin/curl", "-sS", "--http2", "-k", "-o", "/dev/null",
		"-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary", "@"+body,
		"https://"+addr+"/grpc.health.v1.Health/Check")
	out, err := curl.CombinedOutput()
	require.NoError(t, err, "%s", out)

	client := awaitSpans(t, sink, ptrace.SpanKindClient, int64(curl.Process.Pid), 1)
	s := client[0]
	require.Equal(t, "curl", s.exe)
	require.Equal(t, "grpc.health.v1.Health/Check", s.span.Name())
	require.Equal(t, "grpc", s.attr("rpc.system.name"))
	require.Equal(t, "OK", s.attr("rpc.response.status_code"))
	require.Equal(t, "true", s.attr("tls.established"))
	// The server is grpc-go (crypto/tls, not OpenSSL) and outside the
	// cgroup: nothing of it is captured.
	require.Empty(t, spansOf(sink, ptrace.SpanKindServer, int64(server.Process.Pid)))
}

func TestTLSProcessOutsideTheFilterIsNotCaptured(t *testing.T) {
	privileged.Require(t)
	pgUser, err := user.Lookup("postgres")
	require.NoError(t, err)
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	cert, key := selfSigned(t, pgCertDir(t), uid, gid)
	outside := pgserver.Start(t, nil, "ssl=on", "ssl_cert_file="+cert, "ssl_key_file="+key)

	g := cgroup.New(t) // watched, but empty
	sink := new(consumertest.TracesSink)
	metrics := new(consumertest.MetricsSink)
	cfg := createDefaultConfig().(*Config)
	cfg.Filter.Cgroups = []string{g.Path}
	cfg.MapPressure.Enabled = false
	cfg.SelfMetricsInterval = 100 * time.Millisecond
	set := receivertest.NewNopSettings(metadata.Type)
	tr, err := NewFactory().CreateTraces(context.Background(), set, cfg, sink)
	require.NoError(t, err)
	mr, err := NewFactory().CreateMetrics(context.Background(), set, cfg, metrics)
	require.NoError(t, err)
	require.NoError(t, tr.Start(context.Background(), componenttest.NewNopHost()))
	require.NoError(t, mr.Start(context.Background(), componenttest.NewNopHost()))
	t.Cleanup(func() { require.NoError(t, tr.Shutdown(context.Background())) })
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=require", outside.Port)
	psql := exec.Command("/bin/sh", "-c", `sleep 1; exec /usr/bin/psql -X "$0" -c "SELECT 'outside'"`, dsn)
	out, err := psql.CombinedOutput()
	require.NoError(t, err, "%s", out)
	// Go's crypto/tls outside the filter: a grpc-go server and client.
	certDir := ownCertDir(t)
	_, addr := startTLSServer(t, nil, certDir)
	runTLSGoClient(t, nil, certDir, addr, func() { time.Sleep(time.Second) })
	time.Sleep(time.Second)
	require.Zero(t, sink.SpanCount(), "a TLS process outside the filter yields no span")
	// With a filter, probes go on watched processes only: none here.
	probed, ok := latest(metrics, "ebpf.capture.tls.probed", "")
	require.True(t, ok)
	require.Zero(t, probed, "no OpenSSL or crypto/tls probe is attached to any process")
	records, _ := latest(metrics, "ebpf.capture.records", "")
	require.Zero(t, records, "nothing at all was captured")
}
