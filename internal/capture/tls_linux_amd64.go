//go:build linux && amd64

package capture

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"

	"github.com/ebpfotel/ebpfreceiver/internal/event"
)

// tlsProbes are the TLS uprobes, OpenSSL's and Go crypto/tls's: one set per
// library or executable file (whole host) or per file and process (when a
// filter is set, so that no other process pays for the breakpoint).
type tlsProbes struct {
	objs     event.TlsObjects
	openssl  bool
	gotls    *goTLS   // nil: Go crypto/tls off
	libs     []string // extra library paths from the config
	attached map[tlsTarget][]link.Link
	scanned  map[int]int // processes looked at -> len(known) then
	failed   map[tlsTarget]bool
	// known are the OpenSSL library files seen so far, by identity, with a
	// path that reaches them. A watched process gets probes on all of them,
	// even before it maps one: a uprobe is set on the file, and lands in the
	// process when its dynamic linker maps the library, so a process that
	// starts talking TLS at once is not missed.
	known  map[tlsTarget]string
	logger *zap.Logger
	// closing tracks links being closed in the background: removing a
	// uprobe waits for an RCU grace period, which must not stall the ring
	// buffer reader, and many of them wait best side by side.
	closing sync.WaitGroup
}

// closeLinks closes links in the background, all at once.
func (t *tlsProbes) closeLinks(links []link.Link) {
	for _, l := range links {
		t.closing.Add(1)
		go func() {
			defer t.closing.Done()
			_ = l.Close()
		}()
	}
}

// tlsTarget is a library file (by device and inode, so one file seen
// through several mount namespaces is probed once) and a pid (0: all).
type tlsTarget struct {
	dev, ino uint64
	pid      int
}

// openSSLFuncs are the probed functions: entry and return of each.
func (t *tlsProbes) funcs() []struct {
	sym      string
	enter    *ebpf.Program
	exit     *ebpf.Program
	required bool
} {
	p := &t.objs.TlsPrograms
	return []struct {
		sym      string
		enter    *ebpf.Program
		exit     *ebpf.Program
		required bool
	}{
		{"SSL_write", p.SslWrite, p.SslWriteRet, true},
		{"SSL_read", p.SslRead, p.SslReadRet, true},
		// The _ex variants appeared in OpenSSL 1.1.1.
		{"SSL_write_ex", p.SslWriteEx, p.SslWriteExRet, false},
		{"SSL_read_ex", p.SslReadEx, p.SslReadExRet, false},
	}
}

// startTLS loads the TLS programs on the capture object's maps.
func (c *Capture) startTLS() error {
	spec, err := event.LoadTls()
	if err != nil {
		return fmt.Errorf("parse embedded TLS programs: %w", err)
	}
	shared := map[string]*ebpf.Map{
		"events": c.objs.Events, "sockets": c.objs.Sockets, "tracked_procs": c.objs.TrackedProcs,
		"counters": c.objs.Counters, "scratch": c.objs.Scratch, "cap_states": c.objs.CapStates,
		"task_ctxs": c.objs.TaskCtxs, "proc_bits": c.objs.ProcBits, "ssl_fds": c.objs.SslFds,
	}
	for name, m := range shared {
		ms, ok := spec.Maps[name]
		if !ok {
			return fmt.Errorf("TLS programs lack map %q: regenerate with make generate", name)
		}
		ms.MaxEntries = m.MaxEntries() // resized in the capture object
	}
	vars := map[string]any{
		"capture_cap":  c.opts.CaptureBytes,
		"wake_bytes":   uint64(c.opts.WakeupBytes), //nolint:gosec // validated: 0 to the ring buffer's size
		"capture_tail": c.opts.TailBytes,
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set TLS %s: %w", name, err)
		}
	}
	t := &tlsProbes{
		openssl: c.opts.TLS.OpenSSL, libs: c.opts.TLS.Libraries, attached: map[tlsTarget][]link.Link{}, scanned: map[int]int{},
		failed: map[tlsTarget]bool{}, known: map[tlsTarget]string{}, logger: c.logger,
	}
	if c.opts.TLS.Go {
		t.gotls = newGoTLS()
	}
	// The host's own libssl files and the configured ones are known from
	// the start.
	if t.openssl {
		for _, pattern := range append([]string{"/usr/lib/*/libssl.so.*", "/lib/*/libssl.so.*", "/usr/lib/libssl.so.*", "/usr/lib64/libssl.so.*"}, t.libs...) {
			matches, _ := filepath.Glob(pattern)
			for _, m := range matches {
				t.learn(m)
			}
		}
	}
	if err := spec.LoadAndAssign(&t.objs, &ebpf.CollectionOptions{MapReplacements: shared}); err != nil {
		return fmt.Errorf("TLS: %w", explainLoadError(err))
	}
	c.tls = t
	c.scanTLS()
	return nil
}

