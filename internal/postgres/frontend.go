// Client messages: requests, and the prepared statements and portals they
// define.

package postgres

import (
	"bytes"
	"strings"
	"unicode/utf8"
)

func (p *Parser) openSub(ts uint64) {
	if !p.subOpen {
		p.subOpen = true
		p.sub++
		p.subStart = ts
	}
}

func (p *Parser) frontend(typ byte, body []byte, partial bool, ts uint64) {
	switch typ {
	case 'Q':
		p.subOpen = false
		q := p.newQuery(ts, false)
		switch {
		case partial:
			q.Text = textPrefix(body)
			q.TextTruncated = true
		case p.mQuery.Decode(body) != nil:
			p.stats.DecodeErrors.Add(1)
			q.TextUnknown = true
		default:
			q.Text = p.mQuery.String
			if !p.discarding {
				p.sqlSideEffects(q.Text)
			}
		}
		p.push(entry{kind: kQuery, ts: ts, q: q})

	case 'P':
		p.openSub(ts)
		e := entry{kind: kParse, ts: ts}
		ok := true
		switch {
		case partial:
			// Oversized or truncated: name and SQL prefix from the kept
			// bytes (pgproto3 decodes only whole messages).
			if name, rest, found := cstring(body); found {
				e.name = string(name)
				e.text = textPrefix(rest)
				e.truncated = bytes.IndexByte(rest, 0) < 0
			} else {
				ok = false
			}
		case p.mParse.Decode(body) != nil:
			ok = false
		default:
			e.name, e.text = p.mParse.Name, p.mParse.Query
			p.mParse.ParameterOIDs = p.mParse.ParameterOIDs[:0]
		}
		switch {
		case !ok:
			p.stats.DecodeErrors.Add(1)
			e.textUnknown = true
		case p.discarding:
			p.shadowStmts = shadowPut(p.shadowStmts, e.name, stmtInfo{text: e.text, truncated: e.truncated}, p.opts.MaxStatements)
		default:
			if e.name == "" {
				// Parse replaces the unnamed statement.
				p.unnamedStmt = stmtInfo{text: e.text, truncated: e.truncated}
				p.unnamedKnown = true
				e.inserted = true
			} else if !p.stmts.has(e.name) {
				// A Parse reusing a live name fails (42P05) and leaves the
				// old statement in place, so only a new name is stored.
				if p.stmts.put(e.name, stmtInfo{text: e.text, truncated: e.truncated}) {
					p.stats.StatementsEvicted.Add(1)
				}
				e.inserted = true
			}
		}
		p.push(e)

	case 'B':
		p.openSub(ts)
		// Bind is read by hand, not with pgproto3.Bind.Decode: of its
		// fields only the two leading names (destination portal, prepared
		// statement) are wanted, and Decode allocates the names, the
		// parameter and format-code slices on every execution (a third of
		// the pipeline's allocations under pgbench -M prepared). The
		// parameter values that follow are never looked at, so none can
		// reach a span.
		portalB, rest, ok := cstring(body)
		var stmtB []byte
		if ok {
			stmtB, _, ok = cstring(rest)
		}
		if !ok {
			p.stats.DecodeErrors.Add(1)
			p.push(entry{kind: kBind, ts: ts, textUnknown: true})
			break
		}
		stmt, info, known := p.lookupStmtBytes(stmtB)
		e := entry{kind: kBind, ts: ts, name: stmt, text: info.text, truncated: info.truncated, textUnknown: !known}
		pi := portalInfo{stmt: stmt, text: info.text, textUnknown: !known, truncated: info.truncated}
		switch {
		case p.discarding:
			p.shadowPortals = shadowPut(p.shadowPortals, string(portalB), pi, p.opts.MaxStatements)
		case len(portalB) == 0:
			// Bind replaces the unnamed portal.
			p.unnamedPortal, p.unnamedPKnown = pi, true
		default:
			if p.portals.put(string(portalB), pi) {
				p.stats.PortalsEvicted.Add(1)
			}
		}
		p.push(e)

	case 'D':
		p.openSub(ts)
		e := entry{kind: kDescribe, ts: ts}
		if partial || p.mDescribe.Decode(body) != nil {
			p.stats.DecodeErrors.Add(1)
			e.textUnknown = true
		} else {
			e.name = p.mDescribe.Name
			p.describeText(&e, p.mDescribe.ObjectType, e.name)
		}
		p.push(e)

	case 'E':
		start := ts
		if p.subOpen {
			start = p.subStart
		} else {
			p.sub++
		}
		p.subOpen = false
		q := p.newQuery(start, true)
		// Execute is the portal name and a 4-byte row limit; read by hand
		// for the reason Bind is (pgproto3.Execute.Decode copies the name).
		portalB, rest, ok := cstring(body)
		if partial || !ok || len(rest) < 4 {
			p.stats.DecodeErrors.Add(1)
			q.TextUnknown = true
		} else {
			pi, known := p.lookupPortalBytes(portalB)
			q.StatementName = pi.stmt
			q.Text = pi.text
			q.TextTruncated = pi.truncated
			q.TextUnknown = !known || pi.textUnknown
		}
		p.push(entry{kind: kExecute, ts: ts, q: q})

	case 'C':
		p.openSub(ts)
		e := entry{kind: kClose, ts: ts}
		if partial || p.mClose.Decode(body) != nil {
			p.stats.DecodeErrors.Add(1)
			e.textUnknown = true
		} else {
			// Close names the statement ('S') or the portal ('P') to drop.
			// For a portal, describeText turns e.name into the statement
			// the portal was bound from (what a failing Close reports), so
			// the table is updated with the name from the message.
			name := p.mClose.Name
			e.name = name
			p.describeText(&e, p.mClose.ObjectType, name)
			if !p.discarding {
				// Closing a name that does not exist is not an error.
				switch {
				case p.mClose.ObjectType == 'S' && name == "":
					p.unnamedKnown = false
				case p.mClose.ObjectType == 'S':
					p.stmts.del(name)
				case name == "":
					p.unnamedPKnown = false
				default:
					p.portals.del(name)
				}
			}
		}
		p.push(e)

	case 'S':
		// Sync ends the group; the backend answers with ReadyForQuery.
		p.subOpen = false
		p.push(entry{kind: kSync, ts: ts})

	case 'F':
		// FunctionCall (fast-path): answered by FunctionCallResponse and
		// ReadyForQuery; not a SQL query.
		p.subOpen = false
		p.push(entry{kind: kFunction, ts: ts})

	case 'H', 'X', 'd', 'c', 'f', 'p':
		// Flush, Terminate, the COPY FROM STDIN sub-protocol and
		// authentication responses get no response of their own.
	}
}

