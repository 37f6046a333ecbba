package grpc

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"golang.org/x/net/http2"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

// replayMemo replays recs into a fresh parser, with or without the memo of
// indexed header blocks, and returns the calls, the counters, the memo's
// hits and whether a direction's table was trusted at the end.
func replayMemo(recs []capfile.Record, conn *stream.ConnInfo, memo bool) ([]Call, map[string]uint64, uint64, bool) {
	det, col := newTestDetector(Options{})
	p := det.NewParser(conn)
	for i := range p.dirs {
		p.dirs[i].hp.memo.off = !memo
	}
	capfile.Replay(p, recs)
	trusted := p.dirs[0].hp.trusted || p.dirs[1].hp.trusted
	return col.calls, statsMap(det.Stats()), p.dirs[0].hp.memo.hits + p.dirs[1].hp.memo.hits, trusted
}

// The memo only skips work: every recording, from either end, joined mid
// connection, with garbage injected or bytes lost, gives the same calls
// and counters with and without it.
func TestBlockMemoChangesNothing(t *testing.T) {
	var hits uint64
	for _, name := range fixtureNames() {
		base := loadFixture(t, name)
		variants := map[string][]capfile.Record{"client": base, "server": serverView(base)}
		for _, skip := range []int{3, 5, len(base) / 2} {
			if skip < len(base) {
				variants[fmt.Sprintf("from%d", skip)] = base[skip:]
			}
		}
		rng := rand.New(rand.NewPCG(uint64(len(base)), 7541))
		var junk, lossy []capfile.Record
		for i, r := range base {
			junk = append(junk, r)
			if i > 2 && rng.IntN(6) == 0 {
				b := randomBytes(rng, 40)
				junk = append(junk, capfile.Record{Dir: r.Dir, Time: r.Time, Data: b})
			}
			if i <= 2 || rng.IntN(5) != 0 || len(r.Data) < 2 {
				lossy = append(lossy, r)
			} else {
				// Deliver half a read: what follows lands mid-frame.
				lossy = append(lossy, capfile.Record{Dir: r.Dir, Time: r.Time, Data: r.Data[:len(r.Data)/2]})
			}
		}
		variants["junk"], variants["lossy"] = junk, lossy
		for vname, recs := range variants {
			for _, conn := range []*stream.ConnInfo{clientConn(), {Role: stream.RoleUnknown, Preexisting: true}} {
				c1, s1, h, _ := replayMemo(recs, conn, true)
				c0, s0, _, _ := replayMemo(recs, conn, false)
				hits += h
				if !reflect.DeepEqual(c1, c0) || !reflect.DeepEqual(s1, s0) {
					t.Errorf("%s/%s preexisting=%v: with the memo\n%+v\n%v\nwithout\n%+v\n%v", name, vname, conn.Preexisting, c1, s1, c0, s0)
				}
			}
		}
	}
	if hits == 0 {
		t.Fatal("the memo never answered: nothing compared")
	}
	t.Logf("%d blocks answered by the memo", hits)
}

// The same indexed block means other fields once the table changed (RFC
// 7541 section 2.3.3: a new entry takes index 62 and moves the others up):
// the memo must not answer from before the change.
func TestBlockMemoTableChange(t *testing.T) {
	lit := func(nameIdx byte, v string) []byte { // literal with incremental indexing, indexed name (section 6.2.1)
		return append([]byte{0x40 | nameIdx, byte(len(v))}, v...)
	}
	const post, http = 0x83, 0x86 // static :method POST, :scheme http (Appendix A)
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	blocks := []memoBlock{
		// Table after: 62 :path /pkg.Svc/A, 63 content-type.
		{cat([]byte{post, http}, lit(31, "application/grpc"), lit(4, "/pkg.Svc/A")), "pkg.Svc/A"},
		{[]byte{post, http, 0x80 | 63, 0x80 | 62}, "pkg.Svc/A"},
		// Table after: 62 :path /pkg.Svc/B, 63 :path /pkg.Svc/A, 64
		// content-type.
		{cat([]byte{post, http, 0x80 | 63}, lit(4, "/pkg.Svc/B")), "pkg.Svc/B"},
		// The bytes of the second block are now :path /pkg.Svc/A, :path
		// /pkg.Svc/B and no content-type: not a gRPC request.
		{[]byte{post, http, 0x80 | 63, 0x80 | 62}, ""},
		{[]byte{post, http, 0x80 | 64, 0x80 | 62}, "pkg.Svc/B"},
		{[]byte{post, http, 0x80 | 64, 0x80 | 62}, "pkg.Svc/B"},
	}
	s := newSynth()
	s.start()
	for i, b := range blocks {
		id := uint32(2*i + 1)
		s.send(stream.Egress, func(fr *http2.Framer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b.blk, EndHeaders: true})
			_ = fr.WriteData(id, true, grpcMsg([]byte("req")))
		})
		s.response(id, 0)
	}
	// Seen from the preface (x/net's Decoder), and joined after it (the
	// shadow model, which learns the entries the first block inserts).
	for _, joined := range []bool{false, true} {
		for _, memo := range []bool{true, false} {
			recs, conn := s.recs, clientConn()
			if joined {
				recs, conn.Preexisting = s.recs[2:], true
			}
			calls, _, hits, trusted := replayMemo(recs, conn, memo)
			what := fmt.Sprintf("joined %v memo %v", joined, memo)
			if trusted == joined || (memo && hits == 0) {
				t.Fatalf("%s: trusted %v, %d memo hits", what, trusted, hits)
			}
			checkTableChange(t, what, calls, blocks)
		}
	}
}

// memoBlock is a request header block and the method it must give ("" when
// the stream is not a gRPC call).
type memoBlock struct {
	blk    []byte
	method string
}

func checkTableChange(t *testing.T, what string, calls []Call, blocks []memoBlock) {
	t.Helper()
	m := byID(calls)
	for i, b := range blocks {
		c, ok := m[uint32(2*i+1)]
		if b.method == "" {
			if ok {
				t.Errorf("%s: block %d read as before the table changed: %+v", what, i, c)
			}
			continue
		}
		if c.Method != b.method {
			t.Errorf("%s: block %d: method %q, want %q", what, i, c.Method, b.method)
		}
	}
}
