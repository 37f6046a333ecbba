// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// capture.h: what the socket capture (capture.bpf.c) and the TLS capture
// (tls.bpf.c) share: the maps both write (each object declares them; the
// loader hands the TLS object the capture object's maps), socket lookup,
// and payload capture into ring-buffer records.

#ifndef EBPFRECV_CAPTURE_H
#define EBPFRECV_CAPTURE_H

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "event.h"


#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define EINPROGRESS 115

// Load-time configuration (rewritten by the loader before the programs are
// verified). Each object has its own copy; the loader sets both alike.
// Bytes captured per syscall at most; larger syscalls are captured head and
// tail, capture_tail bytes of the tail.
volatile const __u32 capture_cap = 16384;
volatile const __u32 capture_tail = 4096;
// Bytes waiting in the ring buffer that make a submit wake the reader
// (limits.ring_buffer_wakeup_bytes); 0: never.
volatile const __u64 wake_bytes = 0;
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24); // resized by the loader (limits.ring_buffer_bytes)
} events SEC(".maps");

// A plain hash, not LRU: an LRU would silently evict live connections, and a
// full table must be counted (CNT_DROP_SOCKTAB_FULL) instead.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); // resized by the loader (limits.max_connections)
	__type(key, struct sock_key);
	__type(value, struct sock_info);
} sockets SEC(".maps");

// Tracked sockets per process, so that a fork can tell cheaply whether
// the parent holds any (pre-fork servers such as PostgreSQL accept in the
// parent and serve in a child).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); // resized with `sockets`
	__type(key, __u32);         // tgid
	__type(value, __u32);       // tracked sockets
} tracked_procs SEC(".maps");

static __always_inline void proc_sockets(__u32 tgid, int delta)
{
	__u32 *n = bpf_map_lookup_elem(&tracked_procs, &tgid);
	if (n) {
		if (delta < 0 && *n == 0)
			return;
		__sync_fetch_and_add(n, delta);
		return;
	}
	if (delta > 0) {
		__u32 one = 1;
		bpf_map_update_elem(&tracked_procs, &tgid, &one, BPF_NOEXIST);
	}
}

// One bit per tgid: set when a process may hold a tracked socket. It is the
// first test of every data syscall on the host, so that the processes that
// hold none (nearly all of them) return before any hash lookup: an array
// lookup is inlined by the verifier into a bounds check and an add, a hash
// lookup is a helper call that hashes the key and walks a bucket. The bit
// is never cleared by the kernel (a set bit only sends the syscall on to
// the socket table, which decides); user space clears the bits of processes
// that have exited. The array is mmapable so that user space can set and
// clear bits with atomic operations on the words the kernel also updates.
// Sized by the loader to cover kernel.pid_max; a tgid past its end (pid_max
// raised later) finds no word and takes the socket-table path.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 65536); // words of 64 tgids; resized by the loader
	__type(key, __u32);
	__type(value, __u64);
} proc_bits SEC(".maps");

static __always_inline bool proc_maybe_tracked(__u32 tgid)
{
	__u32 w = tgid / 64;
	__u64 *bits = bpf_map_lookup_elem(&proc_bits, &w);
	if (!bits)
		return true;
	return (*bits >> (tgid & 63)) & 1;
}

static __always_inline void proc_mark(__u32 tgid)
{
	__u32 w = tgid / 64;
	__u64 *bits = bpf_map_lookup_elem(&proc_bits, &w);
	__u64 bit = 1ULL << (tgid & 63);
	// Read first: the word is shared by 64 processes and read on every
	// syscall, so it is written (an atomic, exclusive cache line) only when
	// the bit is not set yet.
	if (bits && !(*bits & bit))
		__sync_fetch_and_or(bits, bit);
}

// Syscall arguments saved at enter for the exit tracepoint of the same
// thread: the payload of a read only exists at exit, and a write is captured
// at exit too so that only the bytes the kernel accepted are recorded.
struct inflight {
	__u64 ptr; // buffer, iovec array or sockaddr
	__s32 fd;
	__u32 iovcnt; // 0 for a plain buffer
	__u64 ts;     // when the bytes were handed over; 0: now
	// The enum data_source (or SRC_CONNECT) of the syscall whose enter
	// saved them; 0: nothing in flight. An exit takes them only if it is
	// the same syscall, so arguments left behind by an enter whose exit
	// never ran (the programs were attached in between, or the kernel
	// skipped the exit program) are never taken for another syscall's.
	__u32 source;
	__u32 _pad;
};

