// Package spans turns protocol records (PostgreSQL queries, gRPC calls)
// into OTLP spans with the OpenTelemetry semantic conventions. It is pure:
// records, connection facts and process facts in, ptrace.Traces out. Spans
// are grouped into one ResourceSpans per process.
package spans

import (
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"strconv"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/ebpfotel/ebpfreceiver/internal/procmeta"
	"github.com/ebpfotel/ebpfreceiver/internal/sqlsan"
	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

// ScopeName is the instrumentation scope of every span.
const ScopeName = "github.com/ebpfotel/ebpfreceiver"

// Options shape the spans.
type Options struct {
	// HostName fills host.name on every resource.
	HostName string
	// CommandLine adds process.command_line (it may carry secrets passed
	// as arguments, so it can be switched off).
	CommandLine bool
	// ScopeVersion is the receiver's version.
	ScopeVersion string
}

// Builder accumulates spans until Take. It is not safe for concurrent use.
type Builder struct {
	opts   Options
	traces ptrace.Traces
	byPID  map[uint32]ptrace.SpanSlice
	n      int
	// wallOffset converts kernel CLOCK_MONOTONIC nanoseconds to Unix time.
	wallOffset int64
	rnd        *rand.ChaCha8
	// Per-span work that depends only on its input, remembered (bounded):
	// the text of an address, the sanitized form of a query text (a
	// prepared statement runs the same text again and again).
	addrs     map[netip.Addr]string
	sanitized map[sanitizeKey]sqlsan.Result
	// idKeys holds, per connection (stream.ConnInfo.ID) and protocol, the
	// digest its span ids are derived from (see ids).
	idKeys map[idKeyRef][32]byte
}

type idKeyRef struct {
	conn  uint64
	proto string
}

// Bounds of the builder's caches; a full cache is cleared.
const (
	addrCacheSize     = 1024
	sanitizeCacheSize = 256
	// sanitizeCacheText: longer texts are sanitized every time rather than
	// kept (the cache holds at most 256 KiB of query text).
	sanitizeCacheText = 1024
	idKeyCacheSize    = 4096
)

// spanAttrsCap is room for the attributes of a typical span (about 15).
const spanAttrsCap = 16

type sanitizeKey struct {
	text string
	mode sqlsan.Mode
}

// addrString is a.String(), cached.
func (b *Builder) addrString(a netip.Addr) string {
	if s, ok := b.addrs[a]; ok {
		return s
	}
	s := a.String()
	if len(b.addrs) >= addrCacheSize {
		clear(b.addrs)
	}
	b.addrs[a] = s
	return s
}

// sanitize is sqlsan.Sanitize (a pure function of text and mode), cached
// for short texts.
func (b *Builder) sanitize(text string, mode sqlsan.Mode) sqlsan.Result {
	if len(text) > sanitizeCacheText {
		return sqlsan.Sanitize(text, mode)
	}
	k := sanitizeKey{text, mode}
	if r, ok := b.sanitized[k]; ok {
		return r
	}
	r := sqlsan.Sanitize(text, mode)
	if len(b.sanitized) >= sanitizeCacheSize {
		clear(b.sanitized)
	}
	b.sanitized[k] = r
	return r
}

// NewBuilder returns an empty builder.
func NewBuilder(opts Options) *Builder {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], rand.Uint64())
	binary.LittleEndian.PutUint64(seed[8:], rand.Uint64())
	b := &Builder{
		opts: opts, rnd: rand.NewChaCha8(seed),
		addrs: make(map[netip.Addr]string), sanitized: make(map[sanitizeKey]sqlsan.Result),
		idKeys: make(map[idKeyRef][32]byte),
	}
	b.reset()
	return b
}

func (b *Builder) reset() {
	b.traces = ptrace.NewTraces()
	b.byPID = make(map[uint32]ptrace.SpanSlice)
	b.n = 0
}

