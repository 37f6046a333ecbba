package postgres

import (
	"encoding/binary"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

// Detector recognises PostgreSQL connections and builds their parsers. All
// parsers it builds share its Stats and Sink.
type Detector struct {
	opts  Options
	sink  Sink
	stats *Stats
}

var _ stream.Detector = (*Detector)(nil)
var _ stream.Parser = (*Parser)(nil)

// NewDetector returns a Detector whose parsers hand queries to sink. Zero
// fields of opts take the defaults.
func NewDetector(sink Sink, opts Options) *Detector {
	return &Detector{opts: opts.withDefaults(), sink: sink, stats: new(Stats)}
}

// Name implements stream.Detector.
func (d *Detector) Name() string { return "postgresql" }

// Stats returns the counters shared by the detector's parsers.
func (d *Detector) Stats() *Stats { return d.stats }

// New implements stream.Detector.
func (d *Detector) New(conn *stream.ConnInfo) stream.Parser {
	return newParser(conn, d.sink, d.opts, d.stats)
}

// sideOf says which side's messages direction dir carries for role.
func sideOf(role stream.Role, dir stream.Direction) side {
	switch {
	case role == stream.RoleClient && dir == stream.Egress, role == stream.RoleServer && dir == stream.Ingress:
		return sideFrontend
	case role == stream.RoleClient && dir == stream.Ingress, role == stream.RoleServer && dir == stream.Egress:
		return sideBackend
	}
	return sideUnknown
}

// Detect implements stream.Detector. A connection seen from its start must
// open the way PostgreSQL connections open: the client's start-up packet,
// or the server's answer to it. A connection found open at start-up must
// begin with well-formed messages.
func (d *Detector) Detect(conn *stream.ConnInfo, dir stream.Direction, data []byte) bool {
	s := sideOf(conn.Role, dir)
	if !conn.Preexisting {
		if s != sideBackend && isStartupStart(data) {
			return true
		}
		return s != sideFrontend && isServerStart(data, s == sideBackend)
	}
	for _, sd := range sidesFor(s) {
		if plausibleMessages(sd, data) {
			return true
		}
	}
	return false
}

func sidesFor(s side) []side {
	switch s {
	case sideFrontend:
		return frontendOnly
	case sideBackend:
		return backendOnly
	}
	return bothSides
}

// isStartupStart checks the first client bytes of a connection: a complete
// SSLRequest, GSSENCRequest or CancelRequest, or a StartupMessage (whole,
// or a plausible beginning of one).
func isStartupStart(data []byte) bool {
	if len(data) < 8 {
		return false
	}
	l := binary.BigEndian.Uint32(data)
	code := binary.BigEndian.Uint32(data[4:])
	if !startupHeaderValid(l, code) {
		return false
	}
	if int(l) <= len(data) {
		return validStartup(data[4:l])
	}
	switch code {
	case sslRequestCode, gssEncRequestCode, cancelRequestCode:
		return false // short packets: always sent whole
	}
	// A StartupMessage split across writes: parameter names and values so
	// far, at least the first name complete.
	params := data[8:]
	return len(params) >= 5 && startupPrefixPlausible(params) && bytesIndex0(params) > 0
}

func bytesIndex0(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// isServerStart checks the first server bytes of a connection: the single
// byte answering SSLRequest/GSSENCRequest (only when the role says this is
// the server's stream, a lone byte being weak evidence), or an
// Authentication, NegotiateProtocolVersion or ErrorResponse message
// followed by well-formed messages.
func isServerStart(data []byte, roleKnown bool) bool {
	if len(data) == 1 {
		return roleKnown && (data[0] == 'N' || data[0] == 'S' || data[0] == 'G')
	}
	if len(data) < 5 {
		return false
	}
	switch data[0] {
	case 'R', 'v', 'E':
	default:
		return false
	}
	return plausibleMessages(sideBackend, data)
}

// plausibleMessages checks that data is a run of well-formed messages of
// side s from its first byte: valid types, sane lengths, bodies that decode
// and pass strict checks. A last message cut by the end of data is judged
// by its header (and by its start when it is the only one).
func plausibleMessages(s side, data []byte) bool {
	n := 0
	for len(data) > 0 {
		if len(data) < 5 {
			return n > 0
		}
		typ := data[0]
		l := binary.BigEndian.Uint32(data[1:5])
		if !headerValid(s, typ, l) {
			return false
		}
		end := 1 + int(l)
		if end > len(data) {
			if n > 0 {
				return true
			}
			body := data[5:]
			return len(body) >= min(int(l)-4, 64) && prefixPlausible(s, typ, body)
		}
		if !validBody(s, typ, data[5:end]) {
			return false
		}
		n++
		data = data[end:]
	}
	return n > 0
}
