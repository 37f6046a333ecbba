package postgres

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

// want describes one expected query. stmt "stmtcache_" stands for a pgx
// statement-cache name (a hash of the SQL); the test checks that one SQL
// text always maps to one such name.
type want struct {
	text        string
	stmt        string
	ext         bool
	tag         string
	affected    int64
	returned    int64
	code, msg   string
	tx          byte
	skipped     bool
	incomplete  bool
	textUnknown bool
}

const cacheName = "stmtcache_"

func sq(text, tag string, affected, returned int64) want {
	return want{text: text, tag: tag, affected: affected, returned: returned, tx: 'I'}
}

func xq(text, stmt, tag string, affected, returned int64) want {
	return want{text: text, stmt: stmt, ext: true, tag: tag, affected: affected, returned: returned, tx: 'I'}
}

func (w want) err(code, msg string) want {
	w.code, w.msg = code, msg
	w.tag, w.affected, w.returned = "", -1, 0
	return w
}

func (w want) skip() want {
	w.skipped = true
	w.tag, w.affected, w.returned = "", -1, 0
	return w
}

func (w want) txs(s byte) want { w.tx = s; return w }

func checkQueries(t *testing.T, got []*Query, wants []want) {
	t.Helper()
	if len(got) != len(wants) {
		for _, q := range got {
			t.Logf("got %q stmt=%q tag=%q err=%v", q.Text, q.StatementName, q.CommandTag, q.Error)
		}
		t.Fatalf("got %d queries, want %d", len(got), len(wants))
	}
	names := map[string]string{}
	for i, w := range wants {
		q := got[i]
		ctx := fmt.Sprintf("query %d (%.40q)", i, w.text)
		if q.Text != w.text {
			t.Errorf("%s: text %q", ctx, q.Text)
		}
		if w.stmt == cacheName {
			if !strings.HasPrefix(q.StatementName, cacheName) {
				t.Errorf("%s: statement %q, want a pgx cache name", ctx, q.StatementName)
			}
			if n, ok := names[q.Text]; ok && n != q.StatementName {
				t.Errorf("%s: statement %q, earlier %q for the same SQL", ctx, q.StatementName, n)
			}
			names[q.Text] = q.StatementName
		} else if q.StatementName != w.stmt {
			t.Errorf("%s: statement %q, want %q", ctx, q.StatementName, w.stmt)
		}
		if q.Extended != w.ext {
			t.Errorf("%s: extended %v", ctx, q.Extended)
		}
		if q.CommandTag != w.tag || q.RowsAffected != w.affected || q.RowsReturned != w.returned {
			t.Errorf("%s: tag %q affected %d returned %d, want %q %d %d", ctx, q.CommandTag, q.RowsAffected,
				q.RowsReturned, w.tag, w.affected, w.returned)
		}
		switch {
		case w.code == "" && q.Error != nil:
			t.Errorf("%s: unexpected error %+v", ctx, *q.Error)
		case w.code != "" && q.Error == nil:
			t.Errorf("%s: no error, want %s", ctx, w.code)
		case w.code != "" && (q.Error.Code != w.code || q.Error.Message != w.msg || q.Error.Severity != "ERROR"):
			t.Errorf("%s: error %+v, want %s %q", ctx, *q.Error, w.code, w.msg)
		}
		if q.TxStatus != w.tx {
			t.Errorf("%s: tx status %q, want %q", ctx, q.TxStatus, w.tx)
		}
		if q.Skipped != w.skipped || q.Incomplete != w.incomplete || q.TextUnknown != w.textUnknown {
			t.Errorf("%s: skipped %v incomplete %v textUnknown %v", ctx, q.Skipped, q.Incomplete, q.TextUnknown)
		}
		if q.Database != "postgres" || q.User != "postgres" {
			t.Errorf("%s: database %q user %q", ctx, q.Database, q.User)
		}
	}
}

// checkTimes checks that every Start is the time of a record the client
// wrote and every End the time of one it read, that End >= Start, and that
// requests are reported in the order they were sent.
func checkTimes(t *testing.T, recs []capfile.Record, got []*Query) {
	t.Helper()
	wrote, read := map[uint64]bool{}, map[uint64]bool{}
	for _, r := range recs {
		if r.Dir == stream.Egress {
			wrote[r.Time] = true
		} else {
			read[r.Time] = true
		}
	}
	var last uint64
	for i, q := range got {
		if !wrote[q.Start] {
			t.Errorf("query %d: Start %d is not the time of a request record", i, q.Start)
		}
		if !read[q.End] {
			t.Errorf("query %d: End %d is not the time of a response record", i, q.End)
		}
		if q.End < q.Start {
			t.Errorf("query %d: End %d before Start %d", i, q.End, q.Start)
		}
		if q.Start < last {
			t.Errorf("query %d: Start %d before the previous query's %d", i, q.Start, last)
		}
		last = q.Start
	}
}

