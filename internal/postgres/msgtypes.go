package postgres

import (
	"bytes"
	"encoding/binary"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"
)

// side is which peer sent a byte stream.
type side uint8

const (
	sideUnknown side = iota
	// sideFrontend streams carry client messages (Query, Parse, Bind, ...).
	sideFrontend
	// sideBackend streams carry server messages (RowDescription, ...).
	sideBackend
)

func (s side) opposite() side {
	switch s {
	case sideFrontend:
		return sideBackend
	case sideBackend:
		return sideFrontend
	}
	return sideUnknown
}

// Length bounds. The length field of a typed message counts itself (4 bytes)
// but not the type byte.
const (
	// maxBodyLen: the backend refuses messages over MaxAllocSize-1
	// (PQ_LARGE_MESSAGE_LIMIT, 0x3fffffff) bytes.
	maxBodyLen = 0x3fffffff - 4
	// largeLen bounds the length field of messages that may carry data.
	largeLen = 0x3fffffff
	// smallLen: the backend caps most control messages at
	// PQ_SMALL_MESSAGE_LIMIT (10000) bytes of body.
	smallLen = 10000 + 4
	// reportLen: that cap is on what the backend reads, not on what it
	// sends. A ParameterStatus carries the whole value of a reported
	// setting, and a string setting (search_path where the server reports
	// it, an extension's reported setting) has no length limit of its
	// own; libpq takes backend messages of types it does not list as long
	// (VALID_LONG_MESSAGE_TYPE in fe-protocol3.c) up to a length field of
	// 30000 and treats longer ones as a lost boundary, so no server that
	// libpq clients talk to sends more.
	reportLen = 30000
	// authLen: SASL/GSS tokens are capped at PG_MAX_AUTH_TOKEN_LENGTH
	// (65535) bytes.
	authLen = 65535 + 4 + 64
	// maxStartupLen: the backend rejects start-up packets longer than
	// MAX_STARTUP_PACKET_LENGTH (10000) bytes, length word included.
	maxStartupLen = 10000
)

// Request codes carried by untyped start-up packets in place of a protocol
// version.
const (
	cancelRequestCode = 80877102 // 1234 << 16 | 5678
	sslRequestCode    = 80877103 // 1234 << 16 | 5679
	gssEncRequestCode = 80877104 // 1234 << 16 | 5680
)

// lenRange is the allowed range of a typed message's length field; max == 0
// means the type byte is not valid on that side.
type lenRange struct{ min, max uint32 }

// frontendLen lists the messages a client sends after start-up (protocol
// 3.0/3.2, "Message Formats" in the PostgreSQL docs).
var frontendLen = [256]lenRange{
	'B': {4 + 1 + 1 + 2 + 2 + 2, largeLen}, // Bind: portal\0 stmt\0 nfmt nparam nresfmt
	'C': {4 + 1 + 1, smallLen},             // Close: 'S'|'P' name\0
	'D': {4 + 1 + 1, smallLen},             // Describe: 'S'|'P' name\0
	'E': {4 + 1 + 4, smallLen},             // Execute: portal\0 maxrows
	'F': {4 + 4 + 2 + 2 + 2, largeLen},     // FunctionCall
	'H': {4, 4},                            // Flush
	'P': {4 + 1 + 1 + 2, largeLen},         // Parse: name\0 query\0 nparams
	'Q': {4 + 1, largeLen},                 // Query: text\0
	'S': {4, 4},                            // Sync
	'X': {4, 4},                            // Terminate
	'c': {4, 4},                            // CopyDone
	'd': {4, largeLen},                     // CopyData
	'f': {4 + 1, smallLen},                 // CopyFail: message\0
	'p': {4 + 1, authLen},                  // PasswordMessage / SASL / GSS response
}

