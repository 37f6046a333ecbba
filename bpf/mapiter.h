/* The kernel/user contract of the iter/bpf_map program in mapiter.bpf.c.
 * Go gets these types from bpf2go (-type map_record -type map_record_flag);
 * nothing here is copied by hand into Go. */
#ifndef EBPFRECEIVER_MAPITER_H
#define EBPFRECEIVER_MAPITER_H

/* BPF_OBJ_NAME_LEN in include/uapi/linux/bpf.h: map names are at most 15
 * bytes plus a terminating NUL; the kernel rejects longer ones. */
#define MAPITER_NAME_LEN 16

/* Which optional fields of a map_record hold a value. A field whose bit is
 * clear was not read and must not be reported. */
enum map_record_flag {
	/* elem_count holds the number of elements the kernel counts for the map. */
	MAP_RECORD_COUNT_VALID = 1,
	/* ringbuf_used and ringbuf_size hold the ring buffer fill level. */
	MAP_RECORD_RINGBUF_VALID = 2,
};

/* One record per map, written with bpf_seq_write. The size is a multiple of
 * 8 and there are no implicit holes, so the layout is the same in C and Go
 * and records can be decoded in place from a read buffer. */
struct map_record {
	__u32 id;
	__u32 type;           /* enum bpf_map_type */
	__u32 map_flags;      /* BPF_F_* flags given at creation */
	__u32 key_size;
	__u32 value_size;
	__u32 max_entries;
	__u32 valid;          /* bit set of enum map_record_flag */
	__u32 _pad;
	__s64 elem_count;     /* valid with MAP_RECORD_COUNT_VALID */
	__u64 ringbuf_used;   /* producer_pos - consumer_pos, bytes */
	__u64 ringbuf_size;   /* data area size (mask + 1), bytes */
	char name[MAPITER_NAME_LEN];
};

#endif
