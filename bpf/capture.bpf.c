//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// capture.bpf.c: socket tracking and payload capture on syscall tracepoints.
//
// Only syscall tracepoints are used: they are a stable ABI, and on the
// kernels we target kprobes/fentry may be forbidden. The hot path is a read or
// write in a process that holds no tracked socket: one bit test in proc_bits.
// In one that does, a descriptor that is not tracked costs a hash lookup in
// `sockets`. Sockets enter the table when connect(2) or accept(2)/accept4(2)
// of a process that passes the filters returns, or are found open at start.

#include "capture.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Forces the record types into BTF so bpf2go can generate Go types for them:
// they only travel through the ring buffer as bytes.
const struct data_event *unused_data_event __attribute__((unused));
const struct conn_event *unused_conn_event __attribute__((unused));
const struct conn_tuple *unused_conn_tuple __attribute__((unused));
const enum event_type *unused_event_type __attribute__((unused));
const enum counter *unused_counter __attribute__((unused));
const enum direction *unused_direction __attribute__((unused));
const enum conn_role *unused_conn_role __attribute__((unused));
const enum data_source *unused_data_source __attribute__((unused));

// Filter switches (filter_flags). A set bit means "this list is not empty";
// lists combine with AND, entries of one list with OR.
#define FILTER_PIDS 0x1
#define FILTER_PORTS 0x2
#define FILTER_COMMS 0x4
#define FILTER_CGROUPS 0x8

#define MAX_CGROUPS 16

// Load-time configuration (rewritten by the loader before the programs are
// verified, so the verifier prunes branches of filters that are off).
volatile const __u32 filter_flags = 0;
volatile const __u32 n_cgroups = 0;
// The receiver's own process is never captured (its exports would feed back).
volatile const __u32 self_tgid = 0;

// Kernel-assigned connection ids count up from 1; user space uses ids with
// the top bit set for sockets found open at start-up.
__u64 next_conn_id = 1;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); // tgid
	__type(value, __u8);
} filter_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16); // TCP port, host byte order
	__type(value, __u8);
} filter_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, char[COMM_LEN]);
	__type(value, __u8);
} filter_comms SEC(".maps");

// bpf_current_task_under_cgroup checks one slot of a cgroup array: it
// includes descendants, so a pod's cgroup covers its containers.
struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, MAX_CGROUPS);
	__type(key, __u32);
	__type(value, __u32);
} filter_cgroups SEC(".maps");

// ---------------------------------------------------------------------------
// Filters: applied when a socket would enter the table.

static __always_inline bool cgroup_match(void)
{
	for (__u32 i = 0; i < MAX_CGROUPS; i++) {
		if (i >= n_cgroups)
			break;
		if (bpf_current_task_under_cgroup(&filter_cgroups, i) == 1)
			return true;
	}
	return false;
}

static __always_inline bool process_passes(__u32 tgid)
{
	if (tgid == self_tgid)
		return false;
	if (filter_flags & FILTER_PIDS) {
		if (!bpf_map_lookup_elem(&filter_pids, &tgid))
			return false;
	}
	if (filter_flags & FILTER_COMMS) {
		char comm[COMM_LEN] = {};
		bpf_get_current_comm(comm, sizeof(comm));
		if (!bpf_map_lookup_elem(&filter_comms, comm))
			return false;
	}
	if (filter_flags & FILTER_CGROUPS) {
		if (!cgroup_match())
			return false;
	}
	return true;
}

static __always_inline bool ports_pass(const struct conn_tuple *t)
{
	if (!(filter_flags & FILTER_PORTS))
		return true;
	if (t->family == AF_UNIX)
		return false; // a port filter names TCP ports only
	__u16 p = t->sport;
	if (bpf_map_lookup_elem(&filter_ports, &p))
		return true;
	p = t->dport;
	return bpf_map_lookup_elem(&filter_ports, &p) != NULL;
}

