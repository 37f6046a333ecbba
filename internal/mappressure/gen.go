package mappressure

// The iterator is compiled twice from the same source: mapiter uses the
// bpf_map_sum_elem_count kfunc (Linux >= 6.6); mapiterNoKfunc is built with
// -DMAPITER_NO_KFUNC for kernels without it. Only the first emits Go types.
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -type map_record -type map_record_flag mapiter ../../bpf/mapiter.bpf.c -- -I../../bpf/headers -I../../bpf
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -DMAPITER_NO_KFUNC" -target bpfel mapiterNoKfunc ../../bpf/mapiter.bpf.c -- -I../../bpf/headers -I../../bpf