var fixtureWants = map[string][]want{
	"simple.bin": {
		sq("CREATE TABLE simple_t (id int PRIMARY KEY, name text)", "CREATE TABLE", -1, 0),
		sq("INSERT INTO simple_t VALUES (1, 'a'), (2, 'b'), (3, 'c')", "INSERT 0 3", 3, 0),
		// pgx interpolates arguments into the text in simple protocol.
		sq("SELECT id, name FROM simple_t WHERE id >=  '2'  ORDER BY id", "SELECT 2", 2, 2),
		sq("UPDATE simple_t SET name = 'z' WHERE id < 3", "UPDATE 2", 2, 0),
		sq("DELETE FROM simple_t WHERE id = 3", "DELETE 1", 1, 0),
		// EmptyQueryResponse: no tag.
		sq("-- nothing to run", "", -1, 0),
	},
	"extended.bin": {
		xq("SELECT $1::int + $2::int", cacheName, "SELECT 1", 1, 1),
		xq("INSERT INTO ext_t (id, name) VALUES ($1, $2)", cacheName, "INSERT 0 1", 1, 0),
		xq("INSERT INTO ext_t (id, name) VALUES ($1, $2)", cacheName, "INSERT 0 1", 1, 0),
		xq("INSERT INTO ext_t (id, name) VALUES ($1, $2)", cacheName, "INSERT 0 1", 1, 0),
		xq("SELECT id, name FROM ext_t ORDER BY id", cacheName, "SELECT 3", 3, 3),
		xq("UPDATE ext_t SET name = $1 WHERE id > $2", cacheName, "UPDATE 2", 2, 0),
	},
	"prepared.bin": {
		xq("SELECT name FROM prep_t WHERE id = $1", "get_item", "SELECT 1", 1, 1),
		xq("SELECT name FROM prep_t WHERE id = $1", "get_item", "SELECT 1", 1, 1),
		xq("SELECT name FROM prep_t WHERE id = $1", "get_item", "SELECT 0", 0, 0),
		// Unnamed statements (QueryExecModeDescribeExec, QueryExecModeExec).
		xq("SELECT count(*) FROM prep_t WHERE id > $1", "", "SELECT 1", 1, 1),
		xq("UPDATE prep_t SET name = $1 WHERE id = $2", "", "UPDATE 1", 1, 0),
	},
	"pipeline.bin": func() []want {
		var w []want
		for range 48 {
			w = append(w, xq("INSERT INTO batch_t (id, v) VALUES ($1, $2)", cacheName, "INSERT 0 1", 1, 0))
		}
		return append(w,
			xq("SELECT count(*) FROM batch_t", cacheName, "SELECT 1", 1, 1),
			xq("SELECT id FROM batch_t WHERE id < $1 ORDER BY id", cacheName, "SELECT 5", 5, 5))
	}(),
	"errors.bin": {
		// Parse fails in a prepare round (Parse, Describe, Sync): no
		// Execute, the failed Parse is the query.
		xq("SELEC $1::int", cacheName, "", 0, 0).err("42601", `syntax error at or near "SELEC"`),
		// Parse fails with Bind/Describe/Execute/Sync behind it: the backend
		// discards up to Sync; the one Execute carries the error.
		xq("SELEC $1::int", "", "", 0, 0).err("42601", `syntax error at or near "SELEC"`),
		// Bind fails: parameter text "abc" for int.
		xq("SELECT $1::int", "", "", 0, 0).err("22P02", `invalid input syntax for type integer: "abc"`),
		// Execute fails.
		xq("SELECT 1 / $1::int", cacheName, "", 0, 0).err("22012", "division by zero"),
		xq("INSERT INTO err_t (id) VALUES ($1)", cacheName, "INSERT 0 1", 1, 0),
		xq("INSERT INTO err_t (id) VALUES ($1)", cacheName, "", 0, 0).err("23505", `duplicate key value violates unique constraint "err_t_pkey"`),
		sq("SELECT * FROM missing_t", "", 0, 0).err("42P01", `relation "missing_t" does not exist`),
		// State is sound after the errors.
		xq("SELECT 42", cacheName, "SELECT 1", 1, 1),
	},
	"batch_error.bin": {
		xq("INSERT INTO berr_t (id) VALUES ($1)", cacheName, "INSERT 0 1", 1, 0),
		xq("INSERT INTO berr_t (id) VALUES ($1)", cacheName, "INSERT 0 1", 1, 0),
		xq("SELECT 10 / $1::int", cacheName, "", 0, 0).err("22012", "division by zero"),
		// Never run: after the error the backend skipped to Sync.
		xq("INSERT INTO berr_t (id) VALUES ($1)", cacheName, "", 0, 0).skip(),
		xq("SELECT count(*) FROM berr_t", cacheName, "", 0, 0).skip(),
		// A new round after the failed one is answered normally.
		xq("SELECT count(*) FROM berr_t", cacheName, "SELECT 1", 1, 1),
	},
	"multistatement.bin": {
		// One Query per 'Q'; rows affected summed over the tags (INSERT 0 2,
		// SELECT 2, UPDATE 2), the last tag kept.
		sq("CREATE TABLE ms_t (a int); INSERT INTO ms_t VALUES (1), (2); SELECT a FROM ms_t; UPDATE ms_t SET a = a + 1",
			"UPDATE 2", 6, 2),
		// The error stops the string; the first statement's result stays.
		want{text: "SELECT 1; SELECT 1 / 0; SELECT 2", tag: "SELECT 1", affected: 1, returned: 1, tx: 'I',
			code: "22012", msg: "division by zero"},
	},
	"copy.bin": {
		// pgx CopyFrom: binary COPY FROM STDIN through a simple query.
		sq(`copy "copy_t" ( "id", "name" ) from stdin binary;`, "COPY 7", 7, 0),
		sq("COPY copy_t FROM STDIN", "COPY 2", 2, 0),
		sq("COPY copy_t TO STDOUT", "COPY 9", 9, 0),
	},
	"transaction.bin": {
		sq("begin", "BEGIN", -1, 0).txs('T'),
		xq("INSERT INTO tx_t (id, v) VALUES ($1, $2)", cacheName, "INSERT 0 1", 1, 0).txs('T'),
		xq("SELECT v FROM tx_t WHERE id = $1", cacheName, "SELECT 1", 1, 1).txs('T'),
		sq("commit", "COMMIT", -1, 0),
		sq("begin", "BEGIN", -1, 0).txs('T'),
		sq("DELETE FROM tx_t", "DELETE 1", 1, 0).txs('T'),
		sq("rollback", "ROLLBACK", -1, 0),
	},
	"long_query.bin": {
		sq("SELECT length('"+strings.Repeat("x", 20000)+"')", "SELECT 1", 1, 1),
		xq("SELECT length($1) + length('"+strings.Repeat("x", 20000)+"')", cacheName, "SELECT 1", 1, 1),
	},
	"listen_notify_0.bin": {
		// The NotificationResponses between the two queries are asynchronous.
		sq("LISTEN events", "LISTEN", -1, 0),
		sq("SELECT 1", "SELECT 1", 1, 1),
	},
	"listen_notify_1.bin": {
		sq("NOTIFY events, 'hello'", "NOTIFY", -1, 0),
		xq("SELECT pg_notify($1, $2)", cacheName, "SELECT 1", 1, 1),
	},
	"psql.bin": {
		sq("SELECT 1 AS one", "SELECT 1", 1, 1),
		sq("SELECT current_user, 'it''s'", "SELECT 1", 1, 1),
	},
	"cancel_0.bin": {
		sq("SELECT pg_sleep(30)", "", 0, 0).err("57014", "canceling statement due to user request"),
	},
	// The cancel connection carries only a CancelRequest.
	"cancel_1.bin": nil,
	// TLS: after the 'S' answer nothing on the socket is readable.
	"tls.bin": nil,
}

