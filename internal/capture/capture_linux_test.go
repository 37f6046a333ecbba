//go:build linux

package capture

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/ebpfotel/ebpfreceiver/internal/cgroupv2"
	"github.com/ebpfotel/ebpfreceiver/internal/event"
	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/cgroup"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
)

// segment is a run of captured bytes at a stream offset.
type segment struct {
	off  uint64
	data []byte
}

// recorded is everything one connection delivered to its parser.
type recorded struct {
	info   stream.ConnInfo
	segs   [2][]segment
	pos    [2]uint64 // next stream offset per direction
	lost   [2]uint64
	closed bool
}

func (r *recorded) bytes(dir stream.Direction) []byte {
	var b []byte
	for _, s := range r.segs[dir-1] {
		b = append(b, s.data...)
	}
	return b
}

// recorder is a stream.Detector that takes every connection and keeps
// what it is fed, so tests can compare it with what was really sent.
type recorder struct {
	mu    sync.Mutex
	conns map[uint64]*recorded
}

func newRecorder() *recorder { return &recorder{conns: map[uint64]*recorded{}} }

func (r *recorder) Name() string { return "record" }
func (r *recorder) Detect(*stream.ConnInfo, stream.Direction, []byte) bool {
	return true
}

func (r *recorder) New(info *stream.ConnInfo) stream.Parser {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := &recorded{info: *info}
	r.conns[info.ID] = rec
	return &recParser{r: r, rec: rec}
}

type recParser struct {
	r   *recorder
	rec *recorded
}

func (p *recParser) Data(dir stream.Direction, _ uint64, data []byte, lost uint64) {
	p.r.mu.Lock()
	defer p.r.mu.Unlock()
	i := dir - 1
	if len(data) > 0 {
		p.rec.segs[i] = append(p.rec.segs[i], segment{off: p.rec.pos[i], data: bytes.Clone(data)})
	}
	p.rec.pos[i] += uint64(len(data)) + lost
	p.rec.lost[i] += lost
}

func (p *recParser) Close(uint64) {
	p.r.mu.Lock()
	defer p.r.mu.Unlock()
	p.rec.closed = true
}

// find returns the connection of this process whose local endpoint is
// local (TCP) or whose fd is fd (Unix).
func (r *recorder) find(match func(*recorded) bool) *recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		if match(c) {
			return c
		}
	}
	return nil
}

// sink feeds records to an assembler from the reader goroutine.
type sink struct {
	asm *stream.Assembler
	h   *harness
}

func (s *sink) Record(raw []byte) {
	if e, _, err := event.Data(raw); err == nil && e.Flags&event.FlagTruncated != 0 {
		s.h.rec.mu.Lock()
		s.h.truncated[e.ConnId]++
		s.h.rec.mu.Unlock()
	}
	s.asm.Record(raw)
}

func (s *sink) Tick(time.Time) { s.asm.Tick(MonotonicNow()) }

func testOptions() Options {
	return Options{
		Filter:          Filter{PIDs: []uint32{uint32(os.Getpid())}},
		RingBufferBytes: 8 << 20,
		MaxConnections:  4096,
		CaptureBytes:    16384,
		TailBytes:       4096,
		WakeupBytes:     64 << 10,
		PollInterval:    2 * time.Millisecond,
		ScanExisting:    true,
		IncludeSelf:     true,
	}
}

type harness struct {
	cap  *Capture
	asm  *stream.Assembler
	rec  *recorder
	done chan error
	// truncated counts, per connection id, data records flagged
	// DATA_FLAG_TRUNCATED (guarded by rec.mu).
	truncated map[uint64]int
}

func start(t *testing.T, opts Options, run bool) *harness {
	t.Helper()
	privileged.Require(t)
	c, err := Open(opts, nil)
	require.NoError(t, err)
	rec := newRecorder()
	h := &harness{cap: c, rec: rec, done: make(chan error, 1), truncated: map[uint64]int{}}
	h.asm = stream.NewAssembler(stream.Config{MaxConnections: 1024, IdleTimeoutNs: uint64(time.Minute)}, []stream.Detector{rec}, nil)
	if run {
		h.run()
	}
	t.Cleanup(func() {
		require.NoError(t, c.Close())
		if h.done != nil && run {
			require.NoError(t, <-h.done)
		}
	})
	return h
}

