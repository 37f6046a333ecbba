package mappressure

import (
	"errors"
	"math"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/bpfprog"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
)

// ownMaps creates maps for one test and remembers their ids, so that the
// sampler under test opens only those (the host's other maps are read
// through the iterator alone).
type ownMaps struct {
	t   testing.TB
	ids map[uint32]bool
}

func newOwnMaps(t testing.TB) *ownMaps {
	return &ownMaps{t: t, ids: make(map[uint32]bool)}
}

func (o *ownMaps) allow(id uint32) bool { return o.ids[id] }

func (o *ownMaps) create(spec *ebpf.MapSpec) (*ebpf.Map, uint32) {
	o.t.Helper()
	m, err := ebpf.NewMap(spec)
	if err != nil {
		o.t.Fatalf("creating %s map %q: %v", spec.Type, spec.Name, err)
	}
	o.t.Cleanup(func() { m.Close() })
	id := mapID(o.t, m)
	o.ids[id] = true
	return m, id
}

func mapID(t testing.TB, m *ebpf.Map) uint32 {
	t.Helper()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("kernel did not report a map id")
	}
	return uint32(id)
}

func putN(t testing.TB, m *ebpf.Map, n int) {
	t.Helper()
	for k := range n {
		if err := m.Put(uint32(k), uint64(k)); err != nil {
			t.Fatalf("put %d into %v: %v", k, m, err)
		}
	}
}

// keyCount counts keys by walking the map from user space, for hash maps
// whose exact content the test does not control (LRU eviction).
func keyCount(t testing.TB, m *ebpf.Map) uint64 {
	t.Helper()
	var n uint64
	var cur any // nil asks the kernel for the first key
	for {
		b, err := m.NextKeyBytes(cur)
		if err != nil {
			t.Fatal(err)
		}
		if b == nil {
			return n
		}
		n++
		cur = b
	}
}

func samplesByID(t testing.TB, s *Sampler) map[uint32]MapSample {
	t.Helper()
	out, err := s.Sample(nil)
	if err != nil {
		t.Fatal(err)
	}
	byID := make(map[uint32]MapSample, len(out))
	for i, sm := range out {
		if i > 0 && out[i-1].ID >= sm.ID {
			t.Fatalf("samples not in increasing id order: %d then %d", out[i-1].ID, sm.ID)
		}
		byID[sm.ID] = sm
	}
	return byID
}

// connFD returns the fd of an established TCP connection over loopback:
// the kernel accepts established TCP sockets into a sockhash from user
// space (sock_map_sk_state_allowed), not listening ones on this kernel.
func connFD(t testing.TB) uint32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	peer, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd uintptr
	if err := raw.Control(func(f uintptr) { fd = f }); err != nil {
		t.Fatal(err)
	}
	return uint32(fd)
}

type lpmKey struct {
	PrefixLen uint32
	Addr      [4]byte
}

type wantSample struct {
	name        string
	typ         MapType
	maxEntries  uint32
	entries     int64 // -1: unknown
	utilization float64
	utilKnown   bool
}

func checkSample(t *testing.T, byID map[uint32]MapSample, id uint32, w wantSample) {
	t.Helper()
	sm, ok := byID[id]
	if !ok {
		t.Fatalf("map %d (%s) missing from the sample", id, w.name)
	}
	if sm.Name != w.name || sm.Type != w.typ || sm.MaxEntries != w.maxEntries {
		t.Errorf("map %d: got name %q type %s max %d, want %q %s %d", id, sm.Name, sm.TypeName(), sm.MaxEntries, w.name, w.typ, w.maxEntries)
	}
	if w.entries < 0 {
		if sm.EntriesKnown {
			t.Errorf("map %d (%s %q): entries %d reported, want unknown", id, sm.TypeName(), w.name, sm.Entries)
		}
	} else if !sm.EntriesKnown || sm.Entries != uint64(w.entries) {
		t.Errorf("map %d (%s %q): entries %d (known %v), want %d", id, sm.TypeName(), w.name, sm.Entries, sm.EntriesKnown, w.entries)
	}
	if sm.UtilizationKnown != w.utilKnown || math.Abs(sm.Utilization-w.utilization) > 1e-9 {
		t.Errorf("map %d (%s %q): utilization %v (known %v), want %v (known %v)", id, sm.TypeName(), w.name, sm.Utilization, sm.UtilizationKnown, w.utilization, w.utilKnown)
	}
}