// Source of an inflight saved by connect(2)'s enter.
#define SRC_CONNECT 0xff
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT__MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// Per-CPU staging area for data records: bpf_ringbuf_output copies exactly
// the captured length, so small messages use small ring-buffer space.
// Syscall tracepoint programs run with preemption off and do not nest on one
// CPU (bpf_prog_active): they own SLOT_SYSCALL. Uprobe programs may be
// preempted (they run with only migration disabled), so they use
// SLOT_UPROBE, guarded by cap_state.busy.
#define SLOT_SYSCALL 0
#define SLOT_UPROBE 1
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2); // SLOT_SYSCALL, SLOT_UPROBE
	__type(key, __u32);
	__type(value, struct data_event);
} scratch SEC(".maps");

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += n; // per-CPU slot: no other writer
}

// Records are submitted without waking the reader: it drains the ring
// buffer on a timer (internal/capture Run). A wakeup is an irq_work raised
// with a self-IPI (on a VM an APIC write that exits to the hypervisor) and
// a remote wakeup of the reader, microseconds per record; and a reader
// blocked in epoll_wait holds an OS thread in a syscall, which the Go
// runtime answers by handing its P to another thread and polling harder
// (sysmon): measured, both cost more than the capture itself.
// But a burst can fill the ring buffer between two timer ticks (a 1 MiB
// gRPC exchange on loopback puts 4 MiB in it within milliseconds, captured
// at both ends), so once wake_bytes wait, the submit wakes the reader: only
// while a burst outruns the timer. BPF_RB_AVAIL_DATA is the producer
// position minus the consumer's, two loads.
static __always_inline __u64 rb_flags(void)
{
	if (wake_bytes && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wake_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

// ---------------------------------------------------------------------------
// fd -> struct file -> struct sock

static __always_inline struct file *fd_file(int fd)
{
	// The current task as a BTF pointer: its fields are read with direct,
	// fault-safe loads that the JIT inlines, rather than with a helper call
	// per field (bpf_probe_read_kernel). Only fdt->fd[fd], an element of a
	// pointer array that BTF does not type, needs the helper.
	struct task_struct *task = bpf_get_current_task_btf();
	struct files_struct *files = task->files;
	if (!files || fd < 0)
		return NULL;
	struct fdtable *fdt = files->fdt;
	if (!fdt || (unsigned int)fd >= fdt->max_fds)
		return NULL;
	struct file **fds = fdt->fd;
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

// sock_of returns the struct sock behind a socket file, or NULL.
static __always_inline struct sock *sock_of(struct file *f, __u64 *inode)
{
	struct inode *ino = BPF_CORE_READ(f, f_inode);
	if ((BPF_CORE_READ(ino, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	*inode = BPF_CORE_READ(ino, i_ino);
	struct socket *sock = BPF_CORE_READ(f, private_data);
	if (!sock || BPF_CORE_READ(sock, type) != SOCK_STREAM)
		return NULL;
	return BPF_CORE_READ(sock, sk);
}

// lookup_socket returns the table entry for (tgid, fd) if that fd still is
// the socket that was entered. An fd can be reused without close(2) being
// seen (dup2 onto it, close-on-exec, close_range), so the struct file is
// compared; entries written by user space are verified by inode once.
static __always_inline struct sock_info *lookup_socket(__u32 tgid, int fd)
{
	struct sock_key key = {.tgid = tgid, .fd = fd};
	struct sock_info *si = bpf_map_lookup_elem(&sockets, &key);
	if (!si)
		return NULL;
	struct file *f = fd_file(fd);
	if (si->file == (__u64)f && f)
		return si;
	if (si->file == 0 && f) {
		__u64 inode = 0;
		if (sock_of(f, &inode) && inode == si->inode) {
			si->file = (__u64)f;
			return si;
		}
	}
	count(CNT_STALE_FD, 1);
	if (!bpf_map_delete_elem(&sockets, &key))
		proc_sockets(tgid, -1);
	return NULL;
}

// ---------------------------------------------------------------------------
// Payload capture: one bpf_loop iteration per record.

struct cap_state {
	__u64 seg_base; // user address of the current segment
	__u64 seg_rem;  // bytes left in the current segment
	__u64 iov;      // user address of the iovec array; 0 for a plain buffer
	__u32 iov_idx;
	__u32 iovcnt;
	__u32 pos;      // bytes of the syscall walked so far
	__u32 total;    // bytes the syscall moved
	__u32 skip_at;  // end of the captured head
	__u32 skip_to;  // start of the captured tail
	__u64 seq;      // stream offset of byte 0 of the syscall
	__u32 slot;     // its own index in cap_states and scratch
	__u32 busy;     // SLOT_UPROBE: a capture is under way on this CPU
};

// The walk state lives in a per-CPU map value rather than on the stack: the
// verifier does not track map memory, so it proves the callback once instead
// of once per distinct (pos, seg_rem, ...) state of every iteration.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2); // SLOT_SYSCALL, SLOT_UPROBE
	__type(key, __u32);
	__type(value, struct cap_state);
} cap_states SEC(".maps");

// emit submits the staged record e with n bytes of payload.
static __always_inline void emit(struct data_event *e, __u32 n)
{
	e->cap_len = n;
	if (bpf_ringbuf_output(&events, e, offsetof(struct data_event, payload) + n, rb_flags())) {
		count(CNT_DROP_RINGBUF, 1);
		count(CNT_DROP_RINGBUF_BYTES, n);
	} else {
		count(CNT_RECORDS, 1);
		count(CNT_BYTES, n);
	}
}

static long capture_step(__u64 index, void *ctx)
{
	__u32 slot = *(__u32 *)ctx;
	struct cap_state *s = bpf_map_lookup_elem(&cap_states, &slot);
	if (!s)
		return 1;
	if (s->pos >= s->total)
		return 1;

	// Between head and tail: walk the segments without copying.
	if (s->pos == s->skip_at && s->skip_to > s->skip_at) {
		__u64 need = s->skip_to - s->pos;
		if (s->seg_rem > need) {
			s->seg_base += need;
			s->seg_rem -= need;
			s->pos = s->skip_to;
		} else {
			s->pos += s->seg_rem;
			s->skip_at = s->pos; // keep skipping from the next segment
			s->seg_rem = 0;
		}
		return 0;
	}

	if (s->seg_rem == 0) {
		if (!s->iov || s->iov_idx >= s->iovcnt || s->iov_idx >= MAX_IOV)
			return 1;
		struct iovec v = {};
		if (bpf_probe_read_user(&v, sizeof(v), (void *)(s->iov + (__u64)s->iov_idx * sizeof(v))))
			return 1;
		s->iov_idx++;
		s->seg_base = (__u64)v.iov_base;
		s->seg_rem = v.iov_len;
		return 0;
	}

	struct data_event *e = bpf_map_lookup_elem(&scratch, &slot);
	if (!e)
		return 1;

	__u64 limit = s->pos < s->skip_at ? s->skip_at : s->total;
	__u64 n = limit - s->pos;
	if (n > s->seg_rem)
		n = s->seg_rem;
	if (n > DATA_CHUNK)
		n = DATA_CHUNK;
	if (bpf_probe_read_user(e->payload, n, (void *)s->seg_base))
		return 1;

	e->offset = s->pos;
	e->seq = s->seq + s->pos;
	s->pos += n;
	s->seg_base += n;
	s->seg_rem -= n;
	if (s->pos >= s->total)
		e->flags |= DATA_FLAG_LAST;
	emit(e, n);
	return 0;
}

// The most records one syscall can produce: head and tail chunks, one step
// per iovec entry, one skip step.
#define CAPTURE_STEPS (MAX_CAPTURE_BYTES / DATA_CHUNK + MAX_IOV + 4)

// capture emits the bytes a syscall (or a TLS call) moved as data records.
// slot picks the per-CPU staging area (SLOT_SYSCALL or SLOT_UPROBE); flags
// are added to every record (DATA_FLAG_TLS).
static __always_inline void capture(struct inflight *io, long ret, __u8 dir, __u8 source, __u8 flags, __u32 slot,
				    __u64 pid_tgid)
{
	if (ret <= 0)
		return;
	__u32 tgid = pid_tgid >> 32;
	struct sock_info *si = lookup_socket(tgid, io->fd);
	if (!si)
		return;

	__u32 total = ret > 0x7fffffff ? 0x7fffffff : (__u32)ret;
	// Reserve this syscall's byte range of the stream; concurrent writers of
	// one socket get disjoint ranges.
	__u64 seq = __sync_fetch_and_add(dir == DIR_EGRESS ? &si->seq_egress : &si->seq_ingress, (__u64)total);

	struct data_event *e = bpf_map_lookup_elem(&scratch, &slot);
	if (!e)
		return;
	e->type = EVENT_DATA;
	e->direction = dir;
	e->flags = flags;
	e->source = source;
	e->pid = tgid;
	e->tid = (__u32)pid_tgid;
	e->fd = io->fd;
	e->conn_id = si->conn_id;
	e->ts_ns = io->ts ? io->ts : bpf_ktime_get_ns();
	e->total_len = total;
	e->tuple = si->tuple;

	__u32 cap = capture_cap;
	if (cap > MAX_CAPTURE_BYTES)
		cap = MAX_CAPTURE_BYTES;
	// The common case, one buffer that fits one record uncut: copied and
	// submitted here, without the bpf_loop walk and its per-step map
	// lookups.
	if (!io->iovcnt && total <= DATA_CHUNK && total <= cap) {
		if (bpf_probe_read_user(e->payload, total & (DATA_CHUNK * 2 - 1), (void *)io->ptr))
			return;
		e->offset = 0;
		e->seq = seq;
		e->flags |= DATA_FLAG_LAST;
		emit(e, total);
		return;
	}

	struct cap_state *s = bpf_map_lookup_elem(&cap_states, &slot);
	if (!s)
		return;
	s->slot = slot;
	s->iov = io->iovcnt ? io->ptr : 0;
	s->iovcnt = io->iovcnt;
	s->iov_idx = 0;
	s->seg_base = io->iovcnt ? 0 : io->ptr;
	s->seg_rem = io->iovcnt ? 0 : total;
	s->pos = 0;
	s->total = total;
	s->skip_at = total;
	s->skip_to = total;
	s->seq = seq;
	if (total > cap) {
		__u32 tail = capture_tail < cap ? capture_tail : cap;
		s->skip_at = cap - tail;
		s->skip_to = total - tail;
		e->flags |= DATA_FLAG_TRUNCATED;
		count(CNT_TRUNCATED, 1);
		count(CNT_TRUNCATED_BYTES, total - cap);
	}
	bpf_loop(CAPTURE_STEPS, capture_step, &slot, 0);
}

// ---------------------------------------------------------------------------
// TLS: calls into a TLS library in flight, and which socket an SSL object
// writes to (learned from the socket syscall it makes on the same thread).

struct tls_call {
	__u64 ssl;     // the SSL object
	__u64 buf;     // plaintext buffer
	__u64 len_ptr; // SSL_*_ex: size_t *written / *readbytes
	__u64 ts;      // entry: a write's bytes are handed over then
	__u8 dir;
	__u8 ex;
	__u8 _pad[6];
};

// What the capture keeps per thread, in task local storage: the syscall and
// the TLS library call in flight on it. Task storage rather than a hash
// keyed by pid_tgid: its lookup follows the task's own pointer to its
// storage (no hashing, no bucket lock), an element is made once per thread
// (not inserted and deleted on every syscall), and the kernel frees it when
// the thread exits, so the state is bounded by the host's threads.
struct task_ctx {
	struct inflight io;  // syscall in flight: io.source != 0
	struct tls_call tls; // TLS library call in flight: tls.ssl != 0
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC); // required of local storage maps
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctxs SEC(".maps");

// this_task_ctx returns the current thread's state, made on first use when
// create is set; NULL when it has none (or it cannot be allocated).
static __always_inline struct task_ctx *this_task_ctx(bool create)
{
	return bpf_task_storage_get(&task_ctxs, bpf_get_current_task_btf(), 0,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

struct ssl_key {
	__u32 tgid;
	__u32 _pad;
	__u64 ssl;
};

// LRU: SSL objects are freed without a trace; a forgotten one is learned
// again from its next socket syscall.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ssl_key);
	__type(value, __s32); // fd
} ssl_fds SEC(".maps");

#endif // EBPFRECV_CAPTURE_H
