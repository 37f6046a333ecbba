package postgres

import (
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

// loadFixture reads testdata/postgres/name.
func loadFixture(t testing.TB, name string) []capfile.Record {
	t.Helper()
	recs, err := capfile.ReadFile(filepath.Join(fixtureDir, name))
	if err != nil {
		t.Fatalf("fixture %s: %v (regenerate with EBPF_RECORD_FIXTURES=1, see record_test.go)", name, err)
	}
	if len(recs) == 0 {
		t.Fatalf("fixture %s is empty", name)
	}
	return recs
}

// result is what a replay produced.
type result struct {
	queries []*Query
	stats   StatsSnapshot
	parser  *Parser
}

// replay feeds recs to a fresh parser for conn and closes it.
func replay(t testing.TB, recs []capfile.Record, conn stream.ConnInfo, opts Options) result {
	t.Helper()
	var res result
	det := NewDetector(func(c *stream.ConnInfo, q *Query) {
		if c.ID != conn.ID {
			t.Errorf("sink got connection %d, want %d", c.ID, conn.ID)
		}
		res.queries = append(res.queries, q)
	}, opts)
	p := det.New(&conn).(*Parser)
	capfile.Replay(p, recs)
	res.stats = det.Stats().Snapshot()
	res.parser = p
	return res
}

// clientConn is the usual view: the observed process is the client and
// the connection was seen from its start.
func clientConn() stream.ConnInfo {
	return stream.ConnInfo{ID: 7, PID: 100, FD: 5, Comm: "app", Role: stream.RoleClient, Transport: "tcp"}
}

// swapDirs turns a client-side recording into the server-side view of the
// same bytes: what the client wrote, the server read.
func swapDirs(recs []capfile.Record) []capfile.Record {
	out := make([]capfile.Record, len(recs))
	for i, r := range recs {
		out[i] = r
		if r.Dir == stream.Egress {
			out[i].Dir = stream.Ingress
		} else {
			out[i].Dir = stream.Egress
		}
	}
	return out
}

// enc encodes protocol messages back to back.
func enc(t testing.TB, msgs ...pgproto3.Message) []byte {
	t.Helper()
	var b []byte
	var err error
	for _, m := range msgs {
		if b, err = m.Encode(b); err != nil {
			t.Fatalf("encode %T: %v", m, err)
		}
	}
	return b
}

// startup is a StartupMessage for user and database.
func startup(t testing.TB, user, db string) []byte {
	return enc(t, &pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters:      map[string]string{"user": user, "database": db},
	})
}

// serverHello is a server's answer to a StartupMessage with trust
// authentication.
func serverHello(t testing.TB) []byte {
	return enc(t,
		&pgproto3.AuthenticationOk{},
		&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"},
		&pgproto3.BackendKeyData{ProcessID: 42, SecretKey: []byte{1, 2, 3, 4}},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	)
}

// complete is the response to a simple query returning rows.
func selectResponse(t testing.TB, rows int, tag string) []byte {
	msgs := []pgproto3.Message{&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("a"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}}
	for range rows {
		msgs = append(msgs, &pgproto3.DataRow{Values: [][]byte{[]byte("1")}})
	}
	msgs = append(msgs, &pgproto3.CommandComplete{CommandTag: []byte(tag)}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	return enc(t, msgs...)
}

// conv is a scripted conversation for synthetic tests.
type conv struct {
	t    testing.TB
	recs []capfile.Record
	ts   uint64
}

func newConv(t testing.TB) *conv { return &conv{t: t, ts: 1000} }

func (c *conv) add(dir stream.Direction, b []byte) *conv {
	c.ts += 1000
	c.recs = append(c.recs, capfile.Record{Dir: dir, Time: c.ts, Data: b})
	return c
}

// fe adds client messages, be server messages (client-side view).
func (c *conv) fe(msgs ...pgproto3.Message) *conv { return c.add(stream.Egress, enc(c.t, msgs...)) }
func (c *conv) be(msgs ...pgproto3.Message) *conv { return c.add(stream.Ingress, enc(c.t, msgs...)) }

// hello adds start-up and authentication.
func (c *conv) hello() *conv {
	c.add(stream.Egress, startup(c.t, "alice", "shop"))
	return c.add(stream.Ingress, serverHello(c.t))
}