func counted(name string, typ MapType, maxEntries uint32, entries int64) wantSample {
	return wantSample{name, typ, maxEntries, entries, float64(entries) / float64(maxEntries), true}
}

func capacityOnly(name string, typ MapType, maxEntries uint32) wantSample {
	return wantSample{name, typ, maxEntries, -1, 0, false}
}

// TestSamplerOwnMaps creates one map of each kind with known contents and
// checks what one pass reports for each.
func TestSamplerOwnMaps(t *testing.T) {
	privileged.Require(t)
	requireKernel(t, "bpf_map_sum_elem_count kfunc", 6, 6)
	own := newOwnMaps(t)

	hash, hashID := own.create(&ebpf.MapSpec{Name: "mp_hash", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 100})
	putN(t, hash, 37)
	hashNP, hashNPID := own.create(&ebpf.MapSpec{Name: "mp_hash_np", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 200, Flags: flagNoPrealloc})
	putN(t, hashNP, 50)
	// Deletes must decrement the count of both allocation modes.
	for k := range uint32(7) {
		if err := hash.Delete(k); err != nil {
			t.Fatal(err)
		}
		if err := hashNP.Delete(k); err != nil {
			t.Fatal(err)
		}
	}
	lru, lruID := own.create(&ebpf.MapSpec{Name: "mp_lru", Type: ebpf.LRUHash, KeySize: 4, ValueSize: 8, MaxEntries: 64})
	putN(t, lru, 10)
	lruFull, lruFullID := own.create(&ebpf.MapSpec{Name: "mp_lru_full", Type: ebpf.LRUHash, KeySize: 4, ValueSize: 8, MaxEntries: 64})
	putN(t, lruFull, 500) // evicts: the count must follow the kernel's content
	pcpu, pcpuID := own.create(&ebpf.MapSpec{Name: "mp_pcpu", Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 8, MaxEntries: 32})
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for k := range uint32(8) {
		if err := pcpu.Put(k, make([]uint64, ncpu)); err != nil {
			t.Fatal(err)
		}
	}
	lruPcpu, lruPcpuID := own.create(&ebpf.MapSpec{Name: "mp_lru_pcpu", Type: ebpf.LRUCPUHash, KeySize: 4, ValueSize: 8, MaxEntries: 16})
	for k := range uint32(4) {
		if err := lruPcpu.Put(k, make([]uint64, ncpu)); err != nil {
			t.Fatal(err)
		}
	}
	unnamed, unnamedID := own.create(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 10})
	putN(t, unnamed, 3)

	inner := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	hom, homID := own.create(&ebpf.MapSpec{Name: "mp_hom", Type: ebpf.HashOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 8, InnerMap: inner})
	for k := range uint32(2) {
		in, _ := own.create(inner)
		if err := hom.Put(k, in); err != nil {
			t.Fatal(err)
		}
	}

	lpm, lpmID := own.create(&ebpf.MapSpec{Name: "mp_lpm", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 4, MaxEntries: 16, Flags: flagNoPrealloc})
	// Prefixes that share bits make the trie add intermediate nodes, which
	// the kernel does not count as entries.
	for i, addr := range [][4]byte{{10, 0, 0, 1}, {10, 0, 0, 2}, {10, 0, 1, 0}, {10, 1, 0, 0}, {192, 168, 0, 0}} {
		if err := lpm.Put(lpmKey{32, addr}, uint32(i)); err != nil {
			t.Fatal(err)
		}
	}
	queue, queueID := own.create(&ebpf.MapSpec{Name: "mp_queue", Type: ebpf.Queue, ValueSize: 4, MaxEntries: 8})
	for v := range uint32(3) {
		if err := queue.Put(nil, v); err != nil {
			t.Fatal(err)
		}
	}
	var popped uint32
	if err := queue.LookupAndDelete(nil, &popped); err != nil {
		t.Fatal(err)
	}
	stack, stackID := own.create(&ebpf.MapSpec{Name: "mp_stack", Type: ebpf.Stack, ValueSize: 4, MaxEntries: 8})
	for v := range uint32(5) {
		if err := stack.Put(nil, v); err != nil {
			t.Fatal(err)
		}
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	devHash, devHashID := own.create(&ebpf.MapSpec{Name: "mp_devhash", Type: ebpf.DevMapHash, KeySize: 4, ValueSize: 4, MaxEntries: 8})
	if err := devHash.Put(uint32(7), uint32(lo.Index)); err != nil {
		t.Fatal(err)
	}
	sockHash, sockHashID := own.create(&ebpf.MapSpec{Name: "mp_sockhash", Type: ebpf.SockHash, KeySize: 4, ValueSize: 4, MaxEntries: 8})
	if err := sockHash.Put(uint32(1), connFD(t)); err != nil {
		t.Fatal(err)
	}

	_, arrayID := own.create(&ebpf.MapSpec{Name: "mp_array", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 10})
	_, pcpuArrayID := own.create(&ebpf.MapSpec{Name: "mp_pcpu_array", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 4})
	_, progArrayID := own.create(&ebpf.MapSpec{Name: "mp_prog_array", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 4})
	_, perfID := own.create(&ebpf.MapSpec{Name: "mp_perf", Type: ebpf.PerfEventArray, KeySize: 4, ValueSize: 4, MaxEntries: uint32(ncpu)})
	_, sockMapID := own.create(&ebpf.MapSpec{Name: "mp_sockmap", Type: ebpf.SockMap, KeySize: 4, ValueSize: 4, MaxEntries: 4})
	_, aomID := own.create(&ebpf.MapSpec{Name: "mp_aom", Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 4, InnerMap: inner})

	const rbSize = 16384
	rb, rbID := own.create(&ebpf.MapSpec{Name: "mp_ring", Type: ebpf.RingBuf, MaxEntries: rbSize})
	// bpf_ringbuf_output reserves round_up(len + BPF_RINGBUF_HDR_SZ, 8):
	// 13 payload bytes + 8 header bytes = 21, rounded up to 24.
	const runs, payload, recBytes = 100, 13, 24
	bpfprog.Run(t, bpfprog.RingbufWriter(t, "mp_rb_writer", rb, payload), runs)
	_, urbID := own.create(&ebpf.MapSpec{Name: "mp_uring", Type: ebpf.UserRingbuf, MaxEntries: 4096})

	s, err := newSampler(DefaultOptions(), seams{allowOpen: own.allow})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Mode() != ModeKfunc || s.FallbackReason() != nil {
		t.Fatalf("mode %s (%v), want kfunc on Linux >= 6.6", s.Mode(), s.FallbackReason())
	}
	byID := samplesByID(t, s)

	for _, c := range []struct {
		id   uint32
		want wantSample
	}{
		{hashID, counted("mp_hash", MapTypeHash, 100, 30)},
		{hashNPID, counted("mp_hash_np", MapTypeHash, 200, 43)},
		{lruID, counted("mp_lru", MapTypeLRUHash, 64, 10)},
		{lruFullID, counted("mp_lru_full", MapTypeLRUHash, 64, int64(keyCount(t, lruFull)))},
		{pcpuID, counted("mp_pcpu", MapTypePerCPUHash, 32, 8)},
		{lruPcpuID, counted("mp_lru_pcpu", MapTypeLRUPerCPUHash, 16, 4)},
		{unnamedID, counted("", MapTypeHash, 10, 3)},
		{homID, counted("mp_hom", MapTypeHashOfMaps, 8, 2)},
		{lpmID, counted("mp_lpm", MapTypeLPMTrie, 16, 5)},
		{queueID, counted("mp_queue", MapTypeQueue, 8, 2)},
		{stackID, counted("mp_stack", MapTypeStack, 8, 5)},
		{devHashID, counted("mp_devhash", MapTypeDevMapHash, 8, 1)},
		{sockHashID, counted("mp_sockhash", MapTypeSockHash, 8, 1)},
		{arrayID, capacityOnly("mp_array", MapTypeArray, 10)},
		{pcpuArrayID, capacityOnly("mp_pcpu_array", MapTypePerCPUArray, 4)},
		{progArrayID, capacityOnly("mp_prog_array", MapTypeProgArray, 4)},
		{perfID, capacityOnly("mp_perf", MapTypePerfEventArray, uint32(ncpu))},
		{sockMapID, capacityOnly("mp_sockmap", MapTypeSockMap, 4)},
		{aomID, capacityOnly("mp_aom", MapTypeArrayOfMaps, 4)},
		{rbID, wantSample{"mp_ring", MapTypeRingBuf, rbSize, -1, float64(runs*recBytes) / rbSize, true}},
		{urbID, wantSample{"mp_uring", MapTypeUserRingBuf, 4096, -1, 0, true}},
	} {
		checkSample(t, byID, c.id, c.want)
	}
	if got := byID[lruFullID].Entries; got == 0 || got > 64 {
		t.Errorf("full LRU map reports %d entries, want 1..64", got)
	}

	ring := byID[rbID]
	if !ring.RingbufKnown || ring.RingbufUsed != runs*recBytes || ring.RingbufSize != rbSize {
		t.Errorf("ring buffer: used %d size %d (known %v), want %d of %d", ring.RingbufUsed, ring.RingbufSize, ring.RingbufKnown, runs*recBytes, rbSize)
	}
	if urb := byID[urbID]; !urb.RingbufKnown || urb.RingbufUsed != 0 || urb.RingbufSize != 4096 {
		t.Errorf("user ring buffer: used %d size %d (known %v), want 0 of 4096", urb.RingbufUsed, urb.RingbufSize, urb.RingbufKnown)
	}
	if got := byID[hashNPID].Flags; got&flagNoPrealloc == 0 {
		t.Errorf("BPF_F_NO_PREALLOC missing from flags %#x", got)
	}
	if sm := byID[hashID]; sm.KeySize != 4 || sm.ValueSize != 8 {
		t.Errorf("hash key/value size %d/%d, want 4/8", sm.KeySize, sm.ValueSize)
	}

	// Memory of every map of ours is the kernel's figure for that map, and
	// the fallback estimate lands within 25 % of it.
	var fr fdinfoReader
	for _, id := range []uint32{hashID, hashNPID, lruID, pcpuID, lruPcpuID, lpmID, rbID, arrayID, pcpuArrayID, progArrayID} {
		m, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			t.Fatal(err)
		}
		want, err := fr.memlock(m.FD())
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		sm := byID[id]
		if sm.MemorySource != MemoryFdinfo || sm.MemoryBytes != want {
			t.Errorf("map %d (%s): memory %d from %s, want %d from fdinfo", id, sm.Name, sm.MemoryBytes, sm.MemorySource, want)
		}
		if sm.Type == MapTypeLPMTrie {
			continue // node sizes depend on the prefixes; no estimate rule
		}
		est := estimateMemory(&sm, ncpu)
		if est < want*3/4 || est > want*5/4 {
			t.Errorf("map %d (%s): estimate %d, kernel says %d", id, sm.Name, est, want)
		}
	}

	// A second fill adds to the producer position; a reader that consumes
	// every record moves the consumer position up to it.
	bpfprog.Run(t, bpfprog.RingbufWriter(t, "mp_rb_writer", rb, payload), runs)
	if sm := samplesByID(t, s)[rbID]; sm.RingbufUsed != 2*runs*recBytes {
		t.Errorf("ring buffer after second fill: used %d, want %d", sm.RingbufUsed, 2*runs*recBytes)
	}
	rd, err := ringbuf.NewReader(rb)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for range 2 * runs {
		rec, err := rd.Read()
		if err != nil {
			t.Fatal(err)
		}
		if len(rec.RawSample) != payload {
			t.Fatalf("ring buffer record of %d bytes, want %d", len(rec.RawSample), payload)
		}
	}
	if sm := samplesByID(t, s)[rbID]; sm.RingbufUsed != 0 || sm.Utilization != 0 {
		t.Errorf("drained ring buffer: used %d utilization %v, want 0", sm.RingbufUsed, sm.Utilization)
	}
}

