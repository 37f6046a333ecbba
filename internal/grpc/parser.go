package grpc

import (
	"encoding/binary"
	"io"
	"math"
	"slices"

	"golang.org/x/net/http2"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

const (
	frameHeaderLen = 9 // RFC 9113 section 4.1
	// initialMaxFrameSize is SETTINGS_MAX_FRAME_SIZE before any SETTINGS
	// (RFC 9113 section 6.5.2), the largest frame a peer may send until
	// the receiver raises it.
	initialMaxFrameSize = 1 << 14
	// maxMaxFrameSize is the largest SETTINGS_MAX_FRAME_SIZE (2^24-1).
	maxMaxFrameSize = 1<<24 - 1
	// initialTableSize is SETTINGS_HEADER_TABLE_SIZE before any SETTINGS
	// (RFC 9113 section 6.5.2), the HPACK dynamic table's initial maximum.
	initialTableSize = 4096
	// syncWindow bounds the bytes kept while searching for a frame
	// boundary; a candidate frame is confirmed by the header that follows
	// it, so candidates longer than the window minus two headers are not
	// considered.
	syncWindow = 64 << 10
)

var clientPreface = []byte(http2.ClientPreface) // RFC 9113 section 3.4

type state uint8

const (
	stPreface state = iota // matching the client connection preface
	stHeader               // reading a 9-byte frame header
	stPayload              // buffering the payload of a non-DATA frame
	stData                 // streaming through a DATA payload
	stSkip                 // skipping a payload we do not keep
	stSync                 // searching for a frame boundary
)

type prefaceMode uint8

const (
	prefaceNone   prefaceMode = iota
	prefaceStrict             // the client side of a connection seen from its start
	prefaceMaybe              // role unknown or connection preexisting
)

// Message framing state of one side of a stream.
const (
	framingOK        uint8 = iota
	framingBad             // invalid Compressed-Flag
	framingLost            // bytes lost at an unknown position
	framingTruncated       // END_STREAM inside a message
)

// Field presence bits of fields.has.
const (
	hasPath uint16 = 1 << iota
	hasAuthority
	hasCtype
	hasStatus
	hasGRPCStatus
	hasMessage
	hasTimeout
)

// fields are the header fields a call record uses.
type fields struct {
	has        uint16
	path       string
	authority  string
	ctype      string
	message    string
	status     int
	grpcStatus int
	timeout    uint64
}

func (f *fields) merge(o *fields) {
	if o.has&hasPath != 0 {
		f.path = o.path
	}
	if o.has&hasAuthority != 0 {
		f.authority = o.authority
	}
	if o.has&hasCtype != 0 {
		f.ctype = o.ctype
	}
	if o.has&hasMessage != 0 {
		f.message = o.message
	}
	if o.has&hasStatus != 0 {
		f.status = o.status
	}
	if o.has&hasGRPCStatus != 0 {
		f.grpcStatus = o.grpcStatus
	}
	if o.has&hasTimeout != 0 {
		f.timeout = o.timeout
	}
	f.has |= o.has
}

// side is what one direction of a stream carried.
type side struct {
	f fields
	// unknown: a field of this side could not be decoded, so an absent
	// field may have been there.
	unknown   bool
	headers   bool // a HEADERS frame was seen
	ended     bool // END_STREAM was seen
	endByHdrs bool // END_STREAM came on a HEADERS frame
	endUndec  bool // the header block carrying END_STREAM was not fully decoded
	blocks    uint8
	trailOnly bool // the first header block ended the stream
	lost      bool // bytes inside this side's DATA were lost
	framing   uint8
	comp      bool
	prefN     uint8
	pref      [5]byte
	msgLeft   uint32
	headersTs uint64
	headerSeq uint64
	firstData uint64 // frame sequence number of the first DATA frame
	endSeq    uint64
	msgs      uint64
	bytes     uint64
}

// data counts gRPC Length-Prefixed-Messages (gRPC over HTTP/2:
// Compressed-Flag, 1 byte; Message-Length, 4 bytes big endian; Message)
// across DATA frame boundaries without keeping payload bytes.
func (sd *side) data(b []byte) {
	for len(b) > 0 {
		if sd.framing != framingOK {
			sd.bytes += uint64(len(b))
			return
		}
		if sd.msgLeft > 0 {
			n := uint32(len(b))
			if n > sd.msgLeft {
				n = sd.msgLeft
			}
			sd.msgLeft -= n
			sd.bytes += uint64(n)
			b = b[n:]
			if sd.msgLeft == 0 {
				sd.msgs++
			}
			continue
		}
		k := copy(sd.pref[sd.prefN:], b)
		sd.prefN += uint8(k)
		b = b[k:]
		if sd.prefN < 5 {
			return
		}
		sd.prefN = 0
		if sd.pref[0] > 1 { // the flag is 0 (identity) or 1 (compressed)
			sd.framing = framingBad
			continue
		}
		if sd.pref[0] == 1 {
			sd.comp = true
		}
		if l := binary.BigEndian.Uint32(sd.pref[1:]); l > 0 {
			sd.msgLeft = l
		} else {
			sd.msgs++
		}
	}
}

// loseFraming: bytes at an unknown place in the messages were lost.
func (sd *side) loseFraming() {
	sd.lost = true
	if sd.framing == framingOK {
		sd.framing = framingLost
	}
}

// skip accounts for n lost message bytes: inside a message of known length
// they are skipped, anywhere else the message framing is lost.
func (sd *side) skip(n uint32) {
	sd.lost = true
	if sd.framing != framingOK {
		return
	}
	if sd.prefN == 0 && sd.msgLeft >= n {
		sd.msgLeft -= n
		sd.bytes += uint64(n)
		if sd.msgLeft == 0 {
			sd.msgs++
		}
		return
	}
	sd.framing = framingLost
}

// streamState is one tracked HTTP/2 stream; sides are indexed like
// Parser.dirs (0 = Egress, 1 = Ingress).
type streamState struct {
	id      uint32
	firstTs uint64
	lastTs  uint64
	gap     [2]uint32 // dirState.gap when the stream was created
	sides   [2]side
}

// blockState is the header block being received in one direction.
type blockState struct {
	active    bool
	fail      bool // decoding failed or a fragment was lost
	decoded   bool // decoded in place from a single frame
	over      bool // past MaxHeaderListSize
	unknown   bool
	endStream bool
	s         *streamState
	id        uint32
	listSize  uint64
	f         fields
}

// sliceReader is the Framer's input: the bytes of one frame we know to be
// complete, so the Framer never sees a short read.
type sliceReader struct{ b []byte }

func (r *sliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// Parser follows one HTTP/2 connection and reports its gRPC calls. It
// implements stream.Parser; calls for one connection must not be concurrent.
type Parser struct {
	conn  *stream.ConnInfo
	opts  Options
	stats *Stats
	sink  Sink
	c     counts

	dirs [2]dirState
	// clientDir is the direction carrying the client's frames (requests):
	// from the role, the preface, or the first :path / :status decoded.
	clientDir stream.Direction

	streams     map[uint32]*streamState
	free        []*streamState
	maxClientID uint32
	firstID     uint32 // first client stream id seen (preexisting connections)
	seq         uint64 // frames read, both directions
	sawGRPC     bool
	nextSweep   uint64
	closed      bool
	ids         []uint32
	call        Call
}

func dirIndex(d stream.Direction) int {
	if d == stream.Ingress {
		return 1
	}
	return 0
}

func newParser(conn *stream.ConnInfo, opts Options, stats *Stats, sink Sink) *Parser {
	p := &Parser{
		conn:    conn,
		opts:    opts,
		stats:   stats,
		sink:    sink,
		streams: make(map[uint32]*streamState),
	}
	switch conn.Role {
	case stream.RoleClient:
		p.clientDir = stream.Egress
	case stream.RoleServer:
		p.clientDir = stream.Ingress
	}
	for i := range p.dirs {
		d := &p.dirs[i]
		d.p = p
		d.idx = i
		d.dir = stream.Egress
		if i == 1 {
			d.dir = stream.Ingress
		}
		d.fieldFn = d.field
		d.emitFn = d.onField
		d.hp.allowed = initialTableSize
		d.maxFrame = initialMaxFrameSize
		d.hp.sh.reset(opts.MaxTableSize)
		switch {
		case conn.Preexisting:
			// Whatever SETTINGS raised was missed: accept any frame size
			// and any table size up to our cap.
			d.maxFrame = maxMaxFrameSize
			d.hp.allowed = opts.MaxTableSize
			d.prefMode = prefaceMaybe
			d.st = stPreface
		case p.clientDir == 0:
			d.prefMode = prefaceMaybe
			d.st = stPreface
			d.trustFresh()
		case p.clientDir == d.dir:
			d.prefMode = prefaceStrict
			d.st = stPreface
			d.trustFresh()
		default:
			d.st = stHeader
			d.trustFresh()
		}
		d.fr = d.newFramer()
	}
	return p
}

// Data implements stream.Parser.
func (p *Parser) Data(dir stream.Direction, ts uint64, data []byte, lost uint64) {
	if p.closed {
		return
	}
	if dir != stream.Egress && dir != stream.Ingress {
		p.c[CounterProtocolErrors]++
		p.c.flush(p.stats)
		return
	}
	d := &p.dirs[dirIndex(dir)]
	d.ts = ts
	p.c[CounterBytes] += uint64(len(data))
	d.feed(data)
	if lost > 0 {
		d.lose(lost)
	}
	if idle := p.opts.StreamIdle; idle != math.MaxUint64 && ts >= p.nextSweep {
		if len(p.streams) > 0 && ts >= idle {
			p.expire(ts, idle)
		}
		p.nextSweep = ts + idle/8
	}
	p.c.flush(p.stats)
}

// Close implements stream.Parser: every open stream ends as EndConnClosed.
func (p *Parser) Close(ts uint64) {
	if p.closed {
		return
	}
	p.closed = true
	for i := range p.dirs {
		d := &p.dirs[i]
		if d.st == stSync {
			p.c[CounterBytesSkipped] += uint64(len(d.rs) - d.rsOff)
		}
	}
	p.finishWhere(func(*streamState) bool { return true }, EndConnClosed, ts)
	p.c.flush(p.stats)
}

// Expire ends, as EndExpired calls, the streams that saw no frame for idle
// nanoseconds before now (kernel time).
func (p *Parser) Expire(now, idle uint64) {
	if p.closed {
		return
	}
	p.expire(now, idle)
	p.c.flush(p.stats)
}

func (p *Parser) expire(now, idle uint64) {
	p.finishWhere(func(s *streamState) bool { return now >= s.lastTs && now-s.lastTs >= idle }, EndExpired, now)
}

// finishWhere ends the selected streams in stream id order.
func (p *Parser) finishWhere(sel func(*streamState) bool, reason EndReason, ts uint64) {
	p.ids = p.ids[:0]
	for id, s := range p.streams {
		if sel(s) {
			p.ids = append(p.ids, id)
		}
	}
	slices.Sort(p.ids)
	for _, id := range p.ids {
		if s := p.streams[id]; s != nil {
			if reason == EndExpired {
				p.c[CounterStreamsExpired]++
			}
			p.finish(s, reason, ts, 0, false)
		}
	}
}

// serverIdx is the dirs index of the server's frames, -1 while unknown.
func (p *Parser) serverIdx() int {
	if p.clientDir == 0 {
		return -1
	}
	return 1 - dirIndex(p.clientDir)
}

func (p *Parser) setClientDir(d stream.Direction) {
	if p.clientDir == 0 {
		p.clientDir = d
	}
}

// maxStreamJump bounds how far above the highest stream id seen a new
// stream may open before the frame is taken for garbage.
const maxStreamJump = 1 << 20

func (p *Parser) implausibleNewStream(id uint32) bool {
	return p.maxClientID > 0 && id > p.maxClientID && id-p.maxClientID > maxStreamJump && p.streams[id] == nil
}

// streamFor returns the stream a HEADERS frame belongs to, creating it when
// it is new; nil when it is not tracked.
func (p *Parser) streamFor(d *dirState, id uint32) *streamState {
	if s := p.streams[id]; s != nil {
		return s
	}
	if id%2 == 0 {
		// RFC 9113 section 5.1.1: even ids are server-initiated (push),
		// which gRPC never uses.
		p.c[CounterUntrackedFrames]++
		return nil
	}
	switch {
	case id > p.maxClientID:
		// A new stream: client stream ids only increase (RFC 9113 section
		// 5.1.1), so an unseen id above the highest is new.
	case p.conn.Preexisting && (p.firstID == 0 || id < p.firstID):
		// Opened before capture began.
	default:
		// Closed, expired, or dropped for overflow.
		p.c[CounterUntrackedFrames]++
		return nil
	}
	if id > p.maxClientID {
		p.maxClientID = id
	}
	if p.firstID == 0 && (p.clientDir == 0 || p.clientDir == d.dir) {
		p.firstID = id
	}
	if len(p.streams) >= p.opts.MaxStreams {
		p.c[CounterPendingOverflow]++
		return nil
	}
	var s *streamState
	if n := len(p.free); n > 0 {
		s = p.free[n-1]
		p.free = p.free[:n-1]
	} else {
		s = new(streamState)
	}
	s.id = id
	s.firstTs = d.frameTs
	s.lastTs = d.ts
	s.gap = [2]uint32{p.dirs[0].gap, p.dirs[1].gap}
	p.streams[id] = s
	return s
}

// sideEnded handles END_STREAM from d on s (RFC 9113 section 8.1: the last
// frame of a request or response carries END_STREAM).
func (p *Parser) sideEnded(s *streamState, d *dirState, viaHeaders bool) {
	sd := &s.sides[d.idx]
	if sd.ended {
		return
	}
	sd.ended = true
	sd.endByHdrs = viaHeaders
	sd.endSeq = p.seq
	// Trailers-Only is a response of one HEADERS frame and nothing else
	// (gRPC over HTTP/2, "Responses"): a block that follows DATA, or bytes
	// of this direction lost since the stream began (they may have held the
	// response's first HEADERS), rule it out.
	sd.trailOnly = viaHeaders && sd.blocks == 1 && sd.firstData == 0 && s.gap[d.idx] == d.gap
	if sd.framing == framingOK && (sd.prefN != 0 || sd.msgLeft != 0) {
		sd.framing = framingTruncated
	}
	srv := p.serverIdx()
	if srv == d.idx || (srv < 0 && s.sides[1-d.idx].ended) {
		p.finish(s, endStream, d.ts, 0, false)
	}
}

func (p *Parser) onReset(d *dirState, id uint32, code uint32) {
	s := p.streams[id]
	if s == nil {
		p.c[CounterUntrackedFrames]++
		return
	}
	s.lastTs = d.ts
	p.finish(s, EndReset, d.ts, code, p.clientDir == d.dir)
}

// onGoAway ends the streams the server will never process: those above the
// last stream id of its GOAWAY (RFC 9113 section 6.8). A client's GOAWAY
// names server-initiated streams, which gRPC does not use.
func (p *Parser) onGoAway(d *dirState, last, code uint32) {
	if p.serverIdx() != d.idx {
		return
	}
	p.ids = p.ids[:0]
	for id := range p.streams {
		if id > last {
			p.ids = append(p.ids, id)
		}
	}
	slices.Sort(p.ids)
	for _, id := range p.ids {
		if s := p.streams[id]; s != nil {
			p.finish(s, EndGoAway, d.ts, code, false)
		}
	}
}

// finish removes s, reports it if it is a gRPC call, and recycles it.
func (p *Parser) finish(s *streamState, reason EndReason, ts uint64, code uint32, byClient bool) {
	delete(p.streams, s.id)
	for i := range p.dirs {
		d := &p.dirs[i]
		if d.data == s {
			d.data = nil
		}
		if d.blk.s == s {
			d.blk.s = nil
		}
	}
	p.report(s, reason, ts, code, byClient)
	*s = streamState{}
	p.free = append(p.free, s)
}

// clientIdx is the dirs index of s's request side.
func (p *Parser) clientIdx(s *streamState) int {
	if p.clientDir != 0 {
		return dirIndex(p.clientDir)
	}
	a, b := &s.sides[0], &s.sides[1]
	switch {
	case a.f.has&hasPath != 0 || b.f.has&hasStatus != 0:
		return 0
	case b.f.has&hasPath != 0 || a.f.has&hasStatus != 0:
		return 1
	case b.headers && (!a.headers || b.headerSeq < a.headerSeq):
		return 1
	}
	return 0
}

// isGRPCContentType: gRPC requests and responses carry content-type
// "application/grpc" optionally followed by "+format" (gRPC over HTTP/2,
// "Content-Type"); media types compare case-insensitively (RFC 9110
// section 8.3.1).
func isGRPCContentType(ct string) bool {
	const base = "application/grpc"
	if len(ct) < len(base) {
		return false
	}
	for i := 0; i < len(base); i++ {
		c := ct[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != base[i] {
			return false
		}
	}
	rest := ct[len(base):]
	return rest == "" || rest[0] == '+' || rest[0] == ';'
}

// grpcVerdict decides whether a stream is a gRPC call: 1 yes, 0 no, -1 no
// decodable evidence either way.
func grpcVerdict(req, resp *side) int {
	switch {
	case req.f.has&hasCtype != 0:
		return b2i(isGRPCContentType(req.f.ctype))
	case req.headers && !req.unknown:
		return 0 // a fully decoded request without content-type
	case resp.f.has&hasCtype != 0:
		return b2i(isGRPCContentType(resp.f.ctype))
	case resp.f.has&hasGRPCStatus != 0:
		return 1
	case resp.headers && !resp.unknown:
		return 0
	}
	return -1
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// framedMessages: the side carried well-formed gRPC messages.
func framedMessages(sd *side) bool {
	return sd.msgs > 0 && sd.framing == framingOK && sd.prefN == 0
}

// methodFromPath turns a gRPC :path "/Service/Method" into
// "Service/Method" (gRPC over HTTP/2, "Path").
func methodFromPath(path string) (string, bool) {
	if len(path) < 4 || path[0] != '/' {
		return "", false
	}
	m := path[1:]
	for i := 0; i < len(m); i++ {
		if m[i] == '/' {
			return m, i > 0 && i < len(m)-1
		}
	}
	return "", false
}

func (p *Parser) report(s *streamState, reason EndReason, ts uint64, code uint32, byClient bool) {
	ci := p.clientIdx(s)
	req, resp := &s.sides[ci], &s.sides[1-ci]
	switch grpcVerdict(req, resp) {
	case 0:
		p.c[CounterNonGRPCStreams]++
		return
	case 1:
		p.sawGRPC = true
	default:
		if !p.sawGRPC && !framedMessages(req) && !framedMessages(resp) {
			p.c[CounterUnclassifiedStreams]++
			return
		}
	}
	if reason == endStream {
		// The response's END_STREAM ended the call; how it was sent says
		// whether trailers came.
		switch {
		case resp.trailOnly:
			reason = EndTrailersOnly
		case resp.endByHdrs:
			reason = EndTrailers
		default:
			reason = EndNoTrailers
		}
	}
	c := &p.call
	*c = Call{StreamID: s.id, End: ts, EndReason: reason, GRPCStatus: -1}
	if req.headers {
		c.Start = req.headersTs
	} else {
		c.Start = s.firstTs
		c.Partial = true
		p.c[CounterCallsPartial]++
	}
	if m, ok := methodFromPath(req.f.path); ok && req.f.has&hasPath != 0 {
		c.Method = m
	} else {
		c.Method, c.MethodUnknown = MethodOther, true
		p.c[CounterCallsUnknownMethod]++
	}
	c.Authority = req.f.authority
	c.Timeout = req.f.timeout
	if resp.f.has&hasStatus != 0 {
		c.HTTPStatus = resp.f.status
	}
	switch {
	case resp.f.has&hasGRPCStatus != 0:
		c.GRPCStatus, c.StatusSource = resp.f.grpcStatus, StatusTrailers
	case reason == EndReset:
		c.GRPCStatus, c.StatusSource = rstToCode(code), StatusReset
		// A deadline expiring is seen on the wire as RST_STREAM CANCEL once
		// the request's grpc-timeout has elapsed, sent by either end: the
		// client when its deadline passes, the server when the grpc-timeout
		// it received runs out (grpc-go's server resets the stream then,
		// possibly before the client's own timer fires). A client that
		// receives CANCEL after its deadline reports DEADLINE_EXCEEDED, as
		// does a server handler whose deadline passed.
		if code == uint32(http2.ErrCodeCancel) && c.Timeout > 0 && ts >= c.Start {
			tolerance := 2_000_000 + c.Timeout/100
			if ts-c.Start+tolerance >= c.Timeout {
				c.GRPCStatus = codeDeadlineExceeded
			}
		}
	case reason == EndGoAway:
		c.GRPCStatus, c.StatusSource = codeUnavailable, StatusGoAway
	case c.HTTPStatus != 0 && c.HTTPStatus != 200:
		c.GRPCStatus, c.StatusSource = httpToCode(c.HTTPStatus), StatusHTTP
	}
	c.HasStatus = c.GRPCStatus >= 0
	// Trailers that could not be decoded may well have held a grpc-status
	// (gRPC over HTTP/2: Trailers and Trailers-Only carry Status): the
	// status is unknown, not absent.
	c.StatusUnknown = !c.HasStatus && resp.ended && resp.endByHdrs && resp.endUndec
	if reason == EndReset || reason == EndGoAway {
		c.ResetCode = code
		c.ResetByClient = byClient
	}
	if resp.f.has&hasMessage != 0 {
		c.GRPCMessage = percentDecode(resp.f.message)
	}
	c.ReqMessages, c.RespMessages = req.msgs, resp.msgs
	c.ReqBytes, c.RespBytes = req.bytes, resp.bytes
	c.ReqCompressed, c.RespCompressed = req.comp, resp.comp
	if req.msgs > 1 {
		c.Streaming |= StreamingClient
	}
	if resp.msgs > 1 {
		c.Streaming |= StreamingServer
	}
	if resp.firstData != 0 && (!req.ended || resp.firstData < req.endSeq) && req.msgs > 0 {
		c.Streaming |= StreamingInterleaved
	}
	// Framing is only an error once the stream is known to be gRPC.
	if req.framing != framingOK {
		p.c[CounterMessageFramingErrors]++
	}
	if resp.framing != framingOK {
		p.c[CounterMessageFramingErrors]++
	}
	c.Lost = s.gap[0] != p.dirs[0].gap || s.gap[1] != p.dirs[1].gap ||
		req.lost || resp.lost || req.framing == framingLost || resp.framing == framingLost
	p.c[CounterCalls]++
	p.sink(p.conn, c)
}

// percentDecode decodes a grpc-message (gRPC over HTTP/2: percent-encoded
// UTF-8, "%" followed by two hex digits); malformed escapes stay as they
// are.
func percentDecode(s string) string {
	i := 0
	for i < len(s) && s[i] != '%' {
		i++
	}
	if i == len(s) {
		return s
	}
	b := make([]byte, 0, len(s))
	b = append(b, s[:i]...)
	for ; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
			continue
		}
		b = append(b, s[i])
	}
	return string(b)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

// parseTimeout decodes grpc-timeout: at most 8 ASCII digits and a unit
// (H, M, S, m, u, n) (gRPC over HTTP/2, "Timeout").
func parseTimeout(v string) (uint64, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(v)-1; i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	var unit uint64
	switch v[len(v)-1] {
	case 'H':
		unit = 3600e9
	case 'M':
		unit = 60e9
	case 'S':
		unit = 1e9
	case 'm':
		unit = 1e6
	case 'u':
		unit = 1e3
	case 'n':
		unit = 1
	default:
		return 0, false
	}
	return n * unit, true
}

// parseUint parses a small decimal (:status, grpc-status).
func parseUint(v string, maxDigits int) (int, bool) {
	if len(v) == 0 || len(v) > maxDigits {
		return 0, false
	}
	n := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}