func (h *harness) run() {
	go func() { h.done <- h.cap.Run(&sink{asm: h.asm, h: h}) }()
}

// waitFor polls until cond holds or fails the test after a timeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// exchange runs one connection: the client sends req with send, the server
// reads it all and answers resp, the client reads the answer and closes.
func exchange(t *testing.T, ln net.Listener, dial func() (net.Conn, error), send func(net.Conn, []byte) error, req, resp []byte) (client, server net.Conn) {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		buf := make([]byte, len(req))
		if _, err := io.ReadFull(c, buf); err == nil {
			_, _ = c.Write(resp)
		}
		accepted <- c
	}()
	cl, err := dial()
	require.NoError(t, err)
	require.NoError(t, send(cl, req))
	got := make([]byte, len(resp))
	_, err = io.ReadFull(cl, got)
	require.NoError(t, err)
	require.Equal(t, resp, got)
	srv := <-accepted
	require.NotNil(t, srv)
	return cl, srv
}

func plainWrite(c net.Conn, b []byte) error {
	// Several small writes: each is its own write(2).
	for len(b) > 0 {
		n := min(len(b), 7)
		if _, err := c.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func writevSend(c net.Conn, b []byte) error {
	// net.Buffers on a TCP or Unix conn is written with writev(2).
	bufs := net.Buffers{b[:len(b)/3], b[len(b)/3 : 2*len(b)/3], b[2*len(b)/3:]}
	_, err := bufs.WriteTo(c)
	return err
}

// sendmsgSend writes with sendmsg(2) on the raw fd, two iovecs a call.
func sendmsgSend(c net.Conn, b []byte) error {
	sc, ok := c.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return fmt.Errorf("%T has no raw conn", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	for len(b) > 0 {
		var n int
		var serr error
		err = raw.Write(func(fd uintptr) bool {
			n, serr = unix.SendmsgBuffers(int(fd), [][]byte{b[:len(b)/2], b[len(b)/2:]}, nil, nil, 0)
			return serr != unix.EAGAIN
		})
		if err != nil {
			return err
		}
		if serr != nil {
			return serr
		}
		b = b[n:]
	}
	return nil
}

func TestCaptureReassemblesBothDirections(t *testing.T) {
	h := start(t, testOptions(), true)
	sockDir := t.TempDir()

	type transport struct {
		name   string
		listen func() (net.Listener, error)
	}
	transports := []transport{
		{"tcp4", func() (net.Listener, error) { return net.Listen("tcp4", "127.0.0.1:0") }},
		{"tcp6", func() (net.Listener, error) { return net.Listen("tcp6", "[::1]:0") }},
		{"unix", func() (net.Listener, error) { return net.Listen("unix", filepath.Join(sockDir, "s.sock")) }},
	}
	senders := []struct {
		name string
		send func(net.Conn, []byte) error
	}{
		{"write", plainWrite},
		{"writev", writevSend},
		{"sendmsg", sendmsgSend},
	}
	for _, tr := range transports {
		for _, sd := range senders {
			t.Run(tr.name+"/"+sd.name, func(t *testing.T) {
				ln, err := tr.listen()
				require.NoError(t, err)
				defer ln.Close()
				req := []byte(fmt.Sprintf("hello %s over %s: %x", sd.name, tr.name, randBytes(t, 16)))
				resp := []byte("answer " + string(randBytes(t, 8)))
				dial := func() (net.Conn, error) { return net.Dial(ln.Addr().Network(), ln.Addr().String()) }
				cl, srv := exchange(t, ln, dial, sd.send, req, resp)
				defer srv.Close()
				clientLocal := cl.LocalAddr().String()

				isClient := func(r *recorded) bool {
					if tr.name == "unix" {
						return r.info.Transport == "unix" && r.info.Role == stream.RoleClient && bytes.Equal(r.bytes(stream.Egress), req)
					}
					return r.info.Local.String() == clientLocal
				}
				isServer := func(r *recorded) bool {
					if tr.name == "unix" {
						return r.info.Transport == "unix" && r.info.Role == stream.RoleServer && bytes.Equal(r.bytes(stream.Ingress), req)
					}
					return r.info.Remote.String() == clientLocal
				}
				waitFor(t, "client bytes", func() bool {
					c := h.rec.find(isClient)
					return c != nil && len(h.rec.snapshot(c, stream.Ingress)) == len(resp)
				})
				waitFor(t, "server bytes", func() bool {
					c := h.rec.find(isServer)
					return c != nil && len(h.rec.snapshot(c, stream.Egress)) == len(resp)
				})
				c := h.rec.find(isClient)
				s := h.rec.find(isServer)
				require.Equal(t, req, h.rec.snapshot(c, stream.Egress))
				require.Equal(t, resp, h.rec.snapshot(c, stream.Ingress))
				require.Equal(t, req, h.rec.snapshot(s, stream.Ingress))
				require.Equal(t, resp, h.rec.snapshot(s, stream.Egress))
				require.Equal(t, stream.RoleClient, c.info.Role)
				require.Equal(t, stream.RoleServer, s.info.Role)
				require.Equal(t, uint32(os.Getpid()), c.info.PID)
				require.Equal(t, "capture.test", c.info.Comm)
				require.False(t, c.info.Preexisting)
				if tr.name == "unix" {
					require.Equal(t, filepath.Join(sockDir, "s.sock"), c.info.UnixPath)
					require.Equal(t, filepath.Join(sockDir, "s.sock"), s.info.UnixPath)
				} else {
					require.Equal(t, ln.Addr().String(), c.info.Remote.String())
					require.Equal(t, ln.Addr().String(), s.info.Local.String())
				}
				require.NoError(t, cl.Close())
				waitFor(t, "close", func() bool { return h.rec.isClosed(c) })
			})
		}
	}
}

func (r *recorder) snapshot(c *recorded, dir stream.Direction) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return c.bytes(dir)
}

func (r *recorder) isClosed(c *recorded) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return c.closed
}

func randBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// checkSegments asserts that every captured run equals the sent bytes at
// its offset and that captured plus lost bytes account for all of them.
func checkSegments(t *testing.T, r *recorded, dir stream.Direction, sent []byte) {
	t.Helper()
	var captured uint64
	for _, s := range r.segs[dir-1] {
		require.LessOrEqual(t, s.off+uint64(len(s.data)), uint64(len(sent)))
		require.Equal(t, sent[s.off:s.off+uint64(len(s.data))], s.data, "bytes at offset %d", s.off)
		captured += uint64(len(s.data))
	}
	require.Equal(t, uint64(len(sent)), captured+r.lost[dir-1])
}

func TestCaptureLargeWriteIsChunkedHeadAndTail(t *testing.T) {
	h := start(t, testOptions(), true)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	big := randBytes(t, 1<<20)
	resp := []byte("ok")
	dial := func() (net.Conn, error) { return net.Dial("tcp4", ln.Addr().String()) }
	cl, srv := exchange(t, ln, dial, func(c net.Conn, b []byte) error { _, err := c.Write(b); return err }, big, resp)
	defer srv.Close()
	local := cl.LocalAddr().String()
	require.NoError(t, cl.Close())
	waitFor(t, "client close", func() bool {
		c := h.rec.find(func(r *recorded) bool { return r.info.Local.String() == local })
		return c != nil && h.rec.isClosed(c)
	})
	c := h.rec.find(func(r *recorded) bool { return r.info.Local.String() == local })
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	checkSegments(t, c, stream.Egress, big)
	// The first bytes and the last bytes of the write are there; something
	// in between was cut by the 16 KiB cap.
	require.Greater(t, c.lost[0], uint64(0), "a 1 MiB write over a 16 KiB cap loses bytes")
	first, last := c.segs[0][0], c.segs[0][len(c.segs[0])-1]
	require.Equal(t, uint64(0), first.off)
	require.Equal(t, uint64(len(big)), last.off+uint64(len(last.data)), "the tail of the write is captured")
	// Every record of a syscall cut by the cap says so (DATA_FLAG_TRUNCATED).
	require.Positive(t, h.truncated[c.info.ID], "records of the cut write are flagged truncated")
	cnt, err := h.cap.Counters()
	require.NoError(t, err)
	require.Greater(t, cnt[event.CaptureCounterCNT_TRUNCATED], uint64(0))
	require.Greater(t, cnt[event.CaptureCounterCNT_TRUNCATED_BYTES], uint64(0))
}

func TestCaptureConnectionOpenedBeforeStart(t *testing.T) {
	privileged.Require(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); accepted <- c }()
	cl, err := net.Dial("tcp4", ln.Addr().String())
	require.NoError(t, err)
	defer cl.Close()
	srv := <-accepted
	require.NotNil(t, srv)
	defer srv.Close()
	// Traffic before capture starts is not seen.
	_, err = cl.Write([]byte("before"))
	require.NoError(t, err)
	_, err = io.ReadFull(srv, make([]byte, 6))
	require.NoError(t, err)

	h := start(t, testOptions(), true)
	msg := []byte("after the receiver started")
	_, err = cl.Write(msg)
	require.NoError(t, err)
	_, err = io.ReadFull(srv, make([]byte, len(msg)))
	require.NoError(t, err)

	local := cl.LocalAddr().String()
	waitFor(t, "pre-existing client bytes", func() bool {
		c := h.rec.find(func(r *recorded) bool { return r.info.Local.String() == local })
		return c != nil && len(h.rec.snapshot(c, stream.Egress)) == len(msg)
	})
	c := h.rec.find(func(r *recorded) bool { return r.info.Local.String() == local })
	require.Equal(t, msg, h.rec.snapshot(c, stream.Egress))
	require.True(t, c.info.Preexisting)
	require.Equal(t, stream.RoleClient, c.info.Role)
	require.Equal(t, "capture.test", c.info.Comm)
	isServer := func(r *recorded) bool { return r.info.Remote.String() == local }
	// The server's read is another record: it may be delivered a poll later.
	waitFor(t, "server bytes", func() bool {
		s := h.rec.find(isServer)
		return s != nil && len(h.rec.snapshot(s, stream.Ingress)) == len(msg)
	})
	require.Equal(t, stream.RoleServer, h.rec.find(isServer).info.Role, "the scan knows the listening port")
}

