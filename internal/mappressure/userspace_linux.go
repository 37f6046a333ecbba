package mappressure

import (
	"errors"
	"reflect"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// userCounter counts the elements of hash maps from user space with
// BPF_MAP_LOOKUP_BATCH (Linux >= 5.6), for kernels without the
// bpf_map_sum_elem_count kfunc. It walks the map bucket by bucket, so a
// concurrent writer can make the count off by the elements that moved
// during the walk; the kfunc count has no such error.
type userCounter struct {
	nCPU int
	bufs map[batchShape]*batchBufs
}

type batchShape struct {
	keySize, valueSize uint32
	perCPU             bool
}

// batchBufs are slices of [keySize]byte and [valueSize]byte elements: the
// batch API needs slices whose element count is the batch size.
type batchBufs struct {
	batch  int
	keys   any
	values any
}

// batchStart is the first batch size; the kernel returns ENOSPC when one
// hash bucket holds more elements than the batch, and the batch doubles.
const (
	batchStart = 256
	batchMax   = 1 << 16
)

func newUserCounter(nCPU int) *userCounter {
	return &userCounter{nCPU: nCPU, bufs: make(map[batchShape]*batchBufs)}
}

func (c *userCounter) buffers(shape batchShape, batch int) *batchBufs {
	b := c.bufs[shape]
	if b != nil && b.batch >= batch {
		return b
	}
	keyType := reflect.ArrayOf(int(shape.keySize), reflect.TypeFor[byte]())
	valueType := reflect.ArrayOf(int(shape.valueSize), reflect.TypeFor[byte]())
	values := batch
	if shape.perCPU {
		// Per-CPU batch lookups return one value per possible CPU for
		// every key.
		values = batch * c.nCPU
	}
	b = &batchBufs{
		batch:  batch,
		keys:   reflect.MakeSlice(reflect.SliceOf(keyType), batch, batch).Interface(),
		values: reflect.MakeSlice(reflect.SliceOf(valueType), values, values).Interface(),
	}
	c.bufs[shape] = b
	return b
}

// count returns the number of elements in m.
func (c *userCounter) count(m *ebpf.Map, sm *MapSample) (uint64, error) {
	shape := batchShape{sm.KeySize, sm.ValueSize, sm.Type.isPerCPU()}
	batch := batchStart
	for {
		b := c.buffers(shape, batch)
		var cursor ebpf.MapBatchCursor
		var total uint64
		for {
			n, err := m.BatchLookup(&cursor, b.keys, b.values, nil)
			total += uint64(n)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return total, nil
			}
			if errors.Is(err, unix.ENOSPC) && batch < batchMax {
				// A bucket is larger than the batch: start over with a
				// larger one (the cursor did not move past that bucket).
				break
			}
			if err != nil {
				return 0, err
			}
		}
		batch *= 2
	}
}

// countFromUserspace fills Entries for the hash maps that user-space
// counting covers, and reads memlock from the same fd when it is due.
func (s *Sampler) countFromUserspace(dst []MapSample, now time.Time) {
	for i := range dst {
		sm := &dst[i]
		switch sm.Type {
		case MapTypeHash, MapTypeLRUHash, MapTypePerCPUHash, MapTypeLRUPerCPUHash:
		default:
			continue
		}
		if sm.EntriesKnown || sm.MaxEntries > s.opts.UserspaceCountMaxEntries {
			continue
		}
		if s.allowOpen != nil && !s.allowOpen(sm.ID) {
			continue
		}
		m, err := ebpf.NewMapFromID(ebpf.MapID(sm.ID))
		if err != nil {
			continue
		}
		n, err := s.count.count(m, sm)
		if err == nil {
			sm.Entries, sm.EntriesKnown = n, true
			if sm.MaxEntries > 0 {
				sm.Utilization, sm.UtilizationKnown = float64(n)/float64(sm.MaxEntries), true
			}
		}
		if st := &s.states[i]; s.memlockDue(st, sm, now) {
			s.readMemlock(m, st, now)
		}
		m.Close()
	}
}