// backendLen lists the messages a server sends.
var backendLen = [256]lenRange{
	'1': {4, 4},                    // ParseComplete
	'2': {4, 4},                    // BindComplete
	'3': {4, 4},                    // CloseComplete
	'A': {4 + 4 + 1 + 1, smallLen}, // NotificationResponse: pid channel\0 payload\0 (payload <= 8000)
	'C': {4 + 1, smallLen},         // CommandComplete: tag\0
	'D': {4 + 2, largeLen},         // DataRow
	'E': {4 + 1, largeLen},         // ErrorResponse
	'G': {4 + 1 + 2, smallLen},     // CopyInResponse
	'H': {4 + 1 + 2, smallLen},     // CopyOutResponse
	'I': {4, 4},                    // EmptyQueryResponse
	'K': {4 + 4 + 4, 4 + 4 + 256},  // BackendKeyData (3.2 allows keys up to 256 bytes)
	'N': {4 + 1, largeLen},         // NoticeResponse
	'R': {4 + 4, authLen},          // Authentication*
	'S': {4 + 1 + 1, reportLen},    // ParameterStatus: name\0 value\0
	'T': {4 + 2, largeLen},         // RowDescription
	'V': {4 + 4, largeLen},         // FunctionCallResponse
	'W': {4 + 1 + 2, smallLen},     // CopyBothResponse
	'Z': {5, 5},                    // ReadyForQuery: status byte
	'c': {4, 4},                    // CopyDone
	'd': {4, largeLen},             // CopyData
	'n': {4, 4},                    // NoData
	's': {4, 4},                    // PortalSuspended
	't': {4 + 2, 4 + 2 + 4*65535},  // ParameterDescription
	'v': {4 + 4 + 4, smallLen},     // NegotiateProtocolVersion
}

// headerValid reports whether type byte typ with length field l can start a
// message on side s (either side when s is unknown).
func headerValid(s side, typ byte, l uint32) bool {
	switch s {
	case sideFrontend:
		r := frontendLen[typ]
		return r.max != 0 && l >= r.min && l <= r.max
	case sideBackend:
		r := backendLen[typ]
		return r.max != 0 && l >= r.min && l <= r.max
	}
	return headerValid(sideFrontend, typ, l) || headerValid(sideBackend, typ, l)
}

// isText reports whether b looks like SQL or an identifier: valid UTF-8
// without control characters other than tab, newline, carriage return and
// form feed. Used only to judge plausibility, never to reject real traffic
// once a stream is in step.
func isText(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\t' && c != '\n' && c != '\r' && c != '\f' || c == 0x7f {
			return false
		}
	}
	return utf8.Valid(b)
}

// isTextPrefix is isText for a prefix that may end inside a UTF-8 sequence.
func isTextPrefix(b []byte) bool {
	for i := 0; i < utf8.UTFMax && len(b) > 0; i++ {
		if isText(b) {
			return true
		}
		b = b[:len(b)-1]
	}
	return len(b) == 0
}