static __always_inline void read_unix_path(struct sock *sk, __u8 role, char *dst)
{
	struct unix_sock *u = (struct unix_sock *)sk;
	struct unix_address *addr = BPF_CORE_READ(u, addr);
	if (!addr && role == ROLE_CLIENT) {
		// A connecting socket is usually unbound: the path is its peer's.
		struct unix_sock *peer = (struct unix_sock *)BPF_CORE_READ(u, peer);
		if (peer)
			addr = BPF_CORE_READ(peer, addr);
	}
	if (!addr)
		return;
	// unix_address.len counts sun_family (2 bytes) plus the path bytes; the
	// path is read only up to that length so no neighbouring heap bytes leak.
	int len = BPF_CORE_READ(addr, len) - 2;
	if (len <= 0)
		return;
	if (len > UNIX_PATH_CAP - 1)
		len = UNIX_PATH_CAP - 1;
	const char *src = (const char *)addr + bpf_core_field_offset(struct unix_address, name) + 2;
	bpf_probe_read_kernel(dst, len & (UNIX_PATH_CAP - 1), src);
	if (dst[0] == 0)
		dst[0] = '@'; // abstract namespace, shown as ss(8) does
}

static __always_inline bool read_tuple(struct sock *sk, struct conn_tuple *t)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	t->family = family;
	if (family == AF_UNIX)
		return true;
	if (family != AF_INET && family != AF_INET6)
		return false;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return false;
	t->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)t->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)t->daddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&t->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&t->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
	return true;
}

static __always_inline void announce(__u32 tgid, __u32 tid, int fd, const struct sock_info *info, struct sock *sk);

// conn_nonce computes conn_event.nonce (see event.h).
static __always_inline __u64 conn_nonce(struct sock *sk, __u16 family, __u8 role, __u64 inode)
{
	if (family == AF_UNIX) {
		// The client's socket inode: at connect(2) the server's end is an
		// embryo without a socket yet, while at accept(2) the peer of the
		// accepted socket is the client's, which has its file already.
		if (role == ROLE_CLIENT)
			return inode;
		struct sock *peer = BPF_CORE_READ((struct unix_sock *)sk, peer);
		if (!peer)
			return 0;
		return BPF_CORE_READ(peer, sk_socket, file, f_inode, i_ino);
	}
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	if (role == ROLE_CLIENT)
		// connect(2) returns before the first write: write_seq is ISN + 1
		// (the SYN took one sequence number).
		return BPF_CORE_READ(tp, write_seq);
	// rcv_nxt advanced by every payload byte received before accept(2).
	return (__u32)(BPF_CORE_READ(tp, rcv_nxt) - (__u32)BPF_CORE_READ(tp, bytes_received));
}

// track enters a just connected or accepted socket into the table and
// announces it to user space.
static __always_inline void track(int fd, __u8 role)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	if (!process_passes(tgid)) {
		count(CNT_FILTERED, 1);
		return;
	}
	struct file *f = fd_file(fd);
	if (!f)
		return;
	__u64 inode = 0;
	struct sock *sk = sock_of(f, &inode);
	if (!sk)
		return;
	struct sock_info info = {};
	if (!read_tuple(sk, &info.tuple))
		return;
	if (!ports_pass(&info.tuple)) {
		count(CNT_FILTERED, 1);
		return;
	}
	info.conn_id = __sync_fetch_and_add(&next_conn_id, 1);
	info.file = (__u64)f;
	info.inode = inode;
	info.role = role;
	info.nonce = conn_nonce(sk, info.tuple.family, role, inode);
	struct sock_key key = {.tgid = tgid, .fd = fd};
	if (bpf_map_update_elem(&sockets, &key, &info, BPF_ANY)) {
		count(CNT_DROP_SOCKTAB_FULL, 1);
		return;
	}
	proc_sockets(tgid, 1);
	proc_mark(tgid);
	count(CNT_CONN_OPENED, 1);
	announce(tgid, (__u32)pid_tgid, fd, &info, sk);
}

