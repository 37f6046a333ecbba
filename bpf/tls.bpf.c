//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// tls.bpf.c: plaintext from OpenSSL (libssl 1.1 and 3.x) and from Go's
// crypto/tls (at the end of the file). Uprobes on
// SSL_write/SSL_write_ex see the plaintext before encryption, uretprobes on
// SSL_read/SSL_read_ex see it after decryption. The socket is the one the
// call's own read/write syscall uses on the same thread (capture.bpf.c ties
// the SSL object to that fd and stops capturing its ciphertext). Records go
// into the capture object's ring buffer, on the socket's stream, with
// DATA_FLAG_TLS. The loader gives this object the capture object's maps.
// (BPF_KPROBE/BPF_KRETPROBE read arguments from pt_regs; they serve uprobes
// alike.)

#include "capture.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline int tls_enter(void *ssl, const void *buf, void *len_ptr, __u8 dir, __u8 ex)
{
	// Only processes that may hold tracked sockets (they passed the
	// filters): one bit test for every other process that shares the
	// library.
	if (!proc_maybe_tracked(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct task_ctx *t = this_task_ctx(true);
	if (!t) {
		count(CNT_DROP_ARGS_FULL, 1);
		return 0;
	}
	t->tls.buf = (__u64)buf;
	t->tls.len_ptr = (__u64)len_ptr;
	t->tls.dir = dir;
	t->tls.ex = ex;
	t->tls.ts = bpf_ktime_get_ns();
	t->tls.ssl = (__u64)ssl; // last: it says a call is in flight
	return 0;
}

static __always_inline int tls_exit(long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct task_ctx *t = this_task_ctx(false);
	if (!t || !t->tls.ssl)
		return 0;
	struct tls_call c = t->tls;
	t->tls.ssl = 0;

	long n = ret;
	if (c.ex) {
		// SSL_*_ex return 1 on success and the byte count through a pointer.
		if (ret != 1)
			return 0;
		__u64 v = 0;
		if (bpf_probe_read_user(&v, sizeof(v), (void *)c.len_ptr))
			return 0;
		n = (long)v;
	}
	if (n <= 0)
		return 0;

	struct ssl_key k = {.tgid = pid_tgid >> 32, .ssl = c.ssl};
	__s32 *fd = bpf_map_lookup_elem(&ssl_fds, &k);
	if (!fd) {
		// The SSL object never touched a tracked socket while we watched
		// (a socket of a process outside the filters, or a BIO pair).
		count(CNT_TLS_NO_FD, 1);
		return 0;
	}

	__u32 slot = SLOT_UPROBE;
	struct cap_state *s = bpf_map_lookup_elem(&cap_states, &slot);
	if (!s)
		return 0;
	// Uprobe programs can be preempted by another task's uprobe on this
	// CPU: the staging slot is taken, not shared.
	if (__sync_lock_test_and_set(&s->busy, 1)) {
		count(CNT_TLS_BUSY, 1);
		return 0;
	}
	// Stamped like the Go probes below: a write when it was called, a read
	// when it returned.
	struct inflight io = {.ptr = c.buf, .fd = *fd, .ts = c.dir == DIR_EGRESS ? c.ts : 0};
	capture(&io, n, c.dir, c.dir == DIR_EGRESS ? SRC_SSL_WRITE : SRC_SSL_READ, DATA_FLAG_TLS, SLOT_UPROBE, pid_tgid);
	s->busy = 0;
	return 0;
}

SEC("uprobe/SSL_write")
int BPF_KPROBE(ssl_write, void *ssl, const void *buf, int num)
{
	return tls_enter(ssl, buf, NULL, DIR_EGRESS, 0);
}

SEC("uretprobe/SSL_write")
int BPF_KRETPROBE(ssl_write_ret, int ret)
{
	return tls_exit(ret);
}

SEC("uprobe/SSL_write_ex")
int BPF_KPROBE(ssl_write_ex, void *ssl, const void *buf, __u64 num, __u64 *written)
{
	return tls_enter(ssl, buf, written, DIR_EGRESS, 1);
}

SEC("uretprobe/SSL_write_ex")
int BPF_KRETPROBE(ssl_write_ex_ret, int ret)
{
	return tls_exit(ret);
}

SEC("uprobe/SSL_read")
int BPF_KPROBE(ssl_read, void *ssl, void *buf, int num)
{
	return tls_enter(ssl, buf, NULL, DIR_INGRESS, 0);
}

SEC("uretprobe/SSL_read")
int BPF_KRETPROBE(ssl_read_ret, int ret)
{
	return tls_exit(ret);
}

SEC("uprobe/SSL_read_ex")
int BPF_KPROBE(ssl_read_ex, void *ssl, void *buf, __u64 num, __u64 *readbytes)
{
	return tls_enter(ssl, buf, readbytes, DIR_INGRESS, 1);
}

SEC("uretprobe/SSL_read_ex")
int BPF_KRETPROBE(ssl_read_ex_ret, int ret)
{
	return tls_exit(ret);
}

// ---------------------------------------------------------------------------
// Go crypto/tls. Uprobes on (*tls.Conn).Read and (*tls.Conn).Write, with the
// register ABI (Go >= 1.17, amd64): receiver in RAX, the []byte's pointer in
// RBX and length in RCX, n returned in RAX, the current goroutine (g) in R14.
// Uretprobes would rewrite the return address on a stack that the Go runtime
// may move, so the returns are probed at the function's RET instructions.
// Write is captured at entry. Its entry can run twice for one call: when the
// stack must grow (or the goroutine is asked to yield), the prologue calls
// morestack, which restarts the function. The entry records the call per
// goroutine until a RET is reached, and a second entry before that is the
// same call. Read saves the buffer at entry and captures the n bytes at RET.

// Where the fd is in a *tls.Conn of this process, and which itabs say its
// net.Conn is a socket (written by user space per process: the itab
// addresses are per binary and, for PIE, per process). Its presence also
// selects the process: every other process sharing the binary costs one
// lookup.
#define GO_CONN_ITABS 2
struct go_tls_proc {
	__u32 conn;  // crypto/tls.Conn.conn: net.Conn (itab, data)
	__u32 netfd; // net.conn.fd: *net.netFD (TCPConn and UnixConn embed net.conn)
	__u32 pfd;   // net.netFD.pfd: internal/poll.FD
	__u32 sysfd; // internal/poll.FD.Sysfd
	__u64 itabs[GO_CONN_ITABS]; // *net.TCPConn, *net.UnixConn as net.Conn; both 0: unknown
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); // tgid
	__type(value, struct go_tls_proc);
} go_tls_procs SEC(".maps");

struct go_call_key {
	__u32 tgid;
	__u32 dir;
	__u64 g; // runtime.g of the calling goroutine: stays while it moves between threads
};

struct go_call {
	__u64 buf;
	__s32 fd;
	__u32 _pad;
};

// A plain hash, not LRU: an LRU would evict the oldest calls first, which
// are the goroutines blocked in Read on idle connections, and lose their
// bytes without a count; a full table is counted (CNT_DROP_ARGS_FULL). A
// process that exits inside a call leaves its entries behind: user space
// deletes them when it sees the process gone.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct go_call_key);
	__type(value, struct go_call);
} go_tls_calls SEC(".maps");

