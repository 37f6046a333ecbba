package postgres

import (
	"encoding/binary"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

// stmtInfo is what is known of a prepared statement.
type stmtInfo struct {
	text      string
	truncated bool
}

// portalInfo is what is known of a portal: the statement it was bound from.
type portalInfo struct {
	stmt        string
	text        string
	textUnknown bool
	truncated   bool
}

// held is a finished query waiting for the ReadyForQuery of its round.
type held struct {
	q *Query
	// endAtRFQ: no later Execute of the round followed it, so the client
	// was waiting for the ReadyForQuery: End moves there.
	endAtRFQ bool
}

// Parser follows one connection. It implements stream.Parser; calls for one
// connection must not be concurrent.
type Parser struct {
	info  *stream.ConnInfo
	opts  Options
	stats *Stats
	sink  Sink

	// ordinal numbers the queries of this connection (Query.Ordinal).
	ordinal uint64
	// lastTs is the time of the last bytes seen, either direction.
	lastTs uint64

	// local batches the busiest counters; flushed at the end of each call.
	local struct {
		messages     uint64
		bytesSkipped uint64
	}

	egress, ingress dirState

	user, database string
	// startup: a StartupMessage was seen and the ReadyForQuery that ends
	// authentication has not arrived yet.
	startup bool
	closed  bool
	tls     bool

	fifo fifo
	seq  uint64
	held []held

	// sub numbers Parse/Bind/Describe/Execute groups; subOpen says a group
	// has started and its Execute (or Sync) has not been seen.
	sub      uint64
	subOpen  bool
	subStart uint64

	// discarding: an ErrorResponse in extended mode arrived and the Sync
	// that ends it has not been sent yet: the backend ignores everything
	// the client sends until then.
	discarding bool
	// shadow holds what Parse and Bind define while the backend discards
	// them: never created server-side, but the text of the skipped
	// Executes of the group.
	shadowStmts   map[string]stmtInfo
	shadowPortals map[string]portalInfo
	// errQ is the query made for an error raised at Parse, Bind, Describe or
	// Close, waiting to be taken over by the Execute of the same group.
	errQ    *Query
	errQSub uint64

	// overflow: MaxPending was hit; requests are not tracked until every
	// tracked one is answered. Their queries wait in untracked (bounded too)
	// so that the sink still sees request order.
	overflow  bool
	untracked []*Query
	// disturbed: the backend stream lost a boundary while requests up to
	// disturbSeq were pending; their responses may be gone.
	disturbed  bool
	disturbSeq uint64

	stmts         lru[stmtInfo]
	unnamedStmt   stmtInfo
	unnamedKnown  bool
	portals       lru[portalInfo]
	unnamedPortal portalInfo
	unnamedPKnown bool

	// lastTag is the last command tag seen, reused when it repeats.
	lastTag string

	// Reused decode targets.
	mQuery    pgproto3.Query
	mParse    pgproto3.Parse
	mDescribe pgproto3.Describe
	mClose    pgproto3.Close
	mCC       pgproto3.CommandComplete
	mRFQ      pgproto3.ReadyForQuery
	mErr      pgproto3.ErrorResponse
}

// newParser builds the parser of one connection.
func newParser(conn *stream.ConnInfo, sink Sink, opts Options, stats *Stats) *Parser {
	p := &Parser{
		info:    conn,
		opts:    opts,
		stats:   stats,
		sink:    sink,
		stmts:   newLRU[stmtInfo](opts.MaxStatements),
		portals: newLRU[portalInfo](opts.MaxStatements),
	}
	p.egress.p = p
	p.ingress.p = p
	fe, be := &p.egress, &p.ingress
	switch conn.Role {
	case stream.RoleClient:
		// The observed process is the client: it writes frontend messages.
	case stream.RoleServer:
		fe, be = be, fe
	}
	if conn.Role != stream.RoleUnknown {
		fe.side = sideFrontend
		be.side = sideBackend
		if conn.Preexisting {
			// The start was missed: the first bytes may be anywhere in a
			// message, so the first boundary is searched for.
			fe.mode, be.mode = modeResync, modeResync
		} else {
			fe.mode, be.mode = modeStartup, modeTyped
		}
	} else {
		// Unknown role: each direction's side is decided from what it
		// carries (a start-up packet, or a message type only one side
		// sends).
		p.egress.mode, p.ingress.mode = modeResync, modeResync
	}
	stats.Connections.Add(1)
	return p
}

func (p *Parser) dir(d stream.Direction) *dirState {
	if d == stream.Egress {
		return &p.egress
	}
	return &p.ingress
}

func (p *Parser) other(d *dirState) *dirState {
	if d == &p.egress {
		return &p.ingress
	}
	return &p.egress
}

func (p *Parser) backendDir() *dirState {
	switch {
	case p.egress.side == sideBackend:
		return &p.egress
	case p.ingress.side == sideBackend:
		return &p.ingress
	}
	return nil
}

// Data implements stream.Parser.
func (p *Parser) Data(dir stream.Direction, ts uint64, data []byte, lost uint64) {
	if p.closed || (dir != stream.Egress && dir != stream.Ingress) {
		return
	}
	d := p.dir(dir)
	p.lastTs = max(p.lastTs, ts)
	if p.tls {
		p.stats.EncryptedBytes.Add(uint64(len(data)) + lost)
		return
	}
	if d.mode == modeResync && d.side == sideUnknown && len(d.rs) == 0 && p.info.Role == stream.RoleUnknown &&
		!p.info.Preexisting && len(data) >= 8 {
		// A connection seen from its start whose role is unknown: a
		// start-up packet proves this direction is the client's.
		if startupHeaderValid(binary.BigEndian.Uint32(data), binary.BigEndian.Uint32(data[4:])) {
			p.setSide(d, sideFrontend)
			d.mode = modeStartup
		}
	}
	d.run(ts, data)
	if lost > 0 {
		d.lose(ts, lost)
	}
	p.flushLocal()
}

// Expire implements stream.Expirer: when the connection saw no bytes for
// idle nanoseconds before now, the queries still waiting for an answer are
// emitted as incomplete (the peer was killed, or the answer was lost). An
// answer that comes later is counted as unmatched.
func (p *Parser) Expire(now, idle uint64) {
	if p.closed || p.fifo.len() == 0 || now < p.lastTs || now-p.lastTs < idle {
		return
	}
	p.flushHeld(0, 0, false)
	for p.fifo.len() > 0 {
		e := p.fifo.pop()
		if e.q != nil {
			e.q.Incomplete = true
			e.q.End = max(now, e.q.Start)
			e.q.markUnanswered(UnansweredExpired)
			p.emit(e.q)
		}
	}
	p.flushLocal()
}

// markUnanswered records why a query ended when no response to it was
// seen: no rows, no command tag, no error.
func (q *Query) markUnanswered(why Unanswered) {
	if q.CommandTag == "" && q.Error == nil && q.RowsReturned == 0 && !q.PortalSuspended {
		q.Unanswered = why
	}
}

// Close implements stream.Parser: pending queries are emitted as incomplete.
func (p *Parser) Close(ts uint64) {
	if p.closed {
		return
	}
	p.closed = true
	for _, d := range []*dirState{&p.egress, &p.ingress} {
		if d.inMsg {
			// A message cut by the close: it can no longer complete.
			p.stats.TruncatedMessages.Add(1)
		}
		// Bytes still held for judgement were never part of a message.
		p.local.bytesSkipped += uint64(len(d.rs) + d.hdrN)
		d.rs, d.body = nil, nil
	}
	// Finished queries first (they are older), then the unanswered ones,
	// then those that were never tracked.
	p.flushHeld(0, 0, false)
	for p.fifo.len() > 0 {
		e := p.fifo.pop()
		if e.q != nil {
			e.q.Incomplete = true
			e.q.End = max(ts, e.q.Start)
			e.q.markUnanswered(UnansweredClosed)
			p.emit(e.q)
		}
	}
	p.flushUntracked()
	p.flushLocal()
}

func (p *Parser) flushLocal() {
	if p.local.messages > 0 {
		p.stats.Messages.Add(p.local.messages)
		p.local.messages = 0
	}
	if p.local.bytesSkipped > 0 {
		p.stats.BytesSkipped.Add(p.local.bytesSkipped)
		p.local.bytesSkipped = 0
	}
}

// setSide records that d carries side s; the other direction carries the
// other side.
func (p *Parser) setSide(d *dirState, s side) {
	d.side = s
	if o := p.other(d); o.side == sideUnknown {
		o.side = s.opposite()
	}
}

// stopTLS abandons the socket bytes of a connection that switched to
// encryption. Its plaintext, if captured from the TLS library, arrives as
// another connection.
func (p *Parser) stopTLS() {
	if p.tls {
		return
	}
	p.tls = true
	p.egress.mode, p.ingress.mode = modeStopped, modeStopped
	p.stats.TLSConnections.Add(1)
}

// backendDisturbed is called when the backend stream lost a message
// boundary: responses of the requests pending now may be gone.
func (p *Parser) backendDisturbed() {
	if p.fifo.len() > 0 {
		p.disturbed = true
		p.disturbSeq = p.seq
	}
}

func (p *Parser) newQuery(start uint64, extended bool) *Query {
	p.ordinal++
	return &Query{
		Ordinal:      p.ordinal,
		Start:        start,
		Extended:     extended,
		Database:     p.database,
		User:         p.user,
		RowsAffected: -1,
	}
}

func (p *Parser) emit(q *Query) {
	s := p.stats
	s.Queries.Add(1)
	if q.Incomplete {
		s.QueriesIncomplete.Add(1)
	}
	if q.Skipped {
		s.QueriesSkipped.Add(1)
	}
	if q.TextUnknown {
		s.QueriesWithoutText.Add(1)
	}
	if q.TextTruncated {
		s.QueriesTruncated.Add(1)
	}
	if q.End < q.Start {
		q.End = q.Start
	}
	if p.sink != nil {
		p.sink(p.info, q)
	}
}

// hold keeps a finished query until the ReadyForQuery of its round.
func (p *Parser) hold(q *Query, endAtRFQ bool) {
	p.held = append(p.held, held{q: q, endAtRFQ: endAtRFQ})
	if len(p.held) > p.opts.MaxPending {
		// Bounded: a very long pipeline without Sync gets its oldest
		// finished queries emitted before the round ends.
		h := p.held[0]
		copy(p.held, p.held[1:])
		p.held[len(p.held)-1] = held{}
		p.held = p.held[:len(p.held)-1]
		if h.q == p.errQ {
			p.errQ = nil
		}
		p.emit(h.q)
	}
}

// flushHeld emits the finished queries of a round closed by a
// ReadyForQuery at ts with status (atRFQ), or by the end of the connection.
func (p *Parser) flushHeld(ts uint64, status byte, atRFQ bool) {
	for i := range p.held {
		h := p.held[i]
		if atRFQ {
			if h.endAtRFQ || h.q.End == 0 {
				h.q.End = ts
			}
			h.q.TxStatus = status
		}
		p.held[i] = held{}
		p.emit(h.q)
	}
	p.held = p.held[:0]
	p.errQ = nil
}

// message dispatches one typed message of direction d. t0 is the time of
// its first byte, t1 of its last.
func (p *Parser) message(d *dirState, typ byte, body []byte, partial bool, t0, t1 uint64) {
	p.local.messages++
	s := d.side
	if s == sideUnknown {
		if !partial {
			s = decide(typ, body)
		}
		if s == sideUnknown {
			p.stats.UndecidedMessages.Add(1)
			return
		}
		p.setSide(d, s)
	}
	if s == sideFrontend {
		p.frontend(typ, body, partial, t0)
	} else {
		p.backend(typ, body, partial, t1)
	}
}

// startupPacket handles an untyped packet from the client.
func (p *Parser) startupPacket(d *dirState, body []byte, partial bool) {
	p.local.messages++
	if d.side == sideUnknown {
		p.setSide(d, sideFrontend)
	}
	if partial || len(body) < 4 {
		p.stats.DecodeErrors.Add(1)
		d.mode = modeTyped
		return
	}
	switch binary.BigEndian.Uint32(body) {
	case sslRequestCode, gssEncRequestCode:
		// The server answers with a single byte before anything else; the
		// client then sends its StartupMessage (or starts encryption).
		if b := p.backendDir(); b != nil && !b.inMsg && b.hdrN == 0 &&
			(b.mode == modeTyped || (b.mode == modeResync && len(b.rs) == 0)) {
			b.mode = modeAnswer
		}
	case cancelRequestCode:
		var m pgproto3.CancelRequest
		if m.Decode(body) != nil {
			p.stats.DecodeErrors.Add(1)
		}
		// The server closes the connection without answering.
		p.stats.CancelRequests.Add(1)
		d.mode = modeTyped
	default:
		var m pgproto3.StartupMessage
		if err := m.Decode(body); err != nil {
			p.stats.DecodeErrors.Add(1)
		} else {
			p.user = m.Parameters["user"]
			p.database = m.Parameters["database"]
			// The backend defaults the database name to the user name.
			if p.database == "" {
				p.database = p.user
			}
		}
		p.startup = true
		d.mode = modeTyped
	}
}