// announce tells user space that a socket entered the table.
static __always_inline void announce(__u32 tgid, __u32 tid, int fd, const struct sock_info *info, struct sock *sk)
{
	struct conn_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CNT_DROP_CONN_EVENT, 1);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e)); // reserved memory is not zeroed
	e->type = EVENT_CONN_OPEN;
	e->role = info->role;
	e->pid = tgid;
	e->tid = tid;
	e->fd = fd;
	e->conn_id = info->conn_id;
	e->ts_ns = bpf_ktime_get_ns();
	e->inode = info->inode;
	e->nonce = info->nonce;
	e->tuple = info->tuple;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	if (info->tuple.family == AF_UNIX && sk)
		read_unix_path(sk, info->role, e->unix_path);
	bpf_ringbuf_submit(e, rb_flags());
}

// ---------------------------------------------------------------------------
// Enter: remember the arguments of syscalls on tracked sockets.

// tls_socket handles a syscall on a tracked socket made from inside a TLS
// library call: the SSL object is tied to the fd, and the socket is marked
// as carrying TLS. It returns true when the syscall's bytes are ciphertext
// and must not be captured.
static __always_inline bool tls_socket(struct task_ctx *t, __u32 tgid, int fd, struct sock_info *si)
{
	if (t->tls.ssl) {
		struct ssl_key k = {.tgid = tgid, .ssl = t->tls.ssl};
		bpf_map_update_elem(&ssl_fds, &k, &fd, BPF_ANY);
		si->tls = 1;
		return true;
	}
	return si->tls;
}

// enter_socket is the start of every data syscall's enter program: the
// thread's state if fd is a tracked socket of this process whose bytes are
// to be captured, else NULL.
static __always_inline struct task_ctx *enter_socket(int fd)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	// The test that nearly every syscall on the host stops at.
	if (!proc_maybe_tracked(tgid))
		return NULL;
	struct sock_key key = {.tgid = tgid, .fd = fd};
	struct sock_info *si = bpf_map_lookup_elem(&sockets, &key);
	if (!si)
		return NULL;
	struct task_ctx *t = this_task_ctx(true);
	if (!t) {
		count(CNT_DROP_ARGS_FULL, 1);
		return NULL;
	}
	if (tls_socket(t, tgid, fd, si)) {
		t->io.source = 0;
		return NULL;
	}
	return t;
}

// enter_time is a record's timestamp taken at syscall entry, or 0 for "at
// exit". A write is stamped when it is called: on loopback the kernel hands
// the bytes to the peer and wakes its reader inside the write, so a read of
// them can return before the write does. Stamped at entry, a write always
// precedes its read, and a server's span lies within its client's. A read is
// stamped at exit, when its bytes exist. source is a constant at every call
// site, so the test compiles away.
static __always_inline __u64 enter_time(__u8 source)
{
	if (source == SRC_WRITE || source == SRC_WRITEV || source == SRC_SENDTO || source == SRC_SENDMSG)
		return bpf_ktime_get_ns();
	return 0;
}

static __always_inline void remember(int fd, __u64 ptr, __u32 iovcnt, __u8 source)
{
	struct task_ctx *t = enter_socket(fd);
	if (!t)
		return;
	t->io.ptr = ptr;
	t->io.fd = fd;
	t->io.iovcnt = iovcnt;
	t->io.ts = enter_time(source);
	t->io.source = source;
}

static __always_inline void remember_msg(int fd, __u64 umsg, __u8 source)
{
	struct task_ctx *t = enter_socket(fd);
	if (!t)
		return;
	struct user_msghdr m = {};
	t->io.source = 0;
	if (bpf_probe_read_user(&m, sizeof(m), (void *)umsg) || m.msg_iovlen == 0)
		return;
	t->io.ptr = (__u64)m.msg_iov;
	t->io.fd = fd;
	t->io.iovcnt = m.msg_iovlen;
	t->io.ts = enter_time(source);
	t->io.source = source;
}

