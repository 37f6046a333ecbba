package mappressure

import (
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// fdinfoReader reads the "memlock:" line that the kernel prints in
// /proc/<pid>/fdinfo/<fd> for a BPF map fd (bpf_map_show_fdinfo in
// kernel/bpf/syscall.c). Since Linux 6.4 the value is the map's own memory
// accounting (map->ops->map_mem_usage), before that a page-rounded
// estimate from the map's geometry. It keeps its buffers between calls.
type fdinfoReader struct {
	path []byte
	buf  []byte
}

func (r *fdinfoReader) memlock(fd int) (uint64, error) {
	r.path = strconv.AppendInt(append(r.path[:0], "/proc/self/fdinfo/"...), int64(fd), 10)
	f, err := unix.Open(string(r.path), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening fdinfo of fd %d: %w", fd, err)
	}
	defer unix.Close(f)

	if r.buf == nil {
		// A map's fdinfo is a dozen short lines; memlock comes early.
		r.buf = make([]byte, 1024)
	}
	n := 0
	for n < len(r.buf) {
		m, err := unix.Read(f, r.buf[n:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("reading fdinfo of fd %d: %w", fd, err)
		}
		if m == 0 {
			break
		}
		n += m
	}
	return parseMemlock(r.buf[:n])
}
