//go:build !linux

package mappressure

import (
	"errors"
	"io"
)

var errNotLinux = errors.New("eBPF map pressure sampling is only available on Linux")

// Sampler walks every map in the kernel; it only works on Linux.
type Sampler struct{}

// New returns an error: BPF iterators exist only on Linux.
func New(Options) (*Sampler, error) { return nil, errNotLinux }

// Mode reports how hash-family maps are counted.
func (*Sampler) Mode() Mode { return ModeCapacityOnly }

// FallbackReason returns why the kfunc object was not used.
func (*Sampler) FallbackReason() error { return errNotLinux }

// Sample returns an error: BPF iterators exist only on Linux.
func (*Sampler) Sample(dst []MapSample) ([]MapSample, error) { return dst[:0], errNotLinux }

// Close does nothing.
func (*Sampler) Close() error { return nil }

// EnableProgramStats returns an error: BPF exists only on Linux.
func EnableProgramStats() (io.Closer, error) { return nil, errNotLinux }

// SampleProgramStats returns an error: BPF exists only on Linux.
func SampleProgramStats(dst []ProgramStats) ([]ProgramStats, error) { return dst[:0], errNotLinux }
