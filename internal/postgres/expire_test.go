package postgres

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

func TestExpireEndsUnansweredQueries(t *testing.T) {
	var got []*Query
	det := NewDetector(func(_ *stream.ConnInfo, q *Query) { got = append(got, q) }, Options{})
	p := det.New(conn(stream.RoleClient, false)).(*Parser)
	p.Data(stream.Egress, 10, startup(t, "alice", "shop"), 0)
	p.Data(stream.Ingress, 20, serverHello(t), 0)
	p.Data(stream.Egress, 100, enc(t, &pgproto3.Query{String: "SELECT pg_sleep(60)"}), 0)

	p.Expire(150, 100) // silent for 50 ns only: still waiting
	require.Empty(t, got)
	p.Expire(300, 100)
	require.Len(t, got, 1)
	require.True(t, got[0].Incomplete)
	require.Equal(t, "SELECT pg_sleep(60)", got[0].Text)
	require.Equal(t, uint64(100), got[0].Start)
	require.Equal(t, uint64(300), got[0].End)
	require.Equal(t, UnansweredExpired, got[0].Unanswered)

	p.Expire(1000, 100) // nothing left
	require.Len(t, got, 1)
	var _ stream.Expirer = p
}

// Why a query ended unanswered: only a query that saw no response message
// at all is Unanswered, and the reason follows what ended it.
func TestUnansweredReason(t *testing.T) {
	rowDesc := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("n"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}
	for _, tt := range []struct {
		name     string
		response []pgproto3.Message
		close    bool
		want     Unanswered
	}{
		{"expired without any response", nil, false, UnansweredExpired},
		{"closed without any response", nil, true, UnansweredClosed},
		{"rows came, then the close", []pgproto3.Message{rowDesc, &pgproto3.DataRow{Values: [][]byte{[]byte("1")}}}, true, NotUnanswered},
		{"rows came, then silence", []pgproto3.Message{rowDesc, &pgproto3.DataRow{Values: [][]byte{[]byte("1")}}}, false, NotUnanswered},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got []*Query
			det := NewDetector(func(_ *stream.ConnInfo, q *Query) { got = append(got, q) }, Options{})
			p := det.New(conn(stream.RoleClient, false)).(*Parser)
			p.Data(stream.Egress, 10, startup(t, "alice", "shop"), 0)
			p.Data(stream.Ingress, 20, serverHello(t), 0)
			p.Data(stream.Egress, 100, enc(t, &pgproto3.Query{String: "SELECT n FROM generate_series(1, 1000000) n"}), 0)
			if len(tt.response) > 0 {
				p.Data(stream.Ingress, 150, enc(t, tt.response...), 0)
			}
			if tt.close {
				p.Close(300)
			} else {
				p.Expire(300, 100)
			}
			require.Len(t, got, 1)
			require.True(t, got[0].Incomplete)
			require.Equal(t, tt.want, got[0].Unanswered)
		})
	}
}
