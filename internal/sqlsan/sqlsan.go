// Package sqlsan prepares PostgreSQL query text for telemetry: it replaces
// literals with "?" (db.query.text), and extracts the operation
// (db.operation.name), the single collection (db.collection.name) and a
// low-cardinality summary (db.query.summary) following the OpenTelemetry
// database semantic conventions.
//
// It uses a hand-written lexer for PostgreSQL's lexical rules (one pass, no
// regular expressions) and never fails: malformed SQL still gives a
// best-effort result, with unterminated literals treated as running to the
// end of the text.
package sqlsan

import (
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// Mode says what becomes of the query text.
type Mode uint8

const (
	// ModeObfuscated replaces every literal with "?", collapses lists of
	// literals after IN to "(?)", drops comments and folds whitespace.
	ModeObfuscated Mode = iota
	// ModeRaw keeps the text as sent (it may hold sensitive values).
	ModeRaw
	// ModeOff drops the text; operation, collection and summary are still
	// produced (they never contain literals).
	ModeOff
)

func (m Mode) String() string {
	switch m {
	case ModeObfuscated:
		return "obfuscated"
	case ModeRaw:
		return "raw"
	case ModeOff:
		return "off"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// ParseMode reads "obfuscated", "raw" or "off".
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "obfuscated", "":
		return ModeObfuscated, nil
	case "raw":
		return ModeRaw, nil
	case "off":
		return ModeOff, nil
	}
	return 0, fmt.Errorf("sqlsan: unknown mode %q: use obfuscated, raw or off", s)
}

// Result is what Sanitize extracts from one query text.
type Result struct {
	// Text is db.query.text: obfuscated, raw or empty, per the Mode.
	Text string
	// Operation is db.operation.name: the command of a single statement in
	// upper case (SELECT, INSERT, CREATE TABLE, BEGIN...). Empty for a text
	// with several statements or none recognised.
	Operation string
	// Collection is db.collection.name: set only when the text is a single
	// statement naming exactly one table, as written (schema prefix and
	// quotes included).
	Collection string
	// Summary is db.query.summary: the operations and their targets in the
	// order they appear ("SELECT users", "INSERT shipping_details SELECT
	// orders"), at most MaxSummaryLen bytes.
	Summary string
}

// MaxSummaryLen bounds Result.Summary; it is cut at a word boundary.
const MaxSummaryLen = 255

var tokPool = sync.Pool{New: func() any { s := make([]token, 0, 64); return &s }}

// Sanitize processes one query text. It is safe for concurrent use.
func Sanitize(sql string, mode Mode) Result {
	tp := tokPool.Get().(*[]token)
	toks := lex(sql, (*tp)[:0])
	var r Result
	switch mode {
	case ModeObfuscated:
		r.Text = obfuscate(sql, toks)
	case ModeRaw:
		r.Text = sql
	}
	a := analyzer{s: sql, toks: toks}
	a.parens = a.parenBuf[:0]
	a.run()
	r.Summary = a.summary.String()
	if a.stmts == 1 {
		r.Operation = a.stmtOp
		if a.ntargets == 1 {
			r.Collection = a.target
		}
	}
	if cap(toks) <= 4096 {
		*tp = toks[:0]
		tokPool.Put(tp)
	}
	return r
}

func (t token) is(s string, c byte) bool {
	return t.kind == tkPunct && t.end-t.start == 1 && s[t.start] == c
}

// isName reports whether t can name a relation or alias: a quoted
// identifier or an unreserved word.
func (t token) isName() bool {
	return t.kind == tkQIdent || t.kind == tkIdent && !t.kw.reserved
}

// obfuscate rebuilds the text from its tokens with literals replaced.
func obfuscate(s string, toks []token) string {
	var out strings.Builder
	out.Grow(len(s))
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if t.space && out.Len() > 0 {
			out.WriteByte(' ')
		}
		switch t.kind {
		case tkString, tkNumber:
			out.WriteByte('?')
			continue
		case tkIdent:
			switch t.kw.id {
			case kwTrue, kwFalse:
				// Boolean literals.
				out.WriteByte('?')
				continue
			case kwArray:
				// ARRAY[1, 2, 3] of literals only is one literal.
				if i+1 < len(toks) && toks[i+1].is(s, '[') {
					if end, ok := literalList(s, toks, i+1); ok {
						out.WriteByte('?')
						i = end
						continue
					}
				}
			case kwIn:
				// IN (1, 2, 3) of literals only collapses to IN (?).
				if i+1 < len(toks) && toks[i+1].is(s, '(') {
					if end, ok := literalList(s, toks, i+1); ok {
						out.WriteString(s[t.start:t.end])
						out.WriteString(" (?)")
						i = end
						continue
					}
				}
			}
		}
		out.WriteString(s[t.start:t.end])
	}
	text := out.String()
	if !utf8.ValidString(text) {
		// Identifiers are copied byte for byte; keep the attribute valid.
		return strings.ToValidUTF8(text, "\uFFFD")
	}
	return text
}

