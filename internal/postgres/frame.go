package postgres

import (
	"encoding/binary"
)

// mode is what a direction expects next.
type mode uint8

const (
	// modeTyped: 1-byte type, 4-byte big-endian length (counting itself),
	// body. Every message after start-up.
	modeTyped mode = iota
	// modeStartup: untyped packets (length, then a protocol version or a
	// request code) that a client sends before the StartupMessage is done.
	modeStartup
	// modeAnswer: the single byte ('S', 'G' or 'N') a server answers to
	// SSLRequest or GSSENCRequest.
	modeAnswer
	// modeResync: the boundary is unknown; look for the next plausible one.
	modeResync
	// modeStopped: nothing more is parsed in this direction.
	modeStopped
)

// resyncWindow bounds the bytes held while judging a possible boundary: a
// candidate message must be verifiable within it (longer candidates need a
// recognisable prefix).
const resyncWindow = 64 << 10

// dirState frames one direction of a connection.
type dirState struct {
	p    *Parser
	side side
	mode mode

	// hdr collects a header split across Data calls: 5 bytes for a typed
	// message, 8 for an untyped start-up packet.
	hdr  [8]byte
	hdrN int
	// hdrTs is the time of the Data call that carried the first header byte.
	hdrTs uint64

	// The message whose header is known and whose body is arriving.
	inMsg   bool
	typ     byte // 0 for an untyped start-up packet
	bodyLen int
	got     int    // body bytes received (buffered or skipped)
	body    []byte // buffered body bytes
	// skipping: the body is not buffered beyond keep bytes (the message is
	// oversized, or lost bytes broke its continuity).
	skipping  bool
	keep      int
	truncated bool

	// rs holds bytes under examination in modeResync when a candidate
	// boundary needs more bytes to be judged.
	rs []byte
}

// run consumes in according to the current mode until it is used up.
func (d *dirState) run(ts uint64, in []byte) {
	for len(in) > 0 {
		switch d.mode {
		case modeTyped:
			in = d.typed(ts, in)
		case modeStartup:
			in = d.startup(ts, in)
		case modeAnswer:
			in = d.answer(in)
		case modeResync:
			in = d.resync(in)
		default:
			if d.p.tls {
				d.p.stats.EncryptedBytes.Add(uint64(len(in)))
			} else {
				d.p.local.bytesSkipped += uint64(len(in))
			}
			return
		}
	}
}

// typed frames typed messages. A message wholly inside in and not oversized
// is handed on without copying.
func (d *dirState) typed(ts uint64, in []byte) []byte {
	if d.inMsg {
		return d.body0(ts, in)
	}
	if d.hdrN == 0 && len(in) >= 5 {
		typ := in[0]
		l := binary.BigEndian.Uint32(in[1:5])
		if !headerValid(d.side, typ, l) {
			// Not a message start: the stream is out of step. Look for the
			// next boundary from the following byte.
			d.enterResync(nil)
			d.p.local.bytesSkipped++
			return in[1:]
		}
		bodyLen := int(l) - 4
		if bodyLen <= len(in)-5 && bodyLen <= d.p.opts.MaxMessageSize {
			d.p.message(d, typ, in[5:5+bodyLen], false, ts, ts)
			return in[5+bodyLen:]
		}
		d.begin(typ, bodyLen, ts)
		return d.body0(ts, in[5:])
	}
	if d.hdrN == 0 {
		d.hdrTs = ts
	}
	n := copy(d.hdr[d.hdrN:5], in)
	d.hdrN += n
	in = in[n:]
	if d.hdrN < 5 {
		return in
	}
	d.hdrN = 0
	typ := d.hdr[0]
	l := binary.BigEndian.Uint32(d.hdr[1:5])
	if !headerValid(d.side, typ, l) {
		d.p.local.bytesSkipped++
		d.enterResync(d.hdr[1:5])
		return in
	}
	d.begin(typ, int(l)-4, d.hdrTs)
	return d.body0(ts, in)
}

// begin starts a message whose body spans Data calls or is oversized.
func (d *dirState) begin(typ byte, bodyLen int, ts uint64) {
	d.inMsg = true
	d.typ = typ
	d.bodyLen = bodyLen
	d.got = 0
	d.body = d.body[:0]
	d.hdrTs = ts
	d.truncated = false
	d.skipping = bodyLen > d.p.opts.MaxMessageSize
	d.keep = 0
	if d.skipping {
		d.p.stats.OversizedMessages.Add(1)
		// A prefix is kept where it is worth something: the SQL of Query and
		// Parse, the portal and statement names at the start of Bind.
		if d.side != sideBackend && (typ == 'Q' || typ == 'P' || typ == 'B') {
			d.keep = d.p.opts.MaxTextPrefix
		}
	}
}

