package grpc

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"golang.org/x/net/http2"
)

// frameBytes builds a frame header (RFC 9113 section 4.1) and payload.
func frameBytes(typ http2.FrameType, flags http2.Flags, id uint32, payload []byte) []byte {
	n := len(payload)
	b := []byte{byte(n >> 16), byte(n >> 8), byte(n), byte(typ), byte(flags), byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}
	return append(b, payload...)
}

// headerFragment reads HEADERS and CONTINUATION payloads in place of x/net's
// Framer: it must accept exactly the frames the Framer accepts and return
// the same fragment, for every flag combination, padding and length.
func TestHeaderFragmentMatchesFramer(t *testing.T) {
	flagSets := []http2.Flags{0, http2.FlagHeadersEndStream, http2.FlagHeadersEndHeaders,
		http2.FlagHeadersPadded, http2.FlagHeadersPriority, http2.FlagHeadersPadded | http2.FlagHeadersPriority,
		http2.FlagHeadersPadded | http2.FlagHeadersPriority | http2.FlagHeadersEndHeaders | http2.FlagHeadersEndStream}
	checked := 0
	for _, typ := range []http2.FrameType{http2.FrameHeaders, http2.FrameContinuation} {
		for _, flags := range flagSets {
			for _, id := range []uint32{0, 1, 7} {
				for n := 0; n <= 12; n++ {
					for _, pad := range []byte{0, 1, 3, 6, 7, 11, 200} {
						payload := make([]byte, n)
						for i := range payload {
							payload[i] = byte(0x80 + i)
						}
						if n > 0 {
							payload[0] = pad
						}
						fr := http2.NewFramer(nil, bytes.NewReader(frameBytes(typ, flags, id, payload)))
						fr.AllowIllegalReads = true // a lone CONTINUATION: order is checked elsewhere
						var want []byte
						f, err := fr.ReadFrame()
						switch f := f.(type) {
						case *http2.HeadersFrame:
							want = f.HeaderBlockFragment()
						case *http2.ContinuationFrame:
							want = f.HeaderBlockFragment()
						}
						fh := http2.FrameHeader{Type: typ, Flags: flags, StreamID: id, Length: uint32(n)}
						got, ok := headerFragment(&fh, payload)
						if ok != (err == nil) || !bytes.Equal(got, want) {
							t.Errorf("%v flags %#x id %d len %d pad %d: got %x %v, Framer %x %v", typ, flags, id, n, pad, got, ok, want, err)
						}
						checked++
					}
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("nothing checked")
	}
}

// dirState.inOrder replaces the Framer's check between frames: over random
// sequences of frame headers, it must reject exactly the frames the Framer
// rejects (RFC 9113 section 6.10), a rejected frame changing no state.
func TestFrameOrderMatchesFramer(t *testing.T) {
	types := []http2.FrameType{http2.FrameHeaders, http2.FrameContinuation, http2.FrameData,
		http2.FrameSettings, http2.FramePing, http2.FramePushPromise, http2.FrameWindowUpdate}
	rng := rand.New(rand.NewPCG(9, 113))
	rejected := 0
	for seq := 0; seq < 200; seq++ {
		var d dirState
		var in bytes.Buffer
		fr := http2.NewFramer(nil, &in)
		for i := 0; i < 40; i++ {
			typ := types[rng.IntN(len(types))]
			flags := http2.Flags(0)
			if rng.IntN(2) == 0 {
				flags = http2.FlagHeadersEndHeaders
			}
			id := uint32(1 + 2*rng.IntN(2))
			in.Write(frameBytes(typ, flags, id, nil)[:frameHeaderLen])
			_, err := fr.ReadFrameHeader()
			fh := http2.FrameHeader{Type: typ, Flags: flags, StreamID: id}
			if got := d.inOrder(&fh); got != (err == nil) {
				t.Fatalf("sequence %d frame %d: %v flags %#x stream %d: inOrder %v, Framer %v", seq, i, typ, flags, id, got, err)
			}
			if err != nil {
				rejected++
				continue
			}
			d.takeOrder(&fh)
		}
	}
	if rejected == 0 {
		t.Fatal("no frame out of order")
	}
}
