//go:build linux && amd64

package capture

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"

	"github.com/ebpfotel/ebpfreceiver/internal/event"
	"github.com/ebpfotel/ebpfreceiver/internal/goelf"
)

// goTLS is the state of the Go crypto/tls probes: executables looked at
// (by file identity), and the processes registered in go_tls_procs.
type goTLS struct {
	bins map[fileID]*goBin
	// procs are the processes looked at and the file they ran then.
	procs map[int]goProc
}

type goProc struct {
	id   fileID
	seen time.Time
}

// goExecWindow: with no filter, a process is looked at again during this
// long after it was first seen, so that one caught between fork and exec
// is probed once it runs its own executable; watched processes (a filter
// is set) are looked at on every scan.
const goExecWindow = 5 * time.Second

type fileID struct{ dev, ino uint64 }

// goBin is one executable: what goelf found, or why it cannot be probed.
// A probed one is kept open and reached as /proc/self/fd/N, never as
// /proc/PID/exe: that path follows the process, and a process that execs
// another file would have the probes' offsets set in the wrong file.
type goBin struct {
	info *goelf.Binary
	err  error
	file *os.File
	ex   *link.Executable
}

func newGoTLS() *goTLS {
	return &goTLS{bins: map[fileID]*goBin{}, procs: map[int]goProc{}}
}

// scanGo looks at a process that is watched (or any, with no filter): if it
// runs a Go executable that uses crypto/tls, it is registered in the kernel
// (which selects it and says where its sockets' fds are) and the file is
// probed: once for every process with no filter, for this process only
// otherwise. A process that execs another file is looked at anew.
func (c *Capture) scanGo(pid int, whole bool) {
	t := c.tls
	p, known := t.gotls.procs[pid]
	if known && whole && time.Since(p.seen) > goExecWindow {
		return
	}
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/exe", pid), &st); err != nil {
		return // a kernel thread, or gone
	}
	id := fileID{dev: st.Dev, ino: st.Ino}
	if known {
		if p.id == id {
			return
		}
		t.goExited(pid) // it ran exec(2)
		p.seen = time.Time{}
	}
	if p.seen.IsZero() {
		p.seen = time.Now()
	}
	t.gotls.procs[pid] = goProc{id: id, seen: p.seen}
	b := t.goBinary(id, pid)
	if b.err != nil {
		if _, cached := t.gotls.bins[id]; !cached {
			delete(t.gotls.procs, pid) // look again next scan
		}
		return
	}
	v, err := goProcValue(pid, id, b.info)
	if err != nil {
		t.logger.Info("Go TLS: cannot place the executable in the process", zap.Int("pid", pid), zap.Error(err))
		return
	}
	if err := t.objs.GoTlsProcs.Put(uint32(pid), v); err != nil {
		t.logger.Info("Go TLS: process table full", zap.Int("pid", pid), zap.Error(err))
		return
	}
	tg := tlsTarget{dev: id.dev, ino: id.ino, pid: pid}
	if whole {
		tg.pid = 0
	}
	t.attachGo(tg, b)
}

// goBinary inspects the executable id, which pid runs, once.
func (t *tlsProbes) goBinary(id fileID, pid int) *goBin {
	if b, ok := t.gotls.bins[id]; ok {
		return b
	}
	b := &goBin{}
	b.file, b.err = openExecutable(pid, id)
	if b.err != nil {
		return b // not cached: the process changed under us, look again
	}
	path := fmt.Sprintf("/proc/self/fd/%d", b.file.Fd())
	b.info, b.err = inspectSafely(path)
	if b.err == nil {
		b.ex, b.err = link.OpenExecutable(path)
	}
	if b.err != nil {
		_ = b.file.Close()
		b.file = nil
	}
	t.gotls.bins[id] = b
	switch {
	case b.err == nil:
		t.logger.Debug("Go TLS: executable probed", zap.String("path", exeName(pid)), zap.String("go", b.info.GoVersion),
			zap.Bool("dwarf_offsets", b.info.Offsets.FromDWARF), zap.Bool("symbols", b.info.Symbols))
	case errors.Is(b.err, goelf.ErrNotGo), errors.Is(b.err, goelf.ErrNoTLS):
		// Nothing to probe: the common case.
	default:
		// A Go program that talks TLS we cannot see into: say so once per
		// file (its ciphertext shows as tls_ciphertext drops).
		t.logger.Warn("Go TLS: executable cannot be traced", zap.String("path", exeName(pid)), zap.Int("pid", pid), zap.Error(b.err))
	}
	return b
}

// inspectSafely runs goelf.Inspect on a file any user of the host may have
// crafted: debug/elf and debug/dwarf are not hardened against every
// malformed input, and a panic must cost only that file.
func inspectSafely(path string) (b *goelf.Binary, err error) {
	defer func() {
		if r := recover(); r != nil {
			b, err = nil, fmt.Errorf("%w: malformed executable: %v", goelf.ErrUnsupported, r)
		}
	}()
	return goelf.Inspect(path)
}

// openExecutable opens the file pid runs, if it still is id.
func openExecutable(pid int, id fileID) (*os.File, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil || st.Dev != id.dev || st.Ino != id.ino {
		_ = f.Close()
		return nil, fmt.Errorf("process %d runs another executable now", pid)
	}
	return f, nil
}

