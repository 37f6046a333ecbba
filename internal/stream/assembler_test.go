package stream

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ebpfotel/ebpfreceiver/internal/event"
)

// fedConn is what one connection's parser received.
type fedConn struct {
	info   ConnInfo
	data   [2][]byte
	lost   [2]uint64
	closed bool
}

type fakeDetector struct {
	accept func(dir Direction, data []byte) bool
	conns  map[uint64]*fedConn
}

func (d *fakeDetector) Name() string { return "fake" }
func (d *fakeDetector) Detect(_ *ConnInfo, dir Direction, data []byte) bool {
	return d.accept(dir, data)
}
func (d *fakeDetector) New(info *ConnInfo) Parser {
	fc := &fedConn{info: *info}
	d.conns[info.ID] = fc
	return fc
}
func (f *fedConn) Data(dir Direction, _ uint64, data []byte, lost uint64) {
	f.data[dir-1] = append(f.data[dir-1], data...)
	f.lost[dir-1] += lost
}
func (f *fedConn) Close(uint64) { f.closed = true }

func openRec(id uint64, role uint8, seqE, seqI uint64, typ uint8) []byte {
	ev := event.CaptureConnEvent{Type: typ, Role: role, Pid: 42, Fd: 7, ConnId: id, TsNs: 1, SeqEgress: seqE, SeqIngress: seqI}
	ev.Tuple.Family = event.AFInet
	copy(ev.Tuple.Saddr[:], []byte{127, 0, 0, 1})
	copy(ev.Tuple.Daddr[:], []byte{127, 0, 0, 2})
	ev.Tuple.Sport, ev.Tuple.Dport = 40000, 5432
	copy(ev.Comm[:], []int8{'p', 's', 'q', 'l'})
	return event.EncodeConn(&ev)
}

func dataRec(id uint64, dir Direction, seq uint64, payload string) []byte {
	ev := event.CaptureDataEvent{Type: event.TypeData, Direction: uint8(dir), Pid: 42, Fd: 7, ConnId: id, TsNs: 2, Seq: seq, TotalLen: uint32(len(payload))}
	ev.Tuple.Family = event.AFInet
	return event.EncodeData(&ev, []byte(payload))
}

