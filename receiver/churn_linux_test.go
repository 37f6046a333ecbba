//go:build linux

package receiver

import (
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/consumer/consumertest"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/cgroup"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
)

// Connection counts of the churn test; EBPF_CHURN_SHORT and EBPF_CHURN_IDLE
// override them for longer runs by hand.
const (
	churnShort = 100_000
	churnIdle  = 10_000
)

func churnCount(env string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(env)); err == nil && v > 0 {
		return v
	}
	return def
}

// vmRSS is this process's resident set size in bytes.
func vmRSS(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// TestChurnShortAndIdleConnections: 100,000 short connections and 10,000
// idle ones between two watched children on loopback. The kernel socket
// table and the receiver's connection table must return to where they
// were, idle connections must expire after limits.idle_timeout, and the
// collector's memory must not keep what passed through.
func TestChurnShortAndIdleConnections(t *testing.T) {
	privileged.Require(t)
	short, idle := churnCount("EBPF_CHURN_SHORT", churnShort), churnCount("EBPF_CHURN_IDLE", churnIdle)
	g := cgroup.New(t)
	rig := robReceiver(t, g, new(consumertest.TracesSink), func(cfg *Config) {
		cfg.Limits.IdleTimeout = 2 * time.Second
	})
	eng := rig.rcv.eng
	live := func() int64 { return eng.asm.Stats.LiveConns.Load() }
	ended := func(reason string) int64 {
		v, _ := rig.metric("ebpf.capture.connections.ended", map[string]string{"reason": reason})
		return v
	}

	server := robStart(t, g, nil, "churn-server")
	addr, ok := strings.CutPrefix(server.line(t, 10*time.Second), "addr ")
	require.True(t, ok)

	debug.FreeOSMemory()
	rssBefore, heapBefore := vmRSS(t), robHeapInuse()
	tableBefore, liveBefore := eng.capture.SocketTableLen(), live()
	expiredBefore := ended("expired")

	client := robStart(t, g, nil, "churn-client", addr, strconv.Itoa(short), strconv.Itoa(idle))
	var n, ms int
	_, err := fmt.Sscanf(client.line(t, 2*time.Minute), "short %d %d", &n, &ms)
	require.NoError(t, err)
	require.Equal(t, short, n)
	require.Equal(t, fmt.Sprintf("idle %d", idle), client.line(t, time.Minute))
	t.Logf("%d short connections in %.1f s (%.0f/s), then %d idle ones", short, float64(ms)/1000, float64(short)/(float64(ms)/1000), idle)

	// Both ends of every idle connection are watched: the kernel table
	// holds them (the short ones are gone: close(2) removes them).
	tableIdle := eng.capture.SocketTableLen()
	require.Equal(t, tableBefore+2*idle, tableIdle, "kernel socket table: the idle connections' two ends and nothing else")
	// The assembler holds the idle connections' two ends, but for the
	// first ones, which may have been idle for limits.idle_timeout (2 s)
	// before the last ones opened on a loaded machine: those are counted
	// as expired.
	require.Eventually(t, func() bool {
		return live()-liveBefore+ended("expired")-expiredBefore >= int64(2*idle)
	}, 20*time.Second, 20*time.Millisecond,
		"the assembler holds (or has expired) the idle connections' two ends (now %d held, %d expired)",
		live()-liveBefore, ended("expired")-expiredBefore)
	peakRSS := vmRSS(t)

	// limits.idle_timeout (2 s) later they are forgotten by the receiver,
	// while their sockets stay open.
	require.Eventually(t, func() bool { return live() == liveBefore }, 20*time.Second, 50*time.Millisecond,
		"idle connections expire (still %d)", live())
	rig.await(t, "ebpf.capture.connections", nil, "the connections gauge is back to its baseline", func(v int64) bool { return v == liveBefore })
	rig.await(t, "ebpf.capture.connections.ended", map[string]string{"reason": "expired"}, "the expiries are counted",
		func(v int64) bool { return v >= expiredBefore+int64(2*idle) })

	_, err = fmt.Fprintln(client.stdin, "close")
	require.NoError(t, err)
	require.Equal(t, "closed", client.line(t, time.Minute))
	client.wait(t, 30*time.Second)
	require.Eventually(t, func() bool { return eng.capture.SocketTableLen() == tableBefore }, 10*time.Second, 50*time.Millisecond,
		"closing the idle connections empties the kernel table (%d entries)", eng.capture.SocketTableLen())

	debug.FreeOSMemory()
	rssAfter, heapAfter := vmRSS(t), robHeapInuse()
	closed, _ := rig.metric("ebpf.capture.connections.ended", map[string]string{"reason": "closed"})
	var lostOpen, ringDrops int64
	lostOpen, _ = rig.metric("ebpf.capture.drops", map[string]string{"reason": "conn_event_ringbuf_full"})
	ringDrops, _ = rig.metric("ebpf.capture.drops", map[string]string{"reason": "ringbuf_full"})
	t.Logf("kernel socket table: %d before, %d with the idle connections, %d after", tableBefore, tableIdle, eng.capture.SocketTableLen())
	t.Logf("assembler connections: %d before, %d idle, %d after expiry; ended: %d closed, %d expired",
		liveBefore, 2*idle, live(), closed, ended("expired"))
	t.Logf("collector RSS: %d MiB before, %d MiB with idle connections, %d MiB after; heap in use %d KiB before, %d KiB after",
		rssBefore>>20, peakRSS>>20, rssAfter>>20, heapBefore>>10, heapAfter>>10)
	t.Logf("drops: %d open/close records, %d data records (ring buffer full)", lostOpen, ringDrops)
	require.GreaterOrEqual(t, closed, int64(2*short)-lostOpen, "every short connection's two ends ended by close(2)")
	require.Less(t, rssAfter-rssBefore, int64(64<<20), "RSS is flat once the connections are gone")
	require.Less(t, int64(heapAfter)-int64(heapBefore), int64(16<<20), "the heap keeps nothing of them")
}
