// Package goelf inspects a Go executable for the crypto/tls uprobes: where
// (*tls.Conn).Read and (*tls.Conn).Write start and where they return, the
// struct field offsets that lead from a *tls.Conn to its socket's file
// descriptor, and the itabs that tell a socket-backed net.Conn from any
// other implementation. It only reads the file.
package goelf

import (
	"debug/buildinfo"
	"debug/dwarf"
	"debug/elf"
	"debug/gosym"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// The probed functions. Both take the receiver in RAX and the []byte in
// RBX (pointer) and RCX (length), and return n in RAX (the register ABI,
// Go 1.17 and later on amd64).
const (
	ReadSymbol  = "crypto/tls.(*Conn).Read"
	WriteSymbol = "crypto/tls.(*Conn).Write"
)

var (
	// ErrNotGo: the file is not a Go executable (no build information).
	ErrNotGo = errors.New("not a Go executable")
	// ErrNoTLS: a Go executable that does not link crypto/tls's Conn.
	ErrNoTLS = errors.New("does not use crypto/tls")
	// ErrStripped: a Go executable with neither a symbol table nor a
	// readable runtime function table (.gopclntab): the functions cannot be
	// found.
	ErrStripped = errors.New("stripped: no symbol table nor function table, crypto/tls cannot be traced")
	// ErrUnsupported: a Go version or architecture the probes do not read.
	ErrUnsupported = errors.New("unsupported Go executable")
)

// Func is a probed function: its name, the file offset of its first
// instruction (what a uprobe is set at), and the offsets from there of its
// return instructions. Uretprobes replace the return address on the stack,
// which breaks when the Go runtime moves a goroutine's stack; a uprobe on
// every RET instruction sees the results instead.
type Func struct {
	Symbol  string
	Entry   uint64
	Returns []uint64
}

// Offsets lead from a *tls.Conn to the socket's descriptor:
// Conn.conn (a net.Conn interface: itab, data) -> data is a *net.TCPConn or
// *net.UnixConn, whose embedded net.conn holds fd *net.netFD -> netFD.pfd
// (internal/poll.FD) -> FD.Sysfd.
type Offsets struct {
	Conn  uint32 // crypto/tls.Conn.conn
	NetFD uint32 // net.conn.fd
	PFD   uint32 // net.netFD.pfd
	Sysfd uint32 // internal/poll.FD.Sysfd
	// FromDWARF is false when the binary has no DWARF (-ldflags=-w) and the
	// offsets are the ones every Go release since 1.17 has used.
	FromDWARF bool
}

// defaultOffsets have held from Go 1.17 to 1.26: each field is the first of
// its struct but Sysfd, which follows the 16-byte fdMutex.
var defaultOffsets = Offsets{Conn: 0, NetFD: 0, PFD: 0, Sysfd: 16}

// Binary is what the probes need to know of one executable.
type Binary struct {
	GoVersion string
	Read      Func
	Write     Func
	Offsets   Offsets
	// Itabs are the link-time addresses of the itabs of *net.TCPConn and
	// *net.UnixConn as net.Conn (0 where the binary has none): a Conn.conn
	// whose itab is neither is not a socket the offsets lead to. A stripped
	// executable has no itab symbols: both are 0 and the type is not
	// checked (Symbols is false).
	Itabs   [2]uint64
	Symbols bool
	// PIE executables are loaded at a base chosen at exec time; the
	// runtime address of a link-time address v is v - LoadVaddr + the start
	// of the mapping of file offset LoadOffset.
	PIE        bool
	LoadVaddr  uint64
	LoadOffset uint64
}

// itabSymbols name, per Itabs slot, the itab symbols (Go 1.20 renamed the
// prefix go.itab. to go:itab.).
var itabSymbols = [2][]string{
	{"go:itab.*net.TCPConn,net.Conn", "go.itab.*net.TCPConn,net.Conn"},
	{"go:itab.*net.UnixConn,net.Conn", "go.itab.*net.UnixConn,net.Conn"},
}

// Inspect reads path.
func Inspect(path string) (*Binary, error) {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return nil, ErrNotGo
	}
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%w: %s (the probes read amd64 registers)", ErrUnsupported, f.Machine)
	}
	if !registerABI(bi.GoVersion) {
		return nil, fmt.Errorf("%w: %s predates the register ABI (Go 1.17)", ErrUnsupported, bi.GoVersion)
	}
	b := &Binary{GoVersion: bi.GoVersion, PIE: f.Type == elf.ET_DYN}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			b.LoadVaddr, b.LoadOffset = p.Vaddr&^0xfff, p.Off&^0xfff
			break
		}
	}
	funcs, err := findFuncs(f, b)
	if err != nil {
		return nil, err
	}
	for _, fn := range []struct {
		r   funcRange
		out *Func
	}{{funcs[0], &b.Write}, {funcs[1], &b.Read}} {
		code, err := rangeCode(f, fn.r)
		if err != nil {
			return nil, err
		}
		rets, err := ReturnOffsets(code)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", fn.r.name, err)
		}
		entry, err := fileOffset(f, fn.r.addr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", fn.r.name, err)
		}
		*fn.out = Func{Symbol: fn.r.name, Entry: entry, Returns: rets}
	}
	b.Offsets = defaultOffsets
	if d, err := f.DWARF(); err == nil {
		if o, err := dwarfOffsets(d); err == nil {
			b.Offsets = o
		} else {
			return nil, err
		}
	} else if goMinor(bi.GoVersion) > lastKnownLayout {
		return nil, fmt.Errorf("%w: %s without DWARF: its struct layout is not known", ErrUnsupported, bi.GoVersion)
	}
	return b, nil
}

