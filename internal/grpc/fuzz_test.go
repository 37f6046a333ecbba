package grpc

import (
	"encoding/binary"
	"testing"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

// fuzzEncode turns records into FuzzParser's input format, for the seed
// corpus: a configuration byte, then per chunk a control byte (bit 0:
// direction, bit 1: a lost count follows, bit 2: call Expire), a 2-byte
// length and the bytes.
func fuzzEncode(cfg byte, recs []capfile.Record, limit int) []byte {
	out := []byte{cfg}
	for _, r := range recs {
		if len(out)+3+len(r.Data) > limit {
			break
		}
		c := byte(0)
		if r.Dir == stream.Ingress {
			c = 1
		}
		out = append(out, c)
		out = binary.BigEndian.AppendUint16(out, uint16(len(r.Data)))
		out = append(out, r.Data...)
	}
	return out
}

// FuzzParser feeds arbitrary bytes in both directions, with losses, expiry
// and any role, and checks that nothing panics, every bound holds and every
// reported call is well formed.
func FuzzParser(f *testing.F) {
	for _, name := range []string{"unary_ok", "errors", "streaming", "curl", "cancel", "http_status", "unimplemented", "deadline"} {
		recs := loadFixture(f, name)
		f.Add(fuzzEncode(0, recs, 1<<14))
		f.Add(fuzzEncode(4|2, recs[3:], 1<<14)) // preexisting, role unknown, cut
		f.Add(fuzzEncode(8|1, recs, 1<<12))     // small limits
	}
	f.Fuzz(runFuzzOnce)
}

func runFuzzOnce(t *testing.T, in []byte) {
	{
		if len(in) == 0 {
			return
		}
		cfg := in[0]
		in = in[1:]
		conn := &stream.ConnInfo{Role: stream.Role(cfg % 3), Preexisting: cfg&4 != 0}
		opts := Options{}
		if cfg&8 != 0 {
			opts = Options{MaxStreams: 4, MaxFrameBuffer: 256, MaxTableSize: 512, MaxStringLen: 128,
				MaxHeaderListSize: 1024, MaxHeaderBlock: 1024, StreamIdle: 1 << 20}
		}
		det := NewDetector(opts, func(_ *stream.ConnInfo, c *Call) {
			if c.MethodUnknown != (c.Method == MethodOther) {
				t.Fatalf("method %q unknown=%v", c.Method, c.MethodUnknown)
			}
			if !c.MethodUnknown {
				if _, ok := methodFromPath("/" + c.Method); !ok {
					t.Fatalf("malformed method %q", c.Method)
				}
			}
			if c.HasStatus != (c.GRPCStatus >= 0) || c.End < c.Start || c.EndReason < EndTrailers || c.EndReason > EndExpired {
				t.Fatalf("bad call %+v", c)
			}
		})
		p := det.NewParser(conn)
		o := det.opts
		var ts uint64
		for len(in) >= 3 {
			c := in[0]
			n := int(binary.BigEndian.Uint16(in[1:3]))
			in = in[3:]
			var lost uint64
			if c&2 != 0 && len(in) > 0 {
				lost = uint64(in[0]) << (c >> 5)
				in = in[1:]
			}
			n = min(n, len(in))
			dir := stream.Egress
			if c&1 != 0 {
				dir = stream.Ingress
			}
			ts += uint64(c) << 10
			p.Data(dir, ts, in[:n], lost)
			in = in[n:]
			if c&4 != 0 {
				p.Expire(ts, 1<<16)
			}
			if len(p.streams) > o.MaxStreams {
				t.Fatalf("%d streams tracked", len(p.streams))
			}
			for i := range p.dirs {
				d := &p.dirs[i]
				if cap(d.buf) > 2*int(o.MaxFrameBuffer)+64 || cap(d.hp.blk) > 2*int(o.MaxHeaderBlock+o.MaxTableSize)+1024 ||
					cap(d.rs) > syncWindow+2*frameHeaderLen || d.hp.sh.size > uint64(o.MaxTableSize) {
					t.Fatalf("dir %d: buf %d blk %d rs %d table %d", i, cap(d.buf), cap(d.hp.blk), cap(d.rs), d.hp.sh.size)
				}
			}
		}
		p.Close(ts)
		if len(p.streams) != 0 {
			t.Fatalf("%d streams left after Close", len(p.streams))
		}
		if st := det.Stats(); st.Get(CounterCalls) > st.Get(CounterHeaderFrames)+st.Get(CounterDataFrames) {
			t.Fatalf("more calls than frames: %v", statsMap(st))
		}
	}
}
