package grpc

import "time"

// Options bound what one connection may hold. A zero field selects its
// default.
type Options struct {
	// MaxStreams caps the open streams tracked per connection (default
	// 1024). A stream beyond it is not reported; CounterPendingOverflow
	// counts it.
	MaxStreams int
	// StreamIdle ends a stream that saw no frame for this many nanoseconds
	// of kernel time as an expired call (default 10 minutes). The check runs
	// as timestamps advance on the connection and in Parser.Expire. Set it
	// to math.MaxUint64 to disable it.
	StreamIdle uint64
	// MaxFrameBuffer is the largest non-DATA frame payload buffered until it
	// is complete (default 64 KiB). DATA payloads are never buffered. A
	// larger frame is skipped (CounterFrameOversize).
	MaxFrameBuffer uint32
	// MaxTableSize caps the HPACK dynamic table kept per direction (default
	// 64 KiB), whatever SETTINGS_HEADER_TABLE_SIZE the peer announced.
	MaxTableSize uint32
	// MaxStringLen caps one decoded header name or value (default 64 KiB).
	MaxStringLen int
	// MaxHeaderListSize caps the decoded size of one header block as RFC
	// 9113 section 6.5.2 counts it (name + value + 32 per field; default 256
	// KiB). Fields past it are decoded to keep the dynamic table in sync but
	// not looked at (CounterHeaderListOversize).
	MaxHeaderListSize uint32
	// MaxHeaderBlock caps a header block assembled across HEADERS and
	// CONTINUATION frames (default 256 KiB). A longer block cannot be
	// decoded, so what it did to the dynamic table becomes unknown
	// (CounterHeaderBlockOversize).
	MaxHeaderBlock uint32
}

const (
	// DefaultMaxStreams is Options.MaxStreams when left at zero.
	DefaultMaxStreams        = 1024
	defaultStreamIdle        = uint64(10 * time.Minute)
	defaultMaxFrameBuffer    = 64 << 10
	defaultMaxTableSize      = 64 << 10
	defaultMaxStringLen      = 64 << 10
	defaultMaxHeaderListSize = 256 << 10
	defaultMaxHeaderBlock    = 256 << 10
)

func (o Options) withDefaults() Options {
	if o.MaxStreams <= 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	if o.StreamIdle == 0 {
		o.StreamIdle = defaultStreamIdle
	}
	if o.MaxFrameBuffer == 0 {
		o.MaxFrameBuffer = defaultMaxFrameBuffer
	}
	if o.MaxTableSize == 0 {
		o.MaxTableSize = defaultMaxTableSize
	}
	if o.MaxStringLen <= 0 {
		o.MaxStringLen = defaultMaxStringLen
	}
	if o.MaxHeaderListSize == 0 {
		o.MaxHeaderListSize = defaultMaxHeaderListSize
	}
	if o.MaxHeaderBlock == 0 {
		o.MaxHeaderBlock = defaultMaxHeaderBlock
	}
	return o
}
