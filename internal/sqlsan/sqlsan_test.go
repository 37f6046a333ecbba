package sqlsan

import (
	"strings"
	"testing"
)

type sanCase struct {
	in, text, op, coll, summary string
}

var sanCases = []sanCase{
	// Literals.
	{"SELECT * FROM users WHERE id = 5", "SELECT * FROM users WHERE id = ?", "SELECT", "users", "SELECT users"},
	{"select * from users where name = 'O''Brien'", "select * from users where name = ?", "SELECT", "users", "SELECT users"},
	{`SELECT E'it\'s', e'a\\', 'b' FROM t`, "SELECT ?, ?, ? FROM t", "SELECT", "t", "SELECT t"},
	// standard_conforming_strings: a backslash does not escape in '...'.
	{`SELECT 'C:\dir\' , 2`, "SELECT ? , ?", "SELECT", "", "SELECT"},
	{"SELECT 1, 1.5, .5, 5., 1e10, 1.5E-3, 0x1F, 0o17, 0b101, 1_000_000", "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?", "SELECT", "", "SELECT"},
	// A minus is a sign after an operator, '(' or a keyword; otherwise it
	// subtracts.
	{"SELECT -1, a-1, a - 1, (-2), f(x)-3, 4-5, x*-6, 7 - -8 FROM t", "SELECT ?, a-?, a - ?, (?), f(x)-?, ?-?, x*?, ? - ? FROM t", "SELECT", "t", "SELECT t"},
	{"UPDATE accounts SET balance = balance - 100 WHERE id = -1", "UPDATE accounts SET balance = balance - ? WHERE id = ?", "UPDATE", "accounts", "UPDATE accounts"},
	// Identifiers with digits and dollars are not literals; placeholders stay.
	{"SELECT t1.c2, col_3, a$1 FROM t1 WHERE id = $1 AND v = $12", "SELECT t1.c2, col_3, a$1 FROM t1 WHERE id = $1 AND v = $12", "SELECT", "t1", "SELECT t1"},
	{"SELECT '$1', $1", "SELECT ?, $1", "SELECT", "", "SELECT"},
	// Dollar quoting, nested tags.
	{"SELECT $$it's$$, $tag$a $$ b$tag$ FROM t", "SELECT ?, ? FROM t", "SELECT", "t", "SELECT t"},
	{"DO $outer$ BEGIN PERFORM $inner$ x $inner$; END $outer$", "DO ?", "DO", "", "DO"},
	// Comments, with quotes inside, nested block comments.
	{"SELECT /* it's a 'comment' */ 1 -- don't\nFROM t", "SELECT ? FROM t", "SELECT", "t", "SELECT t"},
	{"/* a /* b */ c' */ SELECT 1", "SELECT ?", "SELECT", "", "SELECT"},
	// Casts and typed literals.
	{"SELECT '1'::int, 2::text, '{1,2}'::int[]", "SELECT ?::int, ?::text, ?::int[]", "SELECT", "", "SELECT"},
	{`SELECT DATE '2024-01-01', INTERVAL '1 day', B'1010', X'FF', N'n', U&'d\0061t'`, "SELECT DATE ?, INTERVAL ?, ?, ?, ?, ?", "SELECT", "", "SELECT"},
	// IN lists collapse; lists of placeholders or a subquery do not.
	{"SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN (?)", "SELECT", "t", "SELECT t"},
	{"SELECT * FROM t WHERE c NOT IN ('a','b') AND d in(1)", "SELECT * FROM t WHERE c NOT IN (?) AND d in (?)", "SELECT", "t", "SELECT t"},
	{"SELECT * FROM t WHERE (a, b) IN ((1, 'x'), (2, 'y'))", "SELECT * FROM t WHERE (a, b) IN (?)", "SELECT", "t", "SELECT t"},
	{"SELECT * FROM t WHERE id IN ($1, $2)", "SELECT * FROM t WHERE id IN ($1, $2)", "SELECT", "t", "SELECT t"},
	{"SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE x = 1)", "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE x = ?)", "SELECT", "", "SELECT t SELECT u"},
	{"SELECT * FROM t WHERE id IN (1, x)", "SELECT * FROM t WHERE id IN (?, x)", "SELECT", "t", "SELECT t"},
	// ARRAY of literals is one literal.
	{"SELECT ARRAY[1,2,3], ARRAY['a'], ARRAY[[1,2],[3,4]], ARRAY[a, b] FROM t WHERE x = ANY(ARRAY[1, -2])", "SELECT ?, ?, ?, ARRAY[a, b] FROM t WHERE x = ANY(?)", "SELECT", "t", "SELECT t"},
	// Booleans are literals; NULL is not.
	{"UPDATE t SET active = TRUE, note = NULL WHERE deleted = false", "UPDATE t SET active = ?, note = NULL WHERE deleted = ?", "UPDATE", "t", "UPDATE t"},
	// Quoted identifiers are kept as written.
	{`SELECT "Weird ""Name""", "1col" FROM "My Table"`, `SELECT "Weird ""Name""", "1col" FROM "My Table"`, "SELECT", `"My Table"`, `SELECT "My Table"`},
	{`SELECT U&"d\0061t" FROM s."T"`, `SELECT U&"d\0061t" FROM s."T"`, "SELECT", `s."T"`, `SELECT s."T"`},
	// Whitespace folds.
	{"SELECT\n\t1\n   FROM   t  ", "SELECT ? FROM t", "SELECT", "t", "SELECT t"},
	// JSON operators are operators.
	{"SELECT a->>'k', b#-'{x}', c @> '[1]' FROM t", "SELECT a->>?, b#-?, c @> ? FROM t", "SELECT", "t", "SELECT t"},
	{"SELECT * FROM café WHERE naïve = 'é'", "SELECT * FROM café WHERE naïve = ?", "SELECT", "café", "SELECT café"},

	// Operation, collection, summary.
	{"BEGIN; UPDATE accounts SET balance = balance - 100 WHERE id = 1; COMMIT", "BEGIN; UPDATE accounts SET balance = balance - ? WHERE id = ?; COMMIT", "", "", "BEGIN UPDATE accounts COMMIT"},
	{"SELECT 1;", "SELECT ?;", "SELECT", "", "SELECT"},
	{"INSERT INTO shipping_details (order_id, address) SELECT order_id, address FROM orders WHERE order_id = 3",
		"INSERT INTO shipping_details (order_id, address) SELECT order_id, address FROM orders WHERE order_id = ?", "INSERT", "", "INSERT shipping_details SELECT orders"},
	{"SELECT * FROM songs, artists WHERE songs.artist_id = artists.id", "SELECT * FROM songs, artists WHERE songs.artist_id = artists.id", "SELECT", "", "SELECT songs artists"},
	{"SELECT order_date FROM (SELECT * FROM orders o JOIN customers c ON o.customer_id = c.customer_id)",
		"SELECT order_date FROM (SELECT * FROM orders o JOIN customers c ON o.customer_id = c.customer_id)", "SELECT", "", "SELECT SELECT orders customers"},
	{"SELECT * FROM orders AS o LEFT OUTER JOIN customers c USING (cid)", "SELECT * FROM orders AS o LEFT OUTER JOIN customers c USING (cid)", "SELECT", "", "SELECT orders customers"},
	// One table named twice is one collection.
	{"SELECT * FROM emp e JOIN emp m ON e.mgr = m.id", "SELECT * FROM emp e JOIN emp m ON e.mgr = m.id", "SELECT", "emp", "SELECT emp emp"},
	{"SELECT * FROM t WHERE x IN (SELECT x FROM T WHERE y = 1)", "SELECT * FROM t WHERE x IN (SELECT x FROM T WHERE y = ?)", "SELECT", "t", "SELECT t SELECT T"},
	{"SELECT * FROM public.users", "SELECT * FROM public.users", "SELECT", "public.users", "SELECT public.users"},
	{"DELETE FROM sessions WHERE expires < now()", "DELETE FROM sessions WHERE expires < now()", "DELETE", "sessions", "DELETE sessions"},
	{"DELETE FROM a USING b WHERE a.id = b.id", "DELETE FROM a USING b WHERE a.id = b.id", "DELETE", "", "DELETE a b"},
	{"UPDATE a SET x = b.x FROM b WHERE a.id = b.id", "UPDATE a SET x = b.x FROM b WHERE a.id = b.id", "UPDATE", "", "UPDATE a b"},
	{"INSERT INTO kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v", "INSERT INTO kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v", "INSERT", "kv", "INSERT kv"},
	{"INSERT INTO t VALUES (1, 'a'), (2, 'b')", "INSERT INTO t VALUES (?, ?), (?, ?)", "INSERT", "t", "INSERT t"},
	{"SELECT * FROM jobs WHERE id = $1 FOR NO KEY UPDATE SKIP LOCKED", "SELECT * FROM jobs WHERE id = $1 FOR NO KEY UPDATE SKIP LOCKED", "SELECT", "jobs", "SELECT jobs"},
	{"WITH recent AS (SELECT * FROM events WHERE ts > now() - interval '1 hour') SELECT count(*) FROM recent",
		"WITH recent AS (SELECT * FROM events WHERE ts > now() - interval ?) SELECT count(*) FROM recent", "SELECT", "events", "SELECT events SELECT"},
	{"WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved", "WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved", "INSERT", "", "DELETE a INSERT b SELECT"},
	{"SELECT extract(epoch FROM created_at), substring(name FROM 2 FOR 3) FROM users", "SELECT extract(epoch FROM created_at), substring(name FROM ? FOR ?) FROM users", "SELECT", "users", "SELECT users"},
	{"SELECT * FROM generate_series(1, 10) g", "SELECT * FROM generate_series(?, ?) g", "SELECT", "", "SELECT"},
	{"SELECT a FROM t1 UNION ALL SELECT a FROM t2", "SELECT a FROM t1 UNION ALL SELECT a FROM t2", "SELECT", "", "SELECT t1 SELECT t2"},
	{"(SELECT 1) UNION (SELECT 2)", "(SELECT ?) UNION (SELECT ?)", "SELECT", "", "SELECT SELECT"},
	{"MERGE INTO target t USING source s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)",
		"MERGE INTO target t USING source s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)", "MERGE", "", "MERGE target source"},
	// DDL.
	{"CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, name text DEFAULT 'x')", "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, name text DEFAULT ?)", "CREATE TABLE", "users", "CREATE TABLE users"},
	{"CREATE UNIQUE INDEX CONCURRENTLY idx ON ONLY users (name)", "CREATE UNIQUE INDEX CONCURRENTLY idx ON ONLY users (name)", "CREATE INDEX", "users", "CREATE INDEX users"},
	{"CREATE INDEX ON users (name)", "CREATE INDEX ON users (name)", "CREATE INDEX", "users", "CREATE INDEX users"},
	{"DROP TABLE IF EXISTS a, b CASCADE", "DROP TABLE IF EXISTS a, b CASCADE", "DROP TABLE", "", "DROP TABLE a b"},
	{"ALTER TABLE users ADD COLUMN age int DEFAULT 0", "ALTER TABLE users ADD COLUMN age int DEFAULT ?", "ALTER TABLE", "users", "ALTER TABLE users"},
	{"CREATE OR REPLACE FUNCTION f() RETURNS int AS $$ SELECT 1 FROM t $$ LANGUAGE sql", "CREATE OR REPLACE FUNCTION f() RETURNS int AS ? LANGUAGE sql", "CREATE FUNCTION", "", "CREATE FUNCTION"},
	{"CREATE TEMP TABLE tmp AS SELECT * FROM users", "CREATE TEMP TABLE tmp AS SELECT * FROM users", "CREATE TABLE", "", "CREATE TABLE tmp SELECT users"},
	{"CREATE MATERIALIZED VIEW mv AS SELECT 1", "CREATE MATERIALIZED VIEW mv AS SELECT ?", "CREATE MATERIALIZED VIEW", "mv", "CREATE MATERIALIZED VIEW mv SELECT"},
	{"CREATE TRIGGER trg BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION f()", "CREATE TRIGGER trg BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION f()", "CREATE TRIGGER", "", "CREATE TRIGGER"},
	{"GRANT SELECT, INSERT ON t TO bob", "GRANT SELECT, INSERT ON t TO bob", "GRANT", "", "GRANT"},
	{"TRUNCATE TABLE a, b", "TRUNCATE TABLE a, b", "TRUNCATE", "", "TRUNCATE a b"},
	// Other commands.
	{"START TRANSACTION ISOLATION LEVEL SERIALIZABLE", "START TRANSACTION ISOLATION LEVEL SERIALIZABLE", "START TRANSACTION", "", "START TRANSACTION"},
	{"ROLLBACK TO SAVEPOINT sp1", "ROLLBACK TO SAVEPOINT sp1", "ROLLBACK", "", "ROLLBACK"},
	{"SET search_path TO 'public'", "SET search_path TO ?", "SET", "", "SET"},
	{"COPY t (a, b) FROM STDIN WITH (FORMAT csv)", "COPY t (a, b) FROM STDIN WITH (FORMAT csv)", "COPY", "t", "COPY t"},
	{"COPY (SELECT * FROM t WHERE x > 5) TO STDOUT", "COPY (SELECT * FROM t WHERE x > ?) TO STDOUT", "COPY", "t", "COPY SELECT t"},
	{"NOTIFY events, 'hello'", "NOTIFY events, ?", "NOTIFY", "", "NOTIFY"},
	{"EXPLAIN ANALYZE SELECT * FROM t", "EXPLAIN ANALYZE SELECT * FROM t", "EXPLAIN", "t", "EXPLAIN SELECT t"},
	{"LOCK TABLE accounts IN SHARE MODE", "LOCK TABLE accounts IN SHARE MODE", "LOCK", "accounts", "LOCK accounts"},
	// Degenerate input.
	{"", "", "", "", ""},
	{"  -- only a comment", "", "", "", ""},
	{";;", ";;", "", "", ""},
	{"SELECT 'abc", "SELECT ?", "SELECT", "", "SELECT"},
	{"SELECT 1 /* open", "SELECT ?", "SELECT", "", "SELECT"},
	{`SELECT "open`, `SELECT "open`, "SELECT", "", "SELECT"},
	{"SELECT $tag$ never closed", "SELECT ?", "SELECT", "", "SELECT"},
	{"SELECT $ 1", "SELECT $ ?", "SELECT", "", "SELECT"},
}