func TestAssembler(t *testing.T) {
	all := func(Direction, []byte) bool { return true }
	tests := []struct {
		name    string
		accept  func(Direction, []byte) bool
		records [][]byte
		check   func(t *testing.T, a *Assembler, d *fakeDetector)
	}{
		{
			name:   "in order both directions",
			accept: all,
			records: [][]byte{
				openRec(1, 1, 0, 0, event.TypeConnOpen),
				dataRec(1, Egress, 0, "hel"), dataRec(1, Egress, 3, "lo"),
				dataRec(1, Ingress, 0, "world"),
				openRec(1, 1, 5, 5, event.TypeConnClose),
			},
			check: func(t *testing.T, a *Assembler, d *fakeDetector) {
				c := d.conns[1]
				require.Equal(t, "hello", string(c.data[0]))
				require.Equal(t, "world", string(c.data[1]))
				require.True(t, c.closed)
				require.Equal(t, RoleClient, c.info.Role)
				require.Equal(t, "psql", c.info.Comm)
				require.Equal(t, "127.0.0.1:40000", c.info.Local.String())
				require.Equal(t, "127.0.0.2:5432", c.info.Remote.String())
				require.Equal(t, 0, a.Len())
				require.Equal(t, int64(0), a.Stats.LiveConns.Load())
			},
		},
		{
			name:   "gap reported as lost bytes",
			accept: all,
			records: [][]byte{
				openRec(1, 1, 0, 0, event.TypeConnOpen),
				dataRec(1, Egress, 0, "abc"), dataRec(1, Egress, 10, "xyz"),
				openRec(1, 1, 20, 0, event.TypeConnClose),
			},
			check: func(t *testing.T, a *Assembler, d *fakeDetector) {
				c := d.conns[1]
				require.Equal(t, "abcxyz", string(c.data[0]))
				require.Equal(t, uint64(7+7), c.lost[0], "7 bytes in the hole, 7 after the last record")
				require.Equal(t, uint64(14), a.Stats.LostBytes.Load())
				require.Equal(t, uint64(2), a.Stats.GapEvents.Load())
			},
		},
		{
			name:   "out of order record dropped and counted",
			accept: all,
			records: [][]byte{
				openRec(1, 1, 0, 0, event.TypeConnOpen),
				dataRec(1, Egress, 0, "abcd"), dataRec(1, Egress, 2, "cd"),
			},
			check: func(t *testing.T, a *Assembler, d *fakeDetector) {
				require.Equal(t, "abcd", string(d.conns[1].data[0]))
				require.Equal(t, uint64(1), a.Stats.OutOfOrder.Load())
			},
		},
		{
			name:   "open record lost: connection built from data, marked mid-stream",
			accept: all,
			records: [][]byte{
				dataRec(9, Ingress, 100, "tail"),
			},
			check: func(t *testing.T, a *Assembler, d *fakeDetector) {
				c := d.conns[9]
				require.True(t, c.info.Preexisting)
				require.Equal(t, "tail", string(c.data[1]))
				require.Equal(t, uint64(1), a.Stats.ConnsUnseen.Load())
			},
		},
		{
			name:   "undetected connection ignored after the detection budget",
			accept: func(Direction, []byte) bool { return false },
			records: [][]byte{
				openRec(1, 1, 0, 0, event.TypeConnOpen),
				dataRec(1, Egress, 0, string(bytes.Repeat([]byte("x"), 64))),
				dataRec(1, Egress, 64, "more"),
			},
			check: func(t *testing.T, a *Assembler, d *fakeDetector) {
				require.Empty(t, d.conns)
				require.Equal(t, uint64(1), a.Stats.ConnsIgnored.Load())
			},
		},
		{
			name:   "garbage records counted",
			accept: all,
			records: [][]byte{
				{event.TypeData, 1, 2},
				{99},
				{},
			},
			check: func(t *testing.T, a *Assembler, d *fakeDetector) {
				require.Equal(t, uint64(1), a.Stats.DecodeErrors.Load())
				require.Equal(t, uint64(2), a.Stats.UnknownRecords.Load())
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &fakeDetector{accept: tt.accept, conns: map[uint64]*fedConn{}}
			var ignored []int32
			a := NewAssembler(Config{MaxConnections: 8, DetectBytes: 64}, []Detector{d}, func(_ uint32, fd int32) { ignored = append(ignored, fd) })
			for _, r := range tt.records {
				a.Record(r)
			}
			tt.check(t, a, d)
			if a.Stats.ConnsIgnored.Load() > 0 {
				require.Equal(t, []int32{7}, ignored, "the kernel is told to stop capturing")
			}
		})
	}
}

func TestAssemblerBoundsAndExpiry(t *testing.T) {
	d := &fakeDetector{accept: func(Direction, []byte) bool { return true }, conns: map[uint64]*fedConn{}}
	a := NewAssembler(Config{MaxConnections: 3, IdleTimeoutNs: 5e9}, []Detector{d}, nil)
	for id := uint64(1); id <= 5; id++ {
		a.Record(openRec(id, 1, 0, 0, event.TypeConnOpen))
		a.Record(dataRec(id, Egress, 0, "x"))
	}
	require.Equal(t, 3, a.Len())
	require.Equal(t, uint64(2), a.Stats.ConnsEvicted.Load())
	require.True(t, d.conns[1].closed, "least recently active evicted first")
	require.True(t, d.conns[2].closed)
	require.False(t, d.conns[5].closed)

	a.Tick(2e9) // not idle long enough (records carry ts 1..2 ns)
	require.Equal(t, 3, a.Len())
	a.Tick(10e9)
	require.Equal(t, 0, a.Len())
	require.Equal(t, uint64(3), a.Stats.ConnsExpired.Load())
	require.Equal(t, int64(0), a.Stats.LiveConns.Load())
}