// cstring splits the NUL-terminated string at the start of b from the rest,
// without allocating; ok is false when b holds no NUL.
func cstring(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// validBody is the strict plausibility check of a complete message body,
// used where a boundary is guessed (detection, resynchronisation, unknown
// role). It decodes with pgproto3 and adds checks that garbage rarely passes.
func validBody(s side, typ byte, body []byte) bool {
	if s == sideFrontend {
		return validFrontend(typ, body)
	}
	return validBackend(typ, body)
}

func validFrontend(typ byte, body []byte) bool {
	switch typ {
	case 'Q':
		var m pgproto3.Query
		return m.Decode(body) == nil && isText(body[:len(body)-1])
	case 'P':
		var m pgproto3.Parse
		if m.Decode(body) != nil {
			return false
		}
		// Parse.Decode does not check for trailing bytes.
		return len(body) == len(m.Name)+len(m.Query)+2+2+4*len(m.ParameterOIDs) &&
			isText([]byte(m.Name)) && isText([]byte(m.Query))
	case 'B':
		var m pgproto3.Bind
		if m.Decode(body) != nil || !isText([]byte(m.DestinationPortal)) || !isText([]byte(m.PreparedStatement)) {
			return false
		}
		for _, f := range m.ParameterFormatCodes {
			if f != 0 && f != 1 {
				return false
			}
		}
		for _, f := range m.ResultFormatCodes {
			if f != 0 && f != 1 {
				return false
			}
		}
		return true
	case 'D':
		var m pgproto3.Describe
		return m.Decode(body) == nil && (m.ObjectType == 'S' || m.ObjectType == 'P') && isText([]byte(m.Name))
	case 'C':
		var m pgproto3.Close
		return m.Decode(body) == nil && (m.ObjectType == 'S' || m.ObjectType == 'P') && isText([]byte(m.Name))
	case 'E':
		var m pgproto3.Execute
		return m.Decode(body) == nil && len(body) == len(m.Portal)+1+4 && isText([]byte(m.Portal))
	case 'F':
		var m pgproto3.FunctionCall
		return m.Decode(body) == nil
	case 'f':
		var m pgproto3.CopyFail
		return m.Decode(body) == nil && isText([]byte(m.Message))
	case 'H', 'S', 'X', 'c':
		return len(body) == 0
	case 'd':
		// CopyData carries arbitrary bytes: only its framing can be judged.
		return true
	case 'p':
		// Password, SASL and GSS responses share this type; the body depends
		// on the authentication exchange in progress.
		return len(body) > 0
	}
	return false
}

func validBackend(typ byte, body []byte) bool {
	switch typ {
	case '1', '2', '3', 'I', 'n', 's', 'c':
		return len(body) == 0
	case 'Z':
		// ReadyForQuery: 'I' idle, 'T' in a transaction, 'E' failed transaction.
		return len(body) == 1 && (body[0] == 'I' || body[0] == 'T' || body[0] == 'E')
	case 'C':
		var m pgproto3.CommandComplete
		return m.Decode(body) == nil && len(m.CommandTag) > 0 &&
			m.CommandTag[0] >= 'A' && m.CommandTag[0] <= 'Z' && isText(m.CommandTag)
	case 'D':
		var m pgproto3.DataRow
		if m.Decode(body) != nil {
			return false
		}
		// DataRow.Decode does not check for trailing bytes.
		n := 2
		for _, v := range m.Values {
			n += 4 + len(v)
		}
		return n == len(body)
	case 'T':
		var m pgproto3.RowDescription
		if m.Decode(body) != nil {
			return false
		}
		n := 2
		for _, f := range m.Fields {
			if !isText(f.Name) || (f.Format != 0 && f.Format != 1) {
				return false
			}
			n += len(f.Name) + 1 + 18
		}
		return n == len(body)
	case 'E', 'N':
		var m pgproto3.ErrorResponse
		if m.Decode(body) != nil {
			return false
		}
		// Every ErrorResponse and NoticeResponse carries severity, SQLSTATE
		// (five characters) and message fields.
		return m.Severity != "" && len(m.Code) == 5 && m.Message != "" && body[len(body)-1] == 0
	case 'S':
		var m pgproto3.ParameterStatus
		return m.Decode(body) == nil && len(m.Name) > 0 && isText([]byte(m.Name)) && isText([]byte(m.Value)) &&
			len(body) == len(m.Name)+len(m.Value)+2
	case 'K':
		var m pgproto3.BackendKeyData
		return m.Decode(body) == nil
	case 'R':
		return validAuth(body)
	case 'A':
		var m pgproto3.NotificationResponse
		return m.Decode(body) == nil && isText([]byte(m.Channel)) && len(body) == 4+len(m.Channel)+len(m.Payload)+2
	case 'G':
		var m pgproto3.CopyInResponse
		return m.Decode(body) == nil && validCopyFormat(body)
	case 'H':
		var m pgproto3.CopyOutResponse
		return m.Decode(body) == nil && validCopyFormat(body)
	case 'W':
		var m pgproto3.CopyBothResponse
		return m.Decode(body) == nil && validCopyFormat(body)
	case 't':
		var m pgproto3.ParameterDescription
		return m.Decode(body) == nil && len(body) == 2+4*len(m.ParameterOIDs)
	case 'V':
		var m pgproto3.FunctionCallResponse
		return m.Decode(body) == nil
	case 'v':
		var m pgproto3.NegotiateProtocolVersion
		return m.Decode(body) == nil
	case 'd':
		return true
	}
	return false
}

// validCopyFormat checks a Copy{In,Out,Both}Response body: overall format
// (0 text, 1 binary), column count, one 16-bit format per column.
func validCopyFormat(body []byte) bool {
	if len(body) < 3 || body[0] > 1 {
		return false
	}
	n := int(binary.BigEndian.Uint16(body[1:3]))
	if len(body) != 3+2*n {
		return false
	}
	for i := range n {
		if f := binary.BigEndian.Uint16(body[3+2*i:]); f > 1 {
			return false
		}
	}
	return true
}

// validAuth checks an Authentication* message: the 32-bit code decides the
// rest of the layout.
func validAuth(body []byte) bool {
	if len(body) < 4 {
		return false
	}
	switch binary.BigEndian.Uint32(body) {
	case 0, 2, 3, 7, 9: // Ok, KerberosV5, CleartextPassword, GSS, SSPI
		return len(body) == 4
	case 5: // MD5Password: 4-byte salt
		return len(body) == 8
	case 8: // GSSContinue: token
		return len(body) > 4
	case 10: // SASL: mechanism names, each NUL-terminated, then a NUL
		var m pgproto3.AuthenticationSASL
		return m.Decode(body) == nil && body[len(body)-1] == 0
	case 11, 12: // SASLContinue, SASLFinal
		return len(body) > 4
	}
	return false
}

// prefixPlausible judges the first bytes of a message too long to hold whole
// while looking for a boundary. Only SQL text (Query, Parse) has a start
// recognisable enough; anything else must be seen whole.
func prefixPlausible(s side, typ byte, prefix []byte) bool {
	switch {
	case s == sideFrontend && typ == 'Q':
		return bytes.IndexByte(prefix, 0) < 0 && isTextPrefix(prefix)
	case s == sideFrontend && typ == 'P':
		name, rest, ok := cstring(prefix)
		if !ok {
			return isTextPrefix(prefix)
		}
		return isText(name) && bytes.IndexByte(rest, 0) < 0 && isTextPrefix(rest)
	}
	return false
}

// decide reports which side a message proves its stream to be, from the type
// bytes that exist on one side only and, for the shared ones, from a body
// that decodes on exactly one side.
func decide(typ byte, body []byte) side {
	f := frontendLen[typ].max != 0 && validFrontend(typ, body)
	b := backendLen[typ].max != 0 && validBackend(typ, body)
	switch {
	case f && !b:
		return sideFrontend
	case b && !f:
		return sideBackend
	}
	return sideUnknown
}

// startupHeaderValid checks the length word and code of an untyped start-up
// packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest).
func startupHeaderValid(l, code uint32) bool {
	switch code {
	case sslRequestCode, gssEncRequestCode:
		return l == 8
	case cancelRequestCode:
		// Process id and a secret key of 4 bytes (3.0) up to 256 bytes (3.2).
		return l >= 16 && l <= 12+256
	}
	// StartupMessage: protocol major version 3, minor 0..2; at least a
	// "user" parameter and the terminating NUL.
	return code>>16 == 3 && code&0xffff <= 2 && l >= 8+6 && l <= maxStartupLen
}

// validStartup checks a complete untyped packet (length word excluded).
func validStartup(body []byte) bool {
	if len(body) < 4 {
		return false
	}
	switch binary.BigEndian.Uint32(body) {
	case sslRequestCode:
		var m pgproto3.SSLRequest
		return len(body) == 4 && m.Decode(body) == nil
	case gssEncRequestCode:
		var m pgproto3.GSSEncRequest
		return len(body) == 4 && m.Decode(body) == nil
	case cancelRequestCode:
		var m pgproto3.CancelRequest
		return m.Decode(body) == nil
	}
	var m pgproto3.StartupMessage
	if m.Decode(body) != nil {
		return false
	}
	// The backend requires the user parameter.
	if _, ok := m.Parameters["user"]; !ok {
		return false
	}
	for k, v := range m.Parameters {
		if !isText([]byte(k)) || !isText([]byte(v)) {
			return false
		}
	}
	return true
}

// startupPrefixPlausible checks the parameters of a StartupMessage whose end
// has not arrived yet: NUL-separated printable strings.
func startupPrefixPlausible(params []byte) bool {
	for _, c := range params {
		if c != 0 && (c < 0x20 || c == 0x7f) {
			return false
		}
	}
	return true
}
