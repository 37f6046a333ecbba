package grpc

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

// loadFixture reads testdata/grpc/<name>.bin.
func loadFixture(t testing.TB, name string) []capfile.Record {
	t.Helper()
	recs, err := capfile.ReadFile(filepath.Join(fixtureDir, name+".bin"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 {
		t.Fatalf("%s: empty fixture", name)
	}
	return recs
}

// serverView turns a client-side recording into what the server saw: the
// same records with directions swapped.
func serverView(recs []capfile.Record) []capfile.Record {
	out := make([]capfile.Record, len(recs))
	for i, r := range recs {
		out[i] = r
		if r.Dir == stream.Egress {
			out[i].Dir = stream.Ingress
		} else {
			out[i].Dir = stream.Egress
		}
	}
	return out
}

// collector gathers reported calls.
type collector struct{ calls []Call }

func (c *collector) sink(_ *stream.ConnInfo, call *Call) { c.calls = append(c.calls, *call) }

// newTestDetector returns a detector whose calls land in the collector.
func newTestDetector(opts Options) (*Detector, *collector) {
	col := new(collector)
	return NewDetector(opts, col.sink), col
}

func clientConn() *stream.ConnInfo {
	return &stream.ConnInfo{ID: 1, Role: stream.RoleClient, Transport: "tcp"}
}
func serverConn() *stream.ConnInfo {
	return &stream.ConnInfo{ID: 2, Role: stream.RoleServer, Transport: "tcp"}
}

// replayFixture replays records into a fresh parser and returns the calls
// and the detector's counters.
func replayFixture(recs []capfile.Record, conn *stream.ConnInfo, opts Options) ([]Call, *Stats) {
	det, col := newTestDetector(opts)
	capfile.Replay(det.New(conn), recs)
	return col.calls, det.Stats()
}

func statsMap(s *Stats) map[string]uint64 {
	m := map[string]uint64{}
	s.Each(func(c Counter, v uint64) {
		if v != 0 {
			m[c.String()] = v
		}
	})
	return m
}

// synth builds HTTP/2 byte streams with x/net's Framer and HPACK encoder,
// for scenarios real peers do not produce on demand. Records are written
// as the client sees them (Egress = client to server).
type synth struct {
	recs []capfile.Record
	ts   uint64
	hbuf [3]bytes.Buffer
	enc  [3]*hpack.Encoder // indexed by stream.Direction
}

func newSynth() *synth {
	s := &synth{ts: 1_000_000}
	for _, d := range []stream.Direction{stream.Egress, stream.Ingress} {
		s.enc[d] = hpack.NewEncoder(&s.hbuf[d])
	}
	return s
}

// block encodes name/value pairs with the direction's encoder.
func (s *synth) block(dir stream.Direction, kv ...string) []byte {
	s.hbuf[dir].Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		if err := s.enc[dir].WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]}); err != nil {
			panic(err)
		}
	}
	return bytes.Clone(s.hbuf[dir].Bytes())
}

// send appends one record holding the frames build writes.
func (s *synth) send(dir stream.Direction, build func(fr *http2.Framer)) {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.AllowIllegalWrites = true
	build(fr)
	s.raw(dir, buf.Bytes())
}

func (s *synth) raw(dir stream.Direction, b []byte) {
	s.ts += 1000
	s.recs = append(s.recs, capfile.Record{Dir: dir, Time: s.ts, Data: bytes.Clone(b)})
}

// start writes both connection prefaces (RFC 9113 section 3.4).
func (s *synth) start() {
	s.raw(stream.Egress, append([]byte(http2.ClientPreface), settingsFrame()...))
	s.send(stream.Ingress, func(fr *http2.Framer) { _ = fr.WriteSettings() })
}

func settingsFrame(ss ...http2.Setting) []byte {
	var buf bytes.Buffer
	_ = http2.NewFramer(&buf, nil).WriteSettings(ss...)
	return buf.Bytes()
}

// grpcMsg frames a payload as a gRPC Length-Prefixed-Message.
func grpcMsg(payload []byte) []byte {
	b := make([]byte, 5+len(payload))
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	copy(b[5:], payload)
	return b
}

func reqHeaders(path string, extra ...string) []string {
	return append([]string{":method", "POST", ":scheme", "http", ":path", path, ":authority", "svc.local",
		"content-type", "application/grpc", "te", "trailers"}, extra...)
}

// request writes a complete unary request on stream id.
func (s *synth) request(id uint32, path string, extra ...string) {
	blk := s.block(stream.Egress, reqHeaders(path, extra...)...)
	s.send(stream.Egress, func(fr *http2.Framer) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndHeaders: true})
		_ = fr.WriteData(id, true, grpcMsg([]byte("req")))
	})
}

// response writes headers, one message and trailers with the status.
func (s *synth) response(id uint32, code int, extra ...string) {
	h := s.block(stream.Ingress, ":status", "200", "content-type", "application/grpc")
	tr := s.block(stream.Ingress, append([]string{"grpc-status", strconv.Itoa(code)}, extra...)...)
	s.send(stream.Ingress, func(fr *http2.Framer) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h, EndHeaders: true})
		_ = fr.WriteData(id, false, grpcMsg([]byte("resp")))
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: tr, EndHeaders: true, EndStream: true})
	})
}

func (s *synth) replay(conn *stream.ConnInfo, opts Options) ([]Call, *Stats) {
	return replayFixture(s.recs, conn, opts)
}

// randomBytes returns 1 to max bytes of garbage from rng.
func randomBytes(rng *rand.Rand, maxLen int) []byte {
	b := make([]byte, 1+rng.IntN(maxLen))
	for j := range b {
		b[j] = byte(rng.Uint32())
	}
	return b
}
