package grpc

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

func TestStaticTable(t *testing.T) {
	// RFC 7541 Appendix A, first, a middle and the last entry.
	for i, f := range map[int]hpack.HeaderField{
		1:  {Name: ":authority"},
		2:  {Name: ":method", Value: "GET"},
		4:  {Name: ":path", Value: "/"},
		8:  {Name: ":status", Value: "200"},
		31: {Name: "content-type"},
		61: {Name: "www-authenticate"},
	} {
		if staticTable[i] != f {
			t.Errorf("static %d = %+v, want %+v", i, staticTable[i], f)
		}
	}
}

type field struct {
	name, value string
	known       bool
}

// randomBlocks encodes header lists with x/net's encoder: a mix of repeated
// values (indexed references), new values (insertions that shift indices),
// sensitive fields (never indexed), fields too large for the table
// (literal without indexing), and table size changes.
func randomBlocks(rng *rand.Rand, n int) (blocks [][]byte, sizes []uint32) {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	names := []string{":path", ":authority", "content-type", "grpc-status", "grpc-message", "grpc-timeout", "x-a", "x-b", "user-agent"}
	for i := 0; i < n; i++ {
		buf.Reset()
		if rng.IntN(10) == 0 {
			sz := []uint32{0, 64, 256, 1024, 4096}[rng.IntN(5)]
			enc.SetMaxDynamicTableSize(sz)
		}
		for j := rng.IntN(8); j >= 0; j-- {
			name := names[rng.IntN(len(names))]
			var value string
			switch rng.IntN(4) {
			case 0:
				value = fmt.Sprintf("new-%d-%d", i, j)
			case 1:
				value = strings.Repeat("v", rng.IntN(300))
			default:
				value = fmt.Sprintf("v%d", rng.IntN(5))
			}
			_ = enc.WriteField(hpack.HeaderField{Name: name, Value: value, Sensitive: rng.IntN(8) == 0})
		}
		blocks = append(blocks, bytes.Clone(buf.Bytes()))
	}
	return blocks, sizes
}

// The shadow model never reports a field that differs from what a decoder
// that saw everything decodes, whatever block it starts at.
func TestShadowNeverWrong(t *testing.T) {
	exactRuns := 0
	defer func() {
		if exactRuns == 0 {
			t.Error("the model never became exact: the priming path is untested")
		}
		t.Logf("%d runs reached an exact model", exactRuns)
	}()
	for seed := uint64(0); seed < 60; seed++ {
		rng := rand.New(rand.NewPCG(seed, 1))
		blocks, _ := randomBlocks(rng, 80)
		var truth [][]hpack.HeaderField
		ref := hpack.NewDecoder(4096, nil)
		for _, b := range blocks {
			fs, err := ref.DecodeFull(b)
			if err != nil {
				t.Fatal(err)
			}
			truth = append(truth, fs)
		}
		for start := 1; start < len(blocks); start += 5 {
			var sh shadow
			sh.reset(64 << 10)
			known, exactAt := 0, -1
			for i := start; i < len(blocks); i++ {
				var got []field
				_, err := sh.decode(blocks[i], 1<<16, func(name, value string, k bool, _ uint32) {
					got = append(got, field{name, value, k})
				})
				if err != nil {
					t.Fatalf("seed %d start %d block %d: %v", seed, start, i, err)
				}
				if len(got) != len(truth[i]) {
					t.Fatalf("seed %d block %d: %d fields, want %d", seed, i, len(got), len(truth[i]))
				}
				for j, g := range got {
					tr := truth[i][j]
					if !g.known {
						continue
					}
					known++
					if g.name != tr.Name || (wantField(g.name) && g.value != tr.Value) {
						t.Fatalf("seed %d start %d block %d field %d: shadow %q=%q, truth %q=%q", seed, start, i, j, g.name, g.value, tr.Name, tr.Value)
					}
				}
				if exactAt < 0 && sh.exact() {
					exactAt = i
					break
				}
			}
			if exactAt >= 0 {
				// Exact: a decoder primed from the model (as retrust does)
				// decodes every later block exactly like the reference.
				var got []hpack.HeaderField
				dec, _, err := primeDecoder(&sh, 1<<16, 1<<16, func(f hpack.HeaderField) { got = append(got, f) }, nil)
				if err != nil {
					t.Fatalf("seed %d: priming: %v", seed, err)
				}
				for i := exactAt + 1; i < len(blocks); i++ {
					got = got[:0]
					if _, err := dec.Write(blocks[i]); err != nil {
						t.Fatalf("seed %d start %d block %d: primed decoder: %v", seed, start, i, err)
					}
					_ = dec.Close()
					for j := range got {
						got[j].Sensitive = truth[i][j].Sensitive
					}
					if !slices.Equal(got, truth[i]) {
						t.Fatalf("seed %d start %d block %d: primed decoder got %v, want %v", seed, start, i, got, truth[i])
					}
				}
				exactRuns++
			}
			if known == 0 {
				t.Errorf("seed %d start %d: nothing decoded", seed, start)
			}
		}
	}
}