// TestSamplerMapLifecycle checks that a map closed by its last holder is
// absent from the next pass and its cache entry is gone.
func TestSamplerMapLifecycle(t *testing.T) {
	privileged.Require(t)
	own := newOwnMaps(t)
	s, err := newSampler(DefaultOptions(), seams{allowOpen: own.allow})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "mp_gone", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 4})
	if err != nil {
		t.Fatal(err)
	}
	id := mapID(t, m)
	own.ids[id] = true
	if _, ok := samplesByID(t, s)[id]; !ok {
		m.Close()
		t.Fatalf("new map %d missing from the sample", id)
	}
	// Closing the only fd drops the last reference: bpf_map_put removes
	// the id from the kernel's map IDR before freeing the map.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := samplesByID(t, s)[id]; ok {
		t.Fatalf("deleted map %d still in the sample", id)
	}
	if s.state(id) != nil {
		t.Fatalf("deleted map %d still cached", id)
	}
}

// TestSamplerHighIDs makes sure maps with ids above 10000 are reported: the
// kernel allocates map ids cyclically, so a long-running host has large ids.
func TestSamplerHighIDs(t *testing.T) {
	privileged.Require(t)
	const floor = 10000
	spec := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	for {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			t.Fatal(err)
		}
		id := mapID(t, m)
		m.Close()
		if id > floor {
			break
		}
	}
	own := newOwnMaps(t)
	m, id := own.create(&ebpf.MapSpec{Name: "mp_high", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 50})
	putN(t, m, 20)
	if id <= floor {
		t.Fatalf("map id %d, want above %d", id, floor)
	}
	s, err := newSampler(DefaultOptions(), seams{allowOpen: own.allow})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	byID := samplesByID(t, s)
	want := capacityOnly("mp_high", MapTypeHash, 50)
	if s.Mode() == ModeKfunc {
		want = counted("mp_high", MapTypeHash, 50, 20)
	}
	checkSample(t, byID, id, want)
}

