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

	p.Expire(1000, 100) // nothing left
	require.Len(t, got, 1)
	var _ stream.Expirer = p
}