// lastKnownLayout is the newest Go 1.x minor whose layout defaultOffsets
// were checked against.
const lastKnownLayout = 26

// funcRange is a function's name, link-time address and size.
type funcRange struct {
	name       string
	addr, size uint64
}

// findFuncs finds (*Conn).Write and (*Conn).Read, and the itabs, in the
// symbol table, or without one in the runtime's function table, which
// survives strip (-ldflags=-s) since the runtime needs it.
func findFuncs(f *elf.File, b *Binary) ([2]funcRange, error) {
	var out [2]funcRange
	names := [2]string{WriteSymbol, ReadSymbol}
	syms, err := f.Symbols()
	switch {
	case err == nil:
		b.Symbols = true
		for i := range syms {
			s := &syms[i]
			for k, n := range names {
				if s.Name == n {
					out[k] = funcRange{name: n, addr: s.Value, size: s.Size}
				}
			}
			for slot, itabs := range itabSymbols {
				for _, n := range itabs {
					if s.Name == n {
						b.Itabs[slot] = s.Value
					}
				}
			}
		}
	case errors.Is(err, elf.ErrNoSymbols):
		tab, err := pclnTable(f)
		if err != nil {
			return out, ErrStripped
		}
		for k, n := range names {
			if fn := tab.LookupFunc(n); fn != nil && fn.End > fn.Entry {
				out[k] = funcRange{name: n, addr: fn.Entry, size: fn.End - fn.Entry}
			}
		}
	default:
		return out, err
	}
	if out[0].size == 0 || out[1].size == 0 {
		return out, ErrNoTLS
	}
	return out, nil
}

// pclnTable reads the runtime's function table.
func pclnTable(f *elf.File) (*gosym.Table, error) {
	pcln, text := f.Section(".gopclntab"), f.Section(".text")
	if pcln == nil || text == nil {
		return nil, errors.New("no .gopclntab")
	}
	data, err := pcln.Data()
	if err != nil {
		return nil, err
	}
	return gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
}

// fileOffset maps a link-time address to its offset in the file (what a
// uprobe is set at), through the executable segment that holds it.
func fileOffset(f *elf.File, addr uint64) (uint64, error) {
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && addr >= p.Vaddr && addr < p.Vaddr+p.Filesz {
			return addr - p.Vaddr + p.Off, nil
		}
	}
	return 0, fmt.Errorf("address %#x is in no executable segment", addr)
}

// registerABI reports whether version ("go1.21.5", "go1.26rc1", "devel
// ...") passes arguments in registers on amd64.
func registerABI(version string) bool {
	if strings.HasPrefix(version, "devel") {
		return true
	}
	return goMinor(version) >= 17
}