// body0 takes the next bytes of the message in progress.
func (d *dirState) body0(ts uint64, in []byte) []byte {
	n := min(d.bodyLen-d.got, len(in))
	if d.skipping {
		k := min(max(d.keep-len(d.body), 0), n)
		d.body = append(d.body, in[:k]...)
		d.p.local.bytesSkipped += uint64(n - k)
	} else {
		d.body = append(d.body, in[:n]...)
	}
	d.got += n
	if d.got == d.bodyLen {
		d.finish(ts)
	}
	return in[n:]
}

// finish hands on the message in progress.
func (d *dirState) finish(ts uint64) {
	d.inMsg = false
	partial := d.skipping || d.truncated
	if d.typ == 0 {
		d.p.startupPacket(d, d.body, partial)
	} else {
		d.p.message(d, d.typ, d.body, partial, d.hdrTs, ts)
	}
	// Do not keep a large buffer alive for an idle connection.
	if cap(d.body) > 64<<10 {
		d.body = nil
	} else {
		d.body = d.body[:0]
	}
}

// startup frames the untyped packets that open a connection.
func (d *dirState) startup(ts uint64, in []byte) []byte {
	if d.inMsg {
		return d.body0(ts, in)
	}
	if d.hdrN == 0 {
		d.hdrTs = ts
		// A TLS handshake record (content type 22, version 3.x) where a
		// start-up packet belongs: the client negotiated TLS (directly, or
		// after an 'S' answer that was not seen).
		if len(in) >= 2 && in[0] == 0x16 && in[1] == 0x03 {
			d.p.stopTLS()
			return in
		}
	}
	n := copy(d.hdr[d.hdrN:8], in)
	d.hdrN += n
	in = in[n:]
	if d.hdrN < 8 {
		return in
	}
	d.hdrN = 0
	l := binary.BigEndian.Uint32(d.hdr[0:4])
	code := binary.BigEndian.Uint32(d.hdr[4:8])
	if !startupHeaderValid(l, code) {
		// Not a start-up packet: the client is past start-up (or this is
		// not the start of the stream). Frame typed messages from here.
		d.mode = modeTyped
		d.enterResync(d.hdr[:8])
		return in
	}
	d.inMsg = true
	d.typ = 0
	d.bodyLen = int(l) - 4
	// The code/version word is the first 4 bytes of the packet body as
	// pgproto3 decodes it.
	d.body = append(d.body[:0], d.hdr[4:8]...)
	d.got = 4
	d.skipping = false
	d.truncated = false
	if d.got == d.bodyLen {
		d.finish(ts)
		return in
	}
	return d.body0(ts, in)
}

// answer reads the single byte answering SSLRequest/GSSENCRequest.
func (d *dirState) answer(in []byte) []byte {
	switch in[0] {
	case 'S', 'G':
		// 'S': the server accepted SSL; 'G': GSSAPI encryption. Everything
		// after this byte is encrypted on the socket.
		d.p.stopTLS()
		return in[1:]
	case 'N':
		// Refused: the client goes on in the clear (or gives up).
		d.mode = modeTyped
		return in[1:]
	}
	// Servers before 7.0 (or ones failing early) answer with an
	// ErrorResponse instead: frame it as a typed message.
	d.mode = modeTyped
	return in
}

// enterResync switches to boundary search, starting with prefix (bytes
// already consumed from the stream that follow the rejected start).
func (d *dirState) enterResync(prefix []byte) {
	if d.mode != modeResync {
		d.p.stats.Resyncs.Add(1)
	}
	d.mode = modeResync
	d.inMsg = false
	d.hdrN = 0
	d.rs = append(d.rs[:0], prefix...)
	if d.side != sideFrontend {
		d.p.backendDisturbed()
	}
}

// verdict is the judgement on a candidate boundary.
type verdict uint8

const (
	reject verdict = iota
	accept
	needMore
)