type panicky struct{}

func (panicky) Data(Direction, uint64, []byte, uint64) { panic("parser bug") }
func (panicky) Close(uint64)                           {}

type panicDetector struct{}

func (panicDetector) Name() string                             { return "panicky" }
func (panicDetector) Detect(*ConnInfo, Direction, []byte) bool { return true }
func (panicDetector) New(*ConnInfo) Parser                     { return panicky{} }

func TestAssemblerSurvivesParserPanic(t *testing.T) {
	a := NewAssembler(Config{}, []Detector{panicDetector{}}, nil)
	a.Record(openRec(1, 1, 0, 0, event.TypeConnOpen))
	a.Record(dataRec(1, Egress, 0, "boom"))
	a.Record(dataRec(1, Egress, 4, "again"))
	require.Equal(t, uint64(1), a.Stats.ParserPanics.Load())
}

func FuzzAssembler(f *testing.F) {
	f.Add(dataRec(1, Egress, 0, "hello"), openRec(1, 1, 5, 0, event.TypeConnClose))
	f.Add(openRec(2, 2, 0, 0, event.TypeConnOpen), dataRec(2, Ingress, 3, "x"))
	f.Fuzz(func(t *testing.T, r1, r2 []byte) {
		d := &fakeDetector{accept: func(Direction, []byte) bool { return true }, conns: map[uint64]*fedConn{}}
		a := NewAssembler(Config{MaxConnections: 4, IdleTimeoutNs: 1}, []Detector{d}, nil)
		a.Record(r1)
		a.Record(r2)
		a.Record(r1)
		a.Tick(1 << 62)
		// A connection stamped exactly at the first sweep was not idle yet.
		a.Tick(1<<62 + 2e9)
		if a.Len() != 0 {
			t.Fatalf("expiry left %d connections", a.Len())
		}
	})
}

func TestPeerObserved(t *testing.T) {
	d := &fakeDetector{accept: func(Direction, []byte) bool { return true }, conns: map[uint64]*fedConn{}}
	a := NewAssembler(Config{}, []Detector{d}, nil)
	client := event.CaptureConnEvent{Type: event.TypeConnOpen, Role: 1, Pid: 1, Fd: 3, ConnId: 1, Nonce: 99}
	client.Tuple.Family = event.AFInet
	copy(client.Tuple.Saddr[:], []byte{127, 0, 0, 1})
	copy(client.Tuple.Daddr[:], []byte{127, 0, 0, 1})
	client.Tuple.Sport, client.Tuple.Dport = 40000, 5432
	server := client
	server.Role, server.Pid, server.ConnId = 2, 2, 2
	server.Tuple.Sport, server.Tuple.Dport = 5432, 40000

	a.Record(event.EncodeConn(&client))
	a.Record(dataRec(1, Egress, 0, "q"))
	require.False(t, a.PeerObserved(&d.conns[1].info), "only the client end is watched")
	a.Record(event.EncodeConn(&server))
	a.Record(dataRec(2, Ingress, 0, "q"))
	require.True(t, a.PeerObserved(&d.conns[1].info))
	require.True(t, a.PeerObserved(&d.conns[2].info))

	other := d.conns[2].info
	other.Nonce = 100 // another connection that reused the ports
	require.False(t, a.PeerObserved(&other))

	closeSrv := server
	closeSrv.Type = event.TypeConnClose
	a.Record(event.EncodeConn(&closeSrv))
	require.True(t, a.PeerObserved(&d.conns[1].info), "the server end closed, but was watched: a late client span still links")
	closeCli := client
	closeCli.Type = event.TypeConnClose
	a.Record(event.EncodeConn(&closeCli))
	require.Empty(t, a.ends, "both ends closed: forgotten")
}

type expiring struct {
	fedConn
	expired []uint64
}

func (e *expiring) Expire(now, idle uint64) { e.expired = append(e.expired, now-idle) }

type expiringDetector struct{ p *expiring }

