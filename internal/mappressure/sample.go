package mappressure

import "strconv"

// MapType is the kernel's enum bpf_map_type (include/uapi/linux/bpf.h).
type MapType uint32

// Map types that this package treats specially. The values are fixed by the
// kernel's UAPI.
const (
	MapTypeHash                MapType = 1
	MapTypeArray               MapType = 2
	MapTypeProgArray           MapType = 3
	MapTypePerfEventArray      MapType = 4
	MapTypePerCPUHash          MapType = 5
	MapTypePerCPUArray         MapType = 6
	MapTypeStackTrace          MapType = 7
	MapTypeCgroupArray         MapType = 8
	MapTypeLRUHash             MapType = 9
	MapTypeLRUPerCPUHash       MapType = 10
	MapTypeLPMTrie             MapType = 11
	MapTypeArrayOfMaps         MapType = 12
	MapTypeHashOfMaps          MapType = 13
	MapTypeDevMap              MapType = 14
	MapTypeSockMap             MapType = 15
	MapTypeCPUMap              MapType = 16
	MapTypeXSKMap              MapType = 17
	MapTypeSockHash            MapType = 18
	MapTypeCgroupStorage       MapType = 19
	MapTypeReusePortSockArray  MapType = 20
	MapTypePerCPUCgroupStorage MapType = 21
	MapTypeQueue               MapType = 22
	MapTypeStack               MapType = 23
	MapTypeSkStorage           MapType = 24
	MapTypeDevMapHash          MapType = 25
	MapTypeStructOps           MapType = 26
	MapTypeRingBuf             MapType = 27
	MapTypeInodeStorage        MapType = 28
	MapTypeTaskStorage         MapType = 29
	MapTypeBloomFilter         MapType = 30
	MapTypeUserRingBuf         MapType = 31
	MapTypeCgrpStorage         MapType = 32
	MapTypeArena               MapType = 33
)

// mapTypeNames holds the kernel's own names: the enum bpf_map_type
// constants without their BPF_MAP_TYPE_ prefix, lower-cased. Types 19 and
// 21 are named after their current constants, BPF_MAP_TYPE_CGROUP_STORAGE
// and BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE.
var mapTypeNames = [...]string{
	0:                          "unspec",
	MapTypeHash:                "hash",
	MapTypeArray:               "array",
	MapTypeProgArray:           "prog_array",
	MapTypePerfEventArray:      "perf_event_array",
	MapTypePerCPUHash:          "percpu_hash",
	MapTypePerCPUArray:         "percpu_array",
	MapTypeStackTrace:          "stack_trace",
	MapTypeCgroupArray:         "cgroup_array",
	MapTypeLRUHash:             "lru_hash",
	MapTypeLRUPerCPUHash:       "lru_percpu_hash",
	MapTypeLPMTrie:             "lpm_trie",
	MapTypeArrayOfMaps:         "array_of_maps",
	MapTypeHashOfMaps:          "hash_of_maps",
	MapTypeDevMap:              "devmap",
	MapTypeSockMap:             "sockmap",
	MapTypeCPUMap:              "cpumap",
	MapTypeXSKMap:              "xskmap",
	MapTypeSockHash:            "sockhash",
	MapTypeCgroupStorage:       "cgroup_storage",
	MapTypeReusePortSockArray:  "reuseport_sockarray",
	MapTypePerCPUCgroupStorage: "percpu_cgroup_storage",
	MapTypeQueue:               "queue",
	MapTypeStack:               "stack",
	MapTypeSkStorage:           "sk_storage",
	MapTypeDevMapHash:          "devmap_hash",
	MapTypeStructOps:           "struct_ops",
	MapTypeRingBuf:             "ringbuf",
	MapTypeInodeStorage:        "inode_storage",
	MapTypeTaskStorage:         "task_storage",
	MapTypeBloomFilter:         "bloom_filter",
	MapTypeUserRingBuf:         "user_ringbuf",
	MapTypeCgrpStorage:         "cgrp_storage",
	MapTypeArena:               "arena",
}

