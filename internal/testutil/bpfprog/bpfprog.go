// Package bpfprog builds small BPF programs for tests that need a program
// of their own to run: written with cilium/ebpf's asm package, so that no
// compiler is needed.
package bpfprog

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// RingbufWriter loads a socket filter named name that copies size bytes
// (at most 16) of its stack into rb with bpf_ringbuf_output each time it
// runs. The program is closed when the test ends.
func RingbufWriter(t testing.TB, name string, rb *ebpf.Map, size int32) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    name,
		Type:    ebpf.SocketFilter,
		License: "GPL",
		Instructions: asm.Instructions{
			// The verifier wants the 16 bytes of stack initialised.
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.StoreImm(asm.RFP, -8, 0, asm.Word),
			asm.StoreImm(asm.RFP, -12, 0, asm.Word),
			asm.StoreImm(asm.RFP, -16, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, rb.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -16),
			asm.Mov.Imm(asm.R3, size),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnRingbufOutput.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("loading ring buffer writer: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// Run runs a socket filter n times on a minimal packet: the kernel's test
// run of a socket filter needs at least an Ethernet header (14 bytes).
func Run(t testing.TB, prog *ebpf.Program, n uint32) {
	t.Helper()
	if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 14), Repeat: n}); err != nil {
		t.Fatalf("running %v: %v", prog, err)
	}
}