// go_conn_fd follows c.conn to the socket's descriptor; -1 when the net.Conn
// is not a *net.TCPConn or *net.UnixConn (a wrapper, a pipe), whose layout
// is unknown.
static __always_inline int go_conn_fd(struct go_tls_proc *p, __u64 conn)
{
	struct {
		__u64 tab;
		__u64 data;
	} iface = {};
	if (bpf_probe_read_user(&iface, sizeof(iface), (void *)(conn + p->conn)))
		return -1;
	// Without itab symbols (a stripped executable) the type is not checked:
	// the fd must still be a tracked socket of this process.
	if ((p->itabs[0] || p->itabs[1]) && iface.tab != p->itabs[0] && iface.tab != p->itabs[1])
		return -1;
	__u64 netfd = 0;
	if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(iface.data + p->netfd)) || !netfd)
		return -1;
	__s64 fd = -1;
	if (bpf_probe_read_user(&fd, sizeof(fd), (void *)(netfd + p->pfd + p->sysfd)))
		return -1;
	if (fd < 0 || fd > 0x7fffffff)
		return -1;
	return (int)fd;
}

// go_tls_capture captures n bytes at buf on fd from a uprobe.
static __always_inline void go_tls_capture(__u64 buf, int fd, long n, __u32 dir)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 slot = SLOT_UPROBE;
	struct cap_state *s = bpf_map_lookup_elem(&cap_states, &slot);
	if (!s)
		return;
	if (__sync_lock_test_and_set(&s->busy, 1)) {
		count(CNT_TLS_BUSY, 1);
		return;
	}
	struct inflight io = {.ptr = buf, .fd = fd};
	capture(&io, n, dir, dir == DIR_EGRESS ? SRC_GO_TLS_WRITE : SRC_GO_TLS_READ, DATA_FLAG_TLS, SLOT_UPROBE, pid_tgid);
	s->busy = 0;
}