// SetClock sets the offset added to kernel monotonic timestamps to get Unix
// nanoseconds (wall now minus monotonic now).
func (b *Builder) SetClock(wallMinusMono int64) { b.wallOffset = wallMinusMono }

// Len is the number of spans waiting.
func (b *Builder) Len() int { return b.n }

// Take returns the spans built so far and starts a new batch.
func (b *Builder) Take() ptrace.Traces {
	t := b.traces
	b.reset()
	return t
}

func (b *Builder) ts(mono uint64) pcommon.Timestamp {
	return pcommon.Timestamp(int64(mono) + b.wallOffset) //nolint:gosec // kernel times fit in int64
}

// spanFor appends a span to the process's resource.
func (b *Builder) spanFor(p procmeta.Info) ptrace.Span {
	ss, ok := b.byPID[p.PID]
	if !ok {
		rs := b.traces.ResourceSpans().AppendEmpty()
		res := rs.Resource().Attributes()
		// service.name: the executable, until k8sattributes or the user's
		// resource processor says better.
		res.PutStr("service.name", p.Executable)
		res.PutInt("process.pid", int64(p.PID))
		res.PutStr("process.executable.name", p.Executable)
		if p.ExecutablePath != "" {
			res.PutStr("process.executable.path", p.ExecutablePath)
		}
		if b.opts.CommandLine && p.CommandLine != "" {
			res.PutStr("process.command_line", p.CommandLine)
		}
		if p.ContainerID != "" {
			res.PutStr("container.id", p.ContainerID)
		}
		if b.opts.HostName != "" {
			res.PutStr("host.name", b.opts.HostName)
		}
		scope := rs.ScopeSpans().AppendEmpty()
		scope.Scope().SetName(ScopeName)
		scope.Scope().SetVersion(b.opts.ScopeVersion)
		ss = scope.Spans()
		b.byPID[p.PID] = ss
	}
	b.n++
	return ss.AppendEmpty()
}

// Link says how a request's span relates to the other end's span.
type Link struct {
	// Ordinal numbers the request on its connection, the same at both
	// ends: the position of a PostgreSQL query, the HTTP/2 stream id.
	Ordinal uint64
	// PeerObserved says that the other end of the connection is watched
	// on this host too, so a server span can name the client span as its
	// parent.
	PeerObserved bool
}

// ids gives a request's trace id and the span ids of its client and server
// spans. When the connection's nonce is known both ends derive the same ids
// without talking to each other: SHA-256 of the connection's key and the
// ordinal, where the key is SHA-256 of (protocol, transport, client
// endpoint, server endpoint, nonce), the same at both ends and computed once
// per connection. Otherwise the ids are random.
func (b *Builder) ids(proto string, conn *stream.ConnInfo, ordinal uint64) (pcommon.TraceID, pcommon.SpanID, pcommon.SpanID) {
	var trace pcommon.TraceID
	var client, server pcommon.SpanID
	// A connection joined mid-stream numbers its requests from where
	// capture began, which need not be where the other end began.
	if conn.Nonce == 0 || conn.Preexisting {
		var buf [32]byte
		_, _ = b.rnd.Read(buf[:]) // ChaCha8.Read never fails
		copy(trace[:], buf[:16])
		copy(client[:], buf[16:24])
		copy(server[:], buf[24:32])
		return trace, client, server
	}
	ref := idKeyRef{conn.ID, proto}
	key, ok := b.idKeys[ref]
	if !ok {
		var buf [192]byte
		key = sha256.Sum256(appendIDInput(buf[:0], proto, conn))
		if len(b.idKeys) >= idKeyCacheSize {
			clear(b.idKeys)
		}
		b.idKeys[ref] = key
	}
	// 40 bytes: one SHA-256 block.
	var in [40]byte
	copy(in[:], key[:])
	binary.BigEndian.PutUint64(in[32:], ordinal)
	sum := sha256.Sum256(in[:])
	copy(trace[:], sum[:16])
	copy(client[:], sum[16:24])
	copy(server[:], sum[24:32])
	return trace, client, server
}