// String returns the kernel's name of the type, or "unknown(N)" for a type
// newer than this package.
func (t MapType) String() string {
	if int(t) < len(mapTypeNames) {
		return mapTypeNames[t]
	}
	return "unknown(" + strconv.FormatUint(uint64(t), 10) + ")"
}

// isHashFamily reports whether the kernel implements the type with
// kernel/bpf/hashtab.c, the maps that keep map->elem_count (Linux >= 6.6)
// and that user space can count with batch lookups.
func (t MapType) isHashFamily() bool {
	switch t {
	case MapTypeHash, MapTypeLRUHash, MapTypePerCPUHash, MapTypeLRUPerCPUHash, MapTypeHashOfMaps:
		return true
	}
	return false
}

// isPerCPU reports whether a value is stored once per possible CPU.
func (t MapType) isPerCPU() bool {
	switch t {
	case MapTypePerCPUHash, MapTypeLRUPerCPUHash, MapTypePerCPUArray, MapTypePerCPUCgroupStorage:
		return true
	}
	return false
}

// MemorySource says where MapSample.MemoryBytes comes from.
type MemorySource string

const (
	// MemoryFdinfo is the kernel's own accounting: the "memlock:" line of
	// /proc/self/fdinfo/<fd> for a file descriptor of the map
	// (map->ops->map_mem_usage on Linux >= 6.4).
	MemoryFdinfo MemorySource = "fdinfo"
	// MemoryEstimate is computed by this package from the map's geometry;
	// see estimateMemory.
	MemoryEstimate MemorySource = "estimate"
)

// Mode says how the sampler counts the elements of hash-family maps.
type Mode string

const (
	// ModeKfunc: the iterator calls bpf_map_sum_elem_count (Linux >= 6.6).
	ModeKfunc Mode = "kfunc"
	// ModeUserspace: the kernel lacks the kfunc; hash maps up to
	// Options.UserspaceCountMaxEntries are counted with batch lookups.
	ModeUserspace Mode = "userspace"
	// ModeCapacityOnly: the kernel lacks the kfunc and user-space counting
	// is disabled; hash maps report their capacity only.
	ModeCapacityOnly Mode = "capacity-only"
)

// MapSample is one map as seen by one pass of the iterator.
//
// What each map type reports:
//
//	hash, lru_hash, percpu_hash,      Entries: exact element count kept by the
//	lru_percpu_hash, hash_of_maps     kernel (map->elem_count, summed over CPUs
//	                                  by the bpf_map_sum_elem_count kfunc),
//	                                  prealloc and BPF_F_NO_PREALLOC alike.
//	                                  Utilization = Entries / MaxEntries. For
//	                                  LRU maps a value near 1 means the kernel
//	                                  is evicting, not failing inserts.
//	lpm_trie, queue, stack,           Entries: the counter the map keeps in its
//	devmap_hash, sockhash             own kernel struct, read with CO-RE.
//	                                  Utilization = Entries / MaxEntries (inserts
//	                                  fail once it reaches 1).
//	ringbuf, user_ringbuf             RingbufUsed / RingbufSize bytes
//	                                  (producer_pos - consumer_pos over the data
//	                                  area); Utilization = used / size.
//	                                  Entries unknown.
//	array, percpu_array, prog_array,  Capacity only (MaxEntries): every slot
//	perf_event_array, cgroup_array,   exists from creation, or the kernel keeps
//	array_of_maps, devmap, cpumap,    no counter. Utilization unknown: none is
//	sockmap, xskmap, stack_trace,     invented.
//	bloom_filter, *_storage, arena,
//	struct_ops, others
//
// Without the kfunc (Linux < 6.6, see Mode) the hash family is counted from
// user space or reports capacity only.
type MapSample struct {
	ID    uint32
	Name  string // may be empty: maps need not be named
	Type  MapType
	Flags uint32 // BPF_F_* creation flags, e.g. BPF_F_NO_PREALLOC = 1

	KeySize    uint32
	ValueSize  uint32
	MaxEntries uint32 // for ring buffers, the data size in bytes

	Entries      uint64
	EntriesKnown bool

	// Utilization is in [0, 1] for counted maps and ring buffers and is
	// only meaningful when UtilizationKnown is true.
	Utilization      float64
	UtilizationKnown bool

	RingbufUsed  uint64
	RingbufSize  uint64
	RingbufKnown bool

	MemoryBytes  uint64
	MemorySource MemorySource
}

