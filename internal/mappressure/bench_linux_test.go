package mappressure

import (
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
)

// createBenchMaps creates n small hash maps with 4 elements each. On Linux
// >= 5.11 map memory is charged to the memory cgroup, not RLIMIT_MEMLOCK,
// so thousands of maps need no rlimit change; the log shows the limit in
// force while they were created.
func createBenchMaps(b *testing.B, n int) *ownMaps {
	b.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		b.Fatal(err)
	}
	own := newOwnMaps(b)
	spec := &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 16}
	for i := range n {
		spec.Name = fmt.Sprintf("mp_bench_%d", i)
		m, _ := own.create(spec)
		putN(b, m, 4)
	}
	b.Logf("created %d maps with RLIMIT_MEMLOCK %d KiB", n, lim.Cur/1024)
	return own
}

// BenchmarkSample measures a steady-state pass (every memlock reading
// cached) over the host's maps plus n of ours, and reports ns per map.
func BenchmarkSample(b *testing.B) {
	privileged.Require(b)
	requireKernel(b, "bpf_map_sum_elem_count kfunc", 6, 6)
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("maps=%d", n), func(b *testing.B) {
			own := createBenchMaps(b, n)
			s, err := newSampler(DefaultOptions(), seams{allowOpen: own.allow})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()

			// Warm up until every map of ours has its fdinfo reading.
			var buf []MapSample
			for pending := n; pending > 0; {
				if buf, err = s.Sample(buf); err != nil {
					b.Fatal(err)
				}
				pending = 0
				for i := range buf {
					sm := &buf[i]
					if !own.ids[sm.ID] {
						continue
					}
					if sm.MemorySource != MemoryFdinfo {
						pending++
					}
					if !sm.EntriesKnown || sm.Entries != 4 {
						b.Fatalf("map %d: entries %d (known %v), want 4", sm.ID, sm.Entries, sm.EntriesKnown)
					}
				}
			}

			maps, passes := 0, 0
			start := time.Now()
			for b.Loop() {
				if buf, err = s.Sample(buf); err != nil {
					b.Fatal(err)
				}
				maps += len(buf)
				passes++
			}
			elapsed := time.Since(start)
			b.ReportMetric(float64(elapsed.Nanoseconds())/float64(maps), "ns/map")
			b.ReportMetric(float64(maps)/float64(passes), "maps/pass")
		})
	}
}

// BenchmarkIteratorPass measures the kernel's share of a pass: opening the
// iterator and reading every record, without decoding.
func BenchmarkIteratorPass(b *testing.B) {
	privileged.Require(b)
	requireKernel(b, "bpf_map_sum_elem_count kfunc", 6, 6)
	own := createBenchMaps(b, 10000)
	s, err := newSampler(Options{}, seams{allowOpen: own.allow})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	maps := 0
	start := time.Now()
	for b.Loop() {
		n, err := s.readPass()
		if err != nil {
			b.Fatal(err)
		}
		maps += n
	}
	b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(maps), "ns/map")
}

// BenchmarkMemlockRead measures what reading one map's memlock costs:
// opening it by id (BPF_MAP_GET_FD_BY_ID and BPF_OBJ_GET_INFO_BY_FD), one
// open/read/close of its fdinfo, and closing the fd.
func BenchmarkMemlockRead(b *testing.B) {
	privileged.Require(b)
	own := newOwnMaps(b)
	_, id := own.create(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 16})
	var fr fdinfoReader
	for b.Loop() {
		m, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := fr.memlock(m.FD()); err != nil {
			b.Fatal(err)
		}
		m.Close()
	}
}

// BenchmarkUserspaceCount measures the fallback count of a 1,000-element
// hash map with batch lookups (kernels without the kfunc).
func BenchmarkUserspaceCount(b *testing.B) {
	privileged.Require(b)
	own := newOwnMaps(b)
	m, id := own.create(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 1024})
	putN(b, m, 1000)
	c := newUserCounter(2)
	sm := MapSample{ID: id, Type: MapTypeHash, KeySize: 4, ValueSize: 8, MaxEntries: 1024}
	for b.Loop() {
		n, err := c.count(m, &sm)
		if err != nil {
			b.Fatal(err)
		}
		if n != 1000 {
			b.Fatalf("counted %d, want 1000", n)
		}
	}
}