func TestCaptureTinyRingBufferCountsDrops(t *testing.T) {
	opts := testOptions()
	opts.RingBufferBytes = 4096 // one page, the smallest ring buffer
	h := start(t, opts, false)  // nobody reads while the traffic runs
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	payload := randBytes(t, 64<<10)
	dial := func() (net.Conn, error) { return net.Dial("tcp4", ln.Addr().String()) }
	cl, srv := exchange(t, ln, dial, plainWriteChunks(1024), payload, []byte("k"))
	defer srv.Close()
	local := cl.LocalAddr().String()

	cnt, err := h.cap.Counters()
	require.NoError(t, err)
	require.Greater(t, cnt[event.CaptureCounterCNT_DROP_RINGBUF], uint64(0), "records that did not fit are counted")
	require.Greater(t, cnt[event.CaptureCounterCNT_DROP_RINGBUF_BYTES], uint64(0))

	// Reading starts late: what was kept arrives, the holes are reported as
	// lost bytes, and capture goes on working.
	h.run()
	waitFor(t, "ring buffer drained", func() bool { return h.cap.RingBufferUsed() == 0 })
	require.NoError(t, cl.Close())
	waitFor(t, "close after drops", func() bool {
		c := h.rec.find(func(r *recorded) bool { return r.info.Local.String() == local })
		return c != nil && h.rec.isClosed(c)
	})
	c := h.rec.find(func(r *recorded) bool { return r.info.Local.String() == local })
	h.rec.mu.Lock()
	checkSegments(t, c, stream.Egress, payload)
	require.Greater(t, c.lost[0], uint64(0))
	h.rec.mu.Unlock()
	require.Greater(t, h.asm.Stats.LostBytes.Load(), uint64(0))
}