// literalList reports whether the bracketed list opening at toks[open]
// holds only literals (with casts, nested lists, NULL, booleans and ARRAY),
// and returns the index of its closing bracket.
func literalList(s string, toks []token, open int) (int, bool) {
	depth := 0
	literals := 0
	afterCast := false
	for i := open; i < len(toks); i++ {
		t := toks[i]
		typeName := afterCast
		afterCast = false
		switch t.kind {
		case tkString, tkNumber:
			literals++
		case tkIdent:
			switch {
			case t.kw.id == kwTrue || t.kw.id == kwFalse || t.kw.name == "NULL":
				literals++
			case t.kw.id == kwArray:
			case typeName:
				// The type of a cast, possibly of several words (double
				// precision, character varying).
				afterCast = true
			default:
				return 0, false
			}
		case tkPunct:
			switch s[t.start] {
			case '(', '[':
				depth++
			case ')', ']':
				depth--
				if depth == 0 {
					return i, literals > 0
				}
			case ',':
			case ':':
				if t.end-t.start != 2 {
					return 0, false
				}
				afterCast = true
			default:
				return 0, false
			}
		default:
			return 0, false
		}
	}
	return 0, false
}

// analyzer walks the tokens once for operations and targets.
type analyzer struct {
	s    string
	toks []token

	summary strings.Builder
	full    bool // the summary reached MaxSummaryLen

	stmts  int
	stmtOp string // operation of the first statement

	target   string // the first table named
	ntargets int    // distinct tables named (capped at 2)

	// Per statement.
	curOp       string // the statement's main operation
	curOpDeep   bool   // curOp was found inside parentheses
	curFirst    bool   // next significant token is the statement's first
	curHasToken bool
	noDML       bool // GRANT, REVOKE, DDL: SELECT/INSERT/... name privileges or events

	parens   []bool // open parentheses: true for a function call's
	parenBuf [16]bool

	withDepth int // paren depth of the WITH clause being read, -1 when none
	ctes      []string
}

func (a *analyzer) run() {
	a.curFirst = true
	a.withDepth = -1
	for i := 0; i < len(a.toks); i++ {
		t := a.toks[i]
		if t.is(a.s, ';') {
			a.endStatement()
			continue
		}
		first := a.curFirst
		a.curHasToken = true
		if t.kind == tkPunct {
			switch a.s[t.start] {
			case '(':
				a.parens = append(a.parens, i > 0 && a.isFuncName(i-1))
				continue // "(SELECT ...) UNION ..." still starts the statement
			case ')':
				if len(a.parens) > 0 {
					a.parens = a.parens[:len(a.parens)-1]
				}
			}
		}
		a.curFirst = false
		if t.kind != tkIdent && t.kind != tkQIdent {
			continue
		}
		if a.withDepth == len(a.parens) && a.isCTEName(i) {
			a.ctes = append(a.ctes, a.s[t.start:t.end])
			continue
		}
		if t.kind != tkIdent || t.kw.id == kwNone {
			continue
		}
		a.keyword(i, first)
	}
	a.endStatement()
}

func (a *analyzer) endStatement() {
	if a.curHasToken {
		if a.stmts == 0 {
			a.stmtOp = a.curOp
		}
		a.stmts++
	}
	a.curOp = ""
	a.curOpDeep = false
	a.curFirst = true
	a.curHasToken = false
	a.noDML = false
	a.parens = a.parens[:0]
	a.withDepth = -1
	a.ctes = a.ctes[:0]
}

