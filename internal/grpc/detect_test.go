package grpc

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

func firstOf(recs []capfile.Record, dir stream.Direction) []byte {
	for _, r := range recs {
		if r.Dir == dir {
			return r.Data
		}
	}
	return nil
}

// Every recording is claimed from the first bytes of either direction, in
// the role it was recorded in, and not on the wrong side.
func TestDetectFixtures(t *testing.T) {
	det := NewDetector(Options{}, nil)
	if det.Name() != "grpc" {
		t.Fatal(det.Name())
	}
	for _, name := range fixtureNames() {
		recs := loadFixture(t, name)
		cli, srv := firstOf(recs, stream.Egress), firstOf(recs, stream.Ingress)
		checks := []struct {
			conn *stream.ConnInfo
			dir  stream.Direction
			data []byte
			want bool
		}{
			{clientConn(), stream.Egress, cli, true},  // the preface
			{clientConn(), stream.Ingress, srv, true}, // the server's SETTINGS
			{serverConn(), stream.Ingress, cli, true},
			{serverConn(), stream.Egress, srv, true},
			{&stream.ConnInfo{}, stream.Egress, cli, true},
			{&stream.ConnInfo{}, stream.Ingress, srv, true},
			{serverConn(), stream.Egress, cli, false}, // a server never sends the preface
			{clientConn(), stream.Egress, srv, false}, // a client begins with the preface, not SETTINGS
			{clientConn(), stream.Egress, cli[:7], false},
		}
		for i, c := range checks {
			if got := det.Detect(c.conn, c.dir, c.data); got != c.want {
				t.Errorf("%s check %d: Detect = %v", name, i, got)
			}
		}
	}
}

// A preexisting connection is claimed from frames seen mid-stream.
func TestDetectPreexisting(t *testing.T) {
	det := NewDetector(Options{}, nil)
	conn := &stream.ConnInfo{Role: stream.RoleClient, Preexisting: true}
	claimed, total := 0, 0
	for _, name := range []string{"churn", "concurrent", "streaming", "large"} {
		recs := loadFixture(t, name)
		for _, r := range recs[2:] {
			total++
			if det.Detect(conn, r.Dir, r.Data) {
				claimed++
			}
		}
	}
	// Reads of a loopback peer start at frame boundaries; lone small writes
	// (a 13-byte WINDOW_UPDATE) count as one frame exactly filling the read.
	if claimed*10 < total*9 {
		t.Errorf("claimed %d of %d mid-connection reads", claimed, total)
	}
	// A read that starts inside a frame is claimed from the frames after it.
	recs := loadFixture(t, "churn")
	var all []byte
	for _, r := range recs[10:40] {
		if r.Dir == stream.Egress {
			all = append(all, r.Data...)
		}
	}
	if !det.Detect(conn, stream.Egress, all[5:]) {
		t.Error("mid-frame start not claimed")
	}
}

// PostgreSQL, HTTP/1.1, TLS and random bytes are not claimed, in any role.
func TestDetectRejects(t *testing.T) {
	det := NewDetector(Options{}, nil)
	pgStartup := func() []byte {
		body := []byte{0, 3, 0, 0} // protocol 3.0
		body = append(body, "user\x00postgres\x00database\x00app\x00application_name\x00psql\x00\x00"...)
		b := binary.BigEndian.AppendUint32(nil, uint32(4+len(body)))
		return append(b, body...)
	}()
	pgMsg := func(typ byte, body string) []byte {
		b := []byte{typ}
		b = binary.BigEndian.AppendUint32(b, uint32(4+len(body)))
		return append(b, body...)
	}
	inputs := map[string][]byte{
		"pg startup":     pgStartup,
		"pg ssl request": {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f},
		"pg gss request": {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30},
		"pg cancel":      {0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x30, 0x39, 1, 2, 3, 4},
		"pg query":       pgMsg('Q', "SELECT 1\x00"),
		"pg parse+bind":  append(pgMsg('P', "s1\x00SELECT $1\x00\x00\x00"), pgMsg('B', "\x00s1\x00\x00\x00\x00\x00\x00")...),
		"pg auth ok":     append(pgMsg('R', "\x00\x00\x00\x00"), pgMsg('S', "server_version\x0016\x00")...),
		"pg ssl no":      {'N'},
		"pg ready":       pgMsg('Z', "I"),
		"pg error":       pgMsg('E', "SERROR\x00C42P01\x00Mrelation does not exist\x00\x00"),
		"http1 request":  []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"http1 response": []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
		"tls hello":      {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 1, 2, 3, 4, 5, 6, 7, 8, 9},
		"empty":          nil,
		"zeros":          make([]byte, 64),
		"short frame":    {0, 0, 4, 8, 0, 0, 0},
	}
	conns := []*stream.ConnInfo{
		clientConn(), serverConn(), {},
		{Preexisting: true}, {Role: stream.RoleClient, Preexisting: true}, {Role: stream.RoleServer, Preexisting: true},
	}
	for name, in := range inputs {
		for _, conn := range conns {
			for _, dir := range []stream.Direction{stream.Egress, stream.Ingress} {
				if det.Detect(conn, dir, in) {
					t.Errorf("%s claimed (role %v preexisting %v dir %v)", name, conn.Role, conn.Preexisting, dir)
				}
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	pre := &stream.ConnInfo{Preexisting: true}
	for i := 0; i < 20000; i++ {
		b := randomBytes(rng, 512)
		if det.Detect(pre, stream.Egress, b) {
			t.Errorf("random bytes claimed: %x", b)
		}
	}
}
