package postgres

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

// Messages the backend may send at any time, whatever the client asked
// ("Asynchronous Operations" in the protocol chapter of the PostgreSQL
// docs): NoticeResponse, NotificationResponse and ParameterStatus.
var (
	notice = &pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000",
		Message: "table \"t\" does not exist, skipping"}
	warning = &pgproto3.NoticeResponse{Severity: "WARNING", SeverityUnlocalized: "WARNING", Code: "01000", Message: "careful"}
	notify  = &pgproto3.NotificationResponse{PID: 4242, Channel: "jobs", Payload: "42"}
)

// rowDesc describes one int4 column named a.
func rowDesc() *pgproto3.RowDescription {
	return &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("a"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}
}

func dataRow(v string) *pgproto3.DataRow { return &pgproto3.DataRow{Values: [][]byte{[]byte(v)}} }

func cmdComplete(tag string) *pgproto3.CommandComplete {
	return &pgproto3.CommandComplete{CommandTag: []byte(tag)}
}

func rfq(status byte) *pgproto3.ReadyForQuery { return &pgproto3.ReadyForQuery{TxStatus: status} }

// without drops the asynchronous messages from a response.
func without(msgs []pgproto3.Message) []pgproto3.Message {
	return slices.DeleteFunc(slices.Clone(msgs), func(m pgproto3.Message) bool {
		switch m.(type) {
		case *pgproto3.NoticeResponse, *pgproto3.NotificationResponse, *pgproto3.ParameterStatus:
			return true
		}
		return false
	})
}

