// Package receiver is the OpenTelemetry Collector receiver of type
// `ebpf`: it loads eBPF programs that watch socket syscalls and every eBPF
// map on the host, and turns what they see into traces and metrics.
//
//go:generate mdatagen metadata.yaml
package receiver
