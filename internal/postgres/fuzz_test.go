package postgres

import (
	"encoding/binary"
	"testing"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

// Fuzz input: one option byte (role in bits 0-1, preexisting in bit 2,
// small limits in bit 3), then chunks of
//
//	head u8 (bit 0: direction, bit 1: lost bytes follow the chunk)
//	len  u16 little endian
//	data [len]
//	lost u16 little endian, when bit 1 is set
//
// Chunks feed both directions of one parser in order.

func encodeFuzz(opt byte, recs []capfile.Record) []byte {
	b := []byte{opt}
	for _, r := range recs {
		for data := r.Data; len(data) > 0; {
			n := min(len(data), 0xffff)
			h := byte(0)
			if r.Dir == stream.Ingress {
				h = 1
			}
			b = append(b, h)
			b = binary.LittleEndian.AppendUint16(b, uint16(n))
			b = append(b, data[:n]...)
			data = data[n:]
		}
	}
	return b
}

func FuzzParser(f *testing.F) {
	for name := range fixtureWants {
		recs := loadFixture(f, name)
		f.Add(encodeFuzz(1, recs))                 // client, from the start
		f.Add(encodeFuzz(2|4, swapDirs(recs[1:]))) // server, found open
		f.Add(encodeFuzz(0|4|8, recs))             // unknown role, small limits
	}
	f.Fuzz(fuzzParserOne)
}

// fuzzParserOne is the body of FuzzParser.
func fuzzParserOne(t *testing.T, in []byte) {
	{
		if len(in) == 0 {
			return
		}
		opt := in[0]
		in = in[1:]
		c := &stream.ConnInfo{ID: 1, Role: stream.Role(opt & 3 % 3), Preexisting: opt&4 != 0}
		opts := Options{}
		if opt&8 != 0 {
			opts = Options{MaxStatements: 2, MaxPending: 3, MaxMessageSize: 64, MaxTextPrefix: 16}
		}
		var queries int
		det := NewDetector(func(_ *stream.ConnInfo, q *Query) {
			queries++
			if q.End < q.Start {
				t.Fatalf("End %d before Start %d", q.End, q.Start)
			}
		}, opts)
		o := det.opts
		p := det.New(c).(*Parser)
		ts := uint64(1)
		detected := false
		for len(in) >= 3 {
			h := in[0]
			n := int(binary.LittleEndian.Uint16(in[1:3]))
			in = in[3:]
			n = min(n, len(in))
			data := in[:n]
			in = in[n:]
			var lost uint64
			if h&2 != 0 && len(in) >= 2 {
				lost = uint64(binary.LittleEndian.Uint16(in))
				in = in[2:]
			}
			dir := stream.Egress
			if h&1 != 0 {
				dir = stream.Ingress
			}
			if !detected {
				det.Detect(c, dir, data)
				detected = true
			}
			ts += uint64(h>>2) + 1
			p.Data(dir, ts, data, lost)
			checkBounds(t, p, o)
		}
		p.Close(ts + 1)
		if p.fifo.len() != 0 || len(p.held) != 0 || len(p.untracked) != 0 {
			t.Fatalf("state left after Close: fifo %d held %d untracked %d", p.fifo.len(), len(p.held), len(p.untracked))
		}
		if s := det.Stats().Snapshot(); s.Queries != uint64(queries) {
			t.Fatalf("Queries counter %d, sink saw %d", s.Queries, queries)
		}
	}
}

// checkBounds asserts that every piece of per-connection state respects
// its limit.
func checkBounds(t *testing.T, p *Parser, o Options) {
	t.Helper()
	for _, d := range []*dirState{&p.egress, &p.ingress} {
		if len(d.rs) > resyncWindow {
			t.Fatalf("resync buffer %d over %d", len(d.rs), resyncWindow)
		}
		// Start-up packets are whole by construction (<= 10000 bytes).
		if len(d.body) > max(o.MaxMessageSize, maxStartupLen) {
			t.Fatalf("message buffer %d over %d", len(d.body), o.MaxMessageSize)
		}
	}
	switch {
	case p.fifo.len() > o.MaxPending:
		t.Fatalf("pending %d over %d", p.fifo.len(), o.MaxPending)
	case len(p.held) > o.MaxPending:
		t.Fatalf("held %d over %d", len(p.held), o.MaxPending)
	case len(p.untracked) > o.MaxPending:
		t.Fatalf("untracked %d over %d", len(p.untracked), o.MaxPending)
	case p.stmts.len() > o.MaxStatements || p.portals.len() > o.MaxStatements:
		t.Fatalf("statements %d portals %d over %d", p.stmts.len(), p.portals.len(), o.MaxStatements)
	case len(p.shadowStmts) > o.MaxStatements || len(p.shadowPortals) > o.MaxStatements:
		t.Fatalf("shadow tables over %d", o.MaxStatements)
	}
}