// TestSamplerNoFDLeak runs 100 passes and compares the process's fd table.
func TestSamplerNoFDLeak(t *testing.T) {
	privileged.Require(t)
	own := newOwnMaps(t)
	for range 5 {
		own.create(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 8})
	}
	opts := DefaultOptions()
	opts.MemlockRefresh = time.Nanosecond // open our maps on every pass
	s, err := newSampler(opts, seams{allowOpen: own.allow})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Sample(nil); err != nil {
		t.Fatal(err)
	}
	before, err := countFDs()
	if err != nil {
		t.Fatal(err)
	}
	var buf []MapSample
	for range 100 {
		if buf, err = s.Sample(buf); err != nil {
			t.Fatal(err)
		}
	}
	after, err := countFDs()
	if err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Fatalf("%d fds before 100 samples, %d after", before, after)
	}
}

// TestSamplerMemlockCadence checks the fdinfo budget, new maps first, the
// refresh of maps whose usage moves, and the estimate fallback.
func TestSamplerMemlockCadence(t *testing.T) {
	privileged.Require(t)
	own := newOwnMaps(t)
	var ids []uint32
	for range 4 {
		_, id := own.create(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 64, Flags: flagNoPrealloc})
		ids = append(ids, id)
	}
	_, fixedID := own.create(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 64})
	ids = append(ids, fixedID)

	s, err := newSampler(Options{MemlockBudget: 2, MemlockRefresh: time.Minute}, seams{allowOpen: own.allow})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Unix(1000, 0)
	s.now = func() time.Time { return now }

	fromFdinfo := func() int {
		byID := samplesByID(t, s)
		n := 0
		for _, id := range ids {
			sm := byID[id]
			switch sm.MemorySource {
			case MemoryFdinfo:
				n++
			case MemoryEstimate:
				if sm.MemoryBytes != estimateMemory(&sm, s.nCPU) {
					t.Errorf("map %d: estimate %d, want %d", id, sm.MemoryBytes, estimateMemory(&sm, s.nCPU))
				}
			default:
				t.Errorf("map %d: memory source %q", id, sm.MemorySource)
			}
		}
		return n
	}
	for pass, want := range []int{2, 4, 5, 5} {
		if got := fromFdinfo(); got != want {
			t.Fatalf("pass %d: %d maps from fdinfo, want %d", pass, got, want)
		}
	}
	for _, id := range ids {
		if got := s.state(id).memRead; !got.Equal(now) {
			t.Fatalf("map %d read at %v", id, got)
		}
	}

	// After the interval, the BPF_F_NO_PREALLOC maps are read again, two
	// per pass; the preallocated one never is.
	start := now
	now = now.Add(time.Minute)
	for pass, want := range []int{2, 4, 4} {
		fromFdinfo()
		refreshed := 0
		for _, id := range ids {
			if s.state(id).memRead.Equal(now) {
				refreshed++
			}
		}
		if refreshed != want {
			t.Fatalf("pass %d after the interval: %d maps refreshed, want %d", pass, refreshed, want)
		}
	}
	if got := s.state(fixedID).memRead; !got.Equal(start) {
		t.Fatalf("preallocated map re-read at %v", got)
	}

	off, err := newSampler(Options{}, seams{allowOpen: own.allow})
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	for _, id := range ids {
		if sm := samplesByID(t, off)[id]; sm.MemorySource != MemoryEstimate || sm.MemoryBytes == 0 {
			t.Fatalf("map %d with fdinfo off: %d from %s, want a non-zero estimate", id, sm.MemoryBytes, sm.MemorySource)
		}
	}
}

