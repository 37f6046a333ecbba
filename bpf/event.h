// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// event.h is THE contract between the kernel programs in bpf/ and the Go
// decoder in internal/event: record layouts, record type ids, flags, counter
// indices and size caps. Go types are generated from these structs by bpf2go
// (-type), never copied by hand. Change a layout here and regenerate.

#ifndef EBPFRECV_EVENT_H
#define EBPFRECV_EVENT_H

// Record type: the first byte of every ring-buffer record.
enum event_type {
	EVENT_DATA = 1,       // struct data_event: a chunk of socket payload
	EVENT_CONN_OPEN = 2,  // struct conn_event: a socket entered the table
	EVENT_CONN_CLOSE = 3, // struct conn_event: close(2) of a tracked socket
};

// Direction, seen from the process that made the syscall.
enum direction {
	DIR_EGRESS = 1,  // write/send: bytes leave the process
	DIR_INGRESS = 2, // read/recv: bytes enter the process
};

// Role of the process on the connection.
enum conn_role {
	ROLE_UNKNOWN = 0,
	ROLE_CLIENT = 1, // connect(2)
	ROLE_SERVER = 2, // accept(2)/accept4(2)
};

// Which syscall family produced a data record (for self-metrics).
enum data_source {
	SRC_READ = 1,
	SRC_WRITE = 2,
	SRC_READV = 3,
	SRC_WRITEV = 4,
	SRC_RECVFROM = 5,
	SRC_SENDTO = 6,
	SRC_RECVMSG = 7,
	SRC_SENDMSG = 8,
	SRC_SSL_READ = 9,  // plaintext returned by SSL_read/SSL_read_ex
	SRC_SSL_WRITE = 10, // plaintext given to SSL_write/SSL_write_ex
	SRC_GO_TLS_READ = 11,  // plaintext returned by Go's crypto/tls (*Conn).Read
	SRC_GO_TLS_WRITE = 12, // plaintext written by Go's crypto/tls (*Conn).Write
};

// data_event.flags
#define DATA_FLAG_LAST 0x01      // last record emitted for this syscall
#define DATA_FLAG_TRUNCATED 0x02 // the syscall moved more bytes than were captured
#define DATA_FLAG_TLS 0x04       // plaintext from a TLS library, not socket bytes

// Bytes of payload in one record. A syscall larger than this becomes several
// records; one larger than the configured capture cap is captured head and
// tail (see capture.bpf.c) and the hole is visible through seq.
#define DATA_CHUNK 8192
// Upper bound of the capture cap per syscall (the configured cap is clamped
// to it): bounds the records one syscall may produce.
#define MAX_CAPTURE_BYTES (256 * 1024)
// iovec entries walked per readv/writev/sendmsg/recvmsg.
#define MAX_IOV 64

// File descriptors of a forking parent looked at for tracked sockets.
#define MAX_FORK_FDS 4096

#define UNIX_PATH_CAP 64
#define COMM_LEN 16

// conn_tuple identifies a connection. Addresses are in network byte order
// (IPv4 in the first four bytes), ports in host byte order. For AF_UNIX the
// addresses and ports are zero.
struct conn_tuple {
	__u8 saddr[16]; // local
	__u8 daddr[16]; // remote
	__u16 sport;    // local port
	__u16 dport;    // remote port
	__u16 family;   // AF_INET, AF_INET6 or AF_UNIX
	__u16 _pad;
};

struct data_event {
	__u8 type;      // EVENT_DATA
	__u8 direction; // enum direction
	__u8 flags;     // DATA_FLAG_*
	__u8 source;    // enum data_source
	__u32 pid;      // thread group id
	__u32 tid;
	__s32 fd;
	__u64 conn_id;  // unique per tracked socket for this load of the programs
	__u64 ts_ns;    // bpf_ktime_get_ns (CLOCK_MONOTONIC): a write's entry, a read's exit
	__u64 seq;      // offset of payload[0] in this direction's byte stream
	__u32 total_len; // bytes the syscall moved
	__u32 offset;    // offset of payload[0] within the syscall's bytes
	__u32 cap_len;   // bytes of payload in this record
	__u32 _pad;
	struct conn_tuple tuple;
	__u8 payload[DATA_CHUNK];
};

struct conn_event {
	__u8 type; // EVENT_CONN_OPEN or EVENT_CONN_CLOSE
	__u8 role; // enum conn_role
	__u16 _pad;
	__u32 pid;
	__u32 tid;
	__s32 fd;
	__u64 conn_id;
	__u64 ts_ns;
	__u64 seq_egress;  // bytes written so far (close: final count)
	__u64 seq_ingress; // bytes read so far (close: final count)
	__u64 inode;       // socket inode, as in /proc/PID/fd -> socket:[inode]
	// nonce names the connection identically at both of its ends, so spans
	// of a client and a server on one host can be linked: for TCP the
	// client's initial sequence number + 1, for Unix sockets the inode of
	// the client's socket. 0 when unknown. Open only.
	__u64 nonce;
	struct conn_tuple tuple;
	char comm[COMM_LEN];
	char unix_path[UNIX_PATH_CAP]; // AF_UNIX path (open only); '@' first for abstract
};

// Indices of the per-CPU counter array. Every drop has its own index.
enum counter {
	CNT_RECORDS = 0,          // data records submitted
	CNT_BYTES = 1,            // payload bytes submitted
	CNT_DROP_RINGBUF = 2,     // data records lost: ring buffer full
	CNT_DROP_RINGBUF_BYTES = 3, // payload bytes of those records
	CNT_DROP_CONN_EVENT = 4,  // open/close records lost: ring buffer full
	CNT_DROP_SOCKTAB_FULL = 5, // sockets not tracked: socket table full
	CNT_DROP_ARGS_FULL = 6,   // syscalls or TLS calls not captured: no per-thread state (task storage) could be allocated
	CNT_TRUNCATED = 7,        // syscalls larger than the capture cap
	CNT_TRUNCATED_BYTES = 8,  // bytes not captured because of the cap
	CNT_STALE_FD = 9,         // table entries whose fd no longer is that socket
	CNT_CONN_OPENED = 10,     // sockets entered into the table by the kernel side
	CNT_FILTERED = 11,        // connects/accepts rejected by the filters
	CNT_INHERITED = 12,       // sockets a forked child took over from its parent
	CNT_TLS_NO_FD = 13,       // TLS calls whose socket was never seen (plaintext lost)
	CNT_TLS_BUSY = 14,        // TLS calls lost: another TLS capture was running on the CPU
	CNT__MAX = 15,
};

// Key of the socket table.
struct sock_key {
	__u32 tgid;
	__s32 fd;
};

// Value of the socket table. User space writes entries for sockets that were
// open before the programs were attached (file == 0: verified by inode on
// first use).
struct sock_info {
	__u64 conn_id;
	__u64 file;        // struct file * of the fd when entered (0: not yet known)
	__u64 inode;       // socket inode
	__u64 seq_egress;  // bytes written so far
	__u64 seq_ingress; // bytes read so far
	__u64 nonce;       // conn_event.nonce, kept for copies made at fork
	struct conn_tuple tuple;
	__u8 role;
	__u8 tls; // the socket carries TLS: its bytes are ciphertext, not captured
	__u8 _pad[6];
};

#endif // EBPFRECV_EVENT_H