func TestShadowBasics(t *testing.T) {
	var sh shadow
	sh.reset(1 << 10)
	if _, _, ok := sh.lookup(62); ok {
		t.Fatal("fresh shadow resolves a dynamic index")
	}
	sh.insert("a", "1", true)
	sh.insert("b", "2", true)
	// RFC 7541 section 2.3.3: the newest entry has the lowest index.
	if n, v, ok := sh.lookup(62); !ok || n != "b" || v != "2" {
		t.Fatalf("62 = %q %q %v", n, v, ok)
	}
	if n, _, ok := sh.lookup(63); !ok || n != "a" {
		t.Fatalf("63 = %q %v", n, ok)
	}
	if _, _, ok := sh.lookup(64); ok {
		t.Fatal("index past our entries resolved")
	}
	sh.insert("", "x", false) // a literal whose name index was unknown
	if _, _, ok := sh.lookup(62); ok {
		t.Fatal("unknown entry resolved")
	}
	if n, _, ok := sh.lookup(63); !ok || n != "b" {
		t.Fatal("indices did not shift by the unknown insertion")
	}
	if sh.exact() {
		t.Fatal("exact with an unknown tail")
	}
	sh.setMax(0) // section 4.2: size 0 empties the table
	if !sh.exact() || sh.live() != 0 {
		t.Fatalf("after size 0: exact=%v live=%d", sh.exact(), sh.live())
	}
	sh.setMax(100)
	sh.insert("name", strings.Repeat("v", 80), true) // 4+80+32 > 100: empties, not added (section 4.4)
	if sh.live() != 0 || !sh.exact() {
		t.Fatal("oversized entry was added")
	}
	// Bounded by the limit whatever the peer says.
	sh.setMax(1 << 30)
	for i := 0; i < 1000; i++ {
		sh.insert("k", strings.Repeat("v", 100), true)
	}
	if sh.size > 1<<10 || sh.live() > 1<<10/100 {
		t.Fatalf("model holds %d bytes in %d entries", sh.size, sh.live())
	}
	if sh.exact() {
		t.Fatal("forgotten entries must make the model inexact")
	}
}

