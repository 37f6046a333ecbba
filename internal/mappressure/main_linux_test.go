package mappressure

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// TestMain fails the run when the tests leave file descriptors open.
func TestMain(m *testing.M) {
	// The Go runtime opens its netpoller (an epoll fd and an eventfd) on
	// first network use and keeps it: open it before counting.
	if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		l.Close()
	}
	before, err := countFDs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	after, err := countFDs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if code == 0 && after > before {
		fmt.Fprintf(os.Stderr, "leaked %d file descriptors (%d before, %d after)\n", after-before, before, after)
		code = 1
	}
	os.Exit(code)
}

func countFDs() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, fmt.Errorf("counting fds: %w", err)
	}
	return len(ents), nil
}

// kernelVersion returns the running kernel's major and minor version.
func kernelVersion(t testing.TB) (int, int) {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		t.Fatalf("cannot parse kernel release %q", release)
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		t.Fatalf("cannot parse kernel release %q", release)
	}
	return major, minor
}

func kernelAtLeast(t testing.TB, major, minor int) bool {
	t.Helper()
	ma, mi := kernelVersion(t)
	return ma > major || (ma == major && mi >= minor)
}

// requireKernel skips when the running kernel predates a feature.
func requireKernel(t testing.TB, feature string, major, minor int) {
	t.Helper()
	if !kernelAtLeast(t, major, minor) {
		ma, mi := kernelVersion(t)
		t.Skipf("%s needs Linux >= %d.%d, running %d.%d", feature, major, minor, ma, mi)
	}
}

// checkFeatureErr fails on err, except that it skips when err says the
// kernel lacks the feature and the kernel is older than the version that
// has it: on a kernel new enough, ErrNotSupported is a bug.
func checkFeatureErr(t testing.TB, err error, feature string, major, minor int) {
	t.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, ebpf.ErrNotSupported) && !kernelAtLeast(t, major, minor) {
		t.Skipf("%s needs Linux >= %d.%d: %v", feature, major, minor, err)
	}
	t.Fatalf("%s: %v", feature, err)
}
