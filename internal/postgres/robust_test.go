package postgres

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

// replayableFixtures are the fixtures whose queries the other tests know.
func replayableFixtures() []string {
	var names []string
	for name := range fixtureWants {
		names = append(names, name)
	}
	return names
}

// Splitting the records differently (byte by byte, random chunks) must not
// change anything: each piece keeps its record's timestamp.
func TestSplitDelivery(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, name := range replayableFixtures() {
		t.Run(name, func(t *testing.T) {
			recs := loadFixture(t, name)
			want := replay(t, recs, clientConn(), Options{})
			for _, mode := range []string{"bytes", "random"} {
				var split []capfile.Record
				for _, r := range recs {
					for data := r.Data; len(data) > 0; {
						n := 1
						if mode == "random" {
							n = 1 + rng.IntN(64)
						}
						n = min(n, len(data))
						split = append(split, capfile.Record{Dir: r.Dir, Time: r.Time, Data: data[:n]})
						data = data[n:]
					}
				}
				got := replay(t, split, clientConn(), Options{})
				if !reflect.DeepEqual(got.queries, want.queries) {
					t.Errorf("%s: queries differ (%d vs %d)", mode, len(got.queries), len(want.queries))
				}
				if got.stats.Messages != want.stats.Messages || got.stats.Resyncs != 0 {
					t.Errorf("%s: messages %d (want %d), resyncs %d", mode, got.stats.Messages, want.stats.Messages, got.stats.Resyncs)
				}
			}
		})
	}
}

// garbage makes n random bytes whose first byte cannot start a message of
// side s, the way a corrupted or foreign chunk is noticed in practice: a
// chunk that happens to start with a valid header and a sane length is
// indistinguishable from a real message until its end.
func garbage(rng *rand.Rand, s side, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.UintN(256))
	}
	for {
		ok := false
		switch s {
		case sideFrontend:
			ok = frontendLen[b[0]].max == 0
		case sideBackend:
			ok = backendLen[b[0]].max == 0
		}
		if ok {
			return b
		}
		b[0] = byte(rng.UintN(256))
	}
}

// Garbage between messages is noticed, skipped and counted; the queries
// are unchanged.
func TestGarbageBetweenMessages(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, name := range replayableFixtures() {
		if name == "tls.bin" || name == "cancel_1.bin" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			recs := loadFixture(t, name)
			want := replay(t, recs, clientConn(), Options{})
			var dirty []capfile.Record
			var injected uint64
			for i, r := range recs {
				dirty = append(dirty, r)
				// Not before the StartupMessage: garbage there is a
				// different protocol, not a lost boundary.
				if i == 0 {
					continue
				}
				s := sideFrontend
				if r.Dir == stream.Ingress {
					s = sideBackend
				}
				g := garbage(rng, s, 1+rng.IntN(40))
				injected += uint64(len(g))
				dirty = append(dirty, capfile.Record{Dir: r.Dir, Time: r.Time, Data: g})
			}
			got := replay(t, dirty, clientConn(), Options{})
			if !reflect.DeepEqual(got.queries, want.queries) {
				for _, q := range got.queries {
					t.Logf("got %q tag=%q inc=%v", q.Text, q.CommandTag, q.Incomplete)
				}
				t.Fatalf("queries differ (%d vs %d)", len(got.queries), len(want.queries))
			}
			if got.stats.Resyncs == 0 || got.stats.BytesSkipped != injected {
				t.Errorf("resyncs %d, bytes skipped %d (injected %d)", got.stats.Resyncs, got.stats.BytesSkipped, injected)
			}
		})
	}
}