// NoticeResponse, NotificationResponse and ParameterStatus anywhere in a
// response (between RowDescription, DataRow, CommandComplete and
// ReadyForQuery, and between the answers of a pipeline) answer no request:
// the queries are those of the same conversation without them, and the
// messages after them still match their requests.
func TestAsyncMessagesMidResponse(t *testing.T) {
	errResp := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "22012", Message: "division by zero"}
	for _, tt := range []struct {
		name string
		req  []pgproto3.Message
		resp []pgproto3.Message
		// what the first query must show, beyond equality with the
		// conversation without the asynchronous messages
		tag     string
		rows    int64
		code    string
		tx      byte
		queries int
	}{
		{
			name: "notices around rows",
			req:  []pgproto3.Message{&pgproto3.Query{String: "SELECT a FROM t"}},
			resp: []pgproto3.Message{notice, rowDesc(), notice, dataRow("1"), warning, dataRow("2"), notice,
				cmdComplete("SELECT 2"), notice, rfq('I')},
			tag: "SELECT 2", rows: 2, tx: 'I', queries: 1,
		},
		{
			name: "notice between statements of one simple query",
			req:  []pgproto3.Message{&pgproto3.Query{String: "DROP TABLE IF EXISTS t; SELECT 1"}},
			resp: []pgproto3.Message{notice, cmdComplete("DROP TABLE"), notice, rowDesc(), dataRow("1"),
				cmdComplete("SELECT 1"), warning, rfq('I')},
			tag: "SELECT 1", rows: 1, tx: 'I', queries: 1,
		},
		{
			name: "notice around an error",
			req:  []pgproto3.Message{&pgproto3.Query{String: "SELECT 1/0"}},
			resp: []pgproto3.Message{warning, rowDesc(), notice, errResp, notice, rfq('I')},
			code: "22012", tx: 'I', queries: 1,
		},
		{
			name: "notification mid-rows",
			req:  []pgproto3.Message{&pgproto3.Query{String: "SELECT a FROM t"}},
			resp: []pgproto3.Message{rowDesc(), dataRow("1"), notify, dataRow("2"), cmdComplete("SELECT 2"), notify, rfq('T')},
			tag:  "SELECT 2", rows: 2, tx: 'T', queries: 1,
		},
		{
			name: "extended: notices between every answer",
			req: []pgproto3.Message{&pgproto3.Parse{Query: "SELECT a FROM t WHERE a > $1"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("0")}},
				&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}},
			resp: []pgproto3.Message{notice, &pgproto3.ParseComplete{}, notice, &pgproto3.BindComplete{}, notice, rowDesc(),
				notice, dataRow("1"), notice, cmdComplete("SELECT 1"), notice, rfq('I')},
			tag: "SELECT 1", rows: 1, tx: 'I', queries: 1,
		},
		{
			name: "extended: notice between the answers of a pipeline",
			req: []pgproto3.Message{&pgproto3.Parse{Query: "UPDATE t SET a = a + 1"}, &pgproto3.Bind{}, &pgproto3.Execute{},
				&pgproto3.Parse{Query: "SELECT a FROM t"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
			resp: []pgproto3.Message{&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, notice, cmdComplete("UPDATE 3"), warning,
				&pgproto3.ParseComplete{}, notify, &pgproto3.BindComplete{}, dataRow("1"), notice, cmdComplete("SELECT 1"), notice, rfq('I')},
			tag: "UPDATE 3", tx: 'I', queries: 2,
		},
		{
			// The backend reports a changed GUC_REPORT setting (here
			// TimeZone, after SET) just before ReadyForQuery.
			name: "parameter status after SET",
			req:  []pgproto3.Message{&pgproto3.Query{String: "SET TimeZone = 'UTC'"}},
			resp: []pgproto3.Message{cmdComplete("SET"), &pgproto3.ParameterStatus{Name: "TimeZone", Value: "UTC"}, rfq('I')},
			tag:  "SET", tx: 'I', queries: 1,
		},
		{
			name: "parameter status after an extended SET inside a transaction",
			req: []pgproto3.Message{&pgproto3.Parse{Query: "SET application_name = 'batch'"}, &pgproto3.Bind{}, &pgproto3.Execute{},
				&pgproto3.Sync{}},
			resp: []pgproto3.Message{&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, cmdComplete("SET"),
				&pgproto3.ParameterStatus{Name: "application_name", Value: "batch"}, rfq('T')},
			tag: "SET", tx: 'T', queries: 1,
		},
		{
			// A reported string setting can be longer than the 10000
			// bytes the backend accepts in the messages it reads: libpq
			// takes a ParameterStatus up to a length field of 30000.
			name: "long parameter status",
			req:  []pgproto3.Message{&pgproto3.Query{String: "SET search_path = a, b"}},
			resp: []pgproto3.Message{cmdComplete("SET"), notice,
				&pgproto3.ParameterStatus{Name: "search_path", Value: strings.Repeat("s", 30000-4-len("search_path")-2)}, rfq('I')},
			tag: "SET", tx: 'I', queries: 1,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// After the conversation under test, a plain query: the state
			// machine must still be in step.
			run := func(resp []pgproto3.Message) result {
				c := newConv(t).hello()
				c.fe(tt.req...).be(resp...)
				c.fe(&pgproto3.Query{String: "SELECT 1"}).be(rowDesc(), dataRow("1"), cmdComplete("SELECT 1"), rfq('I'))
				res := replay(t, c.recs, clientConn(), Options{})
				// The PostgreSQL server reads and writes the same bytes.
				server := clientConn()
				server.Role = stream.RoleServer
				if sv := replay(t, swapDirs(c.recs), server, Options{}); !reflect.DeepEqual(sv.queries, res.queries) {
					t.Errorf("the server's view differs from the client's")
				}
				return res
			}
			quiet := run(without(tt.resp))
			res := run(tt.resp)
			if !reflect.DeepEqual(res.queries, quiet.queries) {
				for i := range res.queries {
					t.Logf("got %+v", *res.queries[i])
				}
				for i := range quiet.queries {
					t.Logf("without the asynchronous messages %+v", *quiet.queries[i])
				}
				t.Fatal("asynchronous messages changed the queries")
			}
			if len(res.queries) != tt.queries+1 {
				t.Fatalf("%d queries, want %d", len(res.queries), tt.queries+1)
			}
			q := res.queries[0]
			if q.CommandTag != tt.tag || q.RowsReturned != tt.rows || q.TxStatus != tt.tx || q.Incomplete || q.Skipped {
				t.Errorf("query %+v", *q)
			}
			if (q.Error == nil) != (tt.code == "") || q.Error != nil && q.Error.Code != tt.code {
				t.Errorf("error %+v, want %q", q.Error, tt.code)
			}
			if last := res.queries[len(res.queries)-1]; last.Text != "SELECT 1" || last.CommandTag != "SELECT 1" || last.RowsReturned != 1 || last.Incomplete {
				t.Errorf("next query %+v", *last)
			}
			s := res.stats
			if s.UnmatchedResponses != 0 || s.LostResponses != 0 || s.Resyncs != 0 || s.DecodeErrors != 0 || s.QueriesIncomplete != 0 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

// Asynchronous messages in records of their own, with their own times: the
// query still ends at its ReadyForQuery, not at a later notice.
func TestAsyncMessagesTiming(t *testing.T) {
	c := newConv(t).hello()
	c.fe(&pgproto3.Query{String: "SELECT a FROM t"})
	start := c.ts
	c.be(rowDesc(), dataRow("1")).be(notice).be(cmdComplete("SELECT 1")).be(&pgproto3.ParameterStatus{Name: "TimeZone", Value: "UTC"})
	c.be(rfq('I'))
	end := c.ts
	// Between queries, with nothing pending: a notification of a LISTEN
	// channel and a notice.
	c.be(notify).be(warning)
	c.fe(&pgproto3.Query{String: "SELECT 2"}).be(rowDesc(), dataRow("2"), cmdComplete("SELECT 1"), rfq('I'))
	res := replay(t, c.recs, clientConn(), Options{})
	if len(res.queries) != 2 {
		t.Fatalf("%d queries", len(res.queries))
	}
	if q := res.queries[0]; q.Start != start || q.End != end || q.RowsReturned != 1 || q.CommandTag != "SELECT 1" {
		t.Errorf("query [%d, %d] %+v, want [%d, %d]", q.Start, q.End, *q, start, end)
	}
	if q := res.queries[1]; q.Text != "SELECT 2" || q.RowsReturned != 1 || q.Incomplete {
		t.Errorf("next query %+v", *q)
	}
	if s := res.stats; s.UnmatchedResponses != 0 || s.Resyncs != 0 {
		t.Errorf("stats %+v", s)
	}
}

// A named portal fetched in pieces: Bind names the portal, Execute with a
// row limit stops at PortalSuspended, a second Execute of the same portal
// runs it to completion, Close('P') drops it, then Sync. Each Execute is a
// query of its own, with the statement's text.
func TestNamedPortal(t *testing.T) {
	const sql = "SELECT g FROM generate_series(1, 3) g"
	type row struct {
		text, stmt string
		rows       int64
		suspended  bool
		tag, code  string
		unknown    bool
	}
	portalRows := []row{
		{text: sql, stmt: "s1", rows: 2, suspended: true},
		{text: sql, stmt: "s1", rows: 1, tag: "SELECT 1"},
	}
	// The portal is gone after Close: an Execute of it fails at the server
	// (34000 invalid_cursor_name), and no statement text is claimed for it.
	closedRow := row{unknown: true, code: "34000"}
	for _, tt := range []struct {
		name string
		// conv adds the portal's conversation and returns the time of
		// the record holding PortalSuspended.
		conv func(c *conv) uint64
		want []row
	}{
		{
			// The client waits for each answer: Flush after the first
			// Execute makes the backend send what it has.
			name: "flush between executes",
			conv: func(c *conv) uint64 {
				c.fe(&pgproto3.Parse{Name: "s1", Query: sql}, &pgproto3.Bind{DestinationPortal: "cur", PreparedStatement: "s1"},
					&pgproto3.Execute{Portal: "cur", MaxRows: 2}, &pgproto3.Flush{})
				c.be(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, dataRow("1"), dataRow("2"), &pgproto3.PortalSuspended{})
				suspended := c.ts
				c.fe(&pgproto3.Execute{Portal: "cur"}, &pgproto3.Close{ObjectType: 'P', Name: "cur"}, &pgproto3.Sync{})
				c.be(dataRow("3"), cmdComplete("SELECT 1"), &pgproto3.CloseComplete{}, rfq('I'))
				return suspended
			},
			want: []row{portalRows[0], portalRows[1], closedRow},
		},
		{
			// Everything in one write, every answer in a record of its own.
			name: "pipelined",
			conv: func(c *conv) uint64 {
				c.fe(&pgproto3.Parse{Name: "s1", Query: sql}, &pgproto3.Bind{DestinationPortal: "cur", PreparedStatement: "s1"},
					&pgproto3.Execute{Portal: "cur", MaxRows: 2}, &pgproto3.Execute{Portal: "cur"},
					&pgproto3.Close{ObjectType: 'P', Name: "cur"}, &pgproto3.Sync{})
				c.be(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, dataRow("1"), dataRow("2"))
				c.be(&pgproto3.PortalSuspended{})
				suspended := c.ts
				c.be(dataRow("3"), cmdComplete("SELECT 1"))
				c.be(&pgproto3.CloseComplete{})
				c.be(rfq('I'))
				return suspended
			},
			want: []row{portalRows[0], portalRows[1], closedRow},
		},
		{
			// The unnamed portal in between is a different portal: binding
			// it leaves the named one alone.
			name: "unnamed portal in between",
			conv: func(c *conv) uint64 {
				c.fe(&pgproto3.Parse{Name: "s1", Query: sql}, &pgproto3.Bind{DestinationPortal: "cur", PreparedStatement: "s1"},
					&pgproto3.Execute{Portal: "cur", MaxRows: 2}, &pgproto3.Flush{})
				c.be(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, dataRow("1"), dataRow("2"), &pgproto3.PortalSuspended{})
				suspended := c.ts
				c.fe(&pgproto3.Parse{Query: "SELECT 42"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
				c.be(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, dataRow("42"), cmdComplete("SELECT 1"))
				c.fe(&pgproto3.Execute{Portal: "cur"}, &pgproto3.Close{ObjectType: 'P', Name: "cur"}, &pgproto3.Sync{})
				c.be(dataRow("3"), cmdComplete("SELECT 1"), &pgproto3.CloseComplete{}, rfq('I'))
				return suspended
			},
			want: []row{portalRows[0], {text: "SELECT 42", rows: 1, tag: "SELECT 1"}, portalRows[1], closedRow},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newConv(t).hello()
			suspended := tt.conv(c)
			rfqTime := c.ts
			c.fe(&pgproto3.Execute{Portal: "cur"}, &pgproto3.Sync{})
			c.be(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "34000", Message: "portal \"cur\" does not exist"}, rfq('I'))
			res := replay(t, c.recs, clientConn(), Options{})

			var got []row
			var portalQs []*Query
			for _, q := range res.queries {
				r := row{text: q.Text, stmt: q.StatementName, rows: q.RowsReturned, suspended: q.PortalSuspended, tag: q.CommandTag, unknown: q.TextUnknown}
				if q.Error != nil {
					r.code = q.Error.Code
				}
				if q.StatementName == "s1" {
					portalQs = append(portalQs, q)
				}
				got = append(got, r)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			if len(portalQs) != 2 {
				t.Fatalf("%d queries of the portal", len(portalQs))
			}
			for _, q := range portalQs {
				if !q.Extended || q.Incomplete || q.Skipped || q.TxStatus != 'I' {
					t.Errorf("portal query %+v", *q)
				}
			}
			// The second Execute is the last of its round: the client has
			// its answer at the ReadyForQuery, after the CloseComplete.
			if q := portalQs[1]; q.End != rfqTime {
				t.Errorf("second Execute ends at %d, want the ReadyForQuery at %d", q.End, rfqTime)
			}
			// The first one ends at its PortalSuspended: the client has its
			// rows then, and another Execute follows in the same round.
			if q := portalQs[0]; q.End != suspended {
				t.Errorf("first Execute ends at %d, want the PortalSuspended at %d", q.End, suspended)
			}
			if res.parser.portals.has("cur") {
				t.Error("Close('P') left the portal in the table")
			}
			if s := res.stats; s.UnmatchedResponses != 0 || s.LostResponses != 0 || s.QueriesIncomplete != 0 || s.QueriesWithoutText != 1 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}
