package postgres

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

func conn(role stream.Role, pre bool) *stream.ConnInfo {
	return &stream.ConnInfo{Role: role, Preexisting: pre, Transport: "tcp"}
}

func firstOf(recs []capfile.Record, dir stream.Direction) []byte {
	for _, r := range recs {
		if r.Dir == dir {
			return r.Data
		}
	}
	return nil
}

func TestDetectFromStart(t *testing.T) {
	det := NewDetector(nil, Options{})
	for name := range fixtureWants {
		recs := loadFixture(t, name)
		first := recs[0]
		if first.Dir != stream.Egress {
			t.Fatalf("%s: the client speaks first", name)
		}
		// The client's first bytes, from either side, with or without a role.
		for _, c := range []struct {
			role stream.Role
			dir  stream.Direction
		}{{stream.RoleClient, stream.Egress}, {stream.RoleServer, stream.Ingress}, {stream.RoleUnknown, stream.Egress}} {
			if !det.Detect(conn(c.role, false), c.dir, first.Data) {
				t.Errorf("%s: start-up %q not detected (role %v)", name, first.Data[:min(len(first.Data), 16)], c.role)
			}
		}
		// The server's first bytes.
		be := firstOf(recs, stream.Ingress)
		if be == nil {
			continue // the cancel connection: no answer
		}
		if !det.Detect(conn(stream.RoleClient, false), stream.Ingress, be) || !det.Detect(conn(stream.RoleServer, false), stream.Egress, be) {
			t.Errorf("%s: server start %q not detected", name, be[:min(len(be), 16)])
		}
		// A lone 'N'/'S' answer is only trusted when the role says it is
		// the server's stream.
		if len(be) == 1 && det.Detect(conn(stream.RoleUnknown, false), stream.Ingress, be) {
			t.Errorf("%s: lone byte %q claimed without a role", name, be)
		}
	}
	// The start-up packet split across writes.
	su := startup(t, "alice", "shop")
	// 18 bytes hold the first parameter name whole, whichever pgproto3
	// writes first ("user" or "database": its parameters are a map).
	if !det.Detect(conn(stream.RoleClient, false), stream.Egress, su[:18]) {
		t.Error("StartupMessage prefix not detected")
	}
	if det.Detect(conn(stream.RoleClient, false), stream.Egress, su[:7]) {
		t.Error("7 bytes are not enough to tell")
	}
}

// Connections found open: any record starting with whole messages is
// recognised, from its own side, from the other view and with no role.
func TestDetectPreexisting(t *testing.T) {
	det := NewDetector(nil, Options{})
	for _, name := range []string{"simple.bin", "extended.bin", "pipeline.bin", "errors.bin", "copy.bin", "listen_notify_0.bin"} {
		recs := loadFixture(t, name)
		for i, r := range recs[2:] {
			cl := conn(stream.RoleClient, true)
			sv := conn(stream.RoleServer, true)
			other := stream.Egress
			if r.Dir == stream.Egress {
				other = stream.Ingress
			}
			if !det.Detect(cl, r.Dir, r.Data) || !det.Detect(sv, other, r.Data) || !det.Detect(conn(stream.RoleUnknown, true), r.Dir, r.Data) {
				t.Errorf("%s record %d (%q) not detected", name, i+2, r.Data[:min(len(r.Data), 12)])
			}
		}
	}
	// A long Query whose first write holds only its start.
	q := enc(t, &pgproto3.Query{String: "SELECT '" + strings.Repeat("x", 100000) + "'"})
	if !det.Detect(conn(stream.RoleClient, true), stream.Egress, q[:4096]) {
		t.Error("prefix of a long Query not detected")
	}
}

func TestDetectRejects(t *testing.T) {
	det := NewDetector(nil, Options{})
	foreign := map[string][]byte{
		"http2 preface":  []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64"),
		"http2 settings": {0x00, 0x00, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x64},
		"http1":          []byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
		"http1 response": []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
		"tls hello":      {0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03},
		"ssh":            []byte("SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"),
		"redis":          []byte("*1\r\n$4\r\nPING\r\n"),
		"dns":            {0x00, 0x1d, 0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00},
		"empty":          {},
		"one byte":       {'Q'},
	}
	roles := []stream.Role{stream.RoleClient, stream.RoleServer, stream.RoleUnknown}
	for name, b := range foreign {
		for _, role := range roles {
			for _, pre := range []bool{false, true} {
				for _, dir := range []stream.Direction{stream.Egress, stream.Ingress} {
					if det.Detect(conn(role, pre), dir, b) {
						t.Errorf("%s claimed (role %v, preexisting %v, %v)", name, role, pre, dir)
					}
				}
			}
		}
	}
	rng := rand.New(rand.NewPCG(5, 6))
	claims := 0
	for range 20000 {
		b := make([]byte, 1+rng.IntN(300))
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		role := roles[rng.IntN(3)]
		if det.Detect(conn(role, rng.IntN(2) == 0), stream.Direction(1+rng.IntN(2)), b) {
			claims++
		}
	}
	if claims != 0 {
		t.Errorf("%d of 20000 random buffers claimed", claims)
	}
}

func TestDetectorName(t *testing.T) {
	if n := NewDetector(nil, Options{}).Name(); n != "postgresql" {
		t.Errorf("Name() = %q", n)
	}
}

func TestOptionsDefaults(t *testing.T) {
	o := Options{}.withDefaults()
	if o.MaxStatements != DefaultMaxStatements || o.MaxPending != DefaultMaxPending ||
		o.MaxMessageSize != DefaultMaxMessageSize || o.MaxTextPrefix != DefaultMaxTextPrefix {
		t.Errorf("defaults %+v", o)
	}
	o = Options{MaxMessageSize: 100, MaxTextPrefix: 1000}.withDefaults()
	if o.MaxTextPrefix != 100 {
		t.Errorf("prefix not clamped to the message size: %+v", o)
	}
}
