// Package capture loads the kernel capture programs (bpf/capture.bpf.c),
// applies the configured filters, attaches them (syscall tracepoints, and
// tp_btf/sched_process_fork so that a child inherits its parent's state), maps
// the per-process bits that user space sets and clears, probes the TLS
// libraries and Go executables of watched processes, seeds the socket table
// with connections that were already open, and reads the ring buffer. It hands
// raw records to a callback; decoding lives in internal/event and reassembly
// in internal/stream.
//
// It works only on Linux; on other systems Open returns ErrUnsupported.
package capture