// A connection found open at start-up, captured from the middle of a
// record: the first boundary is searched for, queries after it are found,
// prepared statements whose Parse was missed give TextUnknown.
func TestPreexistingMidStream(t *testing.T) {
	recs := loadFixture(t, "prepared.bin")
	// Start at the first Bind of get_item: the Prepare round was missed.
	start := -1
	for i, r := range recs {
		if r.Dir == stream.Egress && len(r.Data) > 0 && r.Data[0] == 'B' {
			start = i
			break
		}
	}
	if start < 0 {
		t.Fatal("no Bind record in prepared.bin")
	}
	for _, role := range []stream.Role{stream.RoleClient, stream.RoleUnknown} {
		conn := clientConn()
		conn.Role = role
		conn.Preexisting = true
		res := replay(t, recs[start:], conn, Options{})
		if len(res.queries) != 5 {
			t.Fatalf("role %v: %d queries, want 5", role, len(res.queries))
		}
		for i, q := range res.queries[:3] {
			if !q.TextUnknown || q.Text != "" || q.StatementName != "get_item" || !q.Extended {
				t.Errorf("role %v query %d: %+v, want TextUnknown of get_item", role, i, q)
			}
			if q.Database != "" || q.User != "" {
				t.Errorf("role %v query %d: database/user %q/%q from a missed start-up", role, i, q.Database, q.User)
			}
		}
		if tags := []string{res.queries[0].CommandTag, res.queries[2].CommandTag}; tags[0] != "SELECT 1" || tags[1] != "SELECT 0" {
			t.Errorf("role %v: tags %v", role, tags)
		}
		// The unnamed statements are parsed within the capture.
		if q := res.queries[3]; q.TextUnknown || q.Text != "SELECT count(*) FROM prep_t WHERE id > $1" {
			t.Errorf("role %v: query 3 %+v", role, q)
		}
		if res.stats.QueriesWithoutText != 3 {
			t.Errorf("role %v: QueriesWithoutText = %d, want 3", role, res.stats.QueriesWithoutText)
		}
	}
}

// Capture starting inside a message, in both directions, with the role
// known or not: the partial messages are skipped and counted.
func TestPreexistingInsideMessage(t *testing.T) {
	recs := loadFixture(t, "extended.bin")
	// Find the write of the UPDATE's Parse and the read answering the
	// SELECT before it; start inside both.
	var firstIn, firstOut = -1, -1
	for i, r := range recs {
		if firstOut < 0 && r.Dir == stream.Egress && bytes.Contains(r.Data, []byte("SELECT id, name FROM ext_t")) {
			firstOut = i
		}
	}
	for i := firstOut + 1; i < len(recs); i++ {
		if recs[i].Dir == stream.Ingress {
			firstIn = i
			break
		}
	}
	if firstOut < 0 || firstIn < 0 {
		t.Fatal("records not found")
	}
	cut := append([]capfile.Record(nil), recs[firstOut:]...)
	cut[0].Data = cut[0].Data[3:]                               // inside the Parse
	cut[firstIn-firstOut].Data = cut[firstIn-firstOut].Data[2:] // inside the first answer
	for _, role := range []stream.Role{stream.RoleClient, stream.RoleUnknown} {
		conn := clientConn()
		conn.Role = role
		conn.Preexisting = true
		res := replay(t, cut, conn, Options{})
		var texts []string
		for _, q := range res.queries {
			texts = append(texts, q.Text)
		}
		last := res.queries[len(res.queries)-1]
		if last.Text != "UPDATE ext_t SET name = $1 WHERE id > $2" || last.CommandTag != "UPDATE 2" || last.Incomplete {
			t.Errorf("role %v: last query %+v (all: %q)", role, last, texts)
		}
		if res.stats.BytesSkipped == 0 {
			t.Errorf("role %v: no bytes skipped", role)
		}
		for _, q := range res.queries {
			if q.Text == "" && !q.TextUnknown {
				t.Errorf("role %v: empty text without TextUnknown: %+v", role, q)
			}
		}
	}
}

// A stream seen from the middle with unknown role: sides are told from the
// message types.
func TestUnknownRolePreexisting(t *testing.T) {
	recs := loadFixture(t, "simple.bin")
	want := replay(t, recs, clientConn(), Options{}).queries
	conn := clientConn()
	conn.Role = stream.RoleUnknown
	conn.Preexisting = true
	for _, rr := range [][]capfile.Record{recs[2:], swapDirs(recs[2:])} {
		res := replay(t, rr, conn, Options{})
		if len(res.queries) != len(want) {
			t.Fatalf("%d queries, want %d", len(res.queries), len(want))
		}
		for i, q := range res.queries {
			w := *want[i]
			w.Database, w.User = "", ""
			if !reflect.DeepEqual(*q, w) {
				t.Errorf("query %d: %+v, want %+v", i, *q, w)
			}
		}
	}
}

