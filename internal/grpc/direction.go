package grpc

import (
	"encoding/binary"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

// hpackDir is the HPACK decoding state of one direction: x/net's Decoder
// while we trust that we saw the dynamic table's whole history, a shadow
// model of it otherwise.
type hpackDir struct {
	trusted bool
	dec     *hpack.Decoder
	// allowed is the receiver's SETTINGS_HEADER_TABLE_SIZE (RFC 9113
	// section 6.5.2), capped at Options.MaxTableSize: the largest dynamic
	// table size update the encoder may send (RFC 7541 section 6.3).
	allowed uint32
	sh      shadow
	memo    blockMemo
	blk     []byte // header block assembled across CONTINUATION frames
	blkOver bool   // the block outgrew Options.MaxHeaderBlock
}

// dirState parses the frames one endpoint sent.
type dirState struct {
	p   *Parser
	dir stream.Direction
	idx int

	st      state
	ts      uint64 // kernel time of the bytes being parsed
	frameTs uint64 // kernel time of the first byte of the current frame
	hdr     [frameHeaderLen]byte
	hdrN    int
	fh      http2.FrameHeader
	remain  uint32 // payload bytes of the current frame still to come
	buf     []byte // payload of a non-DATA frame split across reads
	rd      sliceReader
	fr      *http2.Framer
	// maxFrame is the receiver's SETTINGS_MAX_FRAME_SIZE: the largest frame
	// this direction may carry (RFC 9113 section 4.2).
	maxFrame uint32
	// inBlock: a HEADERS or CONTINUATION frame of stream inBlockID without
	// END_HEADERS was taken, so only a CONTINUATION of that stream may
	// follow (RFC 9113 section 6.10).
	inBlock   bool
	inBlockID uint32

	// DATA frame in progress (RFC 9113 section 6.1).
	padPending bool // PADDED: the Pad Length octet is still to come
	dataLeft   uint32
	padLeft    uint32
	data       *streamState // nil when the stream is not tracked

	prefN    int
	prefMode prefaceMode

	blk     blockState
	hp      hpackDir
	fieldFn fieldFunc
	emitFn  func(hpack.HeaderField)

	// rs keeps bytes while searching for a frame boundary; once one is
	// found they are parsed in place from rsOff, and a new loss of sync
	// resumes the search inside rs without copying. While searching,
	// positions before rsOff have been rejected.
	rs    []byte
	rsOff int
	// seed holds consumed bytes a loss of sync asks to search again (the
	// bytes after the first of a rejected frame header).
	seed   [frameHeaderLen - 1]byte
	seedN  int
	replay []byte // preface bytes to parse again (see prefaceMismatch)

	gap    uint32 // incremented on every loss
	blocks uint64 // header blocks completed
}

// newFramer returns the Framer that parses SETTINGS, RST_STREAM, GOAWAY
// and PUSH_PROMISE payloads. beginFrame checks frame sizes against
// maxFrame itself, so the Framer accepts any valid size.
func (d *dirState) newFramer() *http2.Framer {
	fr := http2.NewFramer(nil, &d.rd)
	fr.SetMaxReadFrameSize(maxMaxFrameSize)
	return fr
}

// trustFresh starts an HPACK decoder on a dynamic table that is empty, as
// every table is at the start of a connection (RFC 7541 section 2.3.2).
func (d *dirState) trustFresh() {
	dec := hpack.NewDecoder(initialTableSize, d.emitFn)
	dec.SetAllowedMaxDynamicTableSize(d.hp.allowed)
	dec.SetMaxStringLength(d.p.opts.MaxStringLen)
	d.hp.dec = dec
	d.hp.trusted = true
	d.hp.memo.changed()
}

// untrust drops what we know of the dynamic table: from now on only entries
// inserted by blocks we decode are known.
func (d *dirState) untrust() {
	d.hp.trusted = false
	d.hp.dec = nil
	d.hp.memo.changed()
	d.hp.sh.reset(d.p.opts.MaxTableSize)
	d.p.c[CounterHPACKUntrusted]++
}

// retrust replaces the shadow model, once it is known to be the whole table,
// by an x/net Decoder primed with the same entries.
func (d *dirState) retrust() {
	sh := &d.hp.sh
	dec, buf, err := primeDecoder(sh, max(d.hp.allowed, sh.max), d.p.opts.MaxStringLen, d.emitFn, d.hp.blk)
	d.hp.blk = buf[:0]
	if err != nil {
		d.p.c[CounterHPACKErrors]++
		return
	}
	d.hp.dec = dec
	d.hp.trusted = true
	d.hp.memo.changed()
	sh.reset(d.p.opts.MaxTableSize)
	d.p.c[CounterHPACKRecovered]++
}

// primeDecoder builds an x/net Decoder whose dynamic table holds the
// shadow's entries: they are re-inserted oldest first with literals with
// incremental indexing, so they get the same indices (RFC 7541 section
// 2.3.3: the newest entry has the lowest). buf is scratch space.
func primeDecoder(sh *shadow, allowed uint32, maxStr int, emit func(hpack.HeaderField), buf []byte) (*hpack.Decoder, []byte, error) {
	dec := hpack.NewDecoder(sh.max, emit)
	dec.SetAllowedMaxDynamicTableSize(allowed)
	dec.SetMaxStringLength(maxStr)
	buf = buf[:0]
	for _, e := range sh.ents[sh.head:] {
		buf = appendLiteralIndexed(buf, e.name, e.value)
	}
	if len(buf) == 0 {
		return dec, buf, nil
	}
	dec.SetEmitEnabled(false)
	_, err := dec.Write(buf)
	if err == nil {
		err = dec.Close()
	}
	dec.SetEmitEnabled(true)
	return dec, buf, err
}

// setTableLimit applies the receiver's SETTINGS_HEADER_TABLE_SIZE to this
// direction's encoder.
func (d *dirState) setTableLimit(v uint32) {
	if v > d.p.opts.MaxTableSize {
		d.p.c[CounterTableSizeOverCap]++
		v = d.p.opts.MaxTableSize
	}
	d.hp.allowed = v
	if d.hp.trusted {
		d.hp.dec.SetAllowedMaxDynamicTableSize(v)
	}
}

// feed parses in, after any bytes kept by a search or queued for replay.
func (d *dirState) feed(in []byte) {
	for {
		if d.st == stSync {
			if d.syncScan() {
				continue
			}
			src := &d.replay
			if len(*src) == 0 {
				src = &in
			}
			if len(*src) == 0 {
				return
			}
			n := d.syncAppend(*src)
			*src = (*src)[n:]
			continue
		}
		// Source order is stream order: bytes kept by a search, then
		// replayed preface bytes, then new input. step may queue a replay
		// (prefaceMismatch), so the source is fixed before it runs.
		var b []byte
		fromRS, fromReplay := d.rsOff < len(d.rs), false
		switch {
		case fromRS:
			b = d.rs[d.rsOff:]
		case len(d.replay) > 0:
			b, fromReplay = d.replay, true
		case len(in) > 0:
			b = in
		default:
			return
		}
		n := d.step(b)
		switch {
		case fromRS:
			d.rsOff += n
		case fromReplay:
			d.replay = b[n:]
		default:
			in = b[n:]
		}
		if d.st == stSync {
			// Sync was lost in this step: search again from the seed
			// bytes, then what is left.
			seed := d.seed[:d.seedN]
			d.seedN = 0
			switch {
			case !fromRS:
				d.rs = append(d.syncBuf(), seed...)
				d.rsOff = 0
			case d.rsOff >= len(seed):
				// In place, over bytes already consumed (usually the
				// very same bytes).
				d.rsOff -= len(seed)
				copy(d.rs[d.rsOff:], seed)
			default:
				d.rs = append(append(make([]byte, 0, syncWindow), seed...), d.rs[d.rsOff:]...)
				d.rsOff = 0
			}
		} else if fromRS && d.rsOff == len(d.rs) {
			d.rs, d.rsOff = d.rs[:0], 0
		}
	}
}

// step consumes a prefix of b (at least one byte) and returns its length.
func (d *dirState) step(b []byte) int {
	switch d.st {
	case stPreface:
		return d.prefaceStep(b)
	case stHeader:
		if d.hdrN == 0 {
			d.frameTs = d.ts
			if len(b) >= frameHeaderLen {
				d.beginFrame(b[:frameHeaderLen])
				return frameHeaderLen
			}
		}
		n := copy(d.hdr[d.hdrN:], b)
		d.hdrN += n
		if d.hdrN == frameHeaderLen {
			d.hdrN = 0
			d.beginFrame(d.hdr[:])
		}
		return n
	case stPayload:
		if len(d.buf) == 0 && uint32(len(b)) >= d.remain {
			// The whole payload is in this read: no copy into buf.
			n := d.remain
			d.remain = 0
			d.completeFrame(b[:n])
			return int(n)
		}
		n := min(uint32(len(b)), d.remain)
		d.buf = append(d.buf, b[:n]...)
		d.remain -= n
		if d.remain == 0 {
			d.completeFrame(d.buf)
			d.buf = d.buf[:0]
		}
		return int(n)
	case stData:
		return d.dataStep(b)
	case stSkip:
		n := min(uint32(len(b)), d.remain)
		d.remain -= n
		if d.remain == 0 {
			d.endSkip()
		}
		return int(n)
	default: // stSync is handled by feed
		return len(b)
	}
}

// prefaceStep matches the client connection preface (RFC 9113 section 3.4).
func (d *dirState) prefaceStep(b []byte) int {
	want := clientPreface[d.prefN:]
	n := min(len(b), len(want))
	for i := 0; i < n; i++ {
		if b[i] != want[i] {
			return d.prefaceMismatch(i)
		}
	}
	d.prefN += n
	if d.prefN == len(clientPreface) {
		d.st = stHeader
		d.onPreface()
	}
	return n
}

// prefaceMismatch: the first matched bytes were not a preface after all;
// they are parsed again as frames (or searched, when the connection's
// beginning was missed).
func (d *dirState) prefaceMismatch(i int) int {
	if matched := d.prefN + i; matched > 0 {
		d.replay = clientPreface[:matched:matched]
	}
	switch {
	case d.prefMode == prefaceStrict:
		// The client's first bytes must be the preface: we did not see the
		// connection's beginning after all.
		d.p.c[CounterProtocolErrors]++
		d.lostSync(nil)
	case d.p.conn.Preexisting:
		d.st = stSync
	default:
		d.st = stHeader
	}
	return i
}

func (d *dirState) onPreface() {
	p := d.p
	p.setClientDir(d.dir)
	if !p.conn.Preexisting {
		return
	}
	// A preexisting connection whose start we see after all: both
	// dynamic tables start empty (RFC 7541 section 2.3.2) unless a
	// direction already decoded a header block without them.
	for i := range p.dirs {
		o := &p.dirs[i]
		if !o.hp.trusted && o.blocks == 0 && o.gap == 0 && !o.blk.active {
			o.trustFresh()
		}
	}
}

// beginFrame handles a complete 9-byte frame header (RFC 9113 section 4.1:
// length 24 bits, type, flags, reserved bit and 31-bit stream id).
func (d *dirState) beginFrame(h []byte) {
	fh := http2.FrameHeader{
		Length:   uint32(h[0])<<16 | uint32(h[1])<<8 | uint32(h[2]),
		Type:     http2.FrameType(h[3]),
		Flags:    http2.Flags(h[4]),
		StreamID: binary.BigEndian.Uint32(h[5:9]) & (1<<31 - 1),
	}
	p := d.p
	if fh.Length > d.maxFrame || !d.inOrder(&fh) || h[5]&0x80 != 0 ||
		(fh.Type == http2.FrameHeaders && p.implausibleNewStream(fh.StreamID)) {
		// Longer than the receiver's SETTINGS_MAX_FRAME_SIZE (section 4.2);
		// a frame other than the CONTINUATION of an open header block
		// (section 6.10); the reserved bit, which senders leave unset
		// (section 4.1); a client opening a million streams between two
		// frames we see. Garbage, or we are out of sync: the frame is not
		// taken, and changes no state.
		p.c[CounterProtocolErrors]++
		d.lostSync(h[1:])
		return
	}
	p.c[CounterFrames]++
	p.seq++
	d.fh = fh
	d.takeOrder(&fh)
	d.remain = fh.Length
	switch fh.Type {
	case http2.FrameData:
		p.c[CounterDataFrames]++
		// Section 6.1: DATA belongs to a stream, and PADDED needs room for
		// the Pad Length octet.
		if fh.StreamID == 0 || (fh.Flags.Has(http2.FlagDataPadded) && fh.Length == 0) {
			p.c[CounterProtocolErrors]++
			d.lostSync(h[1:])
			return
		}
		d.beginData()
		return
	case http2.FrameHeaders, http2.FrameContinuation, http2.FramePushPromise:
		p.c[CounterHeaderFrames]++
	case http2.FrameSettings, http2.FrameRSTStream, http2.FrameGoAway:
	default:
		// PING, WINDOW_UPDATE, PRIORITY, PRIORITY_UPDATE and extension
		// frames (ignored per RFC 9113 section 5.5) carry nothing a call
		// uses: check the fixed lengths (sections 6.7, 6.9, 6.3) and skip
		// the payload without building a frame.
		if want, fixed := fixedLength(fh.Type); fixed && fh.Length != want {
			p.c[CounterProtocolErrors]++
		}
		d.st = stSkip
		if fh.Length == 0 {
			d.endSkip()
		}
		return
	}
	if fh.Type != http2.FrameHeaders && fh.Type != http2.FrameContinuation {
		// completeFrame has the Framer parse the frame from the header bytes.
		copy(d.hdr[:], h)
	}
	switch {
	case fh.Length > p.opts.MaxFrameBuffer:
		p.c[CounterFrameOversize]++
		d.st = stSkip
	case fh.Length == 0:
		d.completeFrame(nil)
	default:
		d.st = stPayload
	}
}

func (d *dirState) beginData() {
	fh := &d.fh
	d.data = d.p.streams[fh.StreamID]
	if s := d.data; s != nil {
		s.lastTs = d.ts
		if sd := &s.sides[d.idx]; sd.firstData == 0 {
			sd.firstData = d.p.seq
		}
	} else {
		d.p.c[CounterUntrackedFrames]++
	}
	d.padPending = fh.Flags.Has(http2.FlagDataPadded)
	d.dataLeft, d.padLeft = fh.Length, 0
	if d.padPending {
		d.dataLeft = 0
	}
	if fh.Length == 0 {
		d.endData()
		return
	}
	d.st = stData
}

// dataStep streams DATA payload bytes into the stream's message counter.
func (d *dirState) dataStep(b []byte) int {
	used := 0
	if d.padPending {
		d.padPending = false
		pad := uint32(b[0])
		used = 1
		rest := d.fh.Length - 1
		if pad > rest {
			// Section 6.1: padding at least as long as the payload is a
			// connection error; treat the payload as opaque.
			d.p.c[CounterProtocolErrors]++
			if d.data != nil {
				d.data.sides[d.idx].framing = framingBad
			}
			pad = rest
		}
		d.dataLeft, d.padLeft = rest-pad, pad
	}
	if n := min(uint32(len(b)-used), d.dataLeft); n > 0 {
		if d.data != nil {
			d.data.sides[d.idx].data(b[used : used+int(n)])
		}
		d.dataLeft -= n
		used += int(n)
	}
	m := min(uint32(len(b)-used), d.padLeft)
	d.padLeft -= m
	used += int(m)
	d.remain -= uint32(used)
	if d.remain == 0 {
		d.endData()
	}
	return used
}

// skipData accounts for n (≤ remain) lost payload bytes of the DATA frame.
func (d *dirState) skipData(n uint32) {
	var sd *side
	if d.data != nil {
		sd = &d.data.sides[d.idx]
	}
	d.remain -= n
	if d.padPending {
		// The Pad Length octet is lost: data and padding cannot be told
		// apart any more.
		d.padPending = false
		d.dataLeft, d.padLeft = 0, d.remain
		if sd != nil {
			sd.loseFraming()
		}
	} else {
		k := min(n, d.dataLeft)
		d.dataLeft -= k
		d.padLeft -= n - k
		if sd != nil && k > 0 {
			sd.skip(k)
		}
	}
	if d.remain == 0 {
		d.endData()
	}
}

func (d *dirState) endData() {
	d.st = stHeader
	s := d.data
	d.data = nil
	if s != nil && d.fh.Flags.Has(http2.FlagDataEndStream) {
		d.p.sideEnded(s, d, false)
	}
}

// endSkip finishes a frame whose payload was not kept.
func (d *dirState) endSkip() {
	d.st = stHeader
	switch d.fh.Type {
	case http2.FrameHeaders, http2.FrameContinuation, http2.FramePushPromise:
		// The header block fragment is gone, and with it what it did to
		// the dynamic table.
		d.headerFrame(d.fh, nil, false)
	}
}

// completeFrame parses a non-DATA frame whose payload is complete.
func (d *dirState) completeFrame(payload []byte) {
	d.st = stHeader
	if t := d.fh.Type; t == http2.FrameHeaders || t == http2.FrameContinuation {
		// The block fragment is read in place: the Framer would allocate a
		// frame and copy the payload for every HEADERS frame.
		frag, ok := headerFragment(&d.fh, payload)
		if !ok {
			d.p.c[CounterProtocolErrors]++
		}
		d.headerFrame(d.fh, frag, ok)
		return
	}
	// The Framer reads the header kept by beginFrame, then the payload.
	// It only ever sees the frame types that do not take part in header
	// block order, which beginFrame has checked, and frame lengths that
	// beginFrame has checked against the same limit.
	d.rd.b = d.hdr[:]
	fh, err := d.fr.ReadFrameHeader()
	var f http2.Frame
	if err == nil {
		d.rd.b = payload
		f, err = d.fr.ReadFrameForHeader(fh)
	}
	if err != nil {
		// The frame's length was valid, so framing holds; its content
		// violates RFC 9113 (a StreamError or ConnectionError).
		d.p.c[CounterProtocolErrors]++
		if d.fh.Type == http2.FramePushPromise {
			d.headerFrame(d.fh, nil, false)
		}
		return
	}
	switch f := f.(type) {
	case *http2.PushPromiseFrame:
		d.headerFrame(f.FrameHeader, f.HeaderBlockFragment(), true)
	case *http2.RSTStreamFrame:
		d.p.onReset(d, f.StreamID, uint32(f.ErrCode))
	case *http2.SettingsFrame:
		d.onSettings(f)
	case *http2.GoAwayFrame:
		d.p.onGoAway(d, f.LastStreamID, uint32(f.ErrCode))
	}
}

// headerFragment returns the header block fragment of a HEADERS or
// CONTINUATION payload, with the checks x/net's Framer makes: both frames
// belong to a stream (RFC 9113 sections 6.2, 6.10); a HEADERS frame loses
// its Pad Length octet and padding when PADDED, and its stream dependency
// and weight (5 octets) when PRIORITY, and these must fit in the payload
// (section 6.2). ok is false for a frame that breaks them.
func headerFragment(fh *http2.FrameHeader, p []byte) (frag []byte, ok bool) {
	if fh.StreamID == 0 {
		return nil, false
	}
	if fh.Type != http2.FrameHeaders {
		return p, true
	}
	pad := 0
	if fh.Flags.Has(http2.FlagHeadersPadded) {
		if len(p) < 1 {
			return nil, false
		}
		pad, p = int(p[0]), p[1:]
	}
	if fh.Flags.Has(http2.FlagHeadersPriority) {
		if len(p) < 5 {
			return nil, false
		}
		p = p[5:]
	}
	if len(p) < pad {
		return nil, false
	}
	return p[:len(p)-pad], true
}

// inOrder checks what x/net's Framer checks between frames (RFC 9113
// section 6.10): a header block is a HEADERS frame followed by
// CONTINUATION frames of the same stream, with nothing in between, and a
// CONTINUATION only continues an open block. PUSH_PROMISE is not followed,
// as the Framer does not follow it.
func (d *dirState) inOrder(fh *http2.FrameHeader) bool {
	if d.inBlock {
		return fh.Type == http2.FrameContinuation && fh.StreamID == d.inBlockID
	}
	return fh.Type != http2.FrameContinuation
}

// takeOrder records a frame that passed inOrder.
func (d *dirState) takeOrder(fh *http2.FrameHeader) {
	if fh.Type == http2.FrameHeaders || fh.Type == http2.FrameContinuation {
		// END_HEADERS is the same bit in both (sections 6.2, 6.10).
		d.inBlock = !fh.Flags.Has(http2.FlagHeadersEndHeaders)
		d.inBlockID = fh.StreamID
	}
}

// fixedLength returns the payload length RFC 9113 fixes for a frame type.
func fixedLength(t http2.FrameType) (uint32, bool) {
	switch t {
	case http2.FramePing:
		return 8, true
	case http2.FrameWindowUpdate, http2.FrameRSTStream:
		return 4, true
	case http2.FramePriority:
		return 5, true
	}
	return 0, false
}

// onSettings applies the sender's SETTINGS to what the other endpoint may
// send (RFC 9113 section 6.5.2): the frames of the other direction.
func (d *dirState) onSettings(f *http2.SettingsFrame) {
	if f.IsAck() {
		return
	}
	o := &d.p.dirs[1-d.idx]
	for i := 0; i < f.NumSettings(); i++ {
		s := f.Setting(i)
		switch s.ID {
		case http2.SettingHeaderTableSize:
			o.setTableLimit(s.Val)
		case http2.SettingMaxFrameSize:
			if s.Val < initialMaxFrameSize || s.Val > maxMaxFrameSize {
				d.p.c[CounterProtocolErrors]++ // out of range, section 6.5.2
				continue
			}
			// A receiver may lower it, but frames sized for the old value
			// can still be in flight: keep the larger.
			if s.Val > o.maxFrame {
				o.maxFrame = s.Val
			}
		}
	}
}

// headerFrame handles HEADERS, CONTINUATION and PUSH_PROMISE (RFC 9113
// sections 6.2, 6.10, 6.6): one header block may span several frames and
// is decoded even for streams we do not track, since every block may change
// the dynamic table. ok is false when the fragment was lost.
func (d *dirState) headerFrame(fh http2.FrameHeader, frag []byte, ok bool) {
	endHeaders := fh.Flags.Has(http2.FlagHeadersEndHeaders) // same bit in all three
	if fh.Type == http2.FrameContinuation {
		if !d.blk.active || d.blk.id != fh.StreamID {
			// The Framer enforces CONTINUATION order; this only follows a
			// loss that left no block open.
			d.p.c[CounterProtocolErrors]++
			if d.hp.trusted {
				d.untrust()
			}
			return
		}
	} else {
		if d.blk.active {
			d.abortBlock()
		}
		var s *streamState
		if fh.Type == http2.FrameHeaders {
			s = d.p.streamFor(d, fh.StreamID)
		}
		d.beginBlock(s, fh.StreamID, fh.Type == http2.FrameHeaders && fh.Flags.Has(http2.FlagHeadersEndStream))
	}
	if ok {
		d.fragment(frag, endHeaders)
	} else {
		d.blockFailed(false)
		if s := d.blk.s; s != nil {
			s.sides[d.idx].lost = true
		}
	}
	if endHeaders {
		d.finishBlock()
	}
}

func (d *dirState) beginBlock(s *streamState, id uint32, endStream bool) {
	d.blk = blockState{active: true, s: s, id: id, endStream: endStream}
	if s != nil {
		sd := &s.sides[d.idx]
		if !sd.headers {
			sd.headers = true
			sd.headersTs = d.frameTs
			sd.headerSeq = d.p.seq
		}
		s.lastTs = d.ts
	}
	if d.hp.trusted {
		// Untracked streams are still decoded for the table, without
		// handing us their fields.
		d.hp.dec.SetEmitEnabled(s != nil)
	}
	d.hp.blk = d.hp.blk[:0]
	d.hp.blkOver = false
}

// fragment takes one header block fragment. A block in a single frame is
// decoded in place; a block spread over CONTINUATION frames is assembled
// (bounded by MaxHeaderBlock) and decoded once complete: handing pieces
// to the decoder one by one would make it re-copy a partial field for
// every fragment.
func (d *dirState) fragment(frag []byte, last bool) {
	b := &d.blk
	if b.fail || d.hp.blkOver {
		return
	}
	if last && len(d.hp.blk) == 0 {
		d.decodeBlock(frag)
		b.decoded = true
		return
	}
	if len(d.hp.blk)+len(frag) > int(d.p.opts.MaxHeaderBlock) {
		d.p.c[CounterHeaderBlockOversize]++
		d.hp.blkOver = true
		d.hp.blk = d.hp.blk[:0]
		return
	}
	d.hp.blk = append(d.hp.blk, frag...)
}

// decodeBlock decodes a complete header block with x/net's decoder, or
// against the shadow model while the table is not trusted. A block of only
// indexed fields that decoded before against the same table (or model)
// decodes to the same fields again (RFC 7541 section 6.1) and leaves the
// table as it is: what it gave is taken from the memo instead.
func (d *dirState) decodeBlock(blk []byte) {
	p := d.p
	b := &d.blk
	// The Decoder hands over the fields of tracked streams only
	// (beginBlock); the shadow model hands over every field.
	emits := !d.hp.trusted || b.s != nil
	indexed := onlyIndexed(blk)
	switch {
	case !indexed:
		d.hp.memo.changed()
	case !d.hp.trusted && d.hp.sh.exact():
		// Decoded below so that the exact model is trusted again.
	default:
		if m := d.hp.memo.find(blk); m != nil {
			if emits {
				b.f, b.listSize = m.f, m.listSize
			}
			return
		}
	}
	if d.hp.trusted {
		_, err := d.hp.dec.Write(blk)
		if err == nil {
			err = d.hp.dec.Close()
		}
		if err != nil {
			d.blockFailed(true)
			return
		}
	} else {
		refs, err := d.hp.sh.decode(blk, p.opts.MaxStringLen, d.fieldFn)
		p.c[CounterHPACKUnknownRefs] += uint64(refs)
		if refs > 0 {
			b.unknown = true
		}
		switch {
		case err != nil:
			d.blockFailed(true)
			return
		case d.hp.sh.exact():
			d.retrust()
			return
		}
	}
	if indexed && emits && !b.over && !b.unknown {
		// Every field was known and seen, none past MaxHeaderListSize.
		d.hp.memo.store(blk, &b.f, b.listSize)
	}
}

// blockFailed: the rest of the current block cannot be decoded, so the
// dynamic table is no longer known.
func (d *dirState) blockFailed(hpackErr bool) {
	if hpackErr {
		d.p.c[CounterHPACKErrors]++
	}
	d.blk.fail = true
	d.blk.unknown = true
	d.untrust()
}

// abortBlock ends a header block cut off by a loss: what it carried is
// unknown, what its HEADERS frame said (END_STREAM) still holds.
func (d *dirState) abortBlock() {
	if !d.blk.active {
		return
	}
	if !d.blk.fail {
		d.blockFailed(false)
	}
	d.finishBlock()
}

func (d *dirState) finishBlock() {
	b := &d.blk
	p := d.p
	switch {
	case b.fail || b.decoded:
	case d.hp.blkOver:
		// Too long to keep: what the block inserted into the table is
		// unknown.
		d.blockFailed(false)
	default:
		d.decodeBlock(d.hp.blk)
	}
	d.hp.blk = d.hp.blk[:0]
	d.hp.blkOver = false
	d.blocks++
	b.active = false
	// RFC 9113 section 8.3.1: requests carry :path; section 8.3.2:
	// responses carry :status.
	if b.f.has&hasPath != 0 {
		p.setClientDir(d.dir)
	} else if b.f.has&hasStatus != 0 {
		p.setClientDir(p.dirs[1-d.idx].dir)
	}
	s := b.s
	if s == nil {
		return
	}
	sd := &s.sides[d.idx]
	sd.f.merge(&b.f)
	if b.unknown {
		sd.unknown = true
	}
	if sd.blocks < 255 {
		sd.blocks++
	}
	if b.endStream {
		sd.endUndec = b.unknown
		p.sideEnded(s, d, true)
	}
}

// onField receives fields from the x/net Decoder.
func (d *dirState) onField(f hpack.HeaderField) {
	d.field(f.Name, f.Value, true, f.Size())
}

// field records one decoded header field of the current block.
func (d *dirState) field(name, value string, known bool, size uint32) {
	b := &d.blk
	if b.over {
		return
	}
	b.listSize += uint64(size)
	if b.listSize > uint64(d.p.opts.MaxHeaderListSize) {
		// Keep decoding for the table's sake, stop looking at fields.
		b.over = true
		b.unknown = true
		d.p.c[CounterHeaderListOversize]++
		if d.hp.trusted {
			d.hp.dec.SetEmitEnabled(false)
		}
		return
	}
	if !known {
		b.unknown = true
		return
	}
	f := &b.f
	switch name {
	case ":path":
		f.path = value
		f.has |= hasPath
	case ":authority":
		f.authority = value
		f.has |= hasAuthority
	case ":status":
		if v, ok := parseUint(value, 3); ok {
			f.status = v
			f.has |= hasStatus
		}
	case "content-type":
		f.ctype = value
		f.has |= hasCtype
	case "grpc-status":
		if v, ok := parseUint(value, 9); ok {
			f.grpcStatus = v
			f.has |= hasGRPCStatus
		}
	case "grpc-message":
		f.message = value
		f.has |= hasMessage
	case "grpc-timeout":
		if v, ok := parseTimeout(value); ok {
			f.timeout = v
			f.has |= hasTimeout
		}
	}
}

// lose accounts for n bytes, directly after everything fed so far, that
// were not captured.
func (d *dirState) lose(n uint64) {
	p := d.p
	p.c[CounterLostBytes] += n
	// Streams open now (including one whose HEADERS frame is cut here)
	// lost bytes: flag them once the frame is accounted for.
	defer func() { d.gap++ }()
	switch d.st {
	case stData:
		if n <= uint64(d.remain) {
			// Inside a DATA frame of known length: skip without losing sync.
			p.c[CounterLostInData] += n
			d.skipData(uint32(n))
			return
		}
		k := d.remain
		p.c[CounterLostInData] += uint64(k)
		d.skipData(k)
		n -= uint64(k)
	case stSkip:
		if n < uint64(d.remain) {
			d.remain -= uint32(n)
			return
		}
		n -= uint64(d.remain)
		d.remain = 0
		d.endSkip()
	case stPayload:
		// The frame cannot be parsed; its length still tells where the
		// next one starts.
		d.buf = d.buf[:0]
		if n < uint64(d.remain) {
			d.remain -= uint32(n)
			d.st = stSkip
			return
		}
		n -= uint64(d.remain)
		d.remain = 0
		d.endSkip()
	case stSync:
		// The bytes kept are not contiguous with what follows.
		p.c[CounterBytesSkipped] += uint64(len(d.rs) - d.rsOff)
		d.rs, d.rsOff = d.rs[:0], 0
		return
	}
	if n > 0 {
		// At or across a frame boundary: how many frames were lost is
		// unknown.
		d.lostSync(nil)
		d.rs, d.rsOff, d.seedN = d.rs[:0], 0, 0
	}
}

// lostSync starts searching for the next frame boundary after a loss or
// garbage; the seed bytes, already consumed, are searched again.
func (d *dirState) lostSync(seed []byte) {
	p := d.p
	p.c[CounterResyncs]++
	d.gap++
	d.abortBlock()
	// Any header block in the lost bytes may have changed the dynamic
	// table (RFC 7541 section 2.3.2).
	if d.hp.trusted || d.hp.sh.live() > 0 || !d.hp.sh.tail {
		d.untrust()
	}
	d.st = stSync
	d.seedN = copy(d.seed[:], seed)
	d.hdrN = 0
	d.buf = d.buf[:0]
	d.data = nil
}

// syncBuf returns rs emptied, allocating it on first use.
func (d *dirState) syncBuf() []byte {
	if d.rs == nil {
		d.rs = make([]byte, 0, syncWindow)
	}
	return d.rs[:0]
}

// syncLimit is the longest frame a boundary search accepts as a candidate:
// it and the next header must fit in half the window, so that a waiting
// candidate never keeps the window full.
func (d *dirState) syncLimit() uint32 {
	l := d.maxFrame
	if d.p.conn.Preexisting && l == maxMaxFrameSize {
		// SETTINGS unseen: the default limit is by far the most common.
		l = initialMaxFrameSize
	}
	return min(l, syncWindow/2-2*frameHeaderLen)
}

// syncAppend keeps a prefix of b for the search and returns its length.
func (d *dirState) syncAppend(b []byte) int {
	if d.rs == nil {
		d.rs = d.syncBuf()
	}
	if len(d.rs) == cap(d.rs) {
		// Drop the rejected positions. A candidate still waiting for
		// bytes needs at most half the window, so at least half is freed.
		n := copy(d.rs, d.rs[d.rsOff:])
		d.rs, d.rsOff = d.rs[:n], 0
		if n == cap(d.rs) {
			d.p.c[CounterBytesSkipped]++ // unreachable given syncLimit
			d.rs, d.rsOff = d.rs[:n-1], 0
			copy(d.rs, d.rs[1:])
		}
	}
	n := min(len(b), cap(d.rs)-len(d.rs))
	d.rs = append(d.rs, b[:n]...)
	return n
}

// syncScan looks, from rsOff on, for a frame header that a second plausible
// header follows where the first frame ends. It reports whether one was
// found; rsOff then points at it and parsing resumes there.
func (d *dirState) syncScan() bool {
	p := d.p
	limit := d.syncLimit()
	maxID := uint32(0)
	if p.maxClientID > 0 {
		maxID = p.maxClientID + maxStreamJump
	}
	for pos := d.rsOff; pos+frameHeaderLen <= len(d.rs); pos++ {
		switch checkCandidate(d.rs[pos:], limit, maxID) {
		case candWait:
			p.c[CounterBytesSkipped] += uint64(pos - d.rsOff)
			d.rsOff = pos
			return false
		case candOK:
			p.c[CounterBytesSkipped] += uint64(pos - d.rsOff)
			d.rsOff = pos
			d.st = stHeader
			d.hdrN = 0
			// A block open before the loss does not continue here.
			d.inBlock = false
			return true
		}
	}
	// Nothing yet; the last 8 bytes may still begin a header.
	if keep := len(d.rs) - (frameHeaderLen - 1); keep > d.rsOff {
		p.c[CounterBytesSkipped] += uint64(keep - d.rsOff)
		d.rsOff = keep
	}
	return false
}