// isFuncName reports whether toks[i], just before "(", names a function (or
// a type with modifiers) rather than introducing a subquery or a list.
func (a *analyzer) isFuncName(i int) bool {
	t := a.toks[i]
	switch t.kind {
	case tkQIdent:
		return true
	case tkIdent:
		return t.kw.id == kwNone || !t.kw.reserved && t.kw.id == kwOther
	}
	return false
}

// inFunc reports whether the innermost parenthesis is a function call's:
// EXTRACT(YEAR FROM ts), SUBSTRING(s FROM 2) use FROM without a table.
func (a *analyzer) inFunc() bool {
	return len(a.parens) > 0 && a.parens[len(a.parens)-1]
}

func (a *analyzer) prevKw(i int) kwInfo {
	if i > 0 && a.toks[i-1].kind == tkIdent {
		return a.toks[i-1].kw
	}
	return kwInfo{}
}

func (a *analyzer) keyword(i int, first bool) {
	t := a.toks[i]
	depth := len(a.parens)
	switch t.kw.id {
	case kwWith:
		if a.withDepth < 0 {
			a.withDepth = depth
		}
	case kwSelect:
		a.mainOp(depth)
		if a.noDML {
			return
		}
		a.addOp("SELECT", depth)
	case kwInsert, kwUpdate, kwDelete, kwMerge:
		switch a.prevKw(i).name {
		case "FOR", "KEY", "DO", "THEN", "OR", "BEFORE", "AFTER", "OF":
			// SELECT ... FOR [NO KEY] UPDATE, ON CONFLICT DO UPDATE,
			// MERGE ... THEN UPDATE, triggers ON INSERT OR UPDATE.
			return
		}
		if a.noDML {
			return
		}
		a.mainOp(depth)
		a.addOp(t.kw.name, depth)
		j := i + 1
		switch t.kw.id {
		case kwInsert, kwMerge:
			if !a.kwAt(j, kwInto) {
				return
			}
			j++
		case kwDelete:
			if !a.kwAt(j, kwFrom) {
				return
			}
			j++
		}
		a.targetName(j)
	case kwFrom:
		if a.inFunc() || a.prevKw(i).id == kwDelete || a.noDML || a.curOp == "COPY" && depth == 0 {
			// COPY t FROM STDIN / 'file' / PROGRAM: not a table.
			return
		}
		a.tableList(i + 1)
	case kwJoin:
		if !a.noDML {
			a.tableRef(i + 1)
		}
	case kwUsing:
		// DELETE ... USING t, MERGE ... USING t; JOIN ... USING (col) is not
		// a table.
		if a.curOp == "DELETE" || a.curOp == "MERGE" {
			a.tableList(i + 1)
		}
	case kwTruncate:
		if first {
			a.setStmt("TRUNCATE", depth)
			j := i + 1
			if a.kwAt(j, kwTable) {
				j++
			}
			a.tableList(j)
		}
	case kwCopy:
		if first {
			a.setStmt("COPY", depth)
			a.targetName(i + 1)
		}
	case kwLock:
		if first {
			a.setStmt("LOCK", depth)
			j := i + 1
			if a.kwAt(j, kwTable) {
				j++
			}
			a.tableList(j)
		}
	case kwCreate, kwDrop, kwAlter:
		if first {
			a.ddl(i, depth)
		}
	case kwDo:
		// DO runs an anonymous code block; elsewhere DO belongs to
		// ON CONFLICT ... DO UPDATE/NOTHING.
		if first {
			a.setStmt("DO", depth)
		}
	case kwExplain, kwAnalyze, kwValues, kwStatement:
		if !first {
			return
		}
		name := t.kw.name
		switch name {
		case "START":
			if j := i + 1; j < len(a.toks) && a.toks[j].kind == tkIdent && strings.EqualFold(a.word(j), "TRANSACTION") {
				name = "START TRANSACTION"
			}
		case "GRANT", "REVOKE", "COMMENT", "SECURITY":
			a.noDML = true
		}
		a.setStmt(name, depth)
	}
}

func (a *analyzer) word(i int) string { return a.s[a.toks[i].start:a.toks[i].end] }