// scanTLS attaches the probes to the processes it has not looked at yet
// (or looked at before a new library was known), and detaches the
// per-process probes of processes that exited. Called at start and then by
// the TLS scanner, with tlsMu held.
func (c *Capture) scanTLS() {
	t := c.tls
	if t == nil {
		return
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	self := os.Getpid()
	alive := map[int]bool{}
	whole := c.opts.Filter.Empty()
	for _, d := range procs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == self {
			continue
		}
		alive[pid] = true
		// watched is asked at most once per process and scan: it reads
		// /proc/PID/cgroup.
		w := 0
		watched := func() bool {
			if w == 0 {
				w = 2
				if whole || c.tlsWatched(pid) {
					w = 1
				}
			}
			return w == 1
		}
		if t.gotls != nil {
			if _, known := t.gotls.procs[pid]; known || watched() {
				c.scanGo(pid, whole)
			}
		}
		if !t.openssl {
			continue
		}
		if n, ok := t.scanned[pid]; ok && n == len(t.known) {
			continue
		}
		if !watched() {
			continue // not (yet) a watched process; looked at again next scan
		}
		for _, lib := range t.librariesOf(pid) {
			t.learn(lib)
		}
		t.scanned[pid] = len(t.known)
		if whole {
			continue // probes on every known library for every process, below
		}
		for tg, path := range t.known {
			t.attach(tlsTarget{dev: tg.dev, ino: tg.ino, pid: pid}, path)
		}
	}
	if whole {
		for tg, path := range t.known {
			t.attach(tg, path)
		}
	}
	for pid := range t.scanned {
		if !alive[pid] {
			delete(t.scanned, pid)
		}
	}
	if t.gotls != nil {
		for pid := range t.gotls.procs {
			if !alive[pid] {
				t.goExited(pid)
			}
		}
	}
	for tg, links := range t.attached {
		if tg.pid != 0 && !alive[tg.pid] {
			t.closeLinks(links)
			delete(t.attached, tg)
		}
	}
}

// learn adds a library file to the known ones.
func (t *tlsProbes) learn(path string) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return
	}
	tg := tlsTarget{dev: st.Dev, ino: st.Ino}
	if _, ok := t.known[tg]; !ok {
		t.known[tg] = path
	}
}

// tlsWatched tells whether probes may be attached to pid when a filter is
// set: a process the pid, executable or cgroup filter selects, or, with a
// port filter alone, one that already holds a tracked socket.
func (c *Capture) tlsWatched(pid int) bool {
	f := c.opts.Filter
	if len(f.PIDs) > 0 || len(f.Comms) > 0 || len(f.Cgroups) > 0 {
		return c.processMatches(pid)
	}
	var n uint32
	return c.objs.TrackedProcs.Lookup(uint32(pid), &n) == nil && n > 0
}

// librariesOf lists the OpenSSL libraries mapped by pid, as paths that
// reach them from here (through /proc/PID/root, for containers).
func (t *tlsProbes) librariesOf(pid int) []string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	seen := map[string]bool{}
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		path := fields[5]
		if !t.isSSL(path) || seen[path] {
			continue
		}
		seen[path] = true
		out = append(out, fmt.Sprintf("/proc/%d/root%s", pid, path))
	}
	return out
}

func (t *tlsProbes) isSSL(path string) bool {
	base := filepath.Base(path)
	if strings.HasPrefix(base, "libssl.so") {
		return true
	}
	for _, l := range t.libs {
		if path == l || base == filepath.Base(l) {
			return true
		}
	}
	return false
}

func (t *tlsProbes) attach(tg tlsTarget, path string) {
	if _, ok := t.attached[tg]; ok || t.failed[tg] {
		return
	}
	pid := tg.pid
	ex, err := link.OpenExecutable(path)
	if err != nil {
		t.failed[tg] = true
		t.logger.Info("TLS: cannot open library", zap.String("path", path), zap.Error(err))
		return
	}
	var links []link.Link
	opts := &link.UprobeOptions{PID: pid}
	for _, fn := range t.funcs() {
		enter, err := ex.Uprobe(fn.sym, fn.enter, opts)
		if err != nil {
			if fn.required || !errors.Is(err, link.ErrNoSymbol) {
				t.logger.Info("TLS: cannot probe", zap.String("path", path), zap.String("symbol", fn.sym), zap.Error(err))
			}
			if fn.required {
				for _, l := range links {
					_ = l.Close()
				}
				t.failed[tg] = true
				return
			}
			continue
		}
		exit, err := ex.Uretprobe(fn.sym, fn.exit, opts)
		if err != nil {
			_ = enter.Close()
			continue
		}
		links = append(links, enter, exit)
	}
	t.attached[tg] = links
	t.logger.Debug("TLS: probes attached", zap.String("library", path), zap.Int("pid", pid))
}

func (t *tlsProbes) programs() []*ebpf.Program { return programsOf(&t.objs.TlsPrograms) }

// TLSTargets is the number of (library, process) probe sets attached.
func (c *Capture) TLSTargets() int {
	if c.tls == nil {
		return 0
	}
	c.tlsMu.Lock()
	defer c.tlsMu.Unlock()
	return len(c.tls.attached)
}

func (t *tlsProbes) close() error {
	for tg, links := range t.attached {
		t.closeLinks(links)
		delete(t.attached, tg)
	}
	t.closing.Wait()
	if t.gotls != nil {
		t.gotls.close()
	}
	return t.objs.Close()
}