// candidate judges whether a message starts at b[0]. b extends to the end
// of the bytes known so far.
func (d *dirState) candidate(b []byte) verdict {
	if len(b) < 5 {
		return needMore
	}
	typ := b[0]
	l := binary.BigEndian.Uint32(b[1:5])
	if !headerValid(d.side, typ, l) {
		return reject
	}
	bodyLen := int(l) - 4
	end := 5 + bodyLen
	if end > resyncWindow {
		// Too long to hold whole. Only SQL text has a start that other
		// bytes do not imitate; a stray type byte followed by the start of
		// the next message easily reads as a huge DataRow or CopyData.
		if d.side == sideBackend || typ != 'Q' && typ != 'P' {
			return reject
		}
		avail := b[5:]
		if len(avail) < 64 {
			return needMore
		}
		if prefixPlausible(sideFrontend, typ, avail) {
			return accept
		}
		return reject
	}
	if end > len(b) {
		return needMore
	}
	if !d.validFor(typ, l, b[5:end]) {
		return reject
	}
	// The message ends exactly where the known bytes end: syscalls are
	// usually whole messages, so that is good evidence.
	if end == len(b) {
		return accept
	}
	if end+5 > len(b) {
		return needMore
	}
	// Otherwise the next message must start right after it.
	if headerValid(d.side, b[end], binary.BigEndian.Uint32(b[end+1:end+5])) {
		return accept
	}
	return reject
}

// validFor checks a complete body against the sides this direction may be.
func (d *dirState) validFor(typ byte, l uint32, body []byte) bool {
	for _, s := range d.sides() {
		if headerValid(s, typ, l) && validBody(s, typ, body) {
			return true
		}
	}
	return false
}

var bothSides = []side{sideFrontend, sideBackend}
var frontendOnly = []side{sideFrontend}
var backendOnly = []side{sideBackend}

func (d *dirState) sides() []side {
	switch d.side {
	case sideFrontend:
		return frontendOnly
	case sideBackend:
		return backendOnly
	}
	return bothSides
}

// resync looks for the next plausible message boundary. Rejections are
// final (they depend on bytes already seen), so held bytes are only ever
// re-examined from the candidate that was waiting for more: the work is
// linear in the bytes received.
func (d *dirState) resync(in []byte) []byte {
	var b []byte
	// boundary is where this call's bytes start within b: a syscall
	// boundary, where real messages usually start.
	boundary := 0
	fromBuf := len(d.rs) > 0
	if fromBuf {
		boundary = len(d.rs)
		n := min(len(in), resyncWindow-len(d.rs))
		d.rs = append(d.rs, in[:n]...)
		in = in[n:]
		b = d.rs
	} else {
		b, in = in, nil
	}
	for i := 0; i < len(b); i++ {
		v := d.candidate(b[i:])
		if v == needMore && len(b)-i >= resyncWindow {
			v = reject // it cannot get the bytes it waits for
		}
		if v == needMore && boundary > i && d.candidate(b[boundary:]) == accept {
			// This call's bytes start with whole, valid messages: prefer
			// them to waiting on a header that may be made of stray bytes.
			i, v = boundary, accept
		}
		switch v {
		case accept:
			d.p.local.bytesSkipped += uint64(i)
			d.mode = modeTyped
			d.hdrN = 0
			if !fromBuf {
				return b[i:]
			}
			// Hand the held bytes and the rest of the input back to the run
			// loop. A copy: d.rs may be reused by the framing (rare path).
			out := make([]byte, 0, len(b)-i+len(in))
			out = append(append(out, b[i:]...), in...)
			d.rs = d.rs[:0]
			return out
		case needMore:
			d.p.local.bytesSkipped += uint64(i)
			if fromBuf {
				n := copy(d.rs, d.rs[i:])
				d.rs = d.rs[:n]
			} else {
				d.rs = append(d.rs[:0], b[i:]...)
			}
			return in
		}
	}
	d.p.local.bytesSkipped += uint64(len(b))
	d.rs = d.rs[:0]
	return in
}

// lose accounts for n bytes of this direction that were never captured.
func (d *dirState) lose(ts uint64, n uint64) {
	d.p.stats.BytesLost.Add(n)
	switch d.mode {
	case modeStopped:
		return
	case modeResync:
		// The held bytes and what follows are no longer contiguous.
		d.p.local.bytesSkipped += uint64(len(d.rs))
		d.rs = d.rs[:0]
		return
	case modeAnswer:
		d.enterResync(nil)
		return
	}
	if d.inMsg {
		d.p.stats.TruncatedMessages.Add(1)
		rem := uint64(d.bodyLen - d.got)
		// Keep what is buffered (a prefix) but nothing after the gap.
		d.skipping = true
		d.keep = len(d.body)
		d.truncated = true
		if n <= rem {
			// The gap lies inside a message of known length: skip it there
			// and stay in step.
			d.got += int(n)
			if d.got == d.bodyLen {
				d.finish(ts)
			}
			return
		}
		// The gap runs past the end of this message.
		d.got = d.bodyLen
		d.finish(ts)
	}
	// The gap covers a message boundary: where the next message starts is
	// unknown.
	if d.mode == modeStartup {
		d.mode = modeTyped
	}
	if d.mode != modeStopped {
		d.enterResync(nil)
	}
}
