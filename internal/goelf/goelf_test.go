package goelf

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

// tlsProgram dials TLS over TCP, so it links (*tls.Conn).Read/Write and
// converts a *net.TCPConn to net.Conn.
const tlsProgram = `package main

import (
	"crypto/tls"
	"fmt"
	"os"
)

func main() {
	c, err := tls.Dial("tcp", os.Args[1], &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	c.Write([]byte("x"))
	b := make([]byte, 1)
	c.Read(b)
}
`

const plainProgram = `package main

import "fmt"

func main() { fmt.Println("no tls here") }
`

// build compiles src with the extra go build flags into a temporary file.
func build(t *testing.T, src string, flags ...string) string {
	t.Helper()
	if runtime.GOARCH != "amd64" {
		t.Skip("the probes read amd64 registers")
	}
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module prog\n\ngo 1.21\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644))
	out := filepath.Join(dir, "prog")
	cmd := exec.Command("go", append(append([]string{"build", "-o", out}, flags...), ".")...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "CGO_ENABLED=0", "GOFLAGS=")
	b, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", b)
	return out
}

func TestInspectBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds programs")
	}
	// Offsets as the Go source of this toolchain lays the structs out.
	want := Offsets{Conn: 0, NetFD: 0, PFD: 0, Sysfd: 16}
	for _, tc := range []struct {
		name    string
		flags   []string
		dwarf   bool
		pie     bool
		symbols bool
	}{
		{name: "default", dwarf: true, symbols: true},
		{name: "no DWARF", flags: []string{"-ldflags=-w"}, symbols: true},
		{name: "PIE", flags: []string{"-buildmode=pie"}, dwarf: true, pie: true, symbols: true},
		// go test and go run build like this: the functions come from
		// .gopclntab, and there are no itab symbols to check against.
		{name: "stripped", flags: []string{"-ldflags=-s -w"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := build(t, tlsProgram, tc.flags...)
			b, err := Inspect(path)
			require.NoError(t, err)
			require.Equal(t, runtime.Version(), b.GoVersion)
			require.Equal(t, tc.pie, b.PIE)
			got := b.Offsets
			require.Equal(t, tc.dwarf, got.FromDWARF)
			got.FromDWARF = false
			require.Equal(t, want, got)
			require.Equal(t, ReadSymbol, b.Read.Symbol)
			require.Equal(t, WriteSymbol, b.Write.Symbol)
			require.NotEmpty(t, b.Read.Returns)
			require.NotEmpty(t, b.Write.Returns)
			require.Equal(t, tc.symbols, b.Symbols)
			if tc.symbols {
				require.NotZero(t, b.Itabs[0], "itab of *net.TCPConn as net.Conn")
			} else {
				require.Zero(t, b.Itabs)
			}
			// Entry is a file offset at which the function's first
			// instruction lies: Go functions on amd64 begin with the stack
			// check, which reads g through R14 (a REX.W/REX.B prefix).
			raw, err := os.ReadFile(path)
			require.NoError(t, err)
			for _, fn := range []Func{b.Read, b.Write} {
				require.Less(t, fn.Entry, uint64(len(raw)))
				code := raw[fn.Entry:]
				rets, err := ReturnOffsets(code[:fn.Returns[len(fn.Returns)-1]+1])
				require.NoError(t, err, "the code at Entry decodes to the same RETs")
				require.Equal(t, fn.Returns, rets)
			}
		})
	}
}

func TestInspectRejects(t *testing.T) {
	if testing.Short() {
		t.Skip("builds programs")
	}
	_, err := Inspect(build(t, plainProgram))
	require.ErrorIs(t, err, ErrNoTLS)
	// Stripped but without crypto/tls: nothing to say about it.
	_, err = Inspect(build(t, plainProgram, "-ldflags=-s -w"))
	require.ErrorIs(t, err, ErrNoTLS)
	_, err = Inspect("/bin/sh")
	require.ErrorIs(t, err, ErrNotGo)
	_, err = Inspect(filepath.Join(t.TempDir(), "missing"))
	require.Error(t, err)
}

func TestReturnOffsets(t *testing.T) {
	for _, tc := range []struct {
		name string
		code []byte
		want []uint64
		err  bool
	}{
		// mov rbx, rax; ret; int3
		{name: "one ret", code: []byte{0x48, 0x89, 0xc3, 0xc3, 0xcc}, want: []uint64{3}},
		// test rax, rax; je +1; ret; xor eax, eax; ret
		{name: "two rets", code: []byte{0x48, 0x85, 0xc0, 0x74, 0x01, 0xc3, 0x31, 0xc0, 0xc3}, want: []uint64{5, 8}},
		// A RET opcode byte inside an immediate is not a return:
		// mov eax, 0xc3c3c3c3; ret
		{name: "c3 in an immediate", code: []byte{0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3}, want: []uint64{5}},
		{name: "no ret", code: []byte{0x90, 0x90}, err: true},
		{name: "truncated instruction", code: []byte{0x48}, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReturnOffsets(tc.code)
			if tc.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestRegisterABI(t *testing.T) {
	for v, want := range map[string]bool{
		"go1.16.15": false, "go1.17": true, "go1.21.5": true, "go1.26rc1": true,
		"go1.9": false, "devel go1.27-abcdef": true, "gccgo": false, "go2": false,
	} {
		require.Equal(t, want, registerABI(v), v)
	}
}