// TestCaptureBurstWakesTheReader: the reader's timer never fires during
// the test, so only the kernel's wakeups (a submit once WakeupBytes wait)
// can make it drain. Four times the ring buffer's size is sent, paced so
// that a woken reader keeps up: nothing may be dropped. Without wakeups
// the ring buffer fills after the first MiB and the rest is dropped.
func TestCaptureBurstWakesTheReader(t *testing.T) {
	opts := testOptions()
	opts.RingBufferBytes = 1 << 20
	opts.WakeupBytes = 128 << 10
	opts.PollInterval = time.Hour
	h := start(t, opts, true)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	// The reader's first pass, at start, finds nothing: from then on it
	// sleeps for the hour.
	time.Sleep(50 * time.Millisecond)
	payload := randBytes(t, 4<<20)
	// Writes of the capture cap (captured whole), 32 KiB a millisecond at
	// most: both ends are captured, so the reader has the time the
	// remaining 896 KiB take to arrive twice over, 14 ms, to answer a
	// wakeup.
	chunk := int(opts.CaptureBytes)
	paced := func(c net.Conn, b []byte) error {
		for i := 0; len(b) > 0; i++ {
			k := min(len(b), chunk)
			if _, err := c.Write(b[:k]); err != nil {
				return err
			}
			b = b[k:]
			if i%(32<<10/chunk) == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		return nil
	}
	dial := func() (net.Conn, error) { return net.Dial("tcp4", ln.Addr().String()) }
	cl, srv := exchange(t, ln, dial, paced, payload, []byte("k"))
	defer srv.Close()
	local := cl.LocalAddr().String()
	require.NoError(t, cl.Close())
	// The last records may wait below the wakeup mark, and nothing else
	// wakes the reader (the close record too wakes it only past the mark):
	// the test waits for all of the 4 MiB but the mark's worth, not for
	// the close.
	waitFor(t, "the 4 MiB read by the woken reader", func() bool {
		c := h.rec.find(func(r *recorded) bool { return r.info.Local.String() == local })
		if c == nil {
			return false
		}
		return len(h.rec.snapshot(c, stream.Egress)) >= len(payload)-opts.WakeupBytes
	})
	cnt, err := h.cap.Counters()
	require.NoError(t, err)
	require.Zero(t, cnt[event.CaptureCounterCNT_DROP_RINGBUF], "records dropped: the reader was not woken in time")
}

// discard is a Sink that drops every record.
type discard struct{}

func (discard) Record([]byte)  {}
func (discard) Tick(time.Time) {}

// TestRunThenCloseWarnsNothing: Close ends the reader and its wakeup
// watcher, whose wait then fails with "use of closed file": that end is
// expected and must not be logged as a fault.
func TestRunThenCloseWarnsNothing(t *testing.T) {
	privileged.Require(t)
	core, logs := observer.New(zap.WarnLevel)
	c, err := Open(testOptions(), zap.New(core))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- c.Run(discard{}) }()
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, c.Close())
	require.NoError(t, <-done)
	require.Zero(t, logs.Len(), "warnings: %v", logs.All())
}