// TestSamplerFallback loads the object built without the kfunc, as on
// Linux < 6.6, and checks user-space counting and capacity-only mode.
func TestSamplerFallback(t *testing.T) {
	privileged.Require(t)
	own := newOwnMaps(t)
	hash, hashID := own.create(&ebpf.MapSpec{Name: "mp_fb_hash", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 1000})
	putN(t, hash, 600) // several batches of batchStart
	pcpu, pcpuID := own.create(&ebpf.MapSpec{Name: "mp_fb_pcpu", Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 12, MaxEntries: 64})
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for k := range uint32(9) {
		if err := pcpu.Put(k, make([][12]byte, ncpu)); err != nil {
			t.Fatal(err)
		}
	}
	lru, lruID := own.create(&ebpf.MapSpec{Name: "mp_fb_lru", Type: ebpf.LRUHash, KeySize: 4, ValueSize: 8, MaxEntries: 128})
	putN(t, lru, 11)
	big, bigID := own.create(&ebpf.MapSpec{Name: "mp_fb_big", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 5000})
	putN(t, big, 3)
	lpm, lpmID := own.create(&ebpf.MapSpec{Name: "mp_fb_lpm", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 4, MaxEntries: 4, Flags: flagNoPrealloc})
	if err := lpm.Put(lpmKey{8, [4]byte{10}}, uint32(1)); err != nil {
		t.Fatal(err)
	}

	opts := DefaultOptions()
	opts.UserspaceCountMaxEntries = 1000
	s, err := newSampler(opts, seams{allowOpen: own.allow, noKfunc: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Mode() != ModeUserspace || s.FallbackReason() == nil {
		t.Fatalf("mode %s (reason %v), want userspace with a reason", s.Mode(), s.FallbackReason())
	}
	byID := samplesByID(t, s)
	checkSample(t, byID, hashID, counted("mp_fb_hash", MapTypeHash, 1000, 600))
	checkSample(t, byID, pcpuID, counted("mp_fb_pcpu", MapTypePerCPUHash, 64, 9))
	checkSample(t, byID, lruID, counted("mp_fb_lru", MapTypeLRUHash, 128, 11))
	checkSample(t, byID, bigID, capacityOnly("mp_fb_big", MapTypeHash, 5000))
	// Counters the kernel keeps in a map's own struct need no kfunc.
	checkSample(t, byID, lpmID, counted("mp_fb_lpm", MapTypeLPMTrie, 4, 1))

	capOnly, err := newSampler(Options{}, seams{allowOpen: own.allow, noKfunc: true})
	if err != nil {
		t.Fatal(err)
	}
	defer capOnly.Close()
	if capOnly.Mode() != ModeCapacityOnly {
		t.Fatalf("mode %s, want capacity-only", capOnly.Mode())
	}
	checkSample(t, samplesByID(t, capOnly), hashID, capacityOnly("mp_fb_hash", MapTypeHash, 1000))
}

// progsNamed walks the kernel's program list and returns the ids of the
// programs with the given name.
func progsNamed(t *testing.T, name string) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return ids
			}
			t.Fatal(err)
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		if info.Name == name {
			ids = append(ids, id)
		}
	}
}

