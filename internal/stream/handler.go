// Package stream turns captured socket records into ordered byte streams, one
// per connection and direction, and hands them to protocol handlers.
//
// This file is the contract between reassembly and the protocol parsers
// (internal/postgres, internal/grpc): parsers implement Parser and never see
// BPF, pdata or the wall clock.
package stream

import "net/netip"

// Direction says which way bytes travelled, seen from the observed process.
type Direction uint8

const (
	// Egress bytes were written (sent) by the observed process.
	Egress Direction = 1
	// Ingress bytes were read (received) by the observed process.
	Ingress Direction = 2
)

func (d Direction) String() string {
	switch d {
	case Egress:
		return "egress"
	case Ingress:
		return "ingress"
	default:
		return "unknown"
	}
}

// Role is the part the observed process plays on the connection.
type Role uint8

const (
	// RoleUnknown is a connection found by the start-up scan whose side
	// could not be told from the socket table.
	RoleUnknown Role = 0
	// RoleClient is a connection the observed process opened with connect(2).
	RoleClient Role = 1
	// RoleServer is a connection the observed process took with accept(2).
	RoleServer Role = 2
)

func (r Role) String() string {
	switch r {
	case RoleClient:
		return "client"
	case RoleServer:
		return "server"
	default:
		return "unknown"
	}
}

// ConnInfo describes one connection of one process. It is immutable once a
// parser sees it.
type ConnInfo struct {
	// ID is unique per connection for the life of the receiver.
	ID uint64
	// PID is the thread-group id (what user space calls the process id).
	PID uint32
	// FD is the file descriptor the process uses for the socket.
	FD int32
	// Comm is the kernel's task name (at most 15 bytes).
	Comm string
	Role Role
	// Transport is "tcp" or "unix".
	Transport string
	// Local and Remote are the TCP endpoints; invalid for Unix sockets.
	Local, Remote netip.AddrPort
	// UnixPath is the socket path of a Unix-domain connection, when known.
	UnixPath string
	// Preexisting marks a connection that was open before capture started:
	// its beginning (handshakes, prepared statements, HPACK state) was missed.
	Preexisting bool
	// Nonce names the connection identically at both of its ends (the
	// client's TCP initial sequence number + 1, or the client's socket
	// inode of a Unix connection); 0 when unknown. With the tuple it lets a
	// client span and a server span on one host find each other.
	Nonce uint64
	// TLS marks plaintext captured from a TLS library rather than the socket.
	TLS bool
}

// Parser consumes the two byte streams of one connection. Calls for one
// connection are never concurrent. Data passed in is only valid for the
// duration of the call: a parser that needs bytes later must copy them.
type Parser interface {
	// Data delivers the next bytes of one direction, in order. ts is the
	// kernel CLOCK_MONOTONIC time in nanoseconds of the syscall that carried
	// them. lost > 0 says that many bytes of this direction, directly after
	// data, were not captured (the record was truncated or dropped); the
	// parser must account for them (skip them inside a message whose length
	// it knows, or resynchronise).
	Data(dir Direction, ts uint64, data []byte, lost uint64)
	// Close is called once when the connection is closed or expires; ts is
	// the kernel time of the close or of the expiry.
	Close(ts uint64)
}

// Detector recognises a protocol from the first bytes seen on a connection
// and builds its Parser.
type Detector interface {
	// Name is a short protocol name used in metrics ("postgresql", "grpc").
	Name() string
	// Detect reports whether data, the first bytes seen in direction dir of
	// conn, belong to this protocol. It must not retain data.
	Detect(conn *ConnInfo, dir Direction, data []byte) bool
	// New builds the per-connection parser. It is called once, after Detect
	// returned true, and is then fed the same bytes that were detected.
	New(conn *ConnInfo) Parser
}

// Expirer is implemented by parsers that keep requests waiting for their
// answers. The assembler calls Expire about once a second, so that a
// request whose answer never comes (the peer was killed, the answer was
// lost) ends, as an incomplete record, even on a connection that went
// silent: Expire ends the requests that saw no traffic for idle nanoseconds
// before now (kernel CLOCK_MONOTONIC).
type Expirer interface {
	Expire(now, idle uint64)
}
