//go:build ignore

/* iter/bpf_map program: the kernel calls dump_bpf_map once for every map in
 * its map IDR (kernel/bpf/map_iter.c) while user space read()s the iterator
 * fd; each call writes one fixed-size struct map_record to the seq_file.
 *
 * Built twice by bpf2go (internal/mappressure/gen.go):
 *   - as is, for kernels >= 6.6 that have the bpf_map_sum_elem_count kfunc;
 *   - with -DMAPITER_NO_KFUNC, for older kernels: loading a program that
 *     calls a kfunc the kernel lacks fails, so the fallback object never
 *     references it and user space counts hash maps itself.
 *
 * Every kernel struct other than struct bpf_map and the iterator context is
 * read through CO-RE with a bpf_core_type_exists/bpf_core_field_exists
 * guard: when a kernel lacks one of them the relocation resolves to 0, the
 * guarded branch is dead code, and the verifier drops it, so the rest of the
 * program still loads. */

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "mapiter.h"

/* bpf_seq_write and kfuncs are only offered to GPL-compatible programs. */
char LICENSE[] SEC("license") = "GPL";

/* Anchors that put the record and flag types into this object's BTF so that
 * bpf2go can generate their Go types (clang emits BTF for globals, not for
 * locals). The Go loader loads programs only, so the .bss section that holds
 * these two pointers never becomes a map. */
const struct map_record *unused_map_record __attribute__((unused));
const enum map_record_flag *unused_map_record_flag __attribute__((unused));

#ifndef MAPITER_NO_KFUNC
/* kernel/bpf/map_iter.c, Linux >= 6.6: sums the per-CPU map->elem_count
 * counters, or returns 0 when the map has none. */
extern s64 bpf_map_sum_elem_count(const struct bpf_map *map) __ksym;
#endif

/* Ring buffer and user ring buffer maps are a struct bpf_ringbuf_map whose
 * first member is the struct bpf_map (kernel/bpf/ringbuf.c). The producer
 * and consumer positions are free-running byte counters; their difference is
 * the number of bytes reserved or committed and not yet consumed, headers
 * (BPF_RINGBUF_HDR_SZ, 8 bytes per record) and round-up padding included.
 * The data area is mask + 1 bytes. */
static __always_inline void read_ringbuf(struct bpf_map *map, struct map_record *rec)
{
	if (!bpf_core_type_exists(struct bpf_ringbuf_map) ||
	    !bpf_core_type_exists(struct bpf_ringbuf))
		return;

	struct bpf_ringbuf_map *rbm = container_of(map, struct bpf_ringbuf_map, map);
	struct bpf_ringbuf *rb = BPF_CORE_READ(rbm, rb);
	if (!rb)
		return;

	/* The consumer position is read before the producer position: the
	 * producer only moves forward, so producer >= consumer holds for the
	 * two values even though they are read without the ring's lock. */
	__u64 cons = BPF_CORE_READ(rb, consumer_pos);
	__u64 prod = BPF_CORE_READ(rb, producer_pos);
	__u64 mask = BPF_CORE_READ(rb, mask);

	rec->ringbuf_size = mask + 1;
	rec->ringbuf_used = prod > cons ? prod - cons : 0;
	if (rec->ringbuf_used > rec->ringbuf_size)
		rec->ringbuf_used = rec->ringbuf_size;
	rec->valid |= MAP_RECORD_RINGBUF_VALID;
}

/* Counters that map types other than the hash family keep in their own
 * structs. The hash family's elem_count is read through the kfunc instead;
 * these types never allocate map->elem_count (only kernel/bpf/hashtab.c
 * calls bpf_map_init_elem_count), so the kfunc returns 0 for them. */