func (a *analyzer) kwAt(i int, id kw) bool {
	return i < len(a.toks) && a.toks[i].kind == tkIdent && a.toks[i].kw.id == id
}

// mainOp ends the WITH clause when the statement it prefixes starts.
func (a *analyzer) mainOp(depth int) {
	if a.withDepth == depth {
		a.withDepth = -1
	}
}

// setStmt records a statement-level operation.
func (a *analyzer) setStmt(op string, depth int) {
	a.addOp(op, depth)
}

// addOp records an operation. The statement's operation is its first one
// outside parentheses ("WITH x AS (SELECT ...) INSERT ..." is an INSERT),
// or its first one at all ("(SELECT 1) UNION (SELECT 2)").
func (a *analyzer) addOp(op string, depth int) {
	if a.curOp == "" || a.curOpDeep && depth == 0 {
		a.curOp = op
		a.curOpDeep = depth > 0
	}
	a.addWord(op)
}

func (a *analyzer) addWord(w string) {
	if a.full || w == "" {
		return
	}
	n := len(w)
	if a.summary.Len() > 0 {
		n++
	}
	if a.summary.Len()+n > MaxSummaryLen {
		a.full = true
		return
	}
	if a.summary.Len() > 0 {
		a.summary.WriteByte(' ')
	} else {
		a.summary.Grow(64)
	}
	a.summary.WriteString(w)
}

// ddl handles CREATE, DROP and ALTER.
func (a *analyzer) ddl(i, depth int) {
	verb := a.toks[i].kw.name
	j := i + 1
	for j < len(a.toks) && a.toks[j].kind == tkIdent && a.toks[j].kw.id == kwModifier {
		j++
	}
	if j >= len(a.toks) || a.toks[j].kind != tkIdent {
		a.setStmt(verb, depth)
		return
	}
	o := a.toks[j].kw
	var obj string
	table := false // the object is a table-like collection
	switch o.id {
	case kwTable:
		obj, table = "TABLE", true
	case kwView:
		obj, table = "VIEW", true
	case kwMaterialized:
		if a.kwAt(j+1, kwView) {
			j++
			obj, table = "MATERIALIZED VIEW", true
		}
	case kwForeign:
		if a.kwAt(j+1, kwTable) {
			j++
			obj, table = "FOREIGN TABLE", true
		}
	case kwIndex:
		obj = "INDEX"
	case kwSequence:
		obj = "SEQUENCE"
	case kwObject:
		obj = o.name
	}
	if obj == "" {
		a.setStmt(verb, depth)
		return
	}
	switch obj {
	case "TRIGGER", "RULE", "POLICY", "FUNCTION", "PROCEDURE", "AGGREGATE":
		// Their definitions name DML events or hold bodies: not operations.
		a.noDML = true
	}
	if verb != "CREATE" {
		// ALTER TABLE ... / DROP TABLE ...: no DML in the statement itself.
		a.noDML = true
	}
	a.setStmt(verb+" "+obj, depth)
	j++
	j = a.skipIfExists(j)
	if obj == "INDEX" && verb == "CREATE" {
		// CREATE INDEX [CONCURRENTLY] [IF NOT EXISTS] [name] ON [ONLY] table
		for j < len(a.toks) && !a.kwAt(j, kwOn) && j < i+8 {
			j++
		}
		if a.kwAt(j, kwOn) {
			a.targetName(j + 1)
		}
		return
	}
	if !table {
		return
	}
	if verb == "DROP" {
		a.tableList(j)
		return
	}
	a.targetName(j)
}

// skipIfExists skips IF [NOT] EXISTS.
func (a *analyzer) skipIfExists(j int) int {
	if a.kwAt(j, kwIf) {
		j++
		if a.kwAt(j, kwNot) {
			j++
		}
		if a.kwAt(j, kwExists) {
			j++
		}
	}
	return j
}

// tableList reads comma-separated table references starting at j.
func (a *analyzer) tableList(j int) {
	for j < len(a.toks) {
		j = a.tableRef(j)
		if j >= len(a.toks) || !a.toks[j].is(a.s, ',') {
			return
		}
		j++
	}
}

