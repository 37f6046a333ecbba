// Package mappressure samples every eBPF map on the host through an
// iter/bpf_map program and returns plain structs: entries, capacity,
// utilization, ring-buffer fill and memory. It has no collector code; the
// receiver turns the samples into gauges and the Tracker's crossings into
// log lines.
//
// One pass is one read of the iterator: the kernel runs the program once per
// map and it writes one fixed-size record (bpf/mapiter.h) to the seq_file;
// Sample decodes the records in place from a reused buffer.
//
// What each map type reports is documented on MapSample and in
// docs/map-pressure.md. In short: hash-family maps have an exact count from
// the kernel (bpf_map_sum_elem_count, Linux >= 6.6); LPM tries, queues,
// stacks, hashed devmaps and sockhashes have the counter their own kernel
// struct keeps; ring buffers have their fill level in bytes; every other
// type reports capacity only and no utilization.
//
// Memory comes from the kernel's accounting ("memlock:" in the fdinfo of a
// map fd opened by id), read for new maps within a per-pass budget and
// refreshed only for maps whose usage moves; until then, or without
// permission, an estimate labelled MemoryEstimate is reported.
package mappressure
