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
	// ErrStripped: a Go executable without a symbol table (built with
	// -ldflags=-s, or run through strip): uprobes cannot find the functions.
	ErrStripped = errors.New("stripped: no symbol table, crypto/tls cannot be traced")
	// ErrUnsupported: a Go version or architecture the probes do not read.
	ErrUnsupported = errors.New("unsupported Go executable")
)

// Func is a probed function: its symbol and the offsets, from its first
// instruction, of its return instructions. Uretprobes replace the return
// address on the stack, which breaks when the Go runtime moves a goroutine's
// stack; a uprobe on every RET instruction sees the results instead.
type Func struct {
	Symbol  string
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
	// whose itab is neither is not a socket the offsets lead to.
	Itabs [2]uint64
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
	syms, err := f.Symbols()
	if err != nil {
		if errors.Is(err, elf.ErrNoSymbols) {
			return nil, strippedError(f)
		}
		return nil, err
	}
	b := &Binary{GoVersion: bi.GoVersion, PIE: f.Type == elf.ET_DYN}
	var read, write *elf.Symbol
	for i := range syms {
		s := &syms[i]
		switch s.Name {
		case ReadSymbol:
			read = s
		case WriteSymbol:
			write = s
		}
		for slot, names := range itabSymbols {
			for _, n := range names {
				if s.Name == n {
					b.Itabs[slot] = s.Value
				}
			}
		}
	}
	if read == nil || write == nil {
		return nil, ErrNoTLS
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			b.LoadVaddr, b.LoadOffset = p.Vaddr&^0xfff, p.Off&^0xfff
			break
		}
	}
	for _, fn := range []struct {
		sym *elf.Symbol
		out *Func
	}{{read, &b.Read}, {write, &b.Write}} {
		code, err := symbolCode(f, fn.sym)
		if err != nil {
			return nil, err
		}
		rets, err := ReturnOffsets(code)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", fn.sym.Name, err)
		}
		*fn.out = Func{Symbol: fn.sym.Name, Returns: rets}
	}
	b.Offsets = defaultOffsets
	if d, err := f.DWARF(); err == nil {
		if o, err := dwarfOffsets(d); err == nil {
			b.Offsets = o
		} else {
			return nil, err
		}
	}
	return b, nil
}

// strippedError tells a stripped executable that uses crypto/tls
// (ErrStripped: worth a word to the operator) from one that does not
// (ErrNoTLS): the runtime's function table (.gopclntab) survives strip.
func strippedError(f *elf.File) error {
	pcln, text := f.Section(".gopclntab"), f.Section(".text")
	if pcln == nil || text == nil {
		return ErrStripped
	}
	data, err := pcln.Data()
	if err != nil {
		return ErrStripped
	}
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil || tab.LookupFunc(ReadSymbol) != nil {
		return ErrStripped
	}
	return ErrNoTLS
}

// registerABI reports whether version ("go1.21.5", "go1.26rc1", "devel
// ...") passes arguments in registers on amd64.
func registerABI(version string) bool {
	v, ok := strings.CutPrefix(version, "go1.")
	if !ok {
		return strings.HasPrefix(version, "devel")
	}
	end := 0
	for end < len(v) && v[end] >= '0' && v[end] <= '9' {
		end++
	}
	minor, err := strconv.Atoi(v[:end])
	return err == nil && minor >= 17
}

// symbolCode returns the bytes of a function symbol.
func symbolCode(f *elf.File, s *elf.Symbol) ([]byte, error) {
	if int(s.Section) >= len(f.Sections) || s.Size == 0 {
		return nil, fmt.Errorf("%s: no code", s.Name)
	}
	sec := f.Sections[s.Section]
	if s.Value < sec.Addr || s.Value+s.Size > sec.Addr+sec.Size {
		return nil, fmt.Errorf("%s: outside its section %s", s.Name, sec.Name)
	}
	code := make([]byte, s.Size)
	if _, err := sec.ReadAt(code, int64(s.Value-sec.Addr)); err != nil {
		return nil, fmt.Errorf("%s: %w", s.Name, err)
	}
	return code, nil
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