// take_inflight returns, and clears, what the enter program of the same
// syscall (source) saved on this thread.
static __always_inline bool take_inflight(__u64 pid_tgid, __u32 source, struct inflight *out)
{
	if (!proc_maybe_tracked(pid_tgid >> 32))
		return false;
	struct task_ctx *t = this_task_ctx(false);
	if (!t || t->io.source != source)
		return false;
	*out = t->io;
	t->io.source = 0;
	return true;
}

static __always_inline void finish(long ret, __u8 dir, __u8 source)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct inflight io;
	if (take_inflight(pid_tgid, source, &io))
		capture(&io, ret, dir, source, 0, SLOT_SYSCALL, pid_tgid);
}

// Syscall tracepoint records: args[] of sys_enter_* and ret of sys_exit_*
// sit at the same offsets as in raw_syscalls' sys_enter/sys_exit.
#define ARG(ctx, i) ((ctx)->args[i])

// One enter/exit pair per data syscall; enter is the statement that saves
// its arguments: (fd, buf) of buffer syscalls, (fd, iov, iovcnt) of vector
// syscalls, (fd, msghdr) of msg syscalls.
#define DATA_SYSCALL(name, dir, source, enter)                           \
	SEC("tracepoint/syscalls/sys_enter_" #name)                       \
	int enter_##name(struct trace_event_raw_sys_enter *ctx)           \
	{                                                                 \
		enter(source);                                            \
		return 0;                                                 \
	}                                                                 \
	SEC("tracepoint/syscalls/sys_exit_" #name)                        \
	int exit_##name(struct trace_event_raw_sys_exit *ctx)             \
	{                                                                 \
		finish(ctx->ret, dir, source);                            \
		return 0;                                                 \
	}

#define BUF_ENTER(source) remember(ARG(ctx, 0), ARG(ctx, 1), 0, source)
#define IOV_ENTER(source) remember(ARG(ctx, 0), ARG(ctx, 1), ARG(ctx, 2), source)
#define MSG_ENTER(source) remember_msg(ARG(ctx, 0), ARG(ctx, 1), source)

DATA_SYSCALL(read, DIR_INGRESS, SRC_READ, BUF_ENTER)
DATA_SYSCALL(write, DIR_EGRESS, SRC_WRITE, BUF_ENTER)
DATA_SYSCALL(readv, DIR_INGRESS, SRC_READV, IOV_ENTER)
DATA_SYSCALL(writev, DIR_EGRESS, SRC_WRITEV, IOV_ENTER)
// recvfrom/sendto on a connected stream socket: the address is unused.
DATA_SYSCALL(recvfrom, DIR_INGRESS, SRC_RECVFROM, BUF_ENTER)
DATA_SYSCALL(sendto, DIR_EGRESS, SRC_SENDTO, BUF_ENTER)
DATA_SYSCALL(recvmsg, DIR_INGRESS, SRC_RECVMSG, MSG_ENTER)
DATA_SYSCALL(sendmsg, DIR_EGRESS, SRC_SENDMSG, MSG_ENTER)

// ---------------------------------------------------------------------------
// Connection lifecycle.

SEC("tracepoint/syscalls/sys_enter_connect")
int enter_connect(struct trace_event_raw_sys_enter *ctx)
{
	// Filtered here already, so that a thread of a process outside the
	// filters gets no task storage; track() checks the port filter, which
	// needs the connected tuple.
	if (!process_passes(bpf_get_current_pid_tgid() >> 32)) {
		count(CNT_FILTERED, 1);
		return 0;
	}
	struct task_ctx *t = this_task_ctx(true);
	if (!t) {
		count(CNT_DROP_ARGS_FULL, 1);
		return 0;
	}
	t->io.fd = ARG(ctx, 0);
	t->io.source = SRC_CONNECT;
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	struct task_ctx *t = this_task_ctx(false);
	if (!t || t->io.source != SRC_CONNECT)
		return 0;
	int fd = t->io.fd;
	t->io.source = 0;
	// A non-blocking connect returns EINPROGRESS with the tuple already
	// chosen (the local port is bound before the SYN is sent).
	if (ctx->ret == 0 || ctx->ret == -EINPROGRESS)
		track(fd, ROLE_CLIENT);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret >= 0)
		track(ctx->ret, ROLE_SERVER);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int exit_accept4(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret >= 0)
		track(ctx->ret, ROLE_SERVER);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int enter_close(struct trace_event_raw_sys_enter *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!proc_maybe_tracked(pid_tgid >> 32))
		return 0;
	int fd = ARG(ctx, 0);
	struct sock_key key = {.tgid = pid_tgid >> 32, .fd = fd};
	struct sock_info *si = bpf_map_lookup_elem(&sockets, &key);
	if (!si)
		return 0;
	struct conn_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (e) {
		__builtin_memset(e, 0, sizeof(*e));
		e->type = EVENT_CONN_CLOSE;
		e->role = si->role;
		e->pid = key.tgid;
		e->tid = (__u32)pid_tgid;
		e->fd = fd;
		e->conn_id = si->conn_id;
		e->ts_ns = bpf_ktime_get_ns();
		e->seq_egress = si->seq_egress;
		e->seq_ingress = si->seq_ingress;
		e->inode = si->inode;
		e->tuple = si->tuple;
		bpf_ringbuf_submit(e, rb_flags());
	} else {
		count(CNT_DROP_CONN_EVENT, 1);
	}
	if (!bpf_map_delete_elem(&sockets, &key))
		proc_sockets(key.tgid, -1);
	return 0;
}

// ---------------------------------------------------------------------------
// Fork: a child gets copies of its parent's file descriptors. A pre-fork
// server (PostgreSQL's postmaster, many others) accepts a connection and
// hands it to a child that does all the talking, so the child's copies of
// tracked sockets are entered under the child's pid, as new connections
// that start with the child (the parent's copy usually closes at once).

struct fork_walk {
	__u64 fds; // the child's fd array
	__u32 parent;
	__u32 child;
	__u32 tid;
};

static long inherit_fd(__u64 index, void *ctx)
{
	struct fork_walk *w = ctx;
	struct sock_key pk = {.tgid = w->parent, .fd = (int)index};
	struct sock_info *si = bpf_map_lookup_elem(&sockets, &pk);
	if (!si)
		return 0;
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), (void *)(w->fds + index * sizeof(f)));
	if (!f || (si->file && si->file != (__u64)f))
		return 0;
	struct sock_info copy = *si;
	copy.conn_id = __sync_fetch_and_add(&next_conn_id, 1);
	copy.file = (__u64)f;
	copy.seq_egress = 0;
	copy.seq_ingress = 0;
	struct sock_key ck = {.tgid = w->child, .fd = (int)index};
	if (bpf_map_update_elem(&sockets, &ck, &copy, BPF_NOEXIST)) {
		count(CNT_DROP_SOCKTAB_FULL, 1);
		return 0;
	}
	proc_sockets(w->child, 1);
	proc_mark(w->child);
	count(CNT_INHERITED, 1);
	__u64 inode = 0;
	announce(w->child, w->tid, (int)index, &copy, sock_of(f, &inode));
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = parent->tgid, ctgid = child->tgid;
	if (ptgid == ctgid || !proc_maybe_tracked(ptgid))
		return 0; // a new thread shares its process's descriptors
	__u32 *n = bpf_map_lookup_elem(&tracked_procs, &ptgid);
	if (!n || *n == 0)
		return 0; // the common case: one lookup per fork
	struct fdtable *fdt = BPF_CORE_READ(child, files, fdt);
	if (!fdt)
		return 0;
	__u32 max = BPF_CORE_READ(fdt, max_fds);
	if (max > MAX_FORK_FDS)
		max = MAX_FORK_FDS;
	struct fork_walk w = {.fds = (__u64)BPF_CORE_READ(fdt, fd), .parent = ptgid, .child = ctgid, .tid = child->pid};
	bpf_loop(max, inherit_fd, &w, 0);
	return 0;
}
