package spans

import (
	"strings"

	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/ebpfotel/ebpfreceiver/internal/postgres"
	"github.com/ebpfotel/ebpfreceiver/internal/procmeta"
	"github.com/ebpfotel/ebpfreceiver/internal/sqlsan"
	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

// PostgresOptions shape database spans.
type PostgresOptions struct {
	// QueryText says whether db.query.text is obfuscated, raw or left out.
	QueryText sqlsan.Mode
}

// Query appends the span of one PostgreSQL query, following the stable
// database semantic conventions. server says the observed process is the
// PostgreSQL server (span kind SERVER), otherwise the client (CLIENT).
func (b *Builder) Query(p procmeta.Info, conn *stream.ConnInfo, q *postgres.Query, server bool, link Link, opts PostgresOptions) {
	span := b.spanFor(p)
	b.setKindAndIDs(span, "postgresql", conn, link, server)
	span.SetStartTimestamp(b.ts(q.Start))
	span.SetEndTimestamp(b.ts(q.End))

	var sum sqlsan.Result
	if !q.TextUnknown {
		sum = b.sanitize(q.Text, opts.QueryText)
	}
	attrs := span.Attributes()
	attrs.EnsureCapacity(spanAttrsCap) // one allocation instead of a growth per doubling
	attrs.PutStr("db.system.name", "postgresql")
	if q.Database != "" {
		attrs.PutStr("db.namespace", q.Database)
	}
	if sum.Text != "" {
		attrs.PutStr("db.query.text", sum.Text)
	}
	if sum.Summary != "" {
		attrs.PutStr("db.query.summary", sum.Summary)
	}
	// db.operation.name is set only when the statement names exactly one
	// operation: the sanitizer leaves it empty for a multi-statement text
	// ("BEGIN; UPDATE ...; COMMIT"), whose last command tag (COMMIT) would
	// name only its last statement. The sanitizer reads the text whatever
	// the query_text mode, so with "off" the operation still comes from it.
	operation := sum.Operation
	if q.TextUnknown && q.Extended && q.CommandTag != "" {
		// The text was never seen (prepared before capture started, or
		// evicted from the statement table): the command tag names what
		// the server ran ("UPDATE 2" -> UPDATE). Only for an Execute: a
		// Parse message holds at most one SQL statement, so its portal
		// has one tag, whereas a simple 'Q' may hold several statements
		// and only its last tag is kept.
		operation, _ = postgres.ParseCommandTag(q.CommandTag)
	}
	if operation != "" {
		attrs.PutStr("db.operation.name", operation)
	}
	if sum.Collection != "" {
		attrs.PutStr("db.collection.name", sum.Collection)
	}
	if q.RowsReturned > 0 {
		attrs.PutInt("db.response.returned_rows", q.RowsReturned)
	}
	if q.StatementName != "" {
		// Receiver-specific: which prepared statement ran (its text may
		// have been prepared before capture started).
		attrs.PutStr("db.postgresql.statement.name", q.StatementName)
	}
	if q.TextTruncated {
		attrs.PutBool("ebpf.capture.query_text_truncated", true)
	}
	b.putNetwork(attrs, conn, server)
	putCaptureFlags(attrs, conn, q.Incomplete)

	switch {
	case q.Error != nil:
		// SQLSTATE is both the response status code and the error type.
		attrs.PutStr("db.response.status_code", q.Error.Code)
		attrs.PutStr("error.type", q.Error.Code)
		span.Status().SetCode(ptrace.StatusCodeError)
		msg := q.Error.Message
		if opts.QueryText != sqlsan.ModeRaw {
			msg = scrubQuoted(msg)
		}
		span.Status().SetMessage(msg)
	case q.Skipped:
		attrs.PutStr("error.type", "_OTHER")
		span.Status().SetCode(ptrace.StatusCodeError)
		span.Status().SetMessage("not executed: an earlier message of the pipeline failed")
	case q.Unanswered != postgres.NotUnanswered:
		// No response at all: the request failed as far as anyone can
		// tell (a killed peer, a connection that broke), which gRPC spans
		// report alike; error.type has no better value than _OTHER.
		attrs.PutStr("error.type", "_OTHER")
		span.Status().SetCode(ptrace.StatusCodeError)
		span.Status().SetMessage("no response: " + q.Unanswered.String())
	}
	span.SetName(dbSpanName(sum.Summary, operation, sum.Collection, q.Database))
}

// dbSpanName follows the database span name rule: the query summary when
// there is one, else "{operation} {target}", else "{target}", else the
// system name.
func dbSpanName(summary, operation, collection, namespace string) string {
	if summary != "" {
		return summary
	}
	target := collection
	if target == "" {
		target = namespace
	}
	switch {
	case operation != "" && target != "":
		return operation + " " + target
	case operation != "":
		return operation
	case target != "":
		return target
	}
	return "postgresql"
}

// scrubQuoted replaces the double-quoted parts of a PostgreSQL error
// message with "?": the server quotes the offending input there (invalid
// input syntax for type integer: "<bind value>"), which would carry a
// literal or a bind parameter into the span. Identifiers it quotes
// (constraint or column names) go too: the SQLSTATE says what happened.
func scrubQuoted(msg string) string {
	var b strings.Builder
	in := false
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		switch {
		case c == '"' && !in:
			in = true
			b.WriteString(`"?"`)
		case c == '"' && in:
			in = false
		case !in:
			b.WriteByte(c)
		}
	}
	return b.String()
}