func TestFixtures(t *testing.T) {
	for name, wants := range fixtureWants {
		t.Run(name, func(t *testing.T) {
			recs := loadFixture(t, name)
			res := replay(t, recs, clientConn(), Options{})
			checkQueries(t, res.queries, wants)
			checkTimes(t, recs, res.queries)
			s := res.stats
			// Clean recordings: nothing lost, nothing guessed.
			if s.Resyncs != 0 || s.BytesSkipped != 0 || s.DecodeErrors != 0 || s.UnmatchedResponses != 0 ||
				s.LostResponses != 0 || s.QueriesIncomplete != 0 || s.UndecidedMessages != 0 {
				t.Errorf("stats show losses on a clean fixture: %+v", s)
			}
			if s.Queries != uint64(len(wants)) {
				t.Errorf("Queries counter %d, want %d", s.Queries, len(wants))
			}
		})
	}
}

// The first requests of every pipelined query share the write that carried
// them; the end of each but the last is its own CommandComplete.
func TestPipelineTiming(t *testing.T) {
	recs := loadFixture(t, "pipeline.bin")
	res := replay(t, recs, clientConn(), Options{})
	qs := res.queries
	for i, q := range qs {
		if q.Start != qs[0].Start {
			t.Errorf("query %d: Start %d, want the batch write %d", i, q.Start, qs[0].Start)
		}
	}
	last := qs[len(qs)-1]
	for _, r := range recs {
		if r.Dir == stream.Ingress && strings.HasSuffix(string(r.Data), "Z\x00\x00\x00\x05I") && r.Time == last.End {
			return
		}
	}
	t.Errorf("last query End %d is not the time of the record holding the final ReadyForQuery", last.End)
}

