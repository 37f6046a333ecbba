package capture

import (
	"errors"
	"time"
)

// ErrUnsupported is returned by Open where eBPF capture cannot run.
var ErrUnsupported = errors.New("eBPF capture runs only on Linux")

// Filter selects the processes and connections to capture. Empty lists do
// not filter; non-empty lists combine with AND, their entries with OR.
type Filter struct {
	// PIDs are thread-group ids.
	PIDs []uint32
	// Ports are TCP ports matched against either end of a connection.
	Ports []uint16
	// Comms are process names as the kernel keeps them (at most 15 bytes).
	Comms []string
	// Cgroups are cgroup v2 directories; processes in them or in any
	// cgroup below them match.
	Cgroups []string
}

// Empty reports whether the filter selects the whole host.
func (f Filter) Empty() bool {
	return len(f.PIDs) == 0 && len(f.Ports) == 0 && len(f.Comms) == 0 && len(f.Cgroups) == 0
}

// Options configure Open.
type Options struct {
	Filter Filter
	// RingBufferBytes is the size of the ring buffer: a power of two and a
	// multiple of the page size.
	RingBufferBytes uint32
	// MaxConnections is the capacity of the kernel socket table.
	MaxConnections uint32
	// CaptureBytes is the most payload captured per syscall; a larger
	// syscall is captured head and tail, TailBytes of it from the tail.
	CaptureBytes uint32
	TailBytes    uint32
	// PollInterval is how long the reader sleeps after draining the ring
	// buffer, unless the kernel wakes it (WakeupBytes).
	PollInterval time.Duration
	// WakeupBytes: once this many bytes wait in the ring buffer, the
	// kernel wakes the sleeping reader, so that a burst is read before it
	// fills the ring buffer; and a pass that read at least this many bytes
	// is followed by another at once rather than by a sleep. Zero: the
	// kernel never wakes the reader, and every pass that read something is
	// followed by another.
	WakeupBytes int
	// ScanExisting seeds the socket table with the matching processes'
	// sockets that are already open.
	ScanExisting bool
	// TLS configures plaintext capture from TLS libraries.
	TLS TLSOptions
	// IncludeSelf captures the calling process too. The receiver never
	// sets it (its own exports would be captured); tests do.
	IncludeSelf bool
}

// TLSOptions configure uprobes on TLS libraries.
type TLSOptions struct {
	// OpenSSL probes SSL_read/SSL_write(_ex) in the libssl of watched
	// processes (every process when no filter is set).
	OpenSSL bool
	// Libraries are further paths (or base names) of libraries that export
	// the OpenSSL API, e.g. a vendored build.
	Libraries []string
	// Go probes crypto/tls (*Conn).Read and Write in the Go executables of
	// watched processes (every process when no filter is set).
	Go bool
}