func TestSanitize(t *testing.T) {
	for _, c := range sanCases {
		r := Sanitize(c.in, ModeObfuscated)
		if r.Text != c.text || r.Operation != c.op || r.Collection != c.coll || r.Summary != c.summary {
			t.Errorf("Sanitize(%q)\n got  text=%q op=%q coll=%q summary=%q\n want text=%q op=%q coll=%q summary=%q",
				c.in, r.Text, r.Operation, r.Collection, r.Summary, c.text, c.op, c.coll, c.summary)
		}
		// Obfuscating again changes nothing.
		if again := Sanitize(r.Text, ModeObfuscated).Text; again != r.Text {
			t.Errorf("not idempotent: %q -> %q -> %q", c.in, r.Text, again)
		}
		if err := leaks(r.Text); err != "" {
			t.Errorf("Sanitize(%q) = %q: %s", c.in, r.Text, err)
		}
	}
}

func TestModes(t *testing.T) {
	const q = "SELECT * FROM users WHERE id = 42"
	raw := Sanitize(q, ModeRaw)
	off := Sanitize(q, ModeOff)
	obf := Sanitize(q, ModeObfuscated)
	if raw.Text != q || off.Text != "" || obf.Text != "SELECT * FROM users WHERE id = ?" {
		t.Errorf("texts: raw %q off %q obfuscated %q", raw.Text, off.Text, obf.Text)
	}
	for _, r := range []Result{raw, off} {
		if r.Operation != obf.Operation || r.Collection != obf.Collection || r.Summary != obf.Summary {
			t.Errorf("analysis depends on the mode: %+v vs %+v", r, obf)
		}
	}
	for _, c := range []struct {
		in   string
		want Mode
	}{
		{"obfuscated", ModeObfuscated},
		{"", ModeObfuscated},
		{" RAW ", ModeRaw}, // surrounding space and case are ignored
		{"off", ModeOff},
	} {
		if m, err := ParseMode(c.in); err != nil || m != c.want {
			t.Errorf("ParseMode(%q) = %v, %v", c.in, m, err)
		}
	}
	if _, err := ParseMode("hashed"); err == nil {
		t.Error("ParseMode accepted an unknown mode")
	}
	for _, m := range []Mode{ModeObfuscated, ModeRaw, ModeOff} {
		if back, err := ParseMode(m.String()); err != nil || back != m {
			t.Errorf("%v does not round-trip", m)
		}
	}
}

func TestSummaryBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("SELECT * FROM ")
	for i := range 200 {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("table_number_")
		b.WriteString(strings.Repeat("x", i%7))
	}
	r := Sanitize(b.String(), ModeObfuscated)
	if len(r.Summary) > MaxSummaryLen || !strings.HasPrefix(r.Summary, "SELECT table_number_ table_number_x ") {
		t.Errorf("summary %d bytes: %.60q", len(r.Summary), r.Summary)
	}
	if strings.HasSuffix(r.Summary, " ") || strings.HasSuffix(r.Summary, "_") && !strings.HasSuffix(r.Summary, "number_") {
		t.Errorf("summary cut inside a word: %q", r.Summary[len(r.Summary)-20:])
	}
}

// Invalid UTF-8 in identifiers does not make an invalid attribute.
func TestInvalidUTF8(t *testing.T) {
	r := Sanitize("SELECT * FROM t\xff\xfe WHERE a = 'x\xff'", ModeObfuscated)
	if r.Text != "SELECT * FROM t\uFFFD WHERE a = ?" {
		t.Errorf("text %q", r.Text)
	}
}

// leaks checks, independently of the lexer, that obfuscated text holds no
// literal: outside double-quoted identifiers there is no single quote, no
// dollar quote, and every digit belongs to an identifier or a $n
// placeholder.
func leaks(s string) string {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			for i++; i < len(s); i++ {
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						i++
						continue
					}
					break
				}
			}
		case c == '\'':
			return "single quote outside an identifier"
		case c == '$' && i+1 < len(s) && s[i+1] == '$' && (i == 0 || !identByte(s[i-1]) && (s[i-1] < '0' || s[i-1] > '9')):
			// Inside an identifier ("a$$b") a dollar is just a letter.
			return "dollar quote"
		case c >= '0' && c <= '9':
			j := i
			for j > 0 && s[j-1] >= '0' && s[j-1] <= '9' {
				j--
			}
			if j == 0 {
				return "number at the start"
			}
			if p := s[j-1]; !identByte(p) {
				return "number outside an identifier: " + s[j:min(len(s), i+8)]
			}
		}
	}
	return ""
}

