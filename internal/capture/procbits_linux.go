//go:build linux

package capture

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// pidMaxLimit is PID_MAX_LIMIT on 64-bit kernels: no tgid reaches it, so
// kernel.pid_max cannot be set above it.
const pidMaxLimit = 4 << 20

// procBitsWords is the size of the proc_bits array (bpf/capture.h): one
// 64-bit word per 64 tgids below kernel.pid_max.
func procBitsWords() uint32 {
	pidMax := uint64(pidMaxLimit)
	if b, err := os.ReadFile("/proc/sys/kernel/pid_max"); err == nil {
		if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32); err == nil && v > 0 && v < pidMax {
			pidMax = v
		}
	}
	return uint32((pidMax + 63) / 64)
}

// procBits is user space's view of the proc_bits array: the same memory the
// kernel programs test and set, mapped here so that bits are set and cleared
// with atomic operations (a map update would rewrite a whole word, losing a
// bit the kernel set in it at the same time).
type procBits struct {
	mem []byte
}

func mapProcBits(m *ebpf.Map) (*procBits, error) {
	size := int(m.MaxEntries()) * 8
	pg := os.Getpagesize()
	size = (size + pg - 1) / pg * pg
	mem, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap proc_bits: %w", err)
	}
	return &procBits{mem: mem[:int(m.MaxEntries())*8]}, nil
}

// word returns the word holding tgid's bit, nil past the array's end.
func (p *procBits) word(tgid uint32) (*uint64, uint64) {
	off := int(tgid/64) * 8
	if off+8 > len(p.mem) {
		return nil, 0
	}
	// The mapping is page aligned and lies outside the Go heap.
	return (*uint64)(unsafe.Pointer(&p.mem[off])), 1 << (tgid % 64)
}

// mark sets tgid's bit: the kernel programs look its sockets up from now on.
func (p *procBits) mark(tgid uint32) {
	if w, bit := p.word(tgid); w != nil {
		atomic.OrUint64(w, bit)
	}
}

// clear resets tgid's bit.
func (p *procBits) clear(tgid uint32) {
	if w, bit := p.word(tgid); w != nil {
		atomic.AndUint64(w, ^bit)
	}
}

func (p *procBits) close() error {
	if p == nil || p.mem == nil {
		return nil
	}
	err := unix.Munmap(p.mem[:cap(p.mem)])
	p.mem = nil
	return err
}
