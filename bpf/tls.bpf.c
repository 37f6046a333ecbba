//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// tls.bpf.c: plaintext from OpenSSL (libssl 1.1 and 3.x). Uprobes on
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
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	// Only processes that hold tracked sockets (they passed the filters):
	// one lookup for every other process that shares the library.
	if (!bpf_map_lookup_elem(&tracked_procs, &tgid))
		return 0;
	struct tls_call c = {.ssl = (__u64)ssl, .buf = (__u64)buf, .len_ptr = (__u64)len_ptr, .dir = dir, .ex = ex};
	if (bpf_map_update_elem(&tls_calls, &pid_tgid, &c, BPF_ANY))
		count(CNT_DROP_ARGS_FULL, 1);
	return 0;
}

static __always_inline int tls_exit(long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_call *tc = bpf_map_lookup_elem(&tls_calls, &pid_tgid);
	if (!tc)
		return 0;
	struct tls_call c = *tc;
	bpf_map_delete_elem(&tls_calls, &pid_tgid);

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
	struct inflight io = {.ptr = c.buf, .fd = *fd};
	capture(&io, n, c.dir, c.dir == DIR_EGRESS ? SRC_SSL_WRITE : SRC_SSL_READ, DATA_FLAG_TLS, SLOT_UPROBE);
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