func identByte(c byte) bool {
	return c == '$' || c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func FuzzSanitize(f *testing.F) {
	for _, c := range sanCases {
		f.Add(c.in)
	}
	f.Add("SELECT length('" + strings.Repeat("x", 300) + "')")
	f.Add("INSERT INTO batch_t (id, v) VALUES ($1, $2)")
	f.Add(`copy "copy_t" ( "id", "name" ) from stdin binary;`)
	f.Fuzz(func(t *testing.T, in string) {
		r := Sanitize(in, ModeObfuscated)
		if err := leaks(r.Text); err != "" {
			t.Fatalf("Sanitize(%q) = %q: %s", in, r.Text, err)
		}
		if again := Sanitize(r.Text, ModeObfuscated).Text; again != r.Text {
			t.Fatalf("not idempotent: %q -> %q -> %q", in, r.Text, again)
		}
		if len(r.Summary) > MaxSummaryLen {
			t.Fatalf("summary %d bytes", len(r.Summary))
		}
		if r.Collection != "" && !strings.Contains(r.Summary, r.Collection) && len(r.Summary) < MaxSummaryLen-len(r.Collection) {
			t.Fatalf("collection %q missing from summary %q", r.Collection, r.Summary)
		}
		if raw := Sanitize(in, ModeRaw); raw.Text != in || raw.Summary != r.Summary {
			t.Fatalf("raw mode differs")
		}
	})
}

func BenchmarkSanitize(b *testing.B) {
	qs := []string{
		"SELECT id, name FROM users WHERE id = $1",
		"INSERT INTO orders (id, customer_id, total, note) VALUES (42, 7, 19.99, 'gift wrap')",
		"UPDATE accounts SET balance = balance - 100 WHERE id IN (1, 2, 3, 4, 5)",
		"WITH recent AS (SELECT * FROM events WHERE ts > now() - interval '1 hour') SELECT count(*) FROM recent JOIN users u ON u.id = recent.user_id",
		"BEGIN",
	}
	var n int
	for _, q := range qs {
		n += len(q)
	}
	b.ReportAllocs()
	b.SetBytes(int64(n))
	b.ResetTimer()
	for range b.N {
		for _, q := range qs {
			Sanitize(q, ModeObfuscated)
		}
	}
	b.ReportMetric(float64(b.N*len(qs))/b.Elapsed().Seconds(), "queries/s")
}
