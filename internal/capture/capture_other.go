//go:build !linux

package capture

import (
	"time"

	"go.uber.org/zap"
)

// Sink receives raw ring-buffer records and idle ticks.
type Sink interface {
	Record(raw []byte)
	Tick(now time.Time)
}

// Capture is not available on this system.
type Capture struct{}

// Open returns ErrUnsupported: eBPF capture needs Linux.
func Open(Options, *zap.Logger) (*Capture, error) { return nil, ErrUnsupported }
