//go:build linux

package capture

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ebpfotel/ebpfreceiver/internal/cgroupv2"
	"github.com/ebpfotel/ebpfreceiver/internal/event"
)

// Filter bits, as FILTER_* in bpf/capture.bpf.c.
const (
	filterPIDs    = 0x1
	filterPorts   = 0x2
	filterComms   = 0x4
	filterCgroups = 0x8
	maxCgroups    = 16
	commLen       = 16
)

// idlePollMax is the longest the reader sleeps while the ring buffer stays
// empty: a burst that starts then has this long before it is read, which
// the default ring buffer (4 MiB) holds at up to about 40 MB/s.
const idlePollMax = 100 * time.Millisecond

// tlsScanInterval is how often processes are looked at for TLS libraries
// to probe. A process that starts and talks TLS within it is missed until
// its next TLS call after the scan.
const tlsScanInterval = 500 * time.Millisecond

// Sink receives raw ring-buffer records (valid only during the call) and a
// tick at most once per poll interval, between reading passes.
type Sink interface {
	Record(raw []byte)
	Tick(now time.Time)
}

// Capture is a loaded and attached set of capture programs.
type Capture struct {
	opts   Options
	logger *zap.Logger

	objs     event.CaptureObjects
	bits     *procBits // proc_bits, mapped
	links    []link.Link
	reader   *ringbuf.Reader
	existing [][]byte // synthetic open records for sockets found at start
	// cgroupRoot is the cgroup v2 mount, for the start-up scan's filter.
	cgroupRoot string
	// tls are the TLS library probes (nil when off), looked after by the
	// TLS scanner goroutine; tlsMu guards them.
	tls     *tlsProbes
	tlsMu   sync.Mutex
	tlsStop chan struct{}
	tlsDone chan struct{}

	// stop is closed by Close: it ends Run's sleep.
	stop chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// tracepoints lists every syscall tracepoint the programs attach to.
func tracepoints(p *event.CapturePrograms) map[string]*ebpf.Program {
	return map[string]*ebpf.Program{
		"sys_enter_read":     p.EnterRead,
		"sys_exit_read":      p.ExitRead,
		"sys_enter_write":    p.EnterWrite,
		"sys_exit_write":     p.ExitWrite,
		"sys_enter_readv":    p.EnterReadv,
		"sys_exit_readv":     p.ExitReadv,
		"sys_enter_writev":   p.EnterWritev,
		"sys_exit_writev":    p.ExitWritev,
		"sys_enter_recvfrom": p.EnterRecvfrom,
		"sys_exit_recvfrom":  p.ExitRecvfrom,
		"sys_enter_sendto":   p.EnterSendto,
		"sys_exit_sendto":    p.ExitSendto,
		"sys_enter_recvmsg":  p.EnterRecvmsg,
		"sys_exit_recvmsg":   p.ExitRecvmsg,
		"sys_enter_sendmsg":  p.EnterSendmsg,
		"sys_exit_sendmsg":   p.ExitSendmsg,
		"sys_enter_connect":  p.EnterConnect,
		"sys_exit_connect":   p.ExitConnect,
		"sys_exit_accept":    p.ExitAccept,
		"sys_exit_accept4":   p.ExitAccept4,
		"sys_enter_close":    p.EnterClose,
	}
}

// Open checks the prerequisites, loads the programs with opts applied,
// attaches them and, when asked, seeds the socket table with connections
// that are already open. Errors name the cause and the fix.
func Open(opts Options, logger *zap.Logger) (_ *Capture, err error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	if err := checkPrerequisites(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise RLIMIT_MEMLOCK for eBPF maps (grant CAP_SYS_RESOURCE or run as root): %w", err)
	}

	spec, err := event.LoadCapture()
	if err != nil {
		return nil, fmt.Errorf("parse embedded capture programs: %w", err)
	}
	if err := configure(spec, opts); err != nil {
		return nil, err
	}

	c := &Capture{opts: opts, logger: logger, stop: make(chan struct{})}
	defer func() {
		if err != nil {
			_ = c.Close()
		}
	}()
	if err := spec.LoadAndAssign(&c.objs, nil); err != nil {
		return nil, explainLoadError(err)
	}
	if c.bits, err = mapProcBits(c.objs.ProcBits); err != nil {
		return nil, err
	}
	if err := c.fillFilters(); err != nil {
		return nil, err
	}
	for name, prog := range tracepoints(&c.objs.CapturePrograms) {
		l, err := link.Tracepoint("syscalls", name, prog, nil)
		if err != nil {
			return nil, fmt.Errorf("attach tracepoint syscalls/%s: %w", name, err)
		}
		c.links = append(c.links, l)
	}
	// sched_process_fork as a BTF tracepoint: its arguments are the parent
	// and child task_structs.
	fork, err := link.AttachTracing(link.TracingOptions{Program: c.objs.OnFork})
	if err != nil {
		return nil, fmt.Errorf("attach tp_btf/sched_process_fork: %w", err)
	}
	c.links = append(c.links, fork)
	// The scan runs after attaching: a socket opened in between is then seen
	// by both, and the kernel's entry wins (the scan inserts with NOEXIST).
	if len(opts.Filter.Cgroups) > 0 {
		if c.cgroupRoot, err = cgroupv2.Root(); err != nil {
			return nil, fmt.Errorf("filter.cgroups: %w", err)
		}
	}
	if opts.ScanExisting {
		n, err := c.seedExisting()
		if err != nil {
			return nil, err
		}
		logger.Info("seeded socket table with open connections", zap.Int("connections", n))
	}
	if opts.TLS.OpenSSL || opts.TLS.Go {
		if err := c.startTLS(); err != nil {
			return nil, err
		}
		c.startTLSScanner()
	}
	c.reader, err = ringbuf.NewReader(c.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("open ring buffer reader: %w", err)
	}
	return c, nil
}

func configure(spec *ebpf.CollectionSpec, opts Options) error {
	spec.Maps["events"].MaxEntries = opts.RingBufferBytes
	spec.Maps["sockets"].MaxEntries = opts.MaxConnections
	spec.Maps["tracked_procs"].MaxEntries = opts.MaxConnections
	spec.Maps["proc_bits"].MaxEntries = procBitsWords()

	var flags uint32
	f := opts.Filter
	if len(f.PIDs) > 0 {
		flags |= filterPIDs
	}
	if len(f.Ports) > 0 {
		flags |= filterPorts
	}
	if len(f.Comms) > 0 {
		flags |= filterComms
	}
	if len(f.Cgroups) > 0 {
		flags |= filterCgroups
	}
	if len(f.Cgroups) > maxCgroups {
		return fmt.Errorf("filter.cgroups: at most %d cgroups, got %d", maxCgroups, len(f.Cgroups))
	}
	self := uint32(os.Getpid())
	if opts.IncludeSelf {
		self = 0 // no process has tgid 0
	}
	vars := map[string]any{
		"filter_flags": flags,
		"n_cgroups":    uint32(len(f.Cgroups)),
		"capture_cap":  opts.CaptureBytes,
		"wake_bytes":   uint64(opts.WakeupBytes), //nolint:gosec // validated: 0 to the ring buffer's size
		"capture_tail": opts.TailBytes,
		"self_tgid":    self,
		"next_conn_id": uint64(1),
	}
	for name, v := range vars {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("capture programs lack variable %q: regenerate with make generate", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

func (c *Capture) fillFilters() error {
	one := uint8(1)
	for _, pid := range c.opts.Filter.PIDs {
		if err := c.objs.FilterPids.Put(pid, one); err != nil {
			return fmt.Errorf("filter.pids: add %d: %w", pid, err)
		}
	}
	for _, port := range c.opts.Filter.Ports {
		if err := c.objs.FilterPorts.Put(port, one); err != nil {
			return fmt.Errorf("filter.ports: add %d: %w", port, err)
		}
	}
	for _, name := range c.opts.Filter.Comms {
		var key [commLen]byte
		copy(key[:commLen-1], name) // the kernel's comm is NUL-terminated, 15 bytes at most
		if err := c.objs.FilterComms.Put(key, one); err != nil {
			return fmt.Errorf("filter.executables: add %q: %w", name, err)
		}
	}
	for i, path := range c.opts.Filter.Cgroups {
		fd, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("filter.cgroups: open %s (a cgroup v2 directory, e.g. under /sys/fs/cgroup): %w", path, err)
		}
		// A cgroup array takes only the fd of a cgroup v2 directory: for a
		// plain directory, a cgroup v1 one or a file, cgroup_get_from_fd
		// fails and the update says only EBADF. On a hybrid host the v1
		// controllers sit under /sys/fs/cgroup (a tmpfs) and v2 elsewhere,
		// so name where v2 is.
		var fs unix.Statfs_t
		var st unix.Stat_t
		if err := unix.Fstatfs(int(fd.Fd()), &fs); err != nil {
			fd.Close()
			return fmt.Errorf("filter.cgroups: statfs %s: %w", path, err)
		}
		if err := unix.Fstat(int(fd.Fd()), &st); err != nil {
			fd.Close()
			return fmt.Errorf("filter.cgroups: stat %s: %w", path, err)
		}
		if fs.Type != unix.CGROUP2_SUPER_MAGIC || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			fd.Close()
			where := "no cgroup v2 hierarchy is mounted on this host"
			if root, err := cgroupv2.Root(); err == nil {
				where = "cgroup v2 is mounted at " + root + " on this host"
			}
			return fmt.Errorf("filter.cgroups: %s is not a cgroup v2 directory (%s)", path, where)
		}
		err = c.objs.FilterCgroups.Put(uint32(i), uint32(fd.Fd()))
		fd.Close() // the array keeps its own reference to the cgroup
		if err != nil {
			return fmt.Errorf("filter.cgroups: add %s (is it a cgroup v2 directory?): %w", path, err)
		}
	}
	return nil
}

// Run reads the ring buffer until Close, handing every record to sink. It
// returns nil after Close.
//
// The reader never blocks in the kernel. The programs submit records
// without wakeups (bpf/capture.h), and Run drains whatever is waiting, then
// sleeps on a Go timer for PollInterval; a pass that found WakeupBytes or
// more reads again at once, since more is likely waiting. Sleeping on a
// timer parks only the goroutine: a reader blocked in epoll_wait holds an
// OS thread in a syscall, which the Go runtime answers by handing its P to
// another thread, and its monitor thread (sysmon) then polls every 20 µs:
// measured at 15 % of the collector's CPU under load. Once WakeupBytes
// wait, the programs do wake the ring buffer's waiters, and a goroutine
// parked in the Go runtime's poller on the ring buffer's fd (watchWakeups)
// cuts the sleep short.
func (c *Capture) Run(sink Sink) error {
	for _, raw := range c.existing {
		sink.Record(raw)
	}
	c.existing = nil

	wake := make(chan struct{}, 1)
	if c.opts.WakeupBytes > 0 {
		stop, err := watchWakeups(c.objs.Events, wake, c.logger)
		if err != nil {
			return err
		}
		defer stop()
	}

	// A deadline in the past: ReadInto returns every record waiting, then
	// os.ErrDeadlineExceeded, after one epoll_wait with a zero timeout.
	c.reader.SetDeadline(time.Unix(1, 0))
	var rec ringbuf.Record
	timer := time.NewTimer(c.opts.PollInterval)
	defer timer.Stop()
	lastTick := time.Now()
	sleep := c.opts.PollInterval
	for {
		read := 0
		for {
			err := c.reader.ReadInto(&rec)
			if err == nil {
				sink.Record(rec.RawSample)
				read += len(rec.RawSample)
				continue
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read ring buffer: %w", err)
		}
		if now := time.Now(); now.Sub(lastTick) >= c.opts.PollInterval {
			lastTick = now
			sink.Tick(now)
		}
		if read > 0 && read >= c.opts.WakeupBytes {
			continue
		}
		// An idle ring buffer is looked at less and less often, down to
		// once per idlePollMax: every wakeup of the reader costs the
		// runtime a few context switches (about 0.2 ms of CPU on a VM),
		// which at PollInterval alone would be 2 % of a core on an idle
		// host. The first record read brings the interval back.
		if read == 0 {
			sleep = min(2*sleep, max(idlePollMax, c.opts.PollInterval))
		} else {
			sleep = c.opts.PollInterval
		}
		timer.Reset(sleep)
		select {
		case <-timer.C:
		case <-wake:
			sleep = c.opts.PollInterval
		case <-c.stop:
			return nil
		}
	}
}

// watchWakeups sends on wake (without blocking) each time the programs
// wake the ring buffer's waiters (a submit with BPF_RB_FORCE_WAKEUP, once
// WakeupBytes wait). The ring buffer's fd is polled by the Go runtime's
// poller, through a non-blocking duplicate wrapped in an os.File: the
// goroutine waiting on it is parked and holds no thread, unlike one in
// epoll_wait (see Run). The poller is edge-triggered, which suits a ring
// buffer: each kernel wakeup is one event, however much is left unread.
// stop closes the duplicate and waits for the goroutine.
func watchWakeups(events *ebpf.Map, wake chan<- struct{}, logger *zap.Logger) (stop func(), err error) {
	fd, err := unix.FcntlInt(uintptr(events.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate the ring buffer fd: %w", err)
	}
	// O_NONBLOCK belongs to the open file, shared with the map's own fd:
	// harmless, a ring buffer is only mmapped and polled, never read(2).
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("ring buffer fd: %w", err)
	}
	// A non-blocking fd given to os.NewFile is added to the poller.
	f := os.NewFile(uintptr(fd), "ringbuf")
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("ring buffer fd: %w", err)
	}
	done := make(chan struct{})
	var closing atomic.Bool
	go func() {
		defer close(done)
		// Read calls the function, then parks until the fd is reported
		// readable and calls it again, until the file is closed.
		err := rc.Read(func(uintptr) bool {
			select {
			case wake <- struct{}{}:
			default:
			}
			return false
		})
		// Closing the file ends Read with an error ("use of closed file",
		// not exported for files): only an earlier end is worth a word.
		if err != nil && !closing.Load() {
			logger.Warn("ring buffer wakeups are not watched: the reader drains on its timer only", zap.Error(err))
		}
	}()
	return func() {
		closing.Store(true)
		_ = f.Close()
		<-done
	}, nil
}

// startTLSScanner looks at processes for TLS stacks to probe every
// tlsScanInterval on a goroutine of its own: inspecting an executable can
// take a second (its symbols and DWARF), which must not stall the
// ring-buffer reader, and a reader under load is never idle.
func (c *Capture) startTLSScanner() {
	c.tlsStop, c.tlsDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(c.tlsDone)
		tick := time.NewTicker(tlsScanInterval)
		defer tick.Stop()
		for {
			select {
			case <-c.tlsStop:
				return
			case <-tick.C:
				c.tlsMu.Lock()
				c.scanTLS()
				c.tlsMu.Unlock()
			}
		}
	}()
}

// Counters sums the kernel's per-CPU counters (indexed by event.CaptureCounter).
func (c *Capture) Counters() ([event.NumCounters]uint64, error) {
	var out [event.NumCounters]uint64
	var per []uint64
	for i := range out {
		if err := c.objs.Counters.Lookup(uint32(i), &per); err != nil {
			return out, fmt.Errorf("read counter %d: %w", i, err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return out, nil
}

// ProgramMisses is how many times the kernel skipped one of our programs
// (their recursion_misses). A tracepoint or uprobe program does not run
// while another program of those kinds runs on the same CPU; a uprobe
// program can be preempted, and while it is, every such program on that
// CPU is skipped. Each miss is a syscall or TLS call not seen. The kernel
// counts them whether or not bpf_stats_enabled is set.
func (c *Capture) ProgramMisses() uint64 {
	progs := programsOf(&c.objs.CapturePrograms)
	if c.tls != nil {
		progs = append(progs, c.tls.programs()...)
	}
	var n uint64
	for _, p := range progs {
		if st, err := p.Stats(); err == nil {
			n += st.RecursionMisses
		}
	}
	return n
}

// programsOf lists the *ebpf.Program fields of a bpf2go programs struct.
func programsOf(objs any) []*ebpf.Program {
	var out []*ebpf.Program
	v := reflect.ValueOf(objs).Elem()
	for i := 0; i < v.NumField(); i++ {
		if p, ok := v.Field(i).Interface().(*ebpf.Program); ok && p != nil {
			out = append(out, p)
		}
	}
	return out
}

// RingBufferUsed is the number of bytes waiting in the ring buffer.
func (c *Capture) RingBufferUsed() int { return c.reader.AvailableBytes() }

// SocketTableLen counts entries of the kernel socket table.
func (c *Capture) SocketTableLen() int {
	var (
		key  event.CaptureSockKey
		n    int
		iter = c.objs.Sockets.Iterate()
		val  event.CaptureSockInfo
	)
	for iter.Next(&key, &val) {
		n++
	}
	return n
}

// Sweep removes socket-table entries of processes that have exited: a
// process's sockets close without close(2) when it exits.
func (c *Capture) Sweep() int {
	var (
		key   event.CaptureSockKey
		val   event.CaptureSockInfo
		stale []event.CaptureSockKey
		alive = map[uint32]bool{}
		iter  = c.objs.Sockets.Iterate()
	)
	for iter.Next(&key, &val) {
		ok, seen := alive[key.Tgid]
		if !seen {
			_, err := os.Stat(fmt.Sprintf("/proc/%d", key.Tgid))
			ok = err == nil
			alive[key.Tgid] = ok
		}
		if !ok {
			stale = append(stale, key)
		}
	}
	for i := range stale {
		_ = c.objs.Sockets.Delete(&stale[i])
	}
	dead := 0
	for tgid, ok := range alive {
		if !ok {
			_ = c.objs.TrackedProcs.Delete(tgid)
			c.bits.clear(tgid)
			dead++
		}
	}
	if dead > 0 {
		// A new process may have been given a dead one's tgid and entered
		// a socket between the walk above and the clearing: the kernel
		// sets the bit after the table entry, so one more walk of the
		// table finds every such entry and sets its bit again.
		iter = c.objs.Sockets.Iterate()
		for iter.Next(&key, &val) {
			if !alive[key.Tgid] {
				c.bits.mark(key.Tgid)
			}
		}
	}
	return len(stale)
}

// Close detaches and unloads everything; it is idempotent and interrupts Run.
func (c *Capture) Close() error {
	c.closeOnce.Do(func() {
		close(c.stop)
		var errs []error
		if c.reader != nil {
			errs = append(errs, c.reader.Close())
		}
		if c.tlsStop != nil {
			close(c.tlsStop)
			<-c.tlsDone
		}
		if c.tls != nil {
			errs = append(errs, c.tls.close())
		}
		for _, l := range c.links {
			errs = append(errs, l.Close())
		}
		c.links = nil
		errs = append(errs, c.bits.close(), c.objs.Close())
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// Forget removes a socket from the kernel table so that its traffic is no
// longer captured (no parser wanted it).
func (c *Capture) Forget(pid uint32, fd int32) {
	key := event.CaptureSockKey{Tgid: pid, Fd: fd}
	_ = c.objs.Sockets.Delete(&key)
}

// MonotonicNow is CLOCK_MONOTONIC in nanoseconds, the clock of
// bpf_ktime_get_ns and so of every record's timestamp.
func MonotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// ProgramNames lists the kernel names of the capture programs (as the
// kernel's program list shows them), for leak checks.
func ProgramNames() (map[string]bool, error) {
	spec, err := event.LoadCapture()
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for name := range spec.Programs {
		names[name] = true
	}
	return names, nil
}
