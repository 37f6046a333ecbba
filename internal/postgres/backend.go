// Server messages: matching responses to the pending requests.

package postgres

import (
	"github.com/jackc/pgx/v5/pgproto3"
)

// lost resolves a request whose responses are missing.
func (p *Parser) lost(e entry, ts uint64) {
	p.stats.LostResponses.Add(1)
	if e.q != nil {
		e.q.Incomplete = true
		e.q.End = ts
		p.hold(e.q, false)
	}
}

// match returns the pending request a backend message at ts answers, given
// the request kinds it can answer, or nil. Requests before it that cannot
// take it lost their responses.
func (p *Parser) match(ts uint64, mask uint16) *entry {
	for i := 0; i < p.fifo.len(); i++ {
		e := p.fifo.at(i)
		if e.ts > ts {
			// Responses come after their requests: this one answers
			// something that was not seen.
			break
		}
		if mask&(1<<e.kind) != 0 {
			for range i {
				p.lost(p.fifo.pop(), ts)
			}
			return p.fifo.at(0)
		}
	}
	p.stats.UnmatchedResponses.Add(1)
	return nil
}

func (p *Parser) backend(typ byte, body []byte, partial bool, ts uint64) {
	switch typ {
	case 'D':
		// DataRow: one row of the running query. Its values are not needed
		// (and never kept): the frame alone counts the row.
		if p.fifo.len() > 0 {
			if e := p.fifo.at(0); (e.kind == kExecute || e.kind == kQuery) && e.ts <= ts {
				e.q.RowsReturned++
				return
			}
		}
		if e := p.match(ts, mExecute|mQuery); e != nil {
			e.q.RowsReturned++
		}

	case 'C':
		e := p.match(ts, mExecute|mQuery)
		if e == nil {
			return
		}
		if partial || p.mCC.Decode(body) != nil {
			p.stats.DecodeErrors.Add(1)
		} else {
			// Tags repeat ("INSERT 0 1" after "INSERT 0 1"): reuse the last
			// string rather than allocate one per query.
			tag := p.lastTag
			if string(p.mCC.CommandTag) != tag {
				tag = string(p.mCC.CommandTag)
				p.lastTag = tag
			}
			p.mCC.CommandTag = nil
			e.q.CommandTag = tag
			if _, n := ParseCommandTag(tag); n >= 0 {
				if e.q.RowsAffected < 0 {
					e.q.RowsAffected = 0
				}
				e.q.RowsAffected += n
			}
		}
		// A simple query may hold several statements, each with its own
		// CommandComplete; only ReadyForQuery ends it.
		if e.kind == kExecute {
			p.completeExecute(ts)
		}

	case 'I':
		// EmptyQueryResponse replaces CommandComplete for an empty string.
		if e := p.match(ts, mExecute|mQuery); e != nil && e.kind == kExecute {
			p.completeExecute(ts)
		}

	case 's':
		// PortalSuspended: Execute hit its row limit.
		if e := p.match(ts, mExecute); e != nil {
			e.q.PortalSuspended = true
			p.completeExecute(ts)
		}

	case 'T':
		// RowDescription answers Describe, or precedes the rows of each
		// statement of a simple query.
		if e := p.match(ts, mDescribe|mQuery); e != nil && e.kind == kDescribe {
			p.fifo.pop()
		}

	case 'n':
		// NoData answers Describe of a statement that returns no rows.
		if p.match(ts, mDescribe) != nil {
			p.fifo.pop()
		}

	case 't':
		// ParameterDescription comes first in the answer to Describe('S');
		// RowDescription or NoData follows.
		p.match(ts, mDescribe)

	case '1':
		if p.match(ts, mParse) != nil {
			p.fifo.pop()
		}

	case '2':
		if p.match(ts, mBind) != nil {
			p.fifo.pop()
		}

	case '3':
		if p.match(ts, mClose) != nil {
			p.fifo.pop()
		}

	case 'G', 'H', 'W':
		// CopyInResponse / CopyOutResponse / CopyBothResponse: the running
		// query switched to COPY; CommandComplete still ends it.
		p.match(ts, mExecute|mQuery)

	case 'V':
		p.match(ts, mFunction)

	case 'Z':
		var status byte
		if partial || p.mRFQ.Decode(body) != nil {
			p.stats.DecodeErrors.Add(1)
		} else {
			status = p.mRFQ.TxStatus
		}
		p.ready(ts, status)

	case 'E':
		p.errorResponse(body, partial, ts)

	case 'd', 'c':
		// CopyData / CopyDone of COPY TO STDOUT: the count arrives in the
		// CommandComplete tag.

	case 'N', 'A', 'S', 'K', 'R', 'v':
		// NoticeResponse, NotificationResponse and ParameterStatus can come
		// at any time; BackendKeyData, Authentication and
		// NegotiateProtocolVersion belong to start-up. None answers a query.
	}
}