// describeText fills e with what is known of the statement or portal a
// Describe or Close names.
func (p *Parser) describeText(e *entry, objType byte, name string) {
	if objType == 'S' {
		info, known := p.lookupStmt(name)
		e.text, e.truncated, e.textUnknown = info.text, info.truncated, !known
		return
	}
	pi, known := p.lookupPortal(name)
	e.text, e.truncated, e.textUnknown = pi.text, pi.truncated, !known || pi.textUnknown
	e.name = pi.stmt
}

func (p *Parser) lookupStmt(name string) (stmtInfo, bool) {
	if info, ok := p.shadowStmts[name]; ok {
		return info, true
	}
	if name == "" {
		return p.unnamedStmt, p.unnamedKnown
	}
	return p.stmts.get(name)
}

// lookupStmtBytes is lookupStmt for a name still in the message. The name
// comes back as a string without allocating when the statement is known
// (the table's own copy).
func (p *Parser) lookupStmtBytes(name []byte) (string, stmtInfo, bool) {
	if info, ok := p.shadowStmts[string(name)]; ok {
		return string(name), info, true
	}
	if len(name) == 0 {
		return "", p.unnamedStmt, p.unnamedKnown
	}
	if key, info, ok := p.stmts.getBytes(name); ok {
		return key, info, true
	}
	return string(name), stmtInfo{}, false
}

// lookupPortalBytes is lookupPortal for a name still in the message.
func (p *Parser) lookupPortalBytes(name []byte) (portalInfo, bool) {
	if pi, ok := p.shadowPortals[string(name)]; ok {
		return pi, true
	}
	if len(name) == 0 {
		return p.unnamedPortal, p.unnamedPKnown
	}
	_, pi, ok := p.portals.getBytes(name)
	return pi, ok
}

func (p *Parser) lookupPortal(name string) (portalInfo, bool) {
	if pi, ok := p.shadowPortals[name]; ok {
		return pi, true
	}
	if name == "" {
		return p.unnamedPortal, p.unnamedPKnown
	}
	return p.portals.get(name)
}

// shadowPut stores v under k in a map bounded to limit entries.
func shadowPut[V any](m map[string]V, k string, v V, limit int) map[string]V {
	if m == nil {
		m = make(map[string]V)
	}
	if _, ok := m[k]; ok || len(m) < limit {
		m[k] = v
	}
	return m
}