static __always_inline void read_own_counter(struct bpf_map *map, __u32 type,
					     struct map_record *rec)
{
	switch (type) {
	case BPF_MAP_TYPE_LPM_TRIE:
		/* kernel/bpf/lpm_trie.c: n_entries counts the nodes that hold a
		 * value (intermediate nodes excluded); an update returns
		 * -ENOSPC once it reaches max_entries. */
		if (bpf_core_type_exists(struct lpm_trie)) {
			struct lpm_trie *trie = container_of(map, struct lpm_trie, map);
			rec->elem_count = BPF_CORE_READ(trie, n_entries);
			rec->valid |= MAP_RECORD_COUNT_VALID;
		}
		break;
	case BPF_MAP_TYPE_QUEUE:
	case BPF_MAP_TYPE_STACK:
		/* kernel/bpf/queue_stack_maps.c: a circular buffer of size =
		 * max_entries + 1 slots; head is the next slot to write and tail
		 * the oldest element, so (head - tail) mod size elements are
		 * stored. */
		if (bpf_core_type_exists(struct bpf_queue_stack)) {
			struct bpf_queue_stack *qs = container_of(map, struct bpf_queue_stack, map);
			__u32 head = BPF_CORE_READ(qs, head);
			__u32 tail = BPF_CORE_READ(qs, tail);
			__u32 size = BPF_CORE_READ(qs, size);
			if (size && head < size && tail < size) {
				rec->elem_count = head >= tail ? head - tail : size - tail + head;
				rec->valid |= MAP_RECORD_COUNT_VALID;
			}
		}
		break;
	case BPF_MAP_TYPE_DEVMAP_HASH:
		/* kernel/bpf/devmap.c: items is incremented on insert and
		 * decremented on delete of a hashed devmap; an insert returns
		 * -E2BIG once it reaches max_entries. The array devmap does not
		 * maintain it. */
		if (bpf_core_type_exists(struct bpf_dtab)) {
			struct bpf_dtab *dtab = container_of(map, struct bpf_dtab, map);
			rec->elem_count = BPF_CORE_READ(dtab, items);
			rec->valid |= MAP_RECORD_COUNT_VALID;
		}
		break;
	case BPF_MAP_TYPE_SOCKHASH:
		/* net/core/sock_map.c: count is the atomic element counter of a
		 * sockhash; an insert returns -E2BIG once it reaches
		 * max_entries. */
		if (bpf_core_type_exists(struct bpf_shtab)) {
			struct bpf_shtab *htab = container_of(map, struct bpf_shtab, map);
			rec->elem_count = BPF_CORE_READ(htab, count.counter);
			rec->valid |= MAP_RECORD_COUNT_VALID;
		}
		break;
	}
}

SEC("iter/bpf_map")
int dump_bpf_map(struct bpf_iter__bpf_map *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct bpf_map *map = ctx->map;
	struct map_record rec = {};

	/* The iterator calls the program once more with map == NULL after the
	 * last map (bpf_map_seq_stop), to let it write a footer. */
	if (!map)
		return 0;

	rec.id = map->id;
	rec.type = map->map_type;
	rec.map_flags = map->map_flags;
	rec.key_size = map->key_size;
	rec.value_size = map->value_size;
	rec.max_entries = map->max_entries;
	/* map->name is NUL-padded by the kernel (bpf_obj_name_cpy). Loads
	 * through the BTF pointer the iterator hands over are JITed as direct
	 * loads guarded by an exception-table entry (BPF_PROBE_MEM), cheaper
	 * than a bpf_probe_read_kernel call per map. */
	__builtin_memcpy(rec.name, map->name, sizeof(rec.name));

#ifndef MAPITER_NO_KFUNC
	/* map->elem_count is allocated only by maps that maintain it, so a
	 * non-NULL pointer is what tells an exact count from "no counter"
	 * (for which the kfunc returns 0). */
	if (bpf_core_field_exists(map->elem_count) && map->elem_count) {
		rec.elem_count = bpf_map_sum_elem_count(map);
		rec.valid |= MAP_RECORD_COUNT_VALID;
	}
#endif

	switch (rec.type) {
	case BPF_MAP_TYPE_RINGBUF:
	case BPF_MAP_TYPE_USER_RINGBUF:
		read_ringbuf(map, &rec);
		break;
	default:
		if (!(rec.valid & MAP_RECORD_COUNT_VALID))
			read_own_counter(map, rec.type, &rec);
		break;
	}

	bpf_seq_write(seq, &rec, sizeof(rec));
	return 0;
}