func plainWriteChunks(n int) func(net.Conn, []byte) error {
	return func(c net.Conn, b []byte) error {
		for len(b) > 0 {
			k := min(len(b), n)
			if _, err := c.Write(b[:k]); err != nil {
				return err
			}
			b = b[k:]
		}
		return nil
	}
}

func TestCloseUnloadsEverything(t *testing.T) {
	privileged.Require(t)
	names, err := ProgramNames()
	require.NoError(t, err)
	fdsBefore := openFDs(t)
	for i := 0; i < 3; i++ {
		c, err := Open(testOptions(), nil)
		require.NoError(t, err)
		held := privileged.ProgramsHeldBySelf(t)
		require.Len(t, held, len(names), "every capture program is loaded while open")
		require.NoError(t, c.Close())
		require.NoError(t, c.Close(), "Close is idempotent")
		privileged.RequireUnloaded(t, held)
	}
	require.Equal(t, fdsBefore, openFDs(t), "no file descriptor leaks")
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

func TestNonceMatchesAtBothEnds(t *testing.T) {
	h := start(t, testOptions(), true)
	sockDir := t.TempDir()
	for _, network := range []string{"tcp4", "unix"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "unix" {
				addr = filepath.Join(sockDir, "n.sock")
			}
			ln, err := net.Listen(network, addr)
			require.NoError(t, err)
			defer ln.Close()
			// The client writes before the server accepts: the server's
			// nonce must not depend on bytes already received.
			early := []byte("sent before accept")
			cl, err := net.Dial(network, ln.Addr().String())
			require.NoError(t, err)
			defer cl.Close()
			_, err = cl.Write(early)
			require.NoError(t, err)
			time.Sleep(20 * time.Millisecond)
			srv, err := ln.Accept()
			require.NoError(t, err)
			defer srv.Close()
			_, err = io.ReadFull(srv, make([]byte, len(early)))
			require.NoError(t, err)
			_, err = srv.Write([]byte("x"))
			require.NoError(t, err)

			byRole := func(role stream.Role) *recorded {
				return h.rec.find(func(r *recorded) bool {
					return r.info.Role == role && r.info.Transport == map[string]string{"tcp4": "tcp", "unix": "unix"}[network] &&
						(network == "unix" || r.info.Local.String() == map[stream.Role]string{stream.RoleClient: cl.LocalAddr().String(), stream.RoleServer: srv.LocalAddr().String()}[role] &&
							r.info.Remote.String() == map[stream.Role]string{stream.RoleClient: cl.RemoteAddr().String(), stream.RoleServer: srv.RemoteAddr().String()}[role])
				})
			}
			waitFor(t, "both ends", func() bool { return byRole(stream.RoleClient) != nil && byRole(stream.RoleServer) != nil })
			c, s := byRole(stream.RoleClient), byRole(stream.RoleServer)
			require.NotZero(t, c.info.Nonce)
			require.Equal(t, c.info.Nonce, s.info.Nonce, "client and server name the connection alike")
		})
	}
}

