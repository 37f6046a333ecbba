// Package postgres follows the PostgreSQL frontend/backend protocol (version
// 3) on one connection and turns it into Query values: one per simple-query
// 'Q' message and one per extended-protocol Execute, with the SQL text, the
// prepared-statement name, the command tag, row counts, the error (SQLSTATE)
// and the kernel timestamps of the first request byte and of the end of the
// response.
//
// It is pure: bytes and timestamps in, values out. Message bodies are decoded
// with github.com/jackc/pgx/v5/pgproto3, except the ones on every execution:
// Bind and Execute are read in place for the names they carry (pgproto3 would
// allocate the parameter values), and DataRow is only counted. The framing
// (1-byte type, 4-byte big-endian length that counts itself) is done here so
// that a parser can skip messages it does not want to buffer, survive lost
// bytes and resynchronise on the next plausible message boundary. Every piece
// of state is bounded and every loss is counted in Stats.
package postgres

import (
	"sync/atomic"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

// Query is one statement execution seen on a connection.
type Query struct {
	// Ordinal numbers the query on its connection from 1, in request
	// order. The client's and the server's parsers read the same bytes, so
	// both ends number a query alike: spans use it to find each other.
	Ordinal uint64
	// Start is the kernel time of the Data call that carried the first byte
	// of the request: the 'Q' message, or the first message (Parse, Bind,
	// Describe or Close) of the group that ends with this Execute.
	Start uint64
	// End is the kernel time of the ReadyForQuery that closed the query, or
	// of its own completion message (CommandComplete, EmptyQueryResponse,
	// PortalSuspended, ErrorResponse) when later Executes of the same
	// pipeline followed it; for an Incomplete query, the time it was given up.
	End uint64

	// Text is the raw SQL as sent (the sanitizer runs later). For a simple
	// query holding several statements it is the whole string.
	Text string
	// TextUnknown is set when the statement was prepared before capture
	// started (or was evicted from the bounded statement table): Text is
	// empty and StatementName says which statement ran.
	TextUnknown bool
	// TextTruncated is set when Text is only a prefix of the SQL because
	// the message was larger than Options.MaxMessageSize or bytes of it
	// were lost.
	TextTruncated bool
	// StatementName is the prepared statement executed ("" for the unnamed
	// statement and for simple queries).
	StatementName string
	// Extended is true for an Execute (extended query protocol) and false
	// for a simple 'Q' query.
	Extended bool

	// Database and User come from the StartupMessage; empty when the
	// connection was open before capture started.
	Database, User string

	// CommandTag is the tag of the last CommandComplete ("INSERT 0 5",
	// "SELECT 3", "CREATE TABLE"); empty when none arrived.
	CommandTag string
	// RowsAffected is the sum of the row counts of the command tags, -1 when
	// no tag carried a count.
	RowsAffected int64
	// RowsReturned counts DataRow messages.
	RowsReturned int64
	// Error is the first ErrorResponse of the query, nil on success.
	Error *Error
	// TxStatus is the transaction status byte of the closing ReadyForQuery:
	// 'I' idle, 'T' in a transaction block, 'E' in a failed transaction
	// block; 0 when the query did not end at a ReadyForQuery.
	TxStatus byte
	// PortalSuspended is set when an Execute stopped at its row limit; the
	// client may fetch more rows with another Execute of the same portal.
	PortalSuspended bool

	// Incomplete marks a query whose response was not (fully) seen: the
	// connection closed, bytes were lost, or a later response showed the
	// earlier one went missing.
	Incomplete bool
	// Unanswered says why a query that got no response message at all
	// ended: its connection closed first, or it waited longer than the
	// request idle timeout (its peer was killed, or is still working).
	// NotUnanswered for every query that saw a response, and for one whose
	// response went missing in lost bytes (that is the capture's failure,
	// not the query's).
	Unanswered Unanswered
	// Skipped marks an extended-protocol request that the server never ran:
	// after an ErrorResponse the backend discards messages until Sync.
	Skipped bool
}

// Unanswered is Query.Unanswered.
type Unanswered uint8

const (
	// NotUnanswered: a response was seen (or the query is not finished).
	NotUnanswered Unanswered = iota
	// UnansweredClosed: the connection closed before any response.
	UnansweredClosed
	// UnansweredExpired: no response within the request idle timeout.
	UnansweredExpired
)

// String names the reason as spans report it.
func (u Unanswered) String() string {
	switch u {
	case UnansweredClosed:
		return "connection closed"
	case UnansweredExpired:
		return "request idle timeout"
	}
	return ""
}

// Error is the part of an ErrorResponse that is kept.
type Error struct {
	// Severity is the non-localized severity (ERROR, FATAL, PANIC) when the
	// server sent it (9.6+), else the localized one.
	Severity string
	// Code is the SQLSTATE.
	Code string
	// Message is the primary human-readable message.
	Message string
}

// Sink receives every finished query, in request order per connection. It is
// called on the goroutine that feeds the parser; q is owned by the sink.
type Sink func(conn *stream.ConnInfo, q *Query)

// Options bounds the state kept per connection.
type Options struct {
	// MaxStatements bounds the named prepared statements (and, separately,
	// the named portals) remembered per connection; the least recently used
	// one is forgotten first.
	MaxStatements int
	// MaxPending bounds the requests waiting for their responses per
	// connection (pipelining). Requests over the bound are not tracked.
	MaxPending int
	// MaxMessageSize is the largest message buffered whole. A larger one is
	// skipped by its length; for Query, Parse and Bind only a prefix of
	// MaxTextPrefix bytes is kept.
	MaxMessageSize int
	// MaxTextPrefix is how much of an oversized or truncated Query/Parse
	// text is kept (TextTruncated is then set).
	MaxTextPrefix int
}

// Defaults for Options fields left at zero.
const (
	DefaultMaxStatements  = 256
	DefaultMaxPending     = 1024
	DefaultMaxMessageSize = 1 << 20
	DefaultMaxTextPrefix  = 64 << 10
)

// withDefaults fills zero fields and clamps nonsense values.
func (o Options) withDefaults() Options {
	if o.MaxStatements <= 0 {
		o.MaxStatements = DefaultMaxStatements
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	// The frame length field is an int32 that counts itself.
	if o.MaxMessageSize > maxBodyLen {
		o.MaxMessageSize = maxBodyLen
	}
	if o.MaxTextPrefix <= 0 {
		o.MaxTextPrefix = DefaultMaxTextPrefix
	}
	if o.MaxTextPrefix > o.MaxMessageSize {
		o.MaxTextPrefix = o.MaxMessageSize
	}
	return o
}

// Stats are counters shared by every parser of one Detector. All fields are
// cumulative and safe to read concurrently.
type Stats struct {
	// Connections is the number of parsers created.
	Connections atomic.Uint64
	// Messages counts protocol messages framed, both directions.
	Messages atomic.Uint64
	// Queries counts queries handed to the sink.
	Queries atomic.Uint64
	// QueriesIncomplete counts queries emitted with Incomplete set.
	QueriesIncomplete atomic.Uint64
	// QueriesSkipped counts requests the server discarded after an error.
	QueriesSkipped atomic.Uint64
	// QueriesWithoutText counts queries emitted with TextUnknown set.
	QueriesWithoutText atomic.Uint64
	// QueriesTruncated counts queries emitted with TextTruncated set.
	QueriesTruncated atomic.Uint64
	// Resyncs counts the times a direction lost the message boundary and
	// had to search for the next plausible one.
	Resyncs atomic.Uint64
	// BytesSkipped counts bytes dropped while searching for a boundary, and
	// the unbuffered parts of oversized messages.
	BytesSkipped atomic.Uint64
	// BytesLost counts bytes reported lost by the capture (Data's lost).
	BytesLost atomic.Uint64
	// OversizedMessages counts messages over Options.MaxMessageSize.
	OversizedMessages atomic.Uint64
	// TruncatedMessages counts messages some of whose bytes were lost.
	TruncatedMessages atomic.Uint64
	// DecodeErrors counts framed messages whose body did not decode.
	DecodeErrors atomic.Uint64
	// StatementsEvicted counts prepared statements forgotten by the LRU.
	StatementsEvicted atomic.Uint64
	// PortalsEvicted counts named portals forgotten by the LRU.
	PortalsEvicted atomic.Uint64
	// PendingOverflow counts requests not tracked because MaxPending
	// requests were already waiting.
	PendingOverflow atomic.Uint64
	// UnmatchedResponses counts backend messages that answer no known
	// request (capture started mid-query, or requests were lost).
	UnmatchedResponses atomic.Uint64
	// LostResponses counts requests given up because their responses were
	// evidently lost (a later response or a later round superseded them).
	LostResponses atomic.Uint64
	// UndecidedMessages counts messages dropped on a connection of unknown
	// role before the direction of the stream could be told.
	UndecidedMessages atomic.Uint64
	// TLSConnections counts connections whose socket bytes were abandoned
	// because the server accepted SSL or GSS encryption.
	TLSConnections atomic.Uint64
	// EncryptedBytes counts socket bytes ignored on those connections.
	EncryptedBytes atomic.Uint64
	// CancelRequests counts CancelRequest packets.
	CancelRequests atomic.Uint64
	// StartupErrors counts ErrorResponses during start-up (failed
	// authentication, too many connections, unknown database).
	StartupErrors atomic.Uint64
}

// StatsSnapshot is a plain copy of Stats.
type StatsSnapshot struct {
	Connections, Messages, Queries, QueriesIncomplete, QueriesSkipped,
	QueriesWithoutText, QueriesTruncated, Resyncs, BytesSkipped, BytesLost,
	OversizedMessages, TruncatedMessages, DecodeErrors, StatementsEvicted,
	PortalsEvicted, PendingOverflow, UnmatchedResponses, LostResponses,
	UndecidedMessages, TLSConnections, EncryptedBytes, CancelRequests,
	StartupErrors uint64
}

// Snapshot reads every counter.
func (s *Stats) Snapshot() StatsSnapshot {
	return StatsSnapshot{
		Connections:        s.Connections.Load(),
		Messages:           s.Messages.Load(),
		Queries:            s.Queries.Load(),
		QueriesIncomplete:  s.QueriesIncomplete.Load(),
		QueriesSkipped:     s.QueriesSkipped.Load(),
		QueriesWithoutText: s.QueriesWithoutText.Load(),
		QueriesTruncated:   s.QueriesTruncated.Load(),
		Resyncs:            s.Resyncs.Load(),
		BytesSkipped:       s.BytesSkipped.Load(),
		BytesLost:          s.BytesLost.Load(),
		OversizedMessages:  s.OversizedMessages.Load(),
		TruncatedMessages:  s.TruncatedMessages.Load(),
		DecodeErrors:       s.DecodeErrors.Load(),
		StatementsEvicted:  s.StatementsEvicted.Load(),
		PortalsEvicted:     s.PortalsEvicted.Load(),
		PendingOverflow:    s.PendingOverflow.Load(),
		UnmatchedResponses: s.UnmatchedResponses.Load(),
		LostResponses:      s.LostResponses.Load(),
		UndecidedMessages:  s.UndecidedMessages.Load(),
		TLSConnections:     s.TLSConnections.Load(),
		EncryptedBytes:     s.EncryptedBytes.Load(),
		CancelRequests:     s.CancelRequests.Load(),
		StartupErrors:      s.StartupErrors.Load(),
	}
}

// Each calls fn with every counter's metric name and value.
func (s *Stats) Each(fn func(name string, v uint64)) {
	for _, c := range []struct {
		name string
		v    *atomic.Uint64
	}{
		{"connections", &s.Connections},
		{"messages", &s.Messages},
		{"queries", &s.Queries},
		{"queries_incomplete", &s.QueriesIncomplete},
		{"queries_skipped", &s.QueriesSkipped},
		{"queries_without_text", &s.QueriesWithoutText},
		{"queries_truncated", &s.QueriesTruncated},
		{"resyncs", &s.Resyncs},
		{"bytes_skipped", &s.BytesSkipped},
		{"bytes_lost", &s.BytesLost},
		{"oversized_messages", &s.OversizedMessages},
		{"truncated_messages", &s.TruncatedMessages},
		{"decode_errors", &s.DecodeErrors},
		{"statements_evicted", &s.StatementsEvicted},
		{"portals_evicted", &s.PortalsEvicted},
		{"pending_overflow", &s.PendingOverflow},
		{"unmatched_responses", &s.UnmatchedResponses},
		{"lost_responses", &s.LostResponses},
		{"undecided_messages", &s.UndecidedMessages},
		{"tls_connections", &s.TLSConnections},
		{"encrypted_bytes", &s.EncryptedBytes},
		{"cancel_requests", &s.CancelRequests},
		{"startup_errors", &s.StartupErrors},
	} {
		fn(c.name, c.v.Load())
	}
}