// linksOf walks the kernel's link list and returns the links of a program.
func linksOf(t *testing.T, prog ebpf.ProgramID) int {
	t.Helper()
	it := new(link.Iterator)
	defer it.Close()
	n := 0
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.Program == prog {
			n++
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSamplerCleanup checks, against the kernel's own lists, that Close
// unloads the program and its link, for both objects. Other test packages
// may load programs of the same name at the same time, so ours is told
// apart by id.
func TestSamplerCleanup(t *testing.T) {
	privileged.Require(t)
	const progName = "dump_bpf_map" // the kernel keeps 15 bytes of a name
	for _, noKfunc := range []bool{false, true} {
		s, err := newSampler(DefaultOptions(), seams{noKfunc: noKfunc, allowOpen: func(uint32) bool { return false }})
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.prog.Info()
		if err != nil {
			t.Fatal(err)
		}
		ourID, ok := info.ID()
		if !ok {
			t.Fatal("kernel did not report a program id")
		}
		if !slices.Contains(progsNamed(t, progName), ourID) {
			s.Close()
			t.Fatalf("noKfunc=%v: program %d not in the kernel's list under the name %s", noKfunc, ourID, progName)
		}
		// The program references no map: the object's .bss, which only
		// anchors types in BTF, is not part of what the loader loads.
		if mapIDs, _ := info.MapIDs(); len(mapIDs) != 0 {
			t.Fatalf("iterator program uses maps %v, want none", mapIDs)
		}
		if n := linksOf(t, ourID); n != 1 {
			t.Fatalf("%d links of our program, want 1", n)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if _, err := s.Sample(nil); err == nil {
			t.Fatal("Sample after Close succeeded")
		}
		if slices.Contains(progsNamed(t, progName), ourID) {
			t.Fatalf("noKfunc=%v: program %d still loaded after Close", noKfunc, ourID)
		}
		privileged.RequireUnloaded(t, []ebpf.ProgramID{ourID})
		if n := linksOf(t, ourID); n != 0 {
			t.Fatalf("noKfunc=%v: %d links of program %d after Close", noKfunc, n, ourID)
		}
	}
}

// kernelTypesWithout returns this kernel's BTF with some structs and some
// struct bpf_map members renamed, standing in for a kernel that lacks them.
func kernelTypesWithout(t *testing.T, structs, bpfMapMembers []string) *btf.Spec {
	t.Helper()
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	cp := kernel.Copy()
	var types []btf.Type
	for typ, err := range cp.All() {
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, typ)
	}
	hide := func(name string) *btf.Struct {
		typ, err := cp.AnyTypeByName(name)
		if err != nil {
			t.Fatalf("kernel BTF has no %s: %v", name, err)
		}
		st, ok := typ.(*btf.Struct)
		if !ok {
			t.Fatalf("kernel type %s is a %T, not a struct", name, typ)
		}
		return st
	}
	for _, name := range structs {
		hide(name).Name = "hidden_" + name
	}
	bpfMap := hide("bpf_map")
	for _, field := range bpfMapMembers {
		found := false
		for i := range bpfMap.Members {
			if bpfMap.Members[i].Name == field {
				bpfMap.Members[i].Name = "hidden_" + field
				found = true
			}
		}
		if !found {
			t.Fatalf("struct bpf_map has no member %s", field)
		}
	}
	b, err := btf.NewBuilder(types, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := b.Spec()
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// TestSamplerKernelWithoutStructs relocates both objects against kernel
// types that lack the structs read with CO-RE (and struct bpf_map without
// elem_count): the guarded branches must drop out and the rest load and
// report capacity.
func TestSamplerKernelWithoutStructs(t *testing.T) {
	privileged.Require(t)
	own := newOwnMaps(t)
	hash, hashID := own.create(&ebpf.MapSpec{Name: "mp_core_hash", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 20})
	putN(t, hash, 10)
	rb, rbID := own.create(&ebpf.MapSpec{Name: "mp_core_ring", Type: ebpf.RingBuf, MaxEntries: 4096})
	bpfprog.Run(t, bpfprog.RingbufWriter(t, "mp_rb_writer", rb, 8), 3)
	lpm, lpmID := own.create(&ebpf.MapSpec{Name: "mp_core_lpm", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 4, MaxEntries: 4, Flags: flagNoPrealloc})
	if err := lpm.Put(lpmKey{8, [4]byte{10}}, uint32(1)); err != nil {
		t.Fatal(err)
	}
	queue, queueID := own.create(&ebpf.MapSpec{Name: "mp_core_queue", Type: ebpf.Queue, ValueSize: 4, MaxEntries: 4})
	if err := queue.Put(nil, uint32(1)); err != nil {
		t.Fatal(err)
	}

	types := kernelTypesWithout(t,
		[]string{"bpf_ringbuf_map", "bpf_ringbuf", "lpm_trie", "bpf_queue_stack", "bpf_dtab", "bpf_shtab"},
		[]string{"elem_count"})
	for _, noKfunc := range []bool{false, true} {
		s, err := newSampler(Options{}, seams{allowOpen: own.allow, noKfunc: noKfunc, kernelTypes: types})
		if err != nil {
			t.Fatalf("noKfunc=%v: loading against kernel types without the guarded structs: %v", noKfunc, err)
		}
		byID := samplesByID(t, s)
		s.Close()
		checkSample(t, byID, hashID, capacityOnly("mp_core_hash", MapTypeHash, 20))
		checkSample(t, byID, lpmID, capacityOnly("mp_core_lpm", MapTypeLPMTrie, 4))
		checkSample(t, byID, queueID, capacityOnly("mp_core_queue", MapTypeQueue, 4))
		checkSample(t, byID, rbID, capacityOnly("mp_core_ring", MapTypeRingBuf, 4096))
		if byID[rbID].RingbufKnown {
			t.Errorf("noKfunc=%v: ring buffer fill reported without struct bpf_ringbuf", noKfunc)
		}
	}
}
