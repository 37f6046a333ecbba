package spans

import (
	"net"
	"strconv"
	"strings"

	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/ebpfotel/ebpfreceiver/internal/grpc"
	"github.com/ebpfotel/ebpfreceiver/internal/procmeta"
	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

// GRPCOptions shape RPC spans.
type GRPCOptions struct {
	// LegacyAttributes also emits rpc.system, rpc.service and
	// rpc.grpc.status_code (semantic conventions v1.37 and earlier) for
	// backends that still expect them.
	LegacyAttributes bool
}

// grpcCodes are the gRPC status code names (grpc/codes), indexed by code.
var grpcCodes = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
	"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
	"INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

// GRPCCodeName is the name of a gRPC status code; unknown codes keep their
// number, as the semantic conventions ask.
func GRPCCodeName(code int) string {
	if code >= 0 && code < len(grpcCodes) {
		return grpcCodes[code]
	}
	return strconv.Itoa(code)
}

// grpcServerError lists the codes that make a SERVER span an error: the
// ones that say the server failed, not the caller (semantic conventions
// for gRPC). For CLIENT spans every code but OK is an error.
func grpcServerError(code int) bool {
	switch code {
	case 2, 4, 12, 13, 14, 15: // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
		return true
	}
	return false
}

// Call appends the span of one gRPC call. server says the observed process
// served the call (span kind SERVER), otherwise it made it (CLIENT).
func (b *Builder) Call(p procmeta.Info, conn *stream.ConnInfo, c *grpc.Call, server bool, link Link, opts GRPCOptions) {
	span := b.spanFor(p)
	b.setKindAndIDs(span, "grpc", conn, link, server)
	span.SetStartTimestamp(b.ts(c.Start))
	span.SetEndTimestamp(b.ts(c.End))

	method := c.Method
	if c.MethodUnknown || method == "" {
		method = grpc.MethodOther
	}
	if method == grpc.MethodOther {
		span.SetName("grpc")
	} else {
		span.SetName(method)
	}
	attrs := span.Attributes()
	attrs.EnsureCapacity(spanAttrsCap) // one allocation instead of a growth per doubling
	attrs.PutStr("rpc.system.name", "grpc")
	attrs.PutStr("rpc.method", method)

	b.putNetwork(attrs, conn, server)
	if !server && c.Authority != "" && conn.Transport == "tcp" {
		// The client names the server it meant in :authority.
		host, port := splitAuthority(c.Authority)
		attrs.PutStr("server.address", host)
		if port > 0 {
			attrs.PutInt("server.port", int64(port))
		}
	}
	attrs.PutInt("ebpf.rpc.request.messages", int64(c.ReqMessages))   //nolint:gosec // counts fit
	attrs.PutInt("ebpf.rpc.response.messages", int64(c.RespMessages)) //nolint:gosec // counts fit
	if c.HTTPStatus != 0 && c.HTTPStatus != 200 {
		attrs.PutInt("http.response.status_code", int64(c.HTTPStatus))
	}
	putCaptureFlags(attrs, conn, c.Lost || c.Partial || c.StatusUnknown || c.EndReason == grpc.EndExpired || c.EndReason == grpc.EndConnClosed)
	attrs.PutStr("ebpf.rpc.end_reason", c.EndReason.String())

	if opts.LegacyAttributes {
		attrs.PutStr("rpc.system", "grpc")
		if svc, _, ok := strings.Cut(method, "/"); ok {
			attrs.PutStr("rpc.service", svc)
		}
	}

	if c.StatusUnknown {
		// The call ended with trailers we could not decode: its outcome is
		// unknown, which is not the same as failed (span status stays
		// Unset, no error.type); ebpf.capture.incomplete says so.
		return
	}
	if !c.HasStatus {
		// No status ever arrived: the call ended by connection close, expiry
		// or a missing trailer.
		span.Status().SetCode(ptrace.StatusCodeError)
		span.Status().SetMessage("no grpc-status: call ended by " + c.EndReason.String())
		attrs.PutStr("error.type", "_OTHER")
		return
	}
	name := GRPCCodeName(c.GRPCStatus)
	attrs.PutStr("rpc.response.status_code", name)
	if opts.LegacyAttributes {
		attrs.PutInt("rpc.grpc.status_code", int64(c.GRPCStatus))
	}
	isErr := c.GRPCStatus != 0 && (!server || grpcServerError(c.GRPCStatus))
	if isErr {
		attrs.PutStr("error.type", name)
		span.Status().SetCode(ptrace.StatusCodeError)
		span.Status().SetMessage(c.GRPCMessage)
	}
}

// splitAuthority splits ":authority" into host and port (0 when absent).
func splitAuthority(a string) (string, int) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return a, 0
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return host, 0
	}
	return host, p
}