// tableRef reads one table reference at j in a FROM list (a name with
// optional alias, or a parenthesised subquery whose own tables the main walk
// finds) and returns the index after it.
func (a *analyzer) tableRef(j int) int {
	for a.kwAt(j, kwOnly) || a.kwAt(j, kwLateral) {
		j++
	}
	if j >= len(a.toks) {
		return j
	}
	if a.toks[j].is(a.s, '(') {
		j = a.skipParens(j)
	} else {
		name, end := a.qualifiedName(j)
		if name == "" {
			return j
		}
		j = end
		if j < len(a.toks) && a.toks[j].is(a.s, '(') {
			// A set-returning function (generate_series(...)), not a table.
			j = a.skipParens(j)
		} else {
			a.addTarget(name)
		}
	}
	return a.skipAlias(j)
}

// targetName records the table a statement acts on (INSERT INTO, UPDATE,
// DELETE FROM, COPY, CREATE/ALTER TABLE, CREATE INDEX ON), where a
// parenthesis after the name is a column list, not a function call.
func (a *analyzer) targetName(j int) {
	for a.kwAt(j, kwOnly) {
		j++
	}
	if name, _ := a.qualifiedName(j); name != "" {
		a.addTarget(name)
	}
}

// skipAlias skips [AS] alias [(columns)].
func (a *analyzer) skipAlias(j int) int {
	// Alias: [AS] name [(columns)].
	if a.kwAt(j, kwAs) {
		j++
	}
	if j < len(a.toks) && a.toks[j].isName() {
		j++
		if j < len(a.toks) && a.toks[j].is(a.s, '(') {
			j = a.skipParens(j)
		}
	}
	return j
}

// skipParens returns the index after the parenthesis group opening at j.
func (a *analyzer) skipParens(j int) int {
	depth := 0
	for ; j < len(a.toks); j++ {
		t := a.toks[j]
		if t.kind != tkPunct {
			continue
		}
		switch a.s[t.start] {
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return j + 1
			}
		}
	}
	return j
}

// qualifiedName reads name(.name)* at j, as written.
func (a *analyzer) qualifiedName(j int) (string, int) {
	start := j
	for j < len(a.toks) && a.toks[j].isName() {
		j++
		if j+1 < len(a.toks) && a.toks[j].is(a.s, '.') {
			j++
			continue
		}
		break
	}
	if j == start || a.toks[j-1].is(a.s, '.') {
		return "", start
	}
	first, last := a.toks[start], a.toks[j-1]
	name := a.s[first.start:last.end]
	if j-start > 1 {
		// Drop any spacing around the dots ("public . users").
		clean := true
		for k := start + 1; k < j; k++ {
			if a.toks[k].space {
				clean = false
			}
		}
		if !clean {
			var b strings.Builder
			for k := start; k < j; k++ {
				b.WriteString(a.word(k))
			}
			name = b.String()
		}
	}
	return name, j
}

// isCTEName reports whether the identifier at i names a common table
// expression: "name AS (", "name AS [NOT] MATERIALIZED (" or
// "name (cols) AS (" right after WITH [RECURSIVE] or a comma.
func (a *analyzer) isCTEName(i int) bool {
	if i == 0 {
		return false
	}
	p := a.toks[i-1]
	afterWith := p.kind == tkIdent && (p.kw.id == kwWith || p.kw.id == kwRecursive)
	if !afterWith && !p.is(a.s, ',') {
		return false
	}
	j := i + 1
	if j < len(a.toks) && a.toks[j].is(a.s, '(') {
		j = a.skipParens(j)
	}
	return a.kwAt(j, kwAs)
}

func (a *analyzer) addTarget(name string) {
	for _, c := range a.ctes {
		if equalName(c, name) {
			return // a CTE, not a table
		}
	}
	a.addWord(name)
	switch {
	case a.ntargets == 0:
		a.target = name
		a.ntargets = 1
	case a.ntargets == 1 && !equalName(a.target, name):
		a.ntargets = 2
	}
}

// equalName compares table names: unquoted identifiers fold to lower case
// in PostgreSQL, quoted ones are exact.
func equalName(x, y string) bool {
	if strings.IndexByte(x, '"') >= 0 || strings.IndexByte(y, '"') >= 0 {
		return x == y
	}
	return strings.EqualFold(x, y)
}
