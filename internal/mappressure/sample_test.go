package mappressure

import "testing"

func TestTypeName(t *testing.T) {
	for typ, want := range map[MapType]string{
		0:                    "unspec",
		MapTypeHash:          "hash",
		MapTypeLRUHash:       "lru_hash",
		MapTypePerCPUArray:   "percpu_array",
		MapTypeLRUPerCPUHash: "lru_percpu_hash",
		MapTypeCgroupStorage: "cgroup_storage",
		MapTypeRingBuf:       "ringbuf",
		MapTypeUserRingBuf:   "user_ringbuf",
		MapTypeArena:         "arena",
		34:                   "unknown(34)",
	} {
		s := MapSample{Type: typ}
		if got := s.TypeName(); got != want {
			t.Errorf("TypeName(%d) = %q, want %q", uint32(typ), got, want)
		}
	}
	for i, name := range mapTypeNames {
		if name == "" {
			t.Errorf("map type %d has no name", i)
		}
	}
}

func TestParseMemlock(t *testing.T) {
	const fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2069\nmap_type:\t1\n" +
		"key_size:\t4\nvalue_size:\t8\nmax_entries:\t100\nmap_flags:\t0x0\nmap_extra:\t0x0\n" +
		"memlock:\t12864\nmap_id:\t10432\nfrozen:\t0\n"
	for _, tc := range []struct {
		name string
		in   string
		want uint64
		ok   bool
	}{
		{"map fdinfo", fdinfo, 12864, true},
		{"spaces", "pos: 0\nmemlock:   42\n", 42, true},
		{"max uint64", "pos:\t0\nmemlock:\t18446744073709551615\n", 1<<64 - 1, true},
		{"overflow", "pos:\t0\nmemlock:\t18446744073709551616\n", 0, false},
		{"missing", "pos:\t0\nflags:\t02\n", 0, false},
		{"not at line start", "pos:\t0\nxmemlock:\t5\n", 0, false},
		{"empty value", "pos:\t0\nmemlock:\t\n", 0, false},
		{"cut before newline", "pos:\t0\nmemlock:\t123", 0, false},
		{"garbage value", "pos:\t0\nmemlock:\t12ab\n", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMemlock([]byte(tc.in))
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("parseMemlock = %d, %v; want %d, ok=%v", got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestEstimateMemory(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    MapSample
		cpus int
		want uint64
	}{
		// struct bpf_array + 100 * round_up(12, 8)
		{"array", MapSample{Type: MapTypeArray, KeySize: 4, ValueSize: 12, MaxEntries: 100}, 2, 312 + 1600},
		// struct bpf_array + 4 * (8 + 8*2)
		{"percpu array", MapSample{Type: MapTypePerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 4}, 2, 312 + 96},
		// struct bpf_htab + 128 buckets * 16 + 100 * (48 + 8 + 8)
		{"prealloc hash", MapSample{Type: MapTypeHash, KeySize: 4, ValueSize: 8, MaxEntries: 100}, 2, 832 + 2048 + 6400},
		// buckets only while empty; elements as they exist
		{"empty no-prealloc hash", MapSample{Type: MapTypeHash, Flags: flagNoPrealloc, KeySize: 4, ValueSize: 8, MaxEntries: 100}, 2, 832 + 2048},
		{"no-prealloc hash with entries", MapSample{Type: MapTypeHash, Flags: flagNoPrealloc, KeySize: 4, ValueSize: 8, MaxEntries: 100, Entries: 10, EntriesKnown: true}, 2, 832 + 2048 + 640},
		// 32 buckets * 16 + 32 * (48 + 8 + 8 pointer + 8*4 values)
		{"percpu hash", MapSample{Type: MapTypePerCPUHash, KeySize: 4, ValueSize: 8, MaxEntries: 32}, 4, 832 + 512 + 32*96},
		// struct bpf_ringbuf_map + three header pages + data
		{"ringbuf", MapSample{Type: MapTypeRingBuf, MaxEntries: 16384}, 2, 304 + 12288 + 16384},
		{"prog array", MapSample{Type: MapTypeProgArray, KeySize: 4, ValueSize: 4, MaxEntries: 10}, 2, 312 + 80},
		{"other", MapSample{Type: MapTypeBloomFilter, ValueSize: 4, MaxEntries: 10}, 2, 296 + 80},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := estimateMemory(&tc.s, tc.cpus); got != tc.want {
				t.Fatalf("estimateMemory = %d, want %d", got, tc.want)
			}
		})
	}
}
