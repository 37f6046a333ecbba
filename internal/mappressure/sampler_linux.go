package mappressure

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// Sampler walks every map in the kernel with an iter/bpf_map program.
// Its methods are safe for concurrent use.
type Sampler struct {
	opts Options

	mu          sync.Mutex
	mode        Mode
	fallbackErr error
	prog        *ebpf.Program
	iter        *link.Iter
	closed      bool

	// recs is the read buffer, typed as the records it receives so that
	// it is aligned for in-place decoding; it grows and is reused.
	recs []mapiterMapRecord
	// states holds what is remembered about each map of the last pass,
	// sorted by id like the iterator's output (it walks the kernel's map
	// IDR in id order), so a pass merges it with the new records in one
	// walk; maps that vanished are dropped by the merge. spare is the
	// other half of the double buffer.
	states, spare []mapState
	due           []int // indexes into the current pass whose memlock is due
	nCPU          int
	fdbuf         fdinfoReader
	// fdinfoDenied is set once the kernel refuses to open a map by id
	// (BPF_MAP_GET_FD_BY_ID needs CAP_SYS_ADMIN): memory is estimated from
	// then on instead of failing the same way every pass.
	fdinfoDenied bool
	count        *userCounter

	now func() time.Time // test seam
	seams
}

// seams let tests steer what production code decides on its own.
type seams struct {
	// allowOpen says whether the sampler may open a map by id (fdinfo,
	// user-space counting). Nil allows every map.
	allowOpen func(id uint32) bool
	// noKfunc loads the fallback object even when the kfunc exists.
	noKfunc bool
	// kernelTypes replaces the kernel's BTF for CO-RE relocations, to
	// stand in for a kernel that lacks some structs.
	kernelTypes *btf.Spec
}

// mapState is what the sampler remembers about a map id between passes.
type mapState struct {
	id      uint32
	rawName [16]int8
	name    string
	memlock uint64
	memRead time.Time // zero until memlock was read
}

var recordSize = int(unsafe.Sizeof(mapiterMapRecord{}))

// New loads and attaches the iterator. It prefers the object that calls the
// bpf_map_sum_elem_count kfunc; when the kernel refuses it (Linux < 6.6:
// the kfunc is missing from the kernel's BTF) it loads the object built
// without it and Mode reports the fallback. The error says what to do when
// neither loads.
func New(opts Options) (*Sampler, error) {
	return newSampler(opts, seams{})
}

func newSampler(opts Options, sm seams) (*Sampler, error) {
	nCPU, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("reading possible CPUs: %w", err)
	}
	s := &Sampler{
		opts:  opts,
		nCPU:  nCPU,
		now:   time.Now,
		seams: sm,
		recs:  make([]mapiterMapRecord, 512),
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Sampler) load() error {
	opts := &ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{KernelTypes: s.kernelTypes}}
	var kfuncErr error
	if !s.noKfunc {
		var progs mapiterPrograms
		// Only the program is loaded: the object's .bss holds nothing but
		// BTF anchors for bpf2go and must not become a map.
		kfuncErr = loadMapiterObjects(&progs, opts)
		if kfuncErr == nil {
			s.prog, s.mode = progs.DumpBpfMap, ModeKfunc
		}
	} else {
		kfuncErr = errors.New("kfunc object disabled")
	}

	if s.prog == nil {
		var progs mapiterNoKfuncPrograms
		if err := loadMapiterNoKfuncObjects(&progs, opts); err != nil {
			return fmt.Errorf("loading iter/bpf_map program (needs Linux >= 5.8 with BTF, run as root or grant CAP_BPF and CAP_PERFMON): %w",
				errors.Join(kfuncErr, err))
		}
		s.prog = progs.DumpBpfMap
		s.fallbackErr = fmt.Errorf("bpf_map_sum_elem_count kfunc unavailable (needs Linux >= 6.6): %w", kfuncErr)
		s.mode = ModeCapacityOnly
		if s.opts.UserspaceCountMaxEntries > 0 {
			s.mode = ModeUserspace
			s.count = newUserCounter(s.nCPU)
		}
	}

	it, err := link.AttachIter(link.IterOptions{Program: s.prog})
	if err != nil {
		s.prog.Close()
		s.prog = nil
		return fmt.Errorf("attaching iter/bpf_map: %w", err)
	}
	s.iter = it
	return nil
}