// Lost bytes inside a message of known length are skipped there: the text
// of a truncated Query is kept as a prefix and nothing else is disturbed.
func TestLostInsideQuery(t *testing.T) {
	recs := loadFixture(t, "long_query.bin")
	want := replay(t, recs, clientConn(), Options{}).queries
	var res result
	var lostN uint64
	det := NewDetector(func(_ *stream.ConnInfo, q *Query) { res.queries = append(res.queries, q) }, Options{})
	conn := clientConn()
	p := det.New(&conn)
	var last uint64
	for _, r := range recs {
		if r.Dir == stream.Egress && len(r.Data) > 10000 && r.Data[0] == 'Q' {
			// The capture kept 4 KiB of the write.
			lostN = uint64(len(r.Data) - 4096)
			p.Data(r.Dir, r.Time, r.Data[:4096], lostN)
		} else {
			p.Data(r.Dir, r.Time, r.Data, 0)
		}
		last = r.Time
	}
	p.Close(last)
	s := det.Stats().Snapshot()
	if len(res.queries) != 2 {
		t.Fatalf("%d queries", len(res.queries))
	}
	q := res.queries[0]
	if !q.TextTruncated || q.Text != want[0].Text[:4096-5] || q.CommandTag != "SELECT 1" || q.Incomplete ||
		q.Start != want[0].Start || q.End != want[0].End {
		t.Errorf("truncated query: %.60q truncated=%v tag=%q", q.Text, q.TextTruncated, q.CommandTag)
	}
	if !reflect.DeepEqual(res.queries[1], want[1]) {
		t.Errorf("second query differs: %+v", res.queries[1])
	}
	if s.BytesLost != lostN || s.TruncatedMessages != 1 || s.Resyncs != 0 || s.QueriesTruncated != 1 {
		t.Errorf("stats %+v", s)
	}
}

// A DataRow cut by lost bytes is still a row; framing stays in step.
func TestLostInsideDataRow(t *testing.T) {
	big := bytes.Repeat([]byte("v"), 10000)
	c := newConv(t).hello().fe(&pgproto3.Query{String: "SELECT blob FROM t"})
	resp := enc(t,
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("blob"), DataTypeOID: 17, DataTypeSize: -1, TypeModifier: -1}}},
		&pgproto3.DataRow{Values: [][]byte{big}},
	)
	tail := enc(t, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	det := NewDetector(nil, Options{})
	var got []*Query
	det.sink = func(_ *stream.ConnInfo, q *Query) { got = append(got, q) }
	conn := clientConn()
	p := det.New(&conn)
	for _, r := range c.recs {
		p.Data(r.Dir, r.Time, r.Data, 0)
	}
	p.Data(stream.Ingress, 90000, resp[:1000], uint64(len(resp)-1000))
	p.Data(stream.Ingress, 91000, tail, 0)
	p.Close(92000)
	s := det.Stats().Snapshot()
	if len(got) != 1 || got[0].RowsReturned != 1 || got[0].CommandTag != "SELECT 1" || got[0].End != 91000 || got[0].Incomplete {
		t.Fatalf("queries %+v", got)
	}
	if s.Resyncs != 0 || s.TruncatedMessages != 1 {
		t.Errorf("stats %+v", s)
	}
}

