package mappressure

import "time"

// Options tune the work a Sampler does beyond the iterator pass itself.
// The zero value turns every extra off; DefaultOptions has the defaults.
type Options struct {
	// MemlockBudget is the largest number of maps opened by id in one
	// Sample to read the kernel's "memlock:" figure from fdinfo. Maps never
	// read before go first, then the ones whose reading is older than
	// MemlockRefresh. Maps without a reading report an estimate. 0 turns
	// fdinfo off: every map reports an estimate.
	MemlockBudget int
	// MemlockRefresh is how old a memlock reading may get before it is read
	// again, for the maps whose usage moves after creation: hash maps with
	// BPF_F_NO_PREALLOC and LPM tries. Every other map is read once per id.
	// 0 reads every map once.
	MemlockRefresh time.Duration
	// UserspaceCountMaxEntries applies only without the kfunc (Linux < 6.6):
	// hash, LRU hash and per-CPU hash maps with at most this many max
	// entries are counted every Sample with batch lookups; larger ones
	// report capacity only. 0 turns user-space counting off.
	UserspaceCountMaxEntries uint32
}

// DefaultOptions returns the options the receiver uses unless configured.
//
// Reading one map's memlock costs about 13 µs (BenchmarkMemlockRead: open
// by id, query its info, open, read and close its fdinfo, close), some 30 to
// 40 times what the map costs in the iterator pass. A budget of 1024 maps
// per pass bounds that extra work at about 13 ms per scrape; on a host with
// 10,000 maps every map has the kernel's figure after ten scrapes, and
// afterwards only new maps and the few kinds whose usage moves (see
// MemlockRefresh) are read again.
func DefaultOptions() Options {
	return Options{
		MemlockBudget:            1024,
		MemlockRefresh:           5 * time.Minute,
		UserspaceCountMaxEntries: 65536,
	}
}

// ProgramStats is the kernel's run-time accounting of one BPF program.
type ProgramStats struct {
	ID   uint32
	Name string
	Type string // ebpf.ProgramType name, e.g. "SocketFilter"
	// RunCount and RunTime only grow while kernel-wide BPF stats are
	// enabled (EnableProgramStats); they are never reset.
	RunCount uint64
	RunTime  time.Duration
	// RecursionMisses counts runs the kernel skipped because the program
	// was already running on that CPU (Linux >= 5.12).
	RecursionMisses uint64
}
