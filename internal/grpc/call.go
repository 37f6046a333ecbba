// Package grpc turns the two byte streams of an HTTP/2 connection into gRPC
// call records: frame headers, DATA and HEADERS/CONTINUATION fragments are
// read in place with the checks golang.org/x/net/http2.Framer makes (tests
// compare the two), the Framer itself parses SETTINGS, RST_STREAM, GOAWAY and
// PUSH_PROMISE, header blocks are decoded with golang.org/x/net/http2/hpack
// (one dynamic table per direction), and request and response are correlated
// by stream id.
//
// The package is pure: bytes and kernel timestamps in, Call values out. It
// never sees BPF, pdata or the wall clock, never keeps message payloads, and
// bounds every table and buffer it holds (see Options). Every byte or stream
// it cannot account for increments a Counter.
package grpc

import (
	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

// MethodOther is the method reported when the request's :path could not be
// known (OpenTelemetry semantic conventions use "_OTHER" for an unknown RPC
// method).
const MethodOther = "_OTHER"

// Sink receives each finished call. The Call is only valid during the
// callback (the parser reuses it); copy the struct to keep it. Strings in it
// are immutable and may be kept.
type Sink func(conn *stream.ConnInfo, c *Call)

// EndReason says what ended a call.
type EndReason uint8

const (
	// endStream is internal: END_STREAM ended the call, the response side
	// tells which of the first three reasons applies.
	endStream EndReason = iota

	// EndTrailers: the response ended with a trailing HEADERS block carrying
	// END_STREAM (the normal gRPC response: headers, messages, trailers).
	EndTrailers
	// EndTrailersOnly: the response was a single HEADERS block with
	// END_STREAM ("Trailers-Only" in the gRPC HTTP/2 protocol).
	EndTrailersOnly
	// EndNoTrailers: the response ended with END_STREAM on a DATA frame,
	// so no trailers (and usually no grpc-status) were sent.
	EndNoTrailers
	// EndReset: a RST_STREAM frame ended the stream (RFC 9113 section 6.4).
	EndReset
	// EndGoAway: the server's GOAWAY named a last stream id below this
	// stream's, so the server never processed it (RFC 9113 section 6.8).
	EndGoAway
	// EndConnClosed: the connection closed while the call was open.
	EndConnClosed
	// EndExpired: no frame of the call was seen for the idle timeout.
	EndExpired
)

func (r EndReason) String() string {
	switch r {
	case EndTrailers:
		return "trailers"
	case EndTrailersOnly:
		return "trailers_only"
	case EndNoTrailers:
		return "no_trailers"
	case EndReset:
		return "reset"
	case EndGoAway:
		return "goaway"
	case EndConnClosed:
		return "conn_closed"
	case EndExpired:
		return "expired"
	default:
		return "unknown"
	}
}

// StatusSource says where Call.GRPCStatus came from.
type StatusSource uint8

const (
	// StatusNone: no status is known (GRPCStatus is -1).
	StatusNone StatusSource = iota
	// StatusTrailers: the server sent grpc-status.
	StatusTrailers
	// StatusReset: derived from the RST_STREAM error code the way gRPC
	// clients map HTTP/2 error codes (CANCEL is CANCELLED, REFUSED_STREAM is
	// UNAVAILABLE, ...), or DEADLINE_EXCEEDED for a CANCEL (from either
	// end) sent after the request's grpc-timeout elapsed.
	StatusReset
	// StatusGoAway: UNAVAILABLE, the status a client reports for a stream
	// the server refused with GOAWAY.
	StatusGoAway
	// StatusHTTP: derived from a non-200 :status without grpc-status, using
	// the gRPC HTTP-to-gRPC status mapping (404 is UNIMPLEMENTED, 503 is
	// UNAVAILABLE, ...).
	StatusHTTP
)

func (s StatusSource) String() string {
	switch s {
	case StatusTrailers:
		return "trailers"
	case StatusReset:
		return "reset"
	case StatusGoAway:
		return "goaway"
	case StatusHTTP:
		return "http"
	default:
		return "none"
	}
}

// Streaming holds cheap hints about the call's shape; a unary call has none.
type Streaming uint8

const (
	// StreamingClient: the request carried more than one message.
	StreamingClient Streaming = 1 << iota
	// StreamingServer: the response carried more than one message.
	StreamingServer
	// StreamingInterleaved: response messages flowed before the request
	// ended (bidirectional streaming, or a server answering early).
	StreamingInterleaved
)

// gRPC status codes used here (google.golang.org/grpc/codes values, which
// are fixed by the gRPC protocol).
const (
	codeCancelled         = 1
	codeUnknown           = 2
	codeDeadlineExceeded  = 4
	codePermissionDenied  = 7
	codeResourceExhausted = 8
	codeUnimplemented     = 12
	codeInternal          = 13
	codeUnavailable       = 14
	codeUnauthenticated   = 16
)

// Call is one gRPC call: one HTTP/2 stream, request and response.
type Call struct {
	// Start is the kernel time of the first HEADERS frame the client wrote
	// for the stream (or the first frame seen, when Partial).
	Start uint64
	// End is the kernel time of the frame that ended the response
	// (END_STREAM, RST_STREAM, GOAWAY), of the close, or of the expiry.
	End      uint64
	StreamID uint32
	// Method is "package.Service/Method" (the :path without its leading
	// '/'), or MethodOther when it cannot be known.
	Method string
	// MethodUnknown is set when Method is MethodOther.
	MethodUnknown bool
	// Authority is the request's :authority, when known.
	Authority string
	// HTTPStatus is the response :status; 0 when none was seen.
	HTTPStatus int
	// GRPCStatus is the gRPC status code, -1 when none is known.
	GRPCStatus int
	// HasStatus is set when GRPCStatus holds a code.
	HasStatus bool
	// StatusUnknown: the response ended with trailers (or Trailers-Only)
	// whose header block could not be fully decoded (it refers to HPACK
	// dynamic table entries made before capture began, or bytes of it were
	// lost), so the grpc-status it most likely carried is unknown. The call
	// did end normally on the wire. HasStatus is false.
	StatusUnknown bool
	// StatusSource says whether the status was sent or derived.
	StatusSource StatusSource
	// GRPCMessage is the percent-decoded grpc-message.
	GRPCMessage string
	// ReqMessages and RespMessages count complete gRPC length-prefixed
	// messages; ReqBytes and RespBytes count message bytes seen, without
	// the 5-byte prefixes (as sent: compressed messages count compressed).
	ReqMessages, RespMessages uint64
	ReqBytes, RespBytes       uint64
	// ReqCompressed and RespCompressed: a message had the compressed flag.
	ReqCompressed, RespCompressed bool
	EndReason                     EndReason
	// ResetCode is the HTTP/2 error code of the RST_STREAM or GOAWAY.
	ResetCode uint32
	// ResetByClient: the client sent the RST_STREAM.
	ResetByClient bool
	// Timeout is the request's grpc-timeout in nanoseconds, 0 if none.
	Timeout   uint64
	Streaming Streaming
	// Partial: the request's HEADERS were not seen (the stream began
	// before capture or its headers were lost); Start is the first frame
	// seen.
	Partial bool
	// Lost: bytes of the connection were lost while the call was open, so
	// counts are lower bounds and the end may be late.
	Lost bool
}

// rstToCode maps an HTTP/2 error code to the status a gRPC client reports
// for a stream reset with it (gRPC HTTP/2 protocol, "Errors"; these are the
// values grpc-go uses).
func rstToCode(code uint32) int {
	switch code {
	case 0x3: // FLOW_CONTROL_ERROR
		return codeResourceExhausted
	case 0x7: // REFUSED_STREAM: not processed, safe to retry
		return codeUnavailable
	case 0x8: // CANCEL
		return codeCancelled
	case 0xb: // ENHANCE_YOUR_CALM
		return codeResourceExhausted
	case 0xc: // INADEQUATE_SECURITY
		return codePermissionDenied
	default: // NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR and the rest
		return codeInternal
	}
}

// httpToCode maps a non-200 HTTP status without grpc-status to the gRPC
// status a client reports (gRPC "HTTP to gRPC Status Code Mapping").
func httpToCode(status int) int {
	switch status {
	case 400:
		return codeInternal
	case 401:
		return codeUnauthenticated
	case 403:
		return codePermissionDenied
	case 404:
		return codeUnimplemented
	case 429, 502, 503, 504:
		return codeUnavailable
	default:
		return codeUnknown
	}
}