// Lost bytes that swallow the end of a response (and a boundary): the
// direction resynchronises, the query whose answer is gone is reported
// incomplete when the client moves on, and the next query is matched to
// its own answer.
func TestLostResponseEnd(t *testing.T) {
	recs := loadFixture(t, "extended.bin")
	want := replay(t, recs, clientConn(), Options{}).queries
	idx := -1
	for i, r := range recs {
		if r.Dir == stream.Ingress && bytes.Contains(r.Data, []byte("SELECT 3\x00")) {
			idx = i
		}
	}
	if idx < 0 {
		t.Fatal("no SELECT 3 answer in extended.bin")
	}
	det := NewDetector(nil, Options{})
	var got []*Query
	det.sink = func(_ *stream.ConnInfo, q *Query) { got = append(got, q) }
	conn := clientConn()
	p := det.New(&conn)
	var last uint64
	for i, r := range recs {
		if i == idx {
			p.Data(r.Dir, r.Time, r.Data[:10], uint64(len(r.Data)-10))
		} else {
			p.Data(r.Dir, r.Time, r.Data, 0)
		}
		last = r.Time
	}
	p.Close(last)
	if len(got) != len(want) {
		t.Fatalf("%d queries, want %d", len(got), len(want))
	}
	for i := range 4 {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("query %d differs", i)
		}
	}
	q := got[4]
	if q.Text != want[4].Text || !q.Incomplete || q.CommandTag != "" || q.RowsReturned != 1 {
		t.Errorf("query with the lost answer: %+v", q)
	}
	if !reflect.DeepEqual(got[5], want[5]) {
		t.Errorf("next query: %+v, want %+v", got[5], want[5])
	}
	s := det.Stats().Snapshot()
	if s.Resyncs != 1 || s.LostResponses == 0 || s.QueriesIncomplete != 1 || s.BytesLost != uint64(len(recs[idx].Data)-10) {
		t.Errorf("stats %+v", s)
	}
}

// A message over MaxMessageSize is skipped by its length, keeping a prefix
// of SQL text.
func TestOversizedMessages(t *testing.T) {
	recs := loadFixture(t, "long_query.bin")
	want := replay(t, recs, clientConn(), Options{}).queries
	res := replay(t, recs, clientConn(), Options{MaxMessageSize: 4096, MaxTextPrefix: 1000})
	if len(res.queries) != 2 {
		t.Fatalf("%d queries", len(res.queries))
	}
	q := res.queries[0]
	if q.Text != want[0].Text[:1000] || !q.TextTruncated || q.CommandTag != "SELECT 1" {
		t.Errorf("simple: %.40q (%d bytes) truncated=%v tag=%q", q.Text, len(q.Text), q.TextTruncated, q.CommandTag)
	}
	q = res.queries[1]
	// Parse body: statement name, NUL, then the SQL prefix.
	if !strings.HasPrefix(want[1].Text, q.Text) || len(q.Text) != 1000-len(want[1].StatementName)-1 ||
		!q.TextTruncated || q.StatementName != want[1].StatementName || q.CommandTag != "SELECT 1" {
		t.Errorf("extended: %.40q (%d bytes) truncated=%v stmt=%q tag=%q", q.Text, len(q.Text), q.TextTruncated, q.StatementName, q.CommandTag)
	}
	s := res.stats
	if s.OversizedMessages != 2 || s.Resyncs != 0 || s.QueriesTruncated != 2 || s.BytesSkipped == 0 {
		t.Errorf("stats %+v", s)
	}
	if cap(res.parser.egress.body) > 4096 {
		t.Errorf("buffer grew to %d", cap(res.parser.egress.body))
	}
}