func (d expiringDetector) Name() string                             { return "expiring" }
func (d expiringDetector) Detect(*ConnInfo, Direction, []byte) bool { return true }
func (d expiringDetector) New(*ConnInfo) Parser                     { return d.p }

func TestTickExpiresRequests(t *testing.T) {
	p := &expiring{}
	a := NewAssembler(Config{RequestIdleNs: 3e9}, []Detector{expiringDetector{p}}, nil)
	a.Record(openRec(1, 1, 0, 0, event.TypeConnOpen))
	a.Record(dataRec(1, Egress, 0, "req"))
	a.Tick(5e9)
	a.Tick(5.5e9) // within a second of the last sweep: no work
	a.Tick(7e9)
	require.Equal(t, []uint64{2e9, 4e9}, p.expired)
}

func tlsRec(id uint64, dir Direction, seq uint64, payload string) []byte {
	ev := event.CaptureDataEvent{Type: event.TypeData, Direction: uint8(dir), Flags: event.FlagTLS, Pid: 42, Fd: 7, ConnId: id, TsNs: 3, Seq: seq, TotalLen: uint32(len(payload))}
	ev.Tuple.Family = event.AFInet
	return event.EncodeData(&ev, []byte(payload))
}

func TestAssemblerTLS(t *testing.T) {
	// Detects only plaintext that starts with "PLAIN".
	d := &fakeDetector{accept: func(_ Direction, b []byte) bool { return bytes.HasPrefix(b, []byte("PLAIN")) }, conns: map[uint64]*fedConn{}}
	var forgot []int32
	a := NewAssembler(Config{DetectBytes: 64}, []Detector{d}, func(_ uint32, fd int32) { forgot = append(forgot, fd) })
	hello := "\x16\x03\x01" + string(bytes.Repeat([]byte{0xAB}, 200)) // a TLS handshake record, over the budget
	a.Record(openRec(1, 1, 0, 0, event.TypeConnOpen))
	a.Record(dataRec(1, Egress, 0, hello))
	a.Record(dataRec(1, Ingress, 0, "\x16\x03\x03server hello"))
	require.Empty(t, forgot, "a TLS handshake is not given up: plaintext may follow")
	require.Empty(t, d.conns)

	// Plaintext from the library probe: a parser starts on it.
	a.Record(tlsRec(1, Egress, 203, "PLAIN request"))
	a.Record(dataRec(1, Egress, 216, "\x17\x03\x03ciphertext")) // leaked ciphertext: skipped
	a.Record(tlsRec(1, Ingress, 15, "reply"))
	c := d.conns[1]
	require.NotNil(t, c)
	require.True(t, c.info.TLS)
	require.False(t, c.info.Preexisting)
	require.Equal(t, "PLAIN request", string(c.data[0]))
	require.Equal(t, "reply", string(c.data[1]))
	require.Zero(t, c.lost[0]+c.lost[1], "plaintext offsets start where the probe starts")
	require.Equal(t, uint64(1), a.Stats.TLSConns.Load())
	require.Equal(t, uint64(3), a.Stats.CiphertextRecords.Load())
}

func TestAssemblerGivesUpOnEndlessCiphertext(t *testing.T) {
	d := &fakeDetector{accept: func(Direction, []byte) bool { return true }, conns: map[uint64]*fedConn{}}
	var forgot []int32
	a := NewAssembler(Config{}, []Detector{d}, func(_ uint32, fd int32) { forgot = append(forgot, fd) })
	a.Record(openRec(1, 1, 0, 0, event.TypeConnOpen))
	chunk := "\x17\x03\x03" + string(bytes.Repeat([]byte{1}, 8000))
	d.accept = func(_ Direction, b []byte) bool { return !looksLikeTLS(b) }
	for seq := uint64(0); seq < uint64(maxCiphertext+len(chunk)); seq += uint64(len(chunk)) {
		a.Record(dataRec(1, Egress, seq, chunk))
	}
	require.Equal(t, []int32{7}, forgot, "a TLS library we do not probe: capture stops")
}
