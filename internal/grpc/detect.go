package grpc

import (
	"bytes"
	"encoding/binary"

	"golang.org/x/net/http2"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

// Detector recognises HTTP/2 connections and builds their parsers. All its
// parsers share one Stats and one Sink. It implements stream.Detector.
type Detector struct {
	opts  Options
	stats *Stats
	sink  Sink
}

var _ stream.Detector = (*Detector)(nil)
var _ stream.Parser = (*Parser)(nil)

// NewDetector returns a detector whose parsers report calls to sink. A nil
// sink discards calls (they are still counted).
func NewDetector(opts Options, sink Sink) *Detector {
	if sink == nil {
		sink = func(*stream.ConnInfo, *Call) {}
	}
	return &Detector{opts: opts.withDefaults(), stats: new(Stats), sink: sink}
}

// Name implements stream.Detector.
func (dt *Detector) Name() string { return "grpc" }

// Stats returns the counters shared by the detector's parsers.
func (dt *Detector) Stats() *Stats { return dt.stats }

// New implements stream.Detector.
func (dt *Detector) New(conn *stream.ConnInfo) stream.Parser { return dt.NewParser(conn) }

// NewParser is New with the concrete type, for Expire.
func (dt *Detector) NewParser(conn *stream.ConnInfo) *Parser {
	return newParser(conn, dt.opts, dt.stats, dt.sink)
}

// detectScan bounds how far into the first bytes Detect looks for frames.
const detectScan = 64 << 10

// Detect implements stream.Detector. It claims:
//   - the client connection preface (RFC 9113 section 3.4), in the client's
//     direction (the Egress of a client, the Ingress of a server, either
//     direction when the role is unknown); at least 8 bytes of it;
//   - a server's first frame: a non-ACK SETTINGS frame on stream 0 with
//     valid parameters (section 3.4: the server connection preface), in the
//     server's direction;
//   - for a preexisting connection or an unknown role, a chain of plausible
//     frame headers (see plausibleHeader), each starting where the previous
//     frame ends.
//
// A PostgreSQL stream never starts like any of these: its messages start
// with an ASCII type byte, which read as a frame length is above 2^22, and
// its untyped startup messages do not form a valid frame header.
func (dt *Detector) Detect(conn *stream.ConnInfo, dir stream.Direction, data []byte) bool {
	if dir != stream.Egress && dir != stream.Ingress {
		return false
	}
	// client is 1 when dir carries the client's bytes, 0 when the server's,
	// -1 when the role is unknown.
	client := -1
	switch conn.Role {
	case stream.RoleClient:
		client = b2i(dir == stream.Egress)
	case stream.RoleServer:
		client = b2i(dir == stream.Ingress)
	}
	if n := min(len(data), len(clientPreface)); n >= 8 && bytes.Equal(data[:n], clientPreface[:n]) {
		return client != 0
	}
	if serverSettings(data) {
		return client != 1
	}
	if !conn.Preexisting && conn.Role != stream.RoleUnknown {
		return false
	}
	return frameChain(data)
}

// serverSettings reports whether data starts with a complete SETTINGS frame
// that can be a server's first frame.
func serverSettings(data []byte) bool {
	if len(data) < frameHeaderLen {
		return false
	}
	l := uint32(data[0])<<16 | uint32(data[1])<<8 | uint32(data[2])
	if http2.FrameType(data[3]) != http2.FrameSettings || data[4] != 0 ||
		binary.BigEndian.Uint32(data[5:9]) != 0 || l%6 != 0 || l > 6*32 {
		return false
	}
	if uint32(len(data)) < frameHeaderLen+l {
		return false
	}
	return validSettings(data[frameHeaderLen : frameHeaderLen+l])
}

// validSettings checks the values RFC 9113 section 6.5.2 constrains.
func validSettings(p []byte) bool {
	for ; len(p) >= 6; p = p[6:] {
		id := http2.SettingID(binary.BigEndian.Uint16(p))
		v := binary.BigEndian.Uint32(p[2:])
		switch id {
		case http2.SettingEnablePush:
			if v > 1 {
				return false
			}
		case http2.SettingInitialWindowSize:
			if v > 1<<31-1 {
				return false
			}
		case http2.SettingMaxFrameSize:
			if v < initialMaxFrameSize || v > maxMaxFrameSize {
				return false
			}
		case 0:
			return false // no setting has identifier 0
		}
	}
	return true
}

// frameChain looks for consecutive plausible frames: at offset 0, two
// frames, or one frame exactly filling data (a lone WINDOW_UPDATE or PING
// write); at a later offset (a read may start mid-frame), three frames, or
// two ending exactly at the end of data.
func frameChain(data []byte) bool {
	end := min(len(data), detectScan)
	for off := 0; off+frameHeaderLen <= end; off++ {
		n, stop := chainAt(data, off)
		if off == 0 && (n >= 2 || n == 1 && stop == len(data)) {
			return true
		}
		if off > 0 && (n >= 3 || n == 2 && stop == len(data)) {
			return true
		}
	}
	return false
}

// chainAt counts the complete plausible frames that follow each other from
// off, up to three, and returns where the last one ends.
func chainAt(data []byte, off int) (n, stop int) {
	var prev frameHdr
	stop = off
	for n < 3 && stop+frameHeaderLen <= len(data) {
		fh, ok := plausibleHeader(data[stop:], initialMaxFrameSize, 0)
		if !ok || !follows(prev, fh, n == 0) {
			return n, stop
		}
		next := stop + frameHeaderLen + int(fh.length)
		if next > len(data) {
			return n, stop
		}
		if fh.typ == http2.FrameSettings && fh.flags&byte(http2.FlagSettingsAck) == 0 &&
			!validSettings(data[stop+frameHeaderLen:next]) {
			return n, stop
		}
		prev, stop = fh, next
		n++
	}
	return n, stop
}

type frameHdr struct {
	length uint32
	typ    http2.FrameType
	flags  byte
	id     uint32
}

// endsBlock reports whether a frame leaves no header block open.
func (h frameHdr) endsBlock() bool {
	switch h.typ {
	case http2.FrameHeaders, http2.FrameContinuation:
		return h.flags&byte(http2.FlagHeadersEndHeaders) != 0
	}
	return true
}

// follows checks frame order: a header block is HEADERS followed by
// CONTINUATION frames of the same stream and nothing else (RFC 9113 section
// 6.10), so a chain cannot start with CONTINUATION.
func follows(prev, next frameHdr, first bool) bool {
	if first {
		return next.typ != http2.FrameContinuation
	}
	if !prev.endsBlock() {
		return next.typ == http2.FrameContinuation && next.id == prev.id
	}
	return next.typ != http2.FrameContinuation
}

// plausibleHeader reports whether b starts with a frame header a gRPC peer
// could send: a defined type with only defined flags, the reserved bit clear
// (RFC 9113 section 4.1), the stream id rules and fixed lengths of each type
// (sections 6.1 to 6.10), client-initiated (odd) streams only since gRPC
// does not push, and length at most maxLen. maxID, when not zero, bounds
// stream ids.
func plausibleHeader(b []byte, maxLen, maxID uint32) (frameHdr, bool) {
	h := frameHdr{
		length: uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]),
		typ:    http2.FrameType(b[3]),
		flags:  b[4],
		id:     binary.BigEndian.Uint32(b[5:9]),
	}
	if h.id&(1<<31) != 0 || h.length > maxLen || (maxID != 0 && h.id > maxID) {
		return h, false
	}
	odd := h.id%2 == 1
	const (
		endStream  = 0x1
		ack        = 0x1
		endHeaders = 0x4
		padded     = 0x8
		priority   = 0x20
	)
	ok := false
	switch h.typ {
	case http2.FrameData:
		ok = h.flags&^(endStream|padded) == 0 && odd && (h.flags&padded == 0 || h.length >= 1)
	case http2.FrameHeaders:
		minLen := uint32(1)
		if h.flags&padded != 0 {
			minLen++
		}
		if h.flags&priority != 0 {
			minLen += 5
		}
		ok = h.flags&^(endStream|endHeaders|padded|priority) == 0 && odd && h.length >= minLen
	case http2.FramePriority:
		ok = h.flags == 0 && h.id != 0 && h.length == 5
	case http2.FrameRSTStream:
		ok = h.flags == 0 && odd && h.length == 4
	case http2.FrameSettings:
		ok = h.flags&^ack == 0 && h.id == 0 && (h.flags&ack == 0 && h.length%6 == 0 || h.length == 0)
	case http2.FramePing:
		ok = h.flags&^ack == 0 && h.id == 0 && h.length == 8
	case http2.FrameGoAway:
		ok = h.flags == 0 && h.id == 0 && h.length >= 8
	case http2.FrameWindowUpdate:
		ok = h.flags == 0 && (h.id == 0 || odd) && h.length == 4
	case http2.FrameContinuation:
		ok = h.flags&^endHeaders == 0 && odd
	}
	return h, ok
}

type candidate uint8

const (
	candNo candidate = iota
	candWait
	candOK
)

// checkCandidate decides whether a frame starts at b[0]: its header must be
// plausible and so must the header where it ends, in a valid order.
func checkCandidate(b []byte, maxLen, maxID uint32) candidate {
	fh, ok := plausibleHeader(b, maxLen, maxID)
	if !ok || !follows(frameHdr{}, fh, true) {
		return candNo
	}
	next := frameHeaderLen + int(fh.length)
	if len(b) < next+frameHeaderLen {
		return candWait
	}
	fh2, ok := plausibleHeader(b[next:], maxLen, maxID)
	if !ok || !follows(fh, fh2, false) {
		return candNo
	}
	return candOK
}
