package grpc

import "sync/atomic"

// Counter names one of the Stats counters.
type Counter int

const (
	// CounterBytes: bytes delivered to parsers.
	CounterBytes Counter = iota
	// CounterFrames: HTTP/2 frame headers read in sync.
	CounterFrames
	// CounterDataFrames: DATA frames.
	CounterDataFrames
	// CounterHeaderFrames: HEADERS, CONTINUATION and PUSH_PROMISE frames.
	CounterHeaderFrames
	// CounterCalls: calls handed to the sink.
	CounterCalls
	// CounterCallsUnknownMethod: calls reported with MethodOther.
	CounterCallsUnknownMethod
	// CounterCallsPartial: calls whose request headers were not seen.
	CounterCallsPartial
	// CounterNonGRPCStreams: HTTP/2 streams that were not gRPC (content-type
	// is not application/grpc); not reported.
	CounterNonGRPCStreams
	// CounterUnclassifiedStreams: streams with no decodable evidence of
	// being gRPC (headers unknown, no message framing); not reported.
	CounterUnclassifiedStreams
	// CounterUntrackedFrames: frames for streams not tracked (closed,
	// expired, overflowed or server-initiated).
	CounterUntrackedFrames
	// CounterPendingOverflow: streams not tracked because MaxStreams were
	// open.
	CounterPendingOverflow
	// CounterStreamsExpired: streams ended by the idle timeout.
	CounterStreamsExpired
	// CounterHPACKErrors: header blocks that failed to decode.
	CounterHPACKErrors
	// CounterHPACKUntrusted: times a direction's dynamic table became
	// unknown (missed beginning, loss, decoding error).
	CounterHPACKUntrusted
	// CounterHPACKRecovered: times a direction's dynamic table became fully
	// known again.
	CounterHPACKRecovered
	// CounterHPACKUnknownRefs: header fields that referenced a dynamic
	// table entry we do not know.
	CounterHPACKUnknownRefs
	// CounterHeaderListOversize: header blocks over MaxHeaderListSize.
	CounterHeaderListOversize
	// CounterHeaderBlockOversize: header blocks over MaxHeaderBlock that
	// could not be assembled.
	CounterHeaderBlockOversize
	// CounterTableSizeOverCap: dynamic table sizes (SETTINGS or size
	// updates) above MaxTableSize.
	CounterTableSizeOverCap
	// CounterFrameOversize: non-DATA frames over MaxFrameBuffer, skipped.
	CounterFrameOversize
	// CounterProtocolErrors: frames that violate RFC 9113 (bad lengths,
	// order, preface).
	CounterProtocolErrors
	// CounterResyncs: times a direction lost frame sync and searched for
	// the next frame boundary.
	CounterResyncs
	// CounterBytesSkipped: bytes discarded while searching for a frame
	// boundary.
	CounterBytesSkipped
	// CounterLostBytes: bytes reported lost by reassembly.
	CounterLostBytes
	// CounterLostInData: lost bytes that fell inside a DATA frame and were
	// skipped without losing sync.
	CounterLostInData
	// CounterMessageFramingErrors: DATA whose gRPC length-prefixed framing
	// was invalid or interrupted by a loss.
	CounterMessageFramingErrors

	numCounters
)

var counterNames = [numCounters]string{
	CounterBytes:                "bytes",
	CounterFrames:               "frames",
	CounterDataFrames:           "data_frames",
	CounterHeaderFrames:         "header_frames",
	CounterCalls:                "calls",
	CounterCallsUnknownMethod:   "calls_unknown_method",
	CounterCallsPartial:         "calls_partial",
	CounterNonGRPCStreams:       "non_grpc_streams",
	CounterUnclassifiedStreams:  "unclassified_streams",
	CounterUntrackedFrames:      "untracked_frames",
	CounterPendingOverflow:      "pending_overflow",
	CounterStreamsExpired:       "streams_expired",
	CounterHPACKErrors:          "hpack_errors",
	CounterHPACKUntrusted:       "hpack_untrusted",
	CounterHPACKRecovered:       "hpack_recovered",
	CounterHPACKUnknownRefs:     "hpack_unknown_refs",
	CounterHeaderListOversize:   "header_list_oversize",
	CounterHeaderBlockOversize:  "header_block_oversize",
	CounterTableSizeOverCap:     "table_size_over_cap",
	CounterFrameOversize:        "frame_oversize",
	CounterProtocolErrors:       "protocol_errors",
	CounterResyncs:              "resyncs",
	CounterBytesSkipped:         "bytes_skipped",
	CounterLostBytes:            "lost_bytes",
	CounterLostInData:           "lost_in_data",
	CounterMessageFramingErrors: "message_framing_errors",
}

func (c Counter) String() string {
	if c < 0 || c >= numCounters {
		return "unknown"
	}
	return counterNames[c]
}

// Stats holds the counters shared by all parsers of one Detector. Parsers
// batch their increments and add them once per call into the parser.
type Stats struct {
	c [numCounters]atomic.Uint64
}

// Get returns the current value of one counter.
func (s *Stats) Get(c Counter) uint64 {
	if c < 0 || c >= numCounters {
		return 0
	}
	return s.c[c].Load()
}

// Each calls fn for every counter, in Counter order.
func (s *Stats) Each(fn func(c Counter, v uint64)) {
	for i := range s.c {
		fn(Counter(i), s.c[i].Load())
	}
}

// counts is a parser's batch of increments, flushed into Stats.
type counts [numCounters]uint64

func (l *counts) flush(s *Stats) {
	for i, v := range l {
		if v != 0 {
			s.c[i].Add(v)
			l[i] = 0
		}
	}
}