// Prepared statements are remembered in a bounded LRU; Close('S') and
// DISCARD ALL forget them.
func TestStatementLRU(t *testing.T) {
	c := newConv(t).hello()
	for _, n := range []string{"s1", "s2", "s3"} {
		c.fe(&pgproto3.Parse{Name: n, Query: "SELECT '" + n + "'"}, &pgproto3.Sync{})
		c.be(&pgproto3.ParseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	}
	run := func(stmt string) {
		c.fe(&pgproto3.Bind{PreparedStatement: stmt}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.be(&pgproto3.BindComplete{}, &pgproto3.DataRow{Values: [][]byte{[]byte("x")}},
			&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	}
	run("s1") // evicted by s3
	run("s3")
	c.fe(&pgproto3.Close{ObjectType: 'S', Name: "s3"}, &pgproto3.Sync{})
	c.be(&pgproto3.CloseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	run("s3") // closed
	c.fe(&pgproto3.Parse{Name: "s4", Query: "SELECT 4"}, &pgproto3.Sync{})
	c.be(&pgproto3.ParseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	c.fe(&pgproto3.Query{String: "DISCARD ALL"})
	c.be(&pgproto3.CommandComplete{CommandTag: []byte("DISCARD ALL")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	run("s4") // discarded
	res := replay(t, c.recs, clientConn(), Options{MaxStatements: 2})
	type row struct {
		text, stmt string
		unknown    bool
	}
	var got []row
	for _, q := range res.queries {
		got = append(got, row{q.Text, q.StatementName, q.TextUnknown})
	}
	want := []row{{"", "s1", true}, {"SELECT 's3'", "s3", false}, {"", "s3", true}, {"DISCARD ALL", "", false}, {"", "s4", true}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	if res.stats.StatementsEvicted != 1 || res.stats.QueriesWithoutText != 3 {
		t.Errorf("stats %+v", res.stats)
	}
	if n := res.parser.stmts.len(); n > 2 {
		t.Errorf("statement table holds %d", n)
	}
}

// More requests in flight than MaxPending: the excess is not tracked,
// counted, reported incomplete, in order; the tracked ones match.
func TestPendingOverflow(t *testing.T) {
	c := newConv(t).hello()
	var qs []pgproto3.Message
	var resp []pgproto3.Message
	// 4 tracked, 4 over the bound (held until the tracked ones are done, to
	// keep request order).
	for i := range 8 {
		qs = append(qs, &pgproto3.Query{String: "SELECT " + string(rune('0'+i))})
		resp = append(resp, &pgproto3.DataRow{Values: [][]byte{{'x'}}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
			&pgproto3.ReadyForQuery{TxStatus: 'I'})
	}
	c.fe(qs...).be(resp...)
	res := replay(t, c.recs, clientConn(), Options{MaxPending: 4})
	if len(res.queries) != 8 {
		t.Fatalf("%d queries", len(res.queries))
	}
	for i, q := range res.queries {
		if q.Text != "SELECT "+string(rune('0'+i)) {
			t.Errorf("query %d out of order: %q", i, q.Text)
		}
		if (i < 4) == q.Incomplete || (i < 4) != (q.CommandTag == "SELECT 1") {
			t.Errorf("query %d: incomplete %v tag %q", i, q.Incomplete, q.CommandTag)
		}
	}
	s := res.stats
	if s.PendingOverflow != 4 || s.QueriesIncomplete != 4 || s.UnmatchedResponses != 12 {
		t.Errorf("stats %+v", s)
	}
	if res.parser.fifo.len() != 0 || len(res.parser.held) != 0 || len(res.parser.untracked) != 0 {
		t.Errorf("state left: fifo %d held %d", res.parser.fifo.len(), len(res.parser.held))
	}
}

// Close emits what is still pending, marked incomplete.
func TestCloseFlushesPending(t *testing.T) {
	recs := loadFixture(t, "simple.bin")
	// Drop the last answer (EmptyQueryResponse, ReadyForQuery) and the
	// Terminate.
	cut := recs[:len(recs)-2]
	res := replay(t, cut, clientConn(), Options{})
	if len(res.queries) != 6 {
		t.Fatalf("%d queries", len(res.queries))
	}
	q := res.queries[5]
	if !q.Incomplete || q.Text != "-- nothing to run" || q.End != cut[len(cut)-1].Time {
		t.Errorf("pending query: %+v", q)
	}
	if res.stats.QueriesIncomplete != 1 {
		t.Errorf("stats %+v", res.stats)
	}
}

// The extended-protocol error paths that the fixtures do not reach: a
// client that Flushes, gets the error and only then sends the rest (which
// the backend discards until Sync); an error answering Sync (failed commit
// of the implicit transaction); PortalSuspended.
func TestExtendedErrorPaths(t *testing.T) {
	errResp := func(code string) *pgproto3.ErrorResponse {
		return &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: "m" + code}
	}
	c := newConv(t).hello()
	c.fe(&pgproto3.Parse{Name: "s1", Query: "SELEC 1"}, &pgproto3.Describe{ObjectType: 'S', Name: "s1"}, &pgproto3.Flush{})
	c.be(errResp("42601"))
	c.fe(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Parse{Name: "s2", Query: "SELECT 2"},
		&pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	c.be(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	// Deferred constraint failing at the implicit commit.
	c.fe(&pgproto3.Parse{Query: "INSERT INTO t VALUES (1)"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	c.be(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.CommandComplete{CommandTag: []byte("INSERT 0 1")},
		errResp("23503"), &pgproto3.ReadyForQuery{TxStatus: 'I'})
	// A portal fetched one row at a time.
	c.fe(&pgproto3.Parse{Query: "SELECT g FROM generate_series(1, 2) g"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("secret")}},
		&pgproto3.Execute{MaxRows: 1}, &pgproto3.Flush{})
	c.be(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.DataRow{Values: [][]byte{{'1'}}}, &pgproto3.PortalSuspended{})
	c.fe(&pgproto3.Execute{MaxRows: 1}, &pgproto3.Sync{})
	c.be(&pgproto3.DataRow{Values: [][]byte{{'2'}}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	// A fast-path function call is not a query and leaves no trace.
	c.fe(&pgproto3.FunctionCall{Function: 1598, ResultFormatCode: 0})
	c.be(&pgproto3.FunctionCallResponse{Result: []byte("ok")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})

	res := replay(t, c.recs, clientConn(), Options{})
	type row struct {
		text, code       string
		skipped, suspend bool
		rows             int64
		tag              string
	}
	var got []row
	for _, q := range res.queries {
		r := row{text: q.Text, skipped: q.Skipped, suspend: q.PortalSuspended, rows: q.RowsReturned, tag: q.CommandTag}
		if q.Error != nil {
			r.code = q.Error.Code
		}
		got = append(got, r)
	}
	want := []row{
		{text: "SELEC 1", code: "42601"},
		{text: "SELECT 2", skipped: true},
		{text: "INSERT INTO t VALUES (1)", code: "23503", tag: "INSERT 0 1"},
		{text: "SELECT g FROM generate_series(1, 2) g", suspend: true, rows: 1},
		{text: "SELECT g FROM generate_series(1, 2) g", rows: 1, tag: "SELECT 1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if res.parser.stmts.has("s1") || res.parser.stmts.has("s2") {
		t.Error("statements the server rejected or discarded are remembered")
	}
	if s := res.stats; s.UnmatchedResponses != 0 || s.LostResponses != 0 || s.QueriesSkipped != 1 {
		t.Errorf("stats %+v", s)
	}
}

// GSSENCRequest refused then a clear start-up; GSS encryption accepted;
// a client starting TLS directly; a failed authentication.
func TestStartupVariants(t *testing.T) {
	gss := enc(t, &pgproto3.GSSEncRequest{})

	c := newConv(t).add(stream.Egress, gss).add(stream.Ingress, []byte("N")).hello()
	c.fe(&pgproto3.Query{String: "SELECT 1"}).add(stream.Ingress, selectResponse(t, 1, "SELECT 1"))
	res := replay(t, c.recs, clientConn(), Options{})
	if len(res.queries) != 1 || res.queries[0].User != "alice" || res.queries[0].Database != "shop" || res.queries[0].RowsReturned != 1 {
		t.Errorf("after refused GSSENC: %+v", res.queries)
	}

	c = newConv(t).add(stream.Egress, gss).add(stream.Ingress, []byte("G")).add(stream.Egress, []byte{0x60, 0x82, 0x01})
	res = replay(t, c.recs, clientConn(), Options{})
	if res.stats.TLSConnections != 1 || res.stats.EncryptedBytes != 3 {
		t.Errorf("GSS encryption: %+v", res.stats)
	}

	c = newConv(t).add(stream.Egress, []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc})
	res = replay(t, c.recs, clientConn(), Options{})
	if res.stats.TLSConnections != 1 {
		t.Errorf("direct TLS: %+v", res.stats)
	}

	c = newConv(t).add(stream.Egress, startup(t, "mallory", "x"))
	c.be(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "28P01", Message: "password authentication failed"})
	res = replay(t, c.recs, clientConn(), Options{})
	if res.stats.StartupErrors != 1 || len(res.queries) != 0 || res.stats.UnmatchedResponses != 0 {
		t.Errorf("failed authentication: %+v", res.stats)
	}
}

// Bind parameter values never reach a Query.
func TestBindValuesNotKept(t *testing.T) {
	secret := "hunter2-secret-value"
	c := newConv(t).hello()
	c.fe(&pgproto3.Parse{Query: "SELECT $1::text"}, &pgproto3.Bind{Parameters: [][]byte{[]byte(secret)}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
	c.be(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("text"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte(secret)}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	res := replay(t, c.recs, clientConn(), Options{})
	if len(res.queries) != 1 {
		t.Fatalf("%d queries", len(res.queries))
	}
	if s := strings.ToLower(strings.Join([]string{res.queries[0].Text, res.queries[0].StatementName, res.queries[0].CommandTag}, " ")); strings.Contains(s, "hunter2") {
		t.Errorf("a parameter value reached the query: %q", s)
	}
}

func TestParseCommandTag(t *testing.T) {
	for _, c := range []struct {
		tag, cmd string
		rows     int64
	}{
		{"INSERT 0 5", "INSERT", 5},
		{"SELECT 3", "SELECT", 3},
		{"UPDATE 2", "UPDATE", 2},
		{"DELETE 0", "DELETE", 0},
		{"COPY 7", "COPY", 7},
		{"MERGE 4", "MERGE", 4},
		{"FETCH 10", "FETCH", 10},
		{"MOVE 1", "MOVE", 1},
		{"CREATE TABLE", "CREATE TABLE", -1},
		{"BEGIN", "BEGIN", -1},
		{"DISCARD ALL", "DISCARD ALL", -1},
		{"SELECT 99999999999999999999999", "SELECT", -1},
		{"", "", -1},
		{"42", "42", -1},
		{"X 1 2 3", "X", 3},
	} {
		cmd, rows := ParseCommandTag(c.tag)
		if cmd != c.cmd || rows != c.rows {
			t.Errorf("ParseCommandTag(%q) = %q, %d; want %q, %d", c.tag, cmd, rows, c.cmd, c.rows)
		}
	}
}

func TestLRU(t *testing.T) {
	l := newLRU[int](3)
	for i, k := range []string{"a", "b", "c"} {
		if l.put(k, i) {
			t.Fatal("eviction before the limit")
		}
	}
	if v, ok := l.get("a"); !ok || v != 0 { // a is now most recent
		t.Fatal("a missing")
	}
	if !l.put("d", 3) || l.has("b") {
		t.Fatal("b, least recently used, should be evicted")
	}
	l.del("c")
	if l.len() != 2 || l.has("c") {
		t.Fatal("del failed")
	}
	for i := range 100 {
		l.put(string(rune('A'+i%50)), i)
		if l.len() > 3 {
			t.Fatalf("len %d over limit", l.len())
		}
	}
	if len(l.nodes) > 3 {
		t.Errorf("node slice grew to %d", len(l.nodes))
	}
	l.clear()
	if l.len() != 0 || l.has("A") {
		t.Fatal("clear failed")
	}
}

// A valid type byte with an impossible length (over the protocol's 1 GiB
// limit) is not trusted: the direction resynchronises on the next message.
func TestAbsurdLength(t *testing.T) {
	c := newConv(t).hello()
	c.add(stream.Egress, append([]byte{'Q', 0x7f, 0xff, 0xff, 0xff, 'x', 'y'}, enc(t, &pgproto3.Query{String: "SELECT 1"})...))
	c.add(stream.Ingress, append([]byte{'D', 0xff, 0, 0, 0}, selectResponse(t, 1, "SELECT 1")...))
	res := replay(t, c.recs, clientConn(), Options{})
	if len(res.queries) != 1 || res.queries[0].Text != "SELECT 1" || res.queries[0].RowsReturned != 1 || res.queries[0].Incomplete {
		t.Fatalf("queries %+v", res.queries)
	}
	if s := res.stats; s.Resyncs != 2 || s.BytesSkipped != 7+5 || s.OversizedMessages != 0 {
		t.Errorf("stats %+v", s)
	}
}