// endDiscarding: the backend answers again after Sync.
func (p *Parser) endDiscarding() {
	p.discarding = false
	clear(p.shadowStmts)
	clear(p.shadowPortals)
}

// sqlSideEffects applies the simple-query commands that drop prepared
// statements server-side (DISCARD ALL, DEALLOCATE ALL, DEALLOCATE name), as
// poolers such as PgBouncer send them between clients.
func (p *Parser) sqlSideEffects(sql string) {
	s := strings.TrimSpace(sql)
	s = strings.TrimSuffix(s, ";")
	if len(s) < 10 || (s[0]|0x20 != 'd') {
		return
	}
	f := strings.Fields(s)
	switch {
	case len(f) == 2 && strings.EqualFold(f[0], "discard") && strings.EqualFold(f[1], "all"),
		len(f) == 2 && strings.EqualFold(f[0], "deallocate") && strings.EqualFold(f[1], "all"),
		len(f) == 3 && strings.EqualFold(f[0], "deallocate") && strings.EqualFold(f[1], "prepare") && strings.EqualFold(f[2], "all"):
		p.stmts.clear()
		p.unnamedKnown = false
		p.portals.clear()
		p.unnamedPKnown = false
	case len(f) == 2 && strings.EqualFold(f[0], "deallocate"):
		p.stmts.del(f[1])
	case len(f) == 3 && strings.EqualFold(f[0], "deallocate") && strings.EqualFold(f[1], "prepare"):
		p.stmts.del(f[2])
	}
}

// push queues a request for its responses.
func (p *Parser) push(e entry) {
	p.seq++
	e.seq = p.seq
	e.sub = p.sub
	if e.kind == kParse || e.kind == kBind || e.kind == kDescribe || e.kind == kClose {
		e.subStart = p.subStart
	}
	if p.disturbed {
		// The backend lost a boundary after the pending requests were sent,
		// and the client sends again: a client that waits for each answer
		// has had its answers, so the pending requests lost theirs.
		p.disturbed = false
		for p.fifo.len() > 0 && p.fifo.at(0).seq <= p.disturbSeq {
			p.lost(p.fifo.pop(), e.ts)
		}
	}
	if p.discarding {
		if e.kind != kSync {
			p.discard(e)
			return
		}
		// The backend stops discarding at this Sync.
		p.endDiscarding()
	}
	if p.overflow && p.fifo.len() == 0 {
		p.overflow = false
		p.flushUntracked()
	}
	if p.overflow || p.fifo.len() >= p.opts.MaxPending {
		// Too many requests in flight: this one is not tracked (nor any
		// other until the tracked ones are answered, so that responses
		// still match in order). A query is still reported.
		p.overflow = true
		p.stats.PendingOverflow.Add(1)
		if e.q != nil {
			e.q.Incomplete = true
			e.q.End = e.ts
			if len(p.untracked) < p.opts.MaxPending {
				p.untracked = append(p.untracked, e.q)
			} else {
				p.emit(e.q) // out of order, but not lost
			}
		}
		return
	}
	p.fifo.push(e)
}

// flushUntracked reports the queries refused by the pending bound once
// every tracked request before them is resolved.
func (p *Parser) flushUntracked() {
	for i, q := range p.untracked {
		p.untracked[i] = nil
		p.emit(q)
	}
	p.untracked = p.untracked[:0]
}

// discard resolves a request the backend ignores because an earlier one of
// the group failed.
func (p *Parser) discard(e entry) {
	switch e.kind {
	case kExecute:
		if p.errQ != nil && e.sub == p.errQSub {
			// The Execute of the group whose Parse/Bind/Describe failed: the
			// error query stands for it.
			p.errQ.Extended = true
			p.errQ = nil
			return
		}
		e.q.Skipped = true
		p.hold(e.q, true)
	case kQuery:
		e.q.Skipped = true
		p.hold(e.q, true)
	case kParse:
		if e.inserted {
			p.undoParse(e.name)
		}
	}
}

func (p *Parser) undoParse(name string) {
	if name == "" {
		p.unnamedKnown = false
	} else {
		p.stmts.del(name)
	}
}

// textPrefix turns the kept prefix of a truncated SQL text into a string,
// cut at a NUL and without a trailing partial UTF-8 sequence.
func textPrefix(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				b = b[:i]
			}
			break
		}
	}
	return string(b)
}
