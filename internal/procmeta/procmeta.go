// Package procmeta reads what spans say about a process (executable,
// command line, container id) from /proc, with a bounded cache: a process is
// read once, not once per span.
package procmeta

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Info describes a process for resource attributes.
type Info struct {
	PID uint32
	// Executable is the base name of /proc/PID/exe, or the kernel's comm
	// when the link cannot be read (the process exited).
	Executable string
	// ExecutablePath is the target of /proc/PID/exe.
	ExecutablePath string
	// CommandLine is /proc/PID/cmdline with arguments joined by spaces.
	CommandLine string
	// ContainerID is the container runtime's id found in the process's
	// cgroup path (Docker, containerd, CRI-O, Podman); empty on the host.
	ContainerID string
}

// Cache remembers Info per pid, up to a bound; when full it is cleared
// (processes come and go; a re-read costs a few syscalls).
type Cache struct {
	root string // "/proc", or a test directory
	max  int
	m    map[uint32]Info
}

// NewCache returns a cache of at most max processes reading root (normally
// "/proc").
func NewCache(root string, max int) *Cache {
	return &Cache{root: root, max: max, m: make(map[uint32]Info)}
}

// Get returns the Info of pid; comm is the kernel's name for it, used when
// /proc has nothing (the process exited before we looked).
func (c *Cache) Get(pid uint32, comm string) Info {
	if info, ok := c.m[pid]; ok {
		return info
	}
	info := Read(c.root, pid)
	if info.Executable == "" {
		info.Executable = comm
	}
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[pid] = info
	return info
}

// Forget drops pid (its process exited or its pid may be reused).
func (c *Cache) Forget(pid uint32) { delete(c.m, pid) }

// Read reads the Info of pid under root without caching.
func Read(root string, pid uint32) Info {
	dir := filepath.Join(root, fmt.Sprint(pid))
	info := Info{PID: pid}
	if exe, err := os.Readlink(filepath.Join(dir, "exe")); err == nil {
		// A replaced binary reads "/usr/bin/x (deleted)".
		exe = strings.TrimSuffix(exe, " (deleted)")
		info.ExecutablePath = exe
		info.Executable = filepath.Base(exe)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
		// Arguments are NUL-separated, with a trailing NUL.
		info.CommandLine = string(bytes.TrimRight(bytes.ReplaceAll(b, []byte{0}, []byte{' '}), " "))
	}
	if b, err := os.ReadFile(filepath.Join(dir, "cgroup")); err == nil {
		info.ContainerID = ContainerID(string(b))
	}
	return info
}

// ContainerID finds a container id in the text of /proc/PID/cgroup: the
// last 64-hex-digit run in a path segment, as the runtimes name their
// cgroups ("docker-<id>.scope", "cri-containerd-<id>.scope",
// "crio-<id>.scope", "libpod-<id>.scope", or a bare "<id>" under
// /docker/ or /kubepods/...).
func ContainerID(cgroup string) string {
	var id string
	for _, line := range strings.Split(cgroup, "\n") {
		// "hierarchy-ID:controllers:path"; cgroup v2 has one "0::path".
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, seg := range strings.Split(parts[2], "/") {
			seg = strings.TrimSuffix(seg, ".scope")
			if i := strings.LastIndexAny(seg, "-"); i >= 0 {
				seg = seg[i+1:]
			}
			if isHex64(seg) {
				id = seg
			}
		}
	}
	return id
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