// The cgroup filter test runs this test binary again, inside a test cgroup,
// as a client that sends a line to the address in its environment.
const helperEnv = "EBPF_CAPTURE_TEST_CLIENT"

func TestHelperClient(t *testing.T) {
	addr := os.Getenv(helperEnv)
	if addr == "" {
		t.Skip("helper process only")
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		os.Exit(2)
	}
	if _, err := c.Write([]byte("from the cgroup\n")); err != nil {
		os.Exit(3)
	}
	_, _ = io.ReadAll(c)
	os.Exit(0)
}

func TestCaptureFilterByCgroup(t *testing.T) {
	privileged.Require(t)
	g := cgroup.New(t)
	opts := testOptions()
	opts.Filter = Filter{Cgroups: []string{g.Path}}
	h := start(t, opts, true)

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	cmd := g.Command(os.Args[0], "-test.run=^TestHelperClient$")
	cmd.Env = append(os.Environ(), helperEnv+"="+ln.Addr().String())
	require.NoError(t, cmd.Start())
	srv, err := ln.Accept()
	require.NoError(t, err)
	got, err := bufio.NewReader(srv).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "from the cgroup\n", got)
	srv.Close()
	require.NoError(t, cmd.Wait())

	child := uint32(cmd.Process.Pid)
	waitFor(t, "the child's bytes", func() bool {
		c := h.rec.find(func(r *recorded) bool { return r.info.PID == child })
		return c != nil && string(h.rec.snapshot(c, stream.Egress)) == got
	})
	require.Nil(t, h.rec.find(func(r *recorded) bool { return r.info.PID == uint32(os.Getpid()) }),
		"the test process is outside the cgroup: its accepted socket is not captured")
}

// A cgroup array accepts only the fd of a cgroup v2 directory; anything
// else fails the update with a bare EBADF. Open names the path and where
// cgroup v2 is mounted instead (on a hybrid host /sys/fs/cgroup is a tmpfs
// holding the v1 controllers, and v2 is at /sys/fs/cgroup/unified).
func TestCaptureFilterCgroupNotCgroupV2(t *testing.T) {
	privileged.Require(t)
	where := "no cgroup v2 hierarchy is mounted on this host"
	if root, err := cgroupv2.Root(); err == nil {
		where = "cgroup v2 is mounted at " + root + " on this host"
	}
	g := cgroup.New(t)
	for _, tt := range []struct{ name, path string }{
		// Not on cgroup2 at all: what a path under the v1 tmpfs gives.
		{"plain directory", t.TempDir()},
		// On cgroup2, but a file: cgroup_get_from_fd wants a directory.
		{"cgroup v2 file", filepath.Join(g.Path, "cgroup.procs")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fdsBefore := openFDs(t)
			opts := testOptions()
			opts.Filter = Filter{Cgroups: []string{tt.path}}
			c, err := Open(opts, nil)
			require.Nil(t, c)
			require.EqualError(t, err, fmt.Sprintf("filter.cgroups: %s is not a cgroup v2 directory (%s)", tt.path, where))
			require.Empty(t, privileged.ProgramsHeldBySelf(t), "a failed Open unloads what it loaded")
			require.Equal(t, fdsBefore, openFDs(t), "no file descriptor leaks")
		})
	}
}