// Simple protocol, one query per write: Start is exactly the write of the
// 'Q' and End the read holding its ReadyForQuery, found here by scanning
// the records independently of the parser.
func TestSimpleTimingExact(t *testing.T) {
	recs := loadFixture(t, "simple.bin")
	var starts, ends []uint64
	for _, r := range recs {
		if r.Dir == stream.Egress && len(r.Data) > 0 && r.Data[0] == 'Q' {
			starts = append(starts, r.Time)
		}
		if r.Dir == stream.Ingress && len(r.Data) >= 6 && string(r.Data[len(r.Data)-6:len(r.Data)-1]) == "Z\x00\x00\x00\x05" &&
			r.Data[0] != 'R' {
			ends = append(ends, r.Time)
		}
	}
	res := replay(t, recs, clientConn(), Options{})
	if len(res.queries) != len(starts) || len(starts) != len(ends) {
		t.Fatalf("%d queries, %d Q writes, %d RFQ reads", len(res.queries), len(starts), len(ends))
	}
	for i, q := range res.queries {
		if q.Start != starts[i] || q.End != ends[i] {
			t.Errorf("query %d: [%d, %d], want [%d, %d]", i, q.Start, q.End, starts[i], ends[i])
		}
	}
}

func TestFixtureTLS(t *testing.T) {
	recs := loadFixture(t, "tls.bin")
	res := replay(t, recs, clientConn(), Options{})
	if res.stats.TLSConnections != 1 {
		t.Errorf("TLSConnections = %d, want 1", res.stats.TLSConnections)
	}
	var after uint64
	for _, r := range recs[2:] { // SSLRequest, 'S', then TLS records
		after += uint64(len(r.Data))
	}
	if res.stats.EncryptedBytes != after {
		t.Errorf("EncryptedBytes = %d, want %d", res.stats.EncryptedBytes, after)
	}
	if recs[1].Dir != stream.Ingress || string(recs[1].Data) != "S" {
		t.Fatalf("fixture does not hold the 'S' answer: %q", recs[1].Data)
	}
}

func TestFixtureCancel(t *testing.T) {
	res := replay(t, loadFixture(t, "cancel_1.bin"), clientConn(), Options{})
	if res.stats.CancelRequests != 1 || len(res.queries) != 0 {
		t.Errorf("CancelRequests = %d, queries %d", res.stats.CancelRequests, len(res.queries))
	}
}

// The same bytes seen from the server (Role server, directions swapped)
// give the same queries.
func TestServerSideView(t *testing.T) {
	for name := range fixtureWants {
		t.Run(name, func(t *testing.T) {
			recs := loadFixture(t, name)
			client := replay(t, recs, clientConn(), Options{})
			conn := clientConn()
			conn.Role = stream.RoleServer
			server := replay(t, swapDirs(recs), conn, Options{})
			if !reflect.DeepEqual(client.queries, server.queries) {
				t.Errorf("server view differs: %d vs %d queries", len(server.queries), len(client.queries))
			}
			if client.stats != server.stats {
				t.Errorf("stats differ:\nclient %+v\nserver %+v", client.stats, server.stats)
			}
		})
	}
}

// A connection seen from its start whose role is unknown: the start-up
// packet tells the client's direction, from either view.
func TestUnknownRoleFromStart(t *testing.T) {
	for name := range fixtureWants {
		t.Run(name, func(t *testing.T) {
			recs := loadFixture(t, name)
			want := replay(t, recs, clientConn(), Options{}).queries
			conn := clientConn()
			conn.Role = stream.RoleUnknown
			for _, rr := range [][]capfile.Record{recs, swapDirs(recs)} {
				got := replay(t, rr, conn, Options{})
				if !reflect.DeepEqual(got.queries, want) {
					t.Errorf("unknown role: %d queries, want %d", len(got.queries), len(want))
				}
			}
		})
	}
}