// goMinor is the minor release of a "go1.N..." version, -1 if it is none.
func goMinor(version string) int {
	v, ok := strings.CutPrefix(version, "go1.")
	if !ok {
		return -1
	}
	end := 0
	for end < len(v) && v[end] >= '0' && v[end] <= '9' {
		end++
	}
	minor, err := strconv.Atoi(v[:end])
	if err != nil {
		return -1
	}
	return minor
}

// rangeCode returns the machine code of a function.
func rangeCode(f *elf.File, r funcRange) ([]byte, error) {
	for _, sec := range f.Sections {
		if sec.Type != elf.SHT_PROGBITS || sec.Flags&elf.SHF_EXECINSTR == 0 {
			continue
		}
		if r.addr < sec.Addr || r.addr+r.size > sec.Addr+sec.Size {
			continue
		}
		code := make([]byte, r.size)
		if _, err := sec.ReadAt(code, int64(r.addr-sec.Addr)); err != nil {
			return nil, fmt.Errorf("%s: %w", r.name, err)
		}
		return code, nil
	}
	return nil, fmt.Errorf("%s: not in an executable section", r.name)
}

// ReturnOffsets decodes a function's machine code from its first byte and
// returns the offsets of its RET instructions. Decoding is linear: Go puts
// no data inside functions, only INT3 padding after the last instruction.
func ReturnOffsets(code []byte) ([]uint64, error) {
	var rets []uint64
	for off := 0; off < len(code); {
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			return nil, fmt.Errorf("undecodable instruction at +%#x: %w", off, err)
		}
		if inst.Op == x86asm.RET {
			rets = append(rets, uint64(off))
		}
		off += inst.Len
	}
	if len(rets) == 0 {
		return nil, errors.New("no return instruction")
	}
	return rets, nil
}

// dwarfOffsets reads the four field offsets from the binary's DWARF.
func dwarfOffsets(d *dwarf.Data) (Offsets, error) {
	want := map[string]string{
		"crypto/tls.Conn":  "conn",
		"net.conn":         "fd",
		"net.netFD":        "pfd",
		"internal/poll.FD": "Sysfd",
	}
	found := map[string]uint32{}
	r := d.Reader()
	for len(found) < len(want) {
		e, err := r.Next()
		if err != nil {
			return Offsets{}, fmt.Errorf("read DWARF: %w", err)
		}
		if e == nil {
			break
		}
		if e.Tag != dwarf.TagStructType {
			if e.Tag != dwarf.TagCompileUnit && e.Children {
				r.SkipChildren()
			}
			continue
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		field, ok := want[name]
		if !ok || !e.Children {
			if e.Children {
				r.SkipChildren()
			}
			continue
		}
		off, err := memberOffset(r, field)
		if err != nil {
			return Offsets{}, fmt.Errorf("DWARF %s.%s: %w", name, field, err)
		}
		found[name] = off
	}
	for name, field := range want {
		if _, ok := found[name]; !ok {
			return Offsets{}, fmt.Errorf("DWARF has no %s.%s", name, field)
		}
	}
	return Offsets{
		Conn: found["crypto/tls.Conn"], NetFD: found["net.conn"],
		PFD: found["net.netFD"], Sysfd: found["internal/poll.FD"], FromDWARF: true,
	}, nil
}

// memberOffset reads the children of the struct entry r just returned and
// returns the offset of member field.
func memberOffset(r *dwarf.Reader, field string) (uint32, error) {
	off, ok := int64(-1), false
	for {
		e, err := r.Next()
		if err != nil {
			return 0, err
		}
		if e == nil || e.Tag == 0 {
			break // end of the struct's children
		}
		if e.Tag == dwarf.TagMember {
			if n, _ := e.Val(dwarf.AttrName).(string); n == field {
				off, ok = e.Val(dwarf.AttrDataMemberLoc).(int64)
			}
		}
		if e.Children {
			r.SkipChildren()
		}
	}
	if !ok || off < 0 {
		return 0, errors.New("no such member")
	}
	return uint32(off), nil
}