// TypeName returns the kernel's name of the map type, e.g. "lru_hash".
func (s *MapSample) TypeName() string { return s.Type.String() }

// Kernel sizes behind estimateMemory, as on Linux 6.18 x86-64; other
// versions differ by a few bytes, which an estimate can afford.
const (
	pageSize = 4096
	// sizeof(struct bpf_map), the header of every map.
	mapHeader = 296
	// sizeof(struct bpf_array): struct bpf_map plus the array bookkeeping.
	arrayHeader = 312
	// sizeof(struct bpf_htab).
	htabHeader = 832
	// sizeof(struct htab_elem), the element header before the key.
	htabElemHeader = 48
	// sizeof(struct bucket): hlist_nulls_head plus its lock.
	htabBucket = 16
	// sizeof(struct bpf_ringbuf_map) plus struct bpf_ringbuf, which spans
	// three pages: its header, the consumer page and the producer page.
	ringbufHeader = 304 + 3*pageSize
	// BPF_F_NO_PREALLOC in include/uapi/linux/bpf.h.
	flagNoPrealloc = 1
)

func roundUp8(n uint64) uint64 { return (n + 7) &^ 7 }

func roundUpPow2(n uint64) uint64 {
	p := uint64(1)
	for p < n {
		p <<= 1
	}
	return p
}

// estimateMemory approximates the bytes a map pins from its geometry,
// following the allocation layout of the kernel's map implementations. It
// is used only when the kernel's own figure (fdinfo memlock) is not
// available, and is reported as MemoryEstimate.
func estimateMemory(s *MapSample, nCPU int) uint64 {
	key := roundUp8(uint64(s.KeySize))
	value := roundUp8(uint64(s.ValueSize))
	n := uint64(s.MaxEntries)
	cpus := uint64(max(nCPU, 1))

	switch s.Type {
	case MapTypeArray:
		// kernel/bpf/arraymap.c: one contiguous array of round_up(value, 8).
		return arrayHeader + value*n
	case MapTypePerCPUArray:
		// One per-CPU pointer per element plus a per-CPU copy of each value.
		return arrayHeader + n*(8+value*cpus)
	case MapTypeProgArray, MapTypePerfEventArray, MapTypeCgroupArray, MapTypeArrayOfMaps,
		MapTypeDevMap, MapTypeCPUMap, MapTypeXSKMap, MapTypeSockMap, MapTypeReusePortSockArray:
		// Arrays of kernel object pointers.
		return arrayHeader + 8*n
	case MapTypeRingBuf, MapTypeUserRingBuf:
		// kernel/bpf/ringbuf.c: the data pages (mapped twice, allocated
		// once) after the header pages.
		return ringbufHeader + n
	case MapTypeHash, MapTypeLRUHash, MapTypePerCPUHash, MapTypeLRUPerCPUHash, MapTypeHashOfMaps:
		// kernel/bpf/hashtab.c: an element is the htab_elem header, the
		// key and the value; per-CPU maps store a per-CPU pointer in the
		// element and a copy of the value for every possible CPU.
		elem := htabElemHeader + key + value
		if s.Type.isPerCPU() {
			elem = htabElemHeader + key + 8 + value*cpus
		}
		buckets := roundUpPow2(n) * htabBucket
		elems := n
		if s.Flags&flagNoPrealloc != 0 {
			// Elements are allocated on insert; only the ones that exist
			// use memory.
			elems = 0
			if s.EntriesKnown {
				elems = s.Entries
			}
		}
		return htabHeader + buckets + elems*elem
	default:
		return mapHeader + (key+value)*n
	}
}