// Mode reports how hash-family maps are counted.
func (s *Sampler) Mode() Mode {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mode
}

// FallbackReason returns why the kfunc object was not used, or nil in
// ModeKfunc.
func (s *Sampler) FallbackReason() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fallbackErr
}

// Close detaches the iterator and unloads its program. It is idempotent.
func (s *Sampler) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if s.iter != nil {
		errs = append(errs, s.iter.Close())
	}
	if s.prog != nil {
		errs = append(errs, s.prog.Close())
	}
	s.iter, s.prog = nil, nil
	return errors.Join(errs...)
}

// Sample runs one iterator pass and returns one MapSample per map in the
// kernel, in increasing id order, appended to dst[:0].
func (s *Sampler) Sample(dst []MapSample) ([]MapSample, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return dst[:0], errors.New("sampler is closed")
	}

	n, err := s.readPass()
	if err != nil {
		return dst[:0], err
	}

	now := s.now()
	dst = dst[:0]
	s.due = s.due[:0]
	next := s.spare[:0]
	prev := s.states
	j := 0
	for i := range n {
		rec := &s.recs[i]
		// Merge: skip remembered maps with smaller ids (they are gone).
		for j < len(prev) && prev[j].id < rec.Id {
			j++
		}
		if j < len(prev) && prev[j].id == rec.Id {
			next = append(next, prev[j])
			j++
		} else {
			next = append(next, mapState{id: rec.Id})
		}
		st := &next[len(next)-1]
		dst = append(dst, MapSample{})
		s.decode(rec, st, &dst[len(dst)-1])
		if s.memlockDue(st, &dst[i], now) {
			s.due = append(s.due, i)
		}
	}
	// Keep the old buffer for the next pass, without its strings.
	clear(prev)
	s.states, s.spare = next, prev[:0]

	if s.count != nil {
		s.countFromUserspace(dst, now)
	}
	s.readDueMemlock(dst, now)

	for i := range dst {
		sm, st := &dst[i], &s.states[i]
		if !st.memRead.IsZero() {
			sm.MemoryBytes, sm.MemorySource = st.memlock, MemoryFdinfo
		} else {
			sm.MemoryBytes, sm.MemorySource = estimateMemory(sm, s.nCPU), MemoryEstimate
		}
	}
	return dst, nil
}

// state returns the remembered state of a map of the last pass, or nil.
func (s *Sampler) state(id uint32) *mapState {
	i, ok := slices.BinarySearchFunc(s.states, id, func(st mapState, id uint32) int { return cmp.Compare(st.id, id) })
	if !ok {
		return nil
	}
	return &s.states[i]
}

// readPass opens the iterator, reads every record into s.recs and closes
// the iterator fd. It returns the number of records.
func (s *Sampler) readPass() (int, error) {
	r, err := s.iter.Open()
	if err != nil {
		return 0, fmt.Errorf("opening map iterator: %w", err)
	}
	defer r.Close()

	total := 0
	for {
		buf := s.byteView()
		if total == len(buf) {
			grown := make([]mapiterMapRecord, 2*len(s.recs))
			copy(grown, s.recs)
			s.recs = grown
			buf = s.byteView()
		}
		// The kernel fills at most its seq_file buffer (8 pages) per read
		// (kernel/bpf/bpf_iter.c), so a large map table takes a few reads.
		n, err := r.Read(buf[total:])
		total += n
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("reading map iterator: %w", err)
		}
	}
	if total%recordSize != 0 {
		return 0, fmt.Errorf("map iterator returned %d bytes, not a multiple of the %d-byte record", total, recordSize)
	}
	return total / recordSize, nil
}

func (s *Sampler) byteView() []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s.recs))), len(s.recs)*recordSize)
}

