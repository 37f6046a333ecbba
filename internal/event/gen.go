package event

// The kernel side lives in bpf/capture.bpf.c; its records are described in
// bpf/event.h. bpf2go compiles it and generates the Go types of the records
// (exported: internal/capture loads the object, this package decodes records).
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel -type data_event -type conn_event -type conn_tuple -type event_type -type counter -type direction -type conn_role -type data_source Capture ../../bpf/capture.bpf.c -- -I../../bpf/headers -I../../bpf

// The TLS uprobes read function arguments from registers (struct pt_regs),
// whose layout is per architecture: that object is built for amd64 only.
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target amd64 Tls ../../bpf/tls.bpf.c -- -I../../bpf/headers -I../../bpf