static __always_inline int go_tls_enter(struct pt_regs *ctx, __u32 dir)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	struct go_tls_proc *p = bpf_map_lookup_elem(&go_tls_procs, &tgid);
	if (!p)
		return 0;
	int fd = go_conn_fd(p, ctx->ax);
	if (fd < 0) {
		count(CNT_TLS_NO_FD, 1);
		return 0;
	}
	struct sock_key sk = {.tgid = tgid, .fd = fd};
	struct sock_info *si = bpf_map_lookup_elem(&sockets, &sk);
	if (!si)
		return 0; // not a tracked socket: outside the filters
	// From now on the socket's syscalls carry ciphertext: skip them.
	si->tls = 1;
	struct go_call_key k = {.tgid = tgid, .dir = dir, .g = ctx->r14};
	if (dir == DIR_EGRESS && bpf_map_lookup_elem(&go_tls_calls, &k))
		return 0; // the same call again, after morestack: captured already
	struct go_call c = {.buf = ctx->bx, .fd = fd};
	if (bpf_map_update_elem(&go_tls_calls, &k, &c, BPF_ANY)) {
		count(CNT_DROP_ARGS_FULL, 1);
		return 0;
	}
	// A write is captured here, before its bytes reach the socket: captured
	// at return, a write could reach user space after the peer's answer to
	// it, read by another goroutine while this one waited to run again.
	// tls.Conn.Write writes all of b or fails the connection.
	if (dir == DIR_EGRESS)
		go_tls_capture(ctx->bx, fd, (long)ctx->cx, dir);
	return 0;
}

static __always_inline int go_tls_return(struct pt_regs *ctx, __u32 dir)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct go_call_key k = {.tgid = pid_tgid >> 32, .dir = dir, .g = ctx->r14};
	struct go_call *gc = bpf_map_lookup_elem(&go_tls_calls, &k);
	if (!gc)
		return 0;
	struct go_call c = *gc;
	bpf_map_delete_elem(&go_tls_calls, &k);
	// A read's bytes exist only now; n is in RAX.
	if (dir == DIR_INGRESS && (long)ctx->ax > 0)
		go_tls_capture(c.buf, c.fd, (long)ctx->ax, dir);
	return 0;
}

// The entry and return programs of one function.
#define GO_TLS_PROBES(fn, dir)                                                 \
	SEC("uprobe/go_tls_" #fn)                                              \
	int go_tls_##fn(struct pt_regs *ctx) { return go_tls_enter(ctx, dir); } \
	SEC("uprobe/go_tls_" #fn "_ret")                                       \
	int go_tls_##fn##_ret(struct pt_regs *ctx) { return go_tls_return(ctx, dir); }

GO_TLS_PROBES(write, DIR_EGRESS)
GO_TLS_PROBES(read, DIR_INGRESS)