// decode fills sm from one record and refreshes the map's name in st.
func (s *Sampler) decode(rec *mapiterMapRecord, st *mapState, sm *MapSample) {
	// Map names never change after creation; compare the raw bytes anyway
	// and convert only when they differ, so a known map costs no allocation.
	if st.rawName != rec.Name {
		st.rawName = rec.Name
		st.name = cString(rec.Name[:])
	}

	*sm = MapSample{
		ID:         rec.Id,
		Name:       st.name,
		Type:       MapType(rec.Type),
		Flags:      rec.MapFlags,
		KeySize:    rec.KeySize,
		ValueSize:  rec.ValueSize,
		MaxEntries: rec.MaxEntries,
	}
	valid := mapiterMapRecordFlag(rec.Valid)
	if valid&mapiterMapRecordFlagMAP_RECORD_COUNT_VALID != 0 && rec.ElemCount >= 0 {
		sm.Entries, sm.EntriesKnown = uint64(rec.ElemCount), true
		if rec.MaxEntries > 0 {
			sm.Utilization = float64(sm.Entries) / float64(rec.MaxEntries)
			sm.UtilizationKnown = true
		}
	}
	if valid&mapiterMapRecordFlagMAP_RECORD_RINGBUF_VALID != 0 && rec.RingbufSize > 0 {
		sm.RingbufUsed, sm.RingbufSize, sm.RingbufKnown = rec.RingbufUsed, rec.RingbufSize, true
		sm.Utilization = float64(rec.RingbufUsed) / float64(rec.RingbufSize)
		sm.UtilizationKnown = true
	}
}

// cString converts a NUL-padded kernel name.
func cString(b []int8) string {
	n := 0
	for n < len(b) && b[n] != 0 {
		n++
	}
	if n == 0 {
		return ""
	}
	return string(unsafe.Slice((*byte)(unsafe.Pointer(&b[0])), n))
}

// memlockDue says whether a map's memlock should be read in this pass:
// never read yet, or read longer than MemlockRefresh ago and of a kind whose
// usage changes after creation.
func (s *Sampler) memlockDue(st *mapState, sm *MapSample, now time.Time) bool {
	if s.opts.MemlockBudget <= 0 || s.fdinfoDenied {
		return false
	}
	if st.memRead.IsZero() {
		return true
	}
	return s.opts.MemlockRefresh > 0 && memlockVaries(sm) && now.Sub(st.memRead) >= s.opts.MemlockRefresh
}

// memlockVaries reports whether the kernel's memory figure for a map moves
// after creation. Preallocated maps, arrays and ring buffers report their
// allocation, fixed at creation; hash maps created with BPF_F_NO_PREALLOC
// add elem_size for each element they hold (htab_map_mem_usage) and LPM
// tries a node per prefix (trie_mem_usage).
func memlockVaries(sm *MapSample) bool {
	switch {
	case sm.Type.isHashFamily():
		return sm.Flags&flagNoPrealloc != 0
	case sm.Type == MapTypeLPMTrie:
		return true
	}
	return false
}

// readDueMemlock reads fdinfo for up to MemlockBudget of the maps in s.due,
// never-read maps first.
func (s *Sampler) readDueMemlock(dst []MapSample, now time.Time) {
	budget := s.opts.MemlockBudget
	for _, wantNew := range [2]bool{true, false} {
		for _, i := range s.due {
			if budget <= 0 {
				return
			}
			sm, st := &dst[i], &s.states[i]
			if st.memRead.IsZero() != wantNew || (!wantNew && !s.memlockDue(st, sm, now)) {
				continue
			}
			if s.allowOpen != nil && !s.allowOpen(sm.ID) {
				continue
			}
			budget--
			m, err := ebpf.NewMapFromID(ebpf.MapID(sm.ID))
			if errors.Is(err, os.ErrPermission) {
				s.fdinfoDenied = true
				return
			}
			if err != nil {
				// The map went away after the pass: nothing to read.
				continue
			}
			s.readMemlock(m, st, now)
			m.Close()
		}
	}
}

func (s *Sampler) readMemlock(m *ebpf.Map, st *mapState, now time.Time) {
	if v, err := s.fdbuf.memlock(m.FD()); err == nil {
		st.memlock, st.memRead = v, now
	}
}