// exeName is the executable's path as the process sees it.
func exeName(pid int) string {
	p, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return fmt.Sprintf("/proc/%d/exe", pid)
	}
	return p
}

// goProcValue is the go_tls_procs entry of pid: the offsets, and the itab
// addresses as they are in that process (moved by the load base for PIE).
func goProcValue(pid int, id fileID, b *goelf.Binary) (event.TlsGoTlsProc, error) {
	v := event.TlsGoTlsProc{Conn: b.Offsets.Conn, Netfd: b.Offsets.NetFD, Pfd: b.Offsets.PFD, Sysfd: b.Offsets.Sysfd}
	var bias uint64
	if b.PIE {
		start, err := mappingStart(pid, id, b.LoadOffset)
		if err != nil {
			return v, err
		}
		bias = start - b.LoadVaddr
	}
	for i, a := range b.Itabs {
		if a != 0 {
			v.Itabs[i] = a + bias
		}
	}
	return v, nil
}

// mappingStart finds in /proc/PID/maps where the file id is mapped from
// file offset off.
func mappingStart(pid int, id fileID, off uint64) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// start-end perms offset dev(major:minor) inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		ino, err := strconv.ParseUint(fields[4], 10, 64)
		if err != nil || ino != id.ino {
			continue
		}
		o, err := strconv.ParseUint(fields[2], 16, 64)
		if err != nil || o != off {
			continue
		}
		start, _, _ := strings.Cut(fields[0], "-")
		return strconv.ParseUint(start, 16, 64)
	}
	return 0, fmt.Errorf("executable not mapped at file offset %#x", off)
}

// attachGo sets the entry probes and a probe on every return instruction
// of (*tls.Conn).Write and Read.
func (t *tlsProbes) attachGo(tg tlsTarget, b *goBin) {
	if _, ok := t.attached[tg]; ok || t.failed[tg] {
		return
	}
	p := &t.objs.TlsPrograms
	var links []link.Link
	for _, fn := range []struct {
		f          goelf.Func
		enter, ret *ebpf.Program
	}{
		{b.info.Write, p.GoTlsWrite, p.GoTlsWriteRet},
		{b.info.Read, p.GoTlsRead, p.GoTlsReadRet},
	} {
		// Set by file offset (goelf found it in the symbol table, or in
		// .gopclntab for a stripped executable). The returns first: a call
		// whose entry was seen must reach a probed RET, or the entry the
		// kernel keeps for it would pass for a re-entry of the next call.
		var err error
		for _, off := range fn.f.Returns {
			var l link.Link
			if l, err = b.ex.Uprobe(fn.f.Symbol, fn.ret, &link.UprobeOptions{PID: tg.pid, Address: fn.f.Entry, Offset: off}); err != nil {
				break
			}
			links = append(links, l)
		}
		if err == nil {
			var l link.Link
			if l, err = b.ex.Uprobe(fn.f.Symbol, fn.enter, &link.UprobeOptions{PID: tg.pid, Address: fn.f.Entry}); err == nil {
				links = append(links, l)
			}
		}
		if err != nil {
			t.logger.Info("Go TLS: cannot probe", zap.String("symbol", fn.f.Symbol), zap.Int("pid", tg.pid), zap.Error(err))
			t.closeLinks(links)
			t.failed[tg] = true
			return
		}
	}
	t.attached[tg] = links
	t.logger.Debug("Go TLS: probes attached", zap.Int("pid", tg.pid), zap.Int("links", len(links)))
}

// goExited forgets a process that is gone or runs another executable now,
// and removes the probes set for it alone.
func (t *tlsProbes) goExited(pid int) {
	p, ok := t.gotls.procs[pid]
	if !ok {
		return
	}
	delete(t.gotls.procs, pid)
	_ = t.objs.GoTlsProcs.Delete(uint32(pid))
	t.forgetGoCalls(uint32(pid)) //nolint:gosec // a pid fits 32 bits
	tg := tlsTarget{dev: p.id.dev, ino: p.id.ino, pid: pid}
	if links, ok := t.attached[tg]; ok {
		t.closeLinks(links)
		delete(t.attached, tg)
	}
	delete(t.failed, tg)
}

// forgetGoCalls deletes the calls in flight of a process that exited (or
// ran exec(2)) inside tls.Conn Read or Write: no return probe will ever
// delete them, and go_tls_calls is a plain hash that would fill with them.
func (t *tlsProbes) forgetGoCalls(tgid uint32) {
	var (
		key   event.TlsGoCallKey
		val   event.TlsGoCall
		stale []event.TlsGoCallKey
		iter  = t.objs.GoTlsCalls.Iterate()
	)
	for iter.Next(&key, &val) {
		if key.Tgid == tgid {
			stale = append(stale, key)
		}
	}
	for i := range stale {
		_ = t.objs.GoTlsCalls.Delete(&stale[i])
	}
}

// closeGo releases the executables kept open for probing.
func (g *goTLS) close() {
	for id, b := range g.bins {
		if b.file != nil {
			_ = b.file.Close()
		}
		delete(g.bins, id)
	}
}