// completeExecute finishes the Execute at the head of the queue.
func (p *Parser) completeExecute(ts uint64) {
	e := p.fifo.pop()
	e.q.End = ts
	p.hold(e.q, p.lastExecuteOfRound())
}

// lastExecuteOfRound reports whether the queue, just after an Execute was
// answered, holds no other Execute before its Sync. That Execute ends, from
// the client's point of view, at the ReadyForQuery answering the Sync: the
// Close, Describe or Bind messages sent between it and the Sync (Close of
// the portal it ran, typically) only add their own completion messages
// before it. With no Sync sent yet (the client used Flush and waits for this
// answer), it ends at its own completion message.
func (p *Parser) lastExecuteOfRound() bool {
	for i := 0; i < p.fifo.len(); i++ {
		switch p.fifo.at(i).kind {
		case kSync:
			return true
		case kExecute, kQuery, kFunction:
			return false
		}
	}
	return false
}

// ready handles ReadyForQuery: the round of requests up to the first Sync
// (or simple Query, or FunctionCall) is over.
func (p *Parser) ready(ts uint64, status byte) {
	wasStartup := p.startup
	p.startup = false
	p.endDiscarding()
	p.disturbed = false
	for p.fifo.len() > 0 {
		e := p.fifo.at(0)
		if e.ts > ts {
			break
		}
		ent := p.fifo.pop()
		switch ent.kind {
		case kQuery:
			ent.q.End = ts
			p.hold(ent.q, true)
			p.flushHeld(ts, status, true)
			p.afterRound()
			return
		case kSync, kFunction:
			p.flushHeld(ts, status, true)
			p.afterRound()
			return
		default:
			// Still waiting for a response when the round ended: it was lost.
			p.lost(ent, ts)
		}
	}
	if !wasStartup {
		// No round was pending: the ReadyForQuery of a request not seen.
		p.stats.UnmatchedResponses.Add(1)
	}
	p.flushHeld(ts, status, true)
	p.afterRound()
}

// afterRound emits the untracked queries once nothing tracked is pending.
func (p *Parser) afterRound() {
	if p.fifo.len() == 0 && len(p.untracked) > 0 {
		p.flushUntracked()
	}
}

// errorResponse handles ErrorResponse.
func (p *Parser) errorResponse(body []byte, partial bool, ts uint64) {
	er := &Error{}
	if partial || p.mErr.Decode(body) != nil {
		p.stats.DecodeErrors.Add(1)
	} else {
		er.Severity = p.mErr.SeverityUnlocalized
		if er.Severity == "" {
			er.Severity = p.mErr.Severity
		}
		er.Code = p.mErr.Code
		er.Message = p.mErr.Message
	}
	p.mErr = pgproto3.ErrorResponse{}
	if p.fifo.len() == 0 || p.fifo.at(0).ts > ts {
		if p.startup {
			// Authentication failed, too many clients, no such database...
			p.stats.StartupErrors.Add(1)
		} else {
			// A FATAL error outside a query (administrator shutdown, idle
			// timeout) or the answer to an unseen request.
			p.stats.UnmatchedResponses.Add(1)
		}
		return
	}
	h := p.fifo.at(0)
	switch h.kind {
	case kQuery:
		// Simple query: the error ends the statement being run (the rest of
		// a multi-statement string is skipped); ReadyForQuery follows.
		if h.q.Error == nil {
			h.q.Error = er
		}
		return
	case kFunction:
		return
	case kSync:
		// An error answering Sync itself: committing the implicit
		// transaction failed (a deferred constraint). It belongs to the
		// round's last query.
		for i := len(p.held) - 1; i >= 0; i-- {
			if p.held[i].q.Error == nil {
				p.held[i].q.Error = er
				return
			}
		}
		p.stats.UnmatchedResponses.Add(1)
		return
	}
	// Extended protocol: the failing message is the head of the queue.
	e := p.fifo.pop()
	if e.kind == kExecute {
		e.q.Error = er
		e.q.End = ts
		p.hold(e.q, true)
	} else {
		if e.kind == kParse && e.inserted {
			// The statement was not created.
			p.undoParse(e.name)
		}
		q := p.newQuery(e.subStart, true)
		q.Text, q.TextTruncated, q.TextUnknown = e.text, e.truncated, e.textUnknown
		q.StatementName = e.name
		q.Error = er
		q.End = ts
		p.hold(q, true)
		p.errQ, p.errQSub = q, e.sub
	}
	// ErrorResponse in extended mode: the backend discards messages until
	// Sync. The queued ones up to the Sync never run.
	for p.fifo.len() > 0 {
		if p.fifo.at(0).kind == kSync {
			return
		}
		p.discard(p.fifo.pop())
	}
	// The Sync has not been sent yet: what the client sends until then is
	// discarded too.
	p.discarding = true
}
