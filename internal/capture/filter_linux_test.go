//go:build linux

package capture

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
)

// The executable filter test runs this test binary again as a client that
// names its thread (comm) after commEnv, then connects to addrEnv.
const (
	commEnv = "EBPF_CAPTURE_TEST_COMM"
	addrEnv = "EBPF_CAPTURE_TEST_ADDR"
)

func TestHelperNamedClient(t *testing.T) {
	addr, comm := os.Getenv(addrEnv), os.Getenv(commEnv)
	if addr == "" || comm == "" {
		t.Skip("helper process only")
	}
	// comm is per thread, and the kernel side reads the connecting
	// thread's: name this thread and connect from it.
	runtime.LockOSThread()
	name, err := unix.BytePtrFromString(comm)
	if err != nil {
		os.Exit(5)
	}
	if err := unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(name)), 0, 0, 0); err != nil {
		os.Exit(4)
	}
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		os.Exit(2)
	}
	if _, err := c.Write([]byte("named client\n")); err != nil {
		os.Exit(3)
	}
	buf := make([]byte, 1)
	_, _ = c.Read(buf)
	os.Exit(0)
}

// filter.executables: a connection made by a thread whose comm is listed
// is captured, the accepting end in a process of another name is not.
func TestCaptureFilterByExecutable(t *testing.T) {
	privileged.Require(t)
	const comm = "ebpf-named-cli"
	opts := testOptions()
	opts.Filter = Filter{Comms: []string{comm}}
	h := start(t, opts, true)

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperNamedClient$")
	cmd.Env = append(os.Environ(), commEnv+"="+comm, addrEnv+"="+ln.Addr().String())
	require.NoError(t, cmd.Start())
	srv, err := ln.Accept()
	require.NoError(t, err)
	got, err := bufio.NewReader(srv).ReadString('\n')
	require.NoError(t, err)
	_, _ = srv.Write([]byte("k"))
	srv.Close()
	require.NoError(t, cmd.Wait())

	child := uint32(cmd.Process.Pid)
	waitFor(t, "the named client's bytes", func() bool {
		c := h.rec.find(func(r *recorded) bool { return r.info.PID == child })
		return c != nil && string(h.rec.snapshot(c, stream.Egress)) == got
	})
	require.Equal(t, comm, h.rec.find(func(r *recorded) bool { return r.info.PID == child }).info.Comm)
	require.Nil(t, h.rec.find(func(r *recorded) bool { return r.info.PID == uint32(os.Getpid()) }),
		"the accepting process has another name: its socket is not captured")
}

// filter.ports: a connection to a listed port is captured (from both of
// its ends, local or remote port), one to another port is not.
func TestCaptureFilterByPort(t *testing.T) {
	watched, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer watched.Close()
	other, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer other.Close()
	port := uint16(watched.Addr().(*net.TCPAddr).Port)
	opts := testOptions()
	opts.Filter = Filter{PIDs: []uint32{uint32(os.Getpid())}, Ports: []uint16{port}}
	h := start(t, opts, true)

	send := func(c net.Conn, b []byte) error { _, err := c.Write(b); return err }
	// The unwatched connection first: the ring buffer delivers records in
	// the order they were written, so once the watched connection's bytes
	// are in, any record of the other one would be too.
	for _, ln := range []net.Listener{other, watched} {
		dial := func() (net.Conn, error) { return net.Dial("tcp4", ln.Addr().String()) }
		cl, srv := exchange(t, ln, dial, send, []byte("request"), []byte("answer"))
		require.NoError(t, cl.Close())
		require.NoError(t, srv.Close())
	}
	onPort := func(p uint16) func(r *recorded) bool {
		return func(r *recorded) bool { return r.info.Local.Port() == p || r.info.Remote.Port() == p }
	}
	waitFor(t, "both ends of the watched connection", func() bool {
		n := 0
		h.rec.mu.Lock()
		for _, r := range h.rec.conns {
			if onPort(port)(r) && len(r.segs[0])+len(r.segs[1]) > 0 {
				n++
			}
		}
		h.rec.mu.Unlock()
		return n == 2
	})
	require.Nil(t, h.rec.find(onPort(uint16(other.Addr().(*net.TCPAddr).Port))), "a connection to an unlisted port is not captured")
}
