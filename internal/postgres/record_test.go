package postgres

// Fixture generator. It records real PostgreSQL 15 traffic into
// testdata/postgres/*.bin through recproxy, with pgx v5 and psql as clients.
// It runs only when asked; CI replays the committed files.
//
// Regenerate (as root, PostgreSQL 15 server binaries installed):
//
//	EBPF_RECORD_FIXTURES=1 go test ./internal/postgres -run TestRecordFixtures -v
//
// It starts a private server with pgserver (initdb in a temporary directory
// owned by the postgres user, trust authentication, a free loopback port,
// stopped with "pg_ctl stop -m immediate"). After regenerating, run the
// replay tests: timings change, and so may the fixed expectations that
// depend on the server (for example BackendKeyData), never the queries.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/pgserver"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/recproxy"
)

const fixtureDir = "../../testdata/postgres"

// writeCert gives the server a throw-away self-signed certificate (the
// default ssl_cert_file/ssl_key_file names) so that the TLS fixture can show
// an 'S' answer to SSLRequest.
func writeCert(t *testing.T, data string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	crt := filepath.Join(data, "server.crt")
	kf := filepath.Join(data, "server.key")
	if err := os.WriteFile(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	// The server refuses a key readable by others.
	if err := os.WriteFile(kf, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("chown", "postgres:postgres", crt, kf).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v\n%s", err, out)
	}
}

// connect opens a pgx connection to addr (the proxy, or the server).
func connect(ctx context.Context, addr string, mode pgx.QueryExecMode, sslmode string) (*pgx.Conn, error) {
	host, port, _ := net.SplitHostPort(addr)
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=%s", host, port, sslmode))
	if err != nil {
		return nil, err
	}
	cfg.DefaultQueryExecMode = mode
	return pgx.ConnectConfig(ctx, cfg)
}

// scenario drives clients through the proxy at addr; direct is the server.
type scenario struct {
	name string
	run  func(ctx context.Context, addr, direct string) error
}

func exec1(ctx context.Context, c *pgx.Conn, sql string, args ...any) error {
	_, err := c.Exec(ctx, sql, args...)
	return err
}

// expectPgErr checks that err is a server error with SQLSTATE code.
func expectPgErr(err error, code string) error {
	if err == nil {
		return fmt.Errorf("want SQLSTATE %s, got no error", code)
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != code {
		return fmt.Errorf("want SQLSTATE %s, got %w", code, err)
	}
	return nil
}

func setup(ctx context.Context, direct string, sqls ...string) error {
	c, err := connect(ctx, direct, pgx.QueryExecModeSimpleProtocol, "disable")
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	for _, s := range sqls {
		if err := exec1(ctx, c, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

var scenarios = []scenario{
	{"simple", func(ctx context.Context, addr, _ string) error {
		c, err := connect(ctx, addr, pgx.QueryExecModeSimpleProtocol, "disable")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		for _, s := range []string{
			"CREATE TABLE simple_t (id int PRIMARY KEY, name text)",
			"INSERT INTO simple_t VALUES (1, 'a'), (2, 'b'), (3, 'c')",
		} {
			if err := exec1(ctx, c, s); err != nil {
				return err
			}
		}
		// pgx interpolates the argument into the text in simple protocol.
		rows, err := c.Query(ctx, "SELECT id, name FROM simple_t WHERE id >= $1 ORDER BY id", 2)
		if err != nil {
			return err
		}
		rows.Close()
		for _, s := range []string{
			"UPDATE simple_t SET name = 'z' WHERE id < 3",
			"DELETE FROM simple_t WHERE id = 3",
			"-- nothing to run",
		} {
			if err := exec1(ctx, c, s); err != nil {
				return err
			}
		}
		return nil
	}},
	{"extended", func(ctx context.Context, addr, direct string) error {
		if err := setup(ctx, direct, "CREATE TABLE ext_t (id int PRIMARY KEY, name text)"); err != nil {
			return err
		}
		c, err := connect(ctx, addr, pgx.QueryExecModeCacheStatement, "disable")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		var sum int
		if err := c.QueryRow(ctx, "SELECT $1::int + $2::int", 2, 3).Scan(&sum); err != nil {
			return err
		}
		for i, n := range []string{"one", "two", "three"} {
			if err := exec1(ctx, c, "INSERT INTO ext_t (id, name) VALUES ($1, $2)", i+1, n); err != nil {
				return err
			}
		}
		rows, err := c.Query(ctx, "SELECT id, name FROM ext_t ORDER BY id")
		if err != nil {
			return err
		}
		rows.Close()
		return exec1(ctx, c, "UPDATE ext_t SET name = $1 WHERE id > $2", "many", 1)
	}},
	{"prepared", func(ctx context.Context, addr, direct string) error {
		if err := setup(ctx, direct, "CREATE TABLE prep_t (id int PRIMARY KEY, name text)",
			"INSERT INTO prep_t VALUES (1, 'a'), (2, 'b')"); err != nil {
			return err
		}
		c, err := connect(ctx, addr, pgx.QueryExecModeCacheStatement, "disable")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		if _, err := c.Prepare(ctx, "get_item", "SELECT name FROM prep_t WHERE id = $1"); err != nil {
			return err
		}
		for _, id := range []int{1, 2, 3} {
			rows, err := c.Query(ctx, "get_item", id)
			if err != nil {
				return err
			}
			rows.Close()
		}
		if err := c.Deallocate(ctx, "get_item"); err != nil {
			return err
		}
		// Unnamed statements: describe then execute, and execute directly.
		if err := exec1(ctx, c, "SELECT count(*) FROM prep_t WHERE id > $1", pgx.QueryExecModeDescribeExec, 0); err != nil {
			return err
		}
		return exec1(ctx, c, "UPDATE prep_t SET name = $1 WHERE id = $2", pgx.QueryExecModeExec, "c", 2)
	}},
	{"pipeline", func(ctx context.Context, addr, direct string) error {
		if err := setup(ctx, direct, "CREATE TABLE batch_t (id int PRIMARY KEY, v text)"); err != nil {
			return err
		}
		c, err := connect(ctx, addr, pgx.QueryExecModeCacheStatement, "disable")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		b := &pgx.Batch{}
		for i := range 48 {
			b.Queue("INSERT INTO batch_t (id, v) VALUES ($1, $2)", i, fmt.Sprint("v", i))
		}
		b.Queue("SELECT count(*) FROM batch_t")
		b.Queue("SELECT id FROM batch_t WHERE id < $1 ORDER BY id", 5)
		return c.SendBatch(ctx, b).Close()
	}},
	{"errors", func(ctx context.Context, addr, direct string) error {
		if err := setup(ctx, direct, "CREATE TABLE err_t (id int PRIMARY KEY)"); err != nil {
			return err
		}
		c, err := connect(ctx, addr, pgx.QueryExecModeCacheStatement, "disable")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		// Parse fails: syntax error. With an argument pgx uses the extended
		// protocol: first a prepare round (Parse, Describe, Sync) that fails;
		// then with QueryExecModeExec, Parse/Bind/Describe/Execute/Sync in
		// one write, where the backend discards everything after the Parse.
		if err := expectPgErr(exec1(ctx, c, "SELEC $1::int", 1), "42601"); err != nil {
			return err
		}
		if err := expectPgErr(exec1(ctx, c, "SELEC $1::int", pgx.QueryExecModeExec, 2), "42601"); err != nil {
			return err
		}
		// Bind fails: the text "abc" is not an integer. QueryExecModeExec
		// sends Parse/Bind/Describe/Execute/Sync at once, parameters as text.
		if err := expectPgErr(exec1(ctx, c, "SELECT $1::int", pgx.QueryExecModeExec, "abc"), "22P02"); err != nil {
			return err
		}
		// Execute fails: division by zero, unique violation.
		if err := expectPgErr(exec1(ctx, c, "SELECT 1 / $1::int", 0), "22012"); err != nil {
			return err
		}
		if err := exec1(ctx, c, "INSERT INTO err_t (id) VALUES ($1)", 1); err != nil {
			return err
		}
		if err := expectPgErr(exec1(ctx, c, "INSERT INTO err_t (id) VALUES ($1)", 1), "23505"); err != nil {
			return err
		}
		// Simple protocol: unknown table.
		if err := expectPgErr(exec1(ctx, c, "SELECT * FROM missing_t", pgx.QueryExecModeSimpleProtocol), "42P01"); err != nil {
			return err
		}
		var v int
		return c.QueryRow(ctx, "SELECT 42").Scan(&v)
	}},
	{"batch_error", func(ctx context.Context, addr, direct string) error {
		if err := setup(ctx, direct, "CREATE TABLE berr_t (id int PRIMARY KEY)"); err != nil {
			return err
		}
		c, err := connect(ctx, addr, pgx.QueryExecModeCacheStatement, "disable")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		b := &pgx.Batch{}
		b.Queue("INSERT INTO berr_t (id) VALUES ($1)", 1)
		b.Queue("INSERT INTO berr_t (id) VALUES ($1)", 2)
		b.Queue("SELECT 10 / $1::int", 0)
		b.Queue("INSERT INTO berr_t (id) VALUES ($1)", 3)
		b.Queue("SELECT count(*) FROM berr_t")
		if err := expectPgErr(c.SendBatch(ctx, b).Close(), "22012"); err != nil {
			return err
		}
		var n int
		return c.QueryRow(ctx, "SELECT count(*) FROM berr_t").Scan(&n)
	}},
	{"multistatement", func(ctx context.Context, addr, _ string) error {
		c, err := connect(ctx, addr, pgx.QueryExecModeSimpleProtocol, "disable")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		if _, err := c.PgConn().Exec(ctx, "CREATE TABLE ms_t (a int); INSERT INTO ms_t VALUES (1), (2); SELECT a FROM ms_t; UPDATE ms_t SET a = a + 1").ReadAll(); err != nil {
			return err
		}
		_, err = c.PgConn().Exec(ctx, "SELECT 1; SELECT 1 / 0; SELECT 2").ReadAll()
		return expectPgErr(err, "22012")
	}},
	{"copy", func(ctx context.Context, addr, direct string) error {
		if err := setup(ctx, direct, "CREATE TABLE copy_t (id int, name text)"); err != nil {
			return err
		}
		c, err := connect(ctx, addr, pgx.QueryExecModeCacheStatement, "disable")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		rows := make([][]any, 7)
		for i := range rows {
			rows[i] = []any{i, fmt.Sprint("n", i)}
		}
		if _, err := c.CopyFrom(ctx, pgx.Identifier{"copy_t"}, []string{"id", "name"}, pgx.CopyFromRows(rows)); err != nil {
			return err
		}
		if _, err := c.PgConn().CopyFrom(ctx, strings.NewReader("100\ttext\n101\tmore\n"), "COPY copy_t FROM STDIN"); err != nil {
			return err
		}
		_, err = c.PgConn().CopyTo(ctx, io.Discard, "COPY copy_t TO STDOUT")
		return err
	}},
	{"transaction", func(ctx context.Context, addr, direct string) error {
		if err := setup(ctx, direct, "CREATE TABLE tx_t (id int PRIMARY KEY, v int)"); err != nil {
			return err
		}
		c, err := connect(ctx, addr, pgx.QueryExecModeCacheStatement, "disable")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO tx_t (id, v) VALUES ($1, $2)", 1, 10); err != nil {
			return err
		}
		var v int
		if err := tx.QueryRow(ctx, "SELECT v FROM tx_t WHERE id = $1", 1).Scan(&v); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		tx, err = c.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DELETE FROM tx_t"); err != nil {
			return err
		}
		return tx.Rollback(ctx)
	}},
	{"long_query", func(ctx context.Context, addr, _ string) error {
		long := strings.Repeat("x", 20000)
		c, err := connect(ctx, addr, pgx.QueryExecModeCacheStatement, "disable")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		var n int
		if err := c.QueryRow(ctx, "SELECT length('"+long+"')", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil {
			return err
		}
		return c.QueryRow(ctx, "SELECT length($1) + length('"+long+"')", "abc").Scan(&n)
	}},
	{"listen_notify", func(ctx context.Context, addr, _ string) error {
		l, err := connect(ctx, addr, pgx.QueryExecModeSimpleProtocol, "disable")
		if err != nil {
			return err
		}
		defer l.Close(ctx)
		if err := exec1(ctx, l, "LISTEN events"); err != nil {
			return err
		}
		n, err := connect(ctx, addr, pgx.QueryExecModeCacheStatement, "disable")
		if err != nil {
			return err
		}
		defer n.Close(ctx)
		if err := exec1(ctx, n, "NOTIFY events, 'hello'"); err != nil {
			return err
		}
		if err := exec1(ctx, n, "SELECT pg_notify($1, $2)", "events", "world"); err != nil {
			return err
		}
		for range 2 {
			if _, err := l.WaitForNotification(ctx); err != nil {
				return err
			}
		}
		return exec1(ctx, l, "SELECT 1")
	}},
	{"psql", func(ctx context.Context, addr, _ string) error {
		host, port, _ := net.SplitHostPort(addr)
		// libpq's default sslmode=prefer sends SSLRequest first; SSL is
		// still off on the server (the tls scenario turns it on), so the
		// answer is 'N' and the StartupMessage follows on the same socket.
		cmd := exec.CommandContext(ctx, "psql", "-X", "-h", host, "-p", port, "-U", "postgres", "-d", "postgres",
			"-v", "ON_ERROR_STOP=1", "-c", "SELECT 1 AS one", "-c", "SELECT current_user, 'it''s'")
		cmd.Env = append(os.Environ(), "PGSSLMODE=prefer", "PGGSSENCMODE=disable")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("psql: %w: %s", err, out)
		}
		return nil
	}},
	{"tls", func(ctx context.Context, addr, direct string) error {
		// ssl can be switched on by a configuration reload.
		if err := setup(ctx, direct, "ALTER SYSTEM SET ssl = on", "SELECT pg_reload_conf()"); err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
		c, err := connect(ctx, addr, pgx.QueryExecModeCacheStatement, "require")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		return exec1(ctx, c, "SELECT $1::text", "secret over TLS")
	}},
	{"cancel", func(ctx context.Context, addr, _ string) error {
		c, err := connect(ctx, addr, pgx.QueryExecModeSimpleProtocol, "disable")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		done := make(chan error, 1)
		go func() { done <- exec1(ctx, c, "SELECT pg_sleep(30)") }()
		time.Sleep(300 * time.Millisecond)
		if err := c.PgConn().CancelRequest(ctx); err != nil {
			return err
		}
		return expectPgErr(<-done, "57014")
	}},
}

// TestRecordFixtures regenerates testdata/postgres. See the comment at the
// top of the file.
func TestRecordFixtures(t *testing.T) {
	if os.Getenv("EBPF_RECORD_FIXTURES") == "" {
		t.Skip("set EBPF_RECORD_FIXTURES=1 to record fixtures from a real server")
	}
	// No settings on the command line: ssl stays off (the postgresql.conf
	// default) until the tls scenario turns it on with ALTER SYSTEM, which
	// a command-line -c would override. The certificate it then needs can
	// be written after the start, as ssl is read only on reload.
	srv := pgserver.Start(t, nil)
	writeCert(t, srv.DataDir)
	if err := os.MkdirAll(fixtureDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			px, err := recproxy.Start(srv.Addr())
			if err != nil {
				t.Fatal(err)
			}
			runErr := sc.run(ctx, px.Addr(), srv.Addr())
			conns := px.Close()
			if runErr != nil {
				t.Fatalf("scenario: %v", runErr)
			}
			if len(conns) == 0 {
				t.Fatal("no connection recorded")
			}
			for i, recs := range conns {
				name := sc.name + ".bin"
				if len(conns) > 1 {
					name = fmt.Sprintf("%s_%d.bin", sc.name, i)
				}
				if err := capfile.WriteFile(filepath.Join(fixtureDir, name), recs); err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: %d records", name, len(recs))
			}
		})
	}
}