// appendIDInput appends what a connection's id key is hashed from: the
// bytes of fmt.Sprintf("%s|%s|%s|%s|%d", proto, transport, client end,
// server end, nonce), built without fmt (with a stack buffer it allocates
// nothing).
func appendIDInput(b []byte, proto string, conn *stream.ConnInfo) []byte {
	b = append(b, proto...)
	b = append(b, '|')
	b = append(b, conn.Transport...)
	b = append(b, '|')
	b = appendEndpoints(b, conn)
	b = append(b, '|')
	return strconv.AppendUint(b, conn.Nonce, 10)
}

// appendEndpoints appends "client|server": the connection's ends, client
// first, as AddrPort.String writes them (for Unix sockets "" and the path).
func appendEndpoints(b []byte, conn *stream.ConnInfo) []byte {
	if conn.Transport == "unix" {
		return append(append(b, '|'), conn.UnixPath...)
	}
	client, server := conn.Local, conn.Remote
	if conn.Role == stream.RoleServer {
		client, server = server, client
	}
	return appendAddrPort(append(appendAddrPort(b, client), '|'), server)
}

// appendAddrPort appends ap.String(): AppendTo writes the same text for a
// valid AddrPort and nothing for an invalid one.
func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	if !ap.IsValid() {
		return append(b, ap.String()...)
	}
	return ap.AppendTo(b)
}

// setKindAndIDs gives the span its kind, ids and parent.
func (b *Builder) setKindAndIDs(span ptrace.Span, proto string, conn *stream.ConnInfo, link Link, server bool) {
	trace, clientID, serverID := b.ids(proto, conn, link.Ordinal)
	span.SetTraceID(trace)
	if server {
		span.SetKind(ptrace.SpanKindServer)
		span.SetSpanID(serverID)
		// ids are random for a connection joined mid-stream: the client's
		// id is then nobody's, so no parent is named.
		if link.PeerObserved && conn.Nonce != 0 && !conn.Preexisting {
			span.SetParentSpanID(clientID)
		}
		return
	}
	span.SetKind(ptrace.SpanKindClient)
	span.SetSpanID(clientID)
}

// putNetwork sets server.*, network.peer.* and network.transport.
func (b *Builder) putNetwork(attrs pcommon.Map, conn *stream.ConnInfo, server bool) {
	if conn.Transport == "unix" {
		attrs.PutStr("network.transport", "unix")
		if conn.UnixPath != "" {
			attrs.PutStr("server.address", conn.UnixPath)
		}
		return
	}
	attrs.PutStr("network.transport", "tcp")
	srv := conn.Remote
	if server {
		srv = conn.Local
	}
	b.putAddrPort(attrs, "server.address", "server.port", srv)
	b.putAddrPort(attrs, "network.peer.address", "network.peer.port", conn.Remote)
	if conn.Remote.Addr().Is6() {
		attrs.PutStr("network.type", "ipv6")
	} else {
		attrs.PutStr("network.type", "ipv4")
	}
}

func (b *Builder) putAddrPort(attrs pcommon.Map, addrKey, portKey string, ap netip.AddrPort) {
	if !ap.IsValid() {
		return
	}
	attrs.PutStr(addrKey, b.addrString(ap.Addr()))
	attrs.PutInt(portKey, int64(ap.Port()))
}

// putCaptureFlags marks what the capture could not see.
func putCaptureFlags(attrs pcommon.Map, conn *stream.ConnInfo, incomplete bool) {
	if conn.TLS {
		attrs.PutBool("tls.established", true)
	}
	if conn.Preexisting {
		// The connection was open before capture started: facts from its
		// beginning (database name, prepared statements, HPACK table) may
		// be missing.
		attrs.PutBool("ebpf.capture.joined_mid_stream", true)
	}
	if incomplete {
		attrs.PutBool("ebpf.capture.incomplete", true)
	}
}