func TestShadowMalformed(t *testing.T) {
	for name, b := range map[string][]byte{
		"index 0":            {0x80},
		"truncated int":      {0xff},
		"truncated string":   {0x40, 0x05, 'a'},
		"overlong int":       {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
		"update after field": {0x82, 0x20},
		"bad huffman":        {0x40, 0x81, 0xff, 0x00},
	} {
		var sh shadow
		sh.reset(4096)
		if _, err := sh.decode(b, 100, func(string, string, bool, uint32) {}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// preexistingSynth is a connection whose first frames (and the dynamic
// table entries they created) are cut off: the encoders have history the
// parser never sees.
func preexistingSynth() (*synth, int) {
	s := newSynth()
	s.start()
	for id := uint32(1); id <= 5; id += 2 {
		s.request(id, "/pkg.Svc/Old")
		s.response(id, 0)
	}
	return s, len(s.recs)
}

// A dynamic table size update to 0 (RFC 7541 section 6.3) empties the
// table: everything after it is known, and x/net's decoder takes over again.
func TestRetrustAfterSizeUpdateZero(t *testing.T) {
	s, cut := preexistingSynth()
	s.request(7, "/pkg.Svc/Old") // indexed: unknown after the cut
	s.response(7, 0)
	s.enc[stream.Egress].SetMaxDynamicTableSize(0)
	s.request(9, "/pkg.Svc/Old") // starts with an update to 0, then literals
	s.response(9, 0)
	s.enc[stream.Egress].SetMaxDynamicTableSize(4096)
	s.request(11, "/pkg.Svc/New") // update to 4096, literals with indexing
	s.response(11, 0)
	s.request(13, "/pkg.Svc/New") // indexed references to them
	s.response(13, 0)
	s.recs = s.recs[cut:]
	calls, st := s.replay(&stream.ConnInfo{Role: stream.RoleClient, Preexisting: true}, Options{})
	got := map[uint32]Call{}
	for _, c := range calls {
		got[c.StreamID] = c
	}
	if !got[7].MethodUnknown {
		t.Errorf("stream 7 method %q resolved from an unknown table", got[7].Method)
	}
	for id, m := range map[uint32]string{9: "pkg.Svc/Old", 11: "pkg.Svc/New", 13: "pkg.Svc/New"} {
		if got[id].Method != m {
			t.Errorf("stream %d: method %q want %q", id, got[id].Method, m)
		}
	}
	p := st.Get(CounterHPACKRecovered)
	if p == 0 {
		t.Errorf("no recovery counted: %v", statsMap(st))
	}
}

// Recovery without emptying: after a size update the maximum is known, and
// once entries decoded after the gap fill it, nothing older can remain; the
// primed x/net decoder must then resolve references to those entries.
func TestRetrustAfterTurnover(t *testing.T) {
	s, cut := preexistingSynth()
	s.enc[stream.Egress].SetMaxDynamicTableSize(400)
	for i, id := 0, uint32(7); i < 8; i, id = i+1, id+2 {
		s.request(id, fmt.Sprintf("/pkg.Svc/M%d", i), "x-id", fmt.Sprint(i))
		s.response(id, 0)
	}
	for i, id := 0, uint32(23); i < 8; i, id = i+1, id+2 { // M6, M7 still in the table: indexed
		s.request(id, fmt.Sprintf("/pkg.Svc/M%d", 6+i%2))
		s.response(id, 0)
	}
	s.recs = s.recs[cut:]
	det, col := newTestDetector(Options{})
	p := det.NewParser(&stream.ConnInfo{Role: stream.RoleClient, Preexisting: true})
	for _, r := range s.recs {
		p.Data(r.Dir, r.Time, r.Data, 0)
	}
	if !p.dirs[0].hp.trusted {
		t.Fatal("client direction not trusted again after the table turned over")
	}
	p.Close(s.ts)
	for _, c := range col.calls {
		want := fmt.Sprintf("pkg.Svc/M%d", (c.StreamID-7)/2)
		if c.StreamID >= 23 {
			want = fmt.Sprintf("pkg.Svc/M%d", 6+(c.StreamID-23)/2%2)
		}
		if c.Method != want {
			t.Errorf("stream %d: %q want %q", c.StreamID, c.Method, want)
		}
	}
	if len(col.calls) != 16 || det.Stats().Get(CounterHPACKRecovered) == 0 {
		t.Fatalf("%d calls, %v", len(col.calls), statsMap(det.Stats()))
	}
}

// HPACK bombs stay bounded and counted: a huge announced table and size
// update, a header list far beyond the limit, a string beyond the limit,
// and an endless CONTINUATION sequence.
func TestHPACKBombs(t *testing.T) {
	opts := Options{MaxTableSize: 8 << 10, MaxHeaderListSize: 16 << 10, MaxStringLen: 4 << 10, MaxHeaderBlock: 32 << 10}

	t.Run("table_size", func(t *testing.T) {
		s := newSynth()
		s.raw(stream.Egress, append([]byte(http2.ClientPreface), settingsFrame()...))
		// The server announces a 4 GiB table (the SETTINGS maximum).
		s.raw(stream.Ingress, settingsFrame(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 1<<32 - 1}))
		enc := s.enc[stream.Egress]
		enc.SetMaxDynamicTableSizeLimit(1<<32 - 1)
		enc.SetMaxDynamicTableSize(1 << 30)
		for id := uint32(1); id < 200; id += 2 {
			s.request(id, "/pkg.Svc/M", "x-big", strings.Repeat(fmt.Sprintf("%04d", id), 1000)[:3000])
			s.response(id, 0)
		}
		det, col := newTestDetector(opts)
		p := det.NewParser(clientConn())
		for _, r := range s.recs {
			p.Data(r.Dir, r.Time, r.Data, 0)
		}
		if sh := &p.dirs[0].hp.sh; sh.size > uint64(opts.MaxTableSize) {
			t.Errorf("shadow holds %d bytes", sh.size)
		}
		p.Close(s.ts)
		st := det.Stats()
		if st.Get(CounterTableSizeOverCap) == 0 || st.Get(CounterHPACKErrors) == 0 {
			t.Errorf("not counted: %v", statsMap(st))
		}
		if len(col.calls) != 100 {
			t.Errorf("%d calls", len(col.calls))
		}
		for _, c := range col.calls {
			if !c.MethodUnknown && c.Method != "pkg.Svc/M" {
				t.Errorf("wrong method %q", c.Method)
			}
		}
	})

	t.Run("header_list", func(t *testing.T) {
		s := newSynth()
		s.start()
		kv := reqHeaders("/pkg.Svc/Big")
		for i := 0; i < 3000; i++ { // ~3000 indexed copies of one 1 KiB entry: 3 MB decoded
			kv = append(kv, "x-rep", strings.Repeat("r", 1000))
		}
		blk := s.block(stream.Egress, kv...)
		s.send(stream.Egress, func(fr *http2.Framer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true})
			_ = fr.WriteData(1, true, grpcMsg(nil))
		})
		s.response(1, 0)
		s.request(3, "/pkg.Svc/After")
		s.response(3, 0)
		calls, st := s.replay(clientConn(), opts)
		if st.Get(CounterHeaderListOversize) != 1 {
			t.Errorf("oversize not counted: %v", statsMap(st))
		}
		// Pseudo-headers come first (RFC 9113 section 8.3), so the method
		// is known, and the table stays in sync for the next request.
		if len(calls) != 2 || calls[0].Method != "pkg.Svc/Big" || calls[1].Method != "pkg.Svc/After" {
			t.Errorf("calls %+v", calls)
		}
	})

	t.Run("string_length", func(t *testing.T) {
		s := newSynth()
		s.start()
		s.request(1, "/pkg.Svc/M", "x-huge", strings.Repeat("h", 10<<10))
		s.response(1, 0)
		calls, st := s.replay(clientConn(), opts)
		if st.Get(CounterHPACKErrors) == 0 || st.Get(CounterHPACKUntrusted) == 0 {
			t.Errorf("not counted: %v", statsMap(st))
		}
		if len(calls) != 1 || calls[0].Method != "pkg.Svc/M" || calls[0].GRPCStatus != 0 {
			t.Errorf("calls %+v", calls)
		}
	})

	t.Run("continuation_flood", func(t *testing.T) {
		for _, preexisting := range []bool{false, true} {
			s := newSynth()
			s.start()
			if preexisting {
				s.recs = s.recs[:0]
			}
			blk := s.block(stream.Egress, reqHeaders("/pkg.Svc/M")...)
			s.send(stream.Egress, func(fr *http2.Framer) {
				_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk})
			})
			// 4 MiB of CONTINUATION fragments holding one endless literal
			// value: no END_HEADERS for a long while. Assembly stops at
			// MaxHeaderBlock.
			frag := append([]byte{0x40, 0x01, 'x', 0x7f, 0xff, 0xff, 0xff, 0x7f}, bytes.Repeat([]byte{'a'}, 16000)...)
			for i := 0; i < 256; i++ {
				s.send(stream.Egress, func(fr *http2.Framer) { _ = fr.WriteContinuation(1, i == 255, frag[:16000]) })
				frag = bytes.Repeat([]byte{'a'}, 16000)
			}
			det, _ := newTestDetector(opts)
			p := det.NewParser(&stream.ConnInfo{Role: stream.RoleClient, Preexisting: preexisting})
			for _, r := range s.recs {
				p.Data(r.Dir, r.Time, r.Data, 0)
				if d := &p.dirs[0]; cap(d.hp.blk) > int(opts.MaxHeaderBlock)+2*16384 || cap(d.buf) > 64<<10 {
					t.Fatalf("buffers grew: block %d frame %d", cap(d.hp.blk), cap(d.buf))
				}
			}
			p.Close(s.ts)
			st := det.Stats()
			if st.Get(CounterHeaderBlockOversize)+st.Get(CounterHPACKErrors) == 0 {
				t.Errorf("preexisting=%v: flood not counted: %v", preexisting, statsMap(st))
			}
		}
	})
}
