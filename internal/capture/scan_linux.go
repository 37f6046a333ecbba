//go:build linux

package capture

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/ebpfotel/ebpfreceiver/internal/cgroupv2"
	"github.com/ebpfotel/ebpfreceiver/internal/event"
)

// sockEntry is a connected socket listed in /proc/PID/net/{tcp,tcp6,unix}.
type sockEntry struct {
	tuple    event.CaptureConnTuple
	listener bool   // TCP LISTEN socket
	path     string // AF_UNIX path
}

// netns caches the socket tables of one network namespace.
type netns struct {
	byInode   map[uint64]sockEntry
	listening map[uint16]bool // local ports with a LISTEN socket
}

// seedExisting finds the matching processes' connected TCP and Unix stream
// sockets through /proc, enters them into the kernel socket table (their
// struct file is verified by inode on first use), and queues synthetic open
// records so user space learns their tuples. It returns how many it added.
func (c *Capture) seedExisting() (int, error) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("scan /proc for open connections: %w", err)
	}
	self := os.Getpid()
	nets := map[string]*netns{}
	next := event.ExistingConnBit | 1
	added := 0
	perProc := map[uint32]uint32{}
	for _, d := range procs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || (pid == self && !c.opts.IncludeSelf) {
			continue
		}
		if !c.processMatches(pid) {
			continue
		}
		nsID, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			continue // exited, or a kernel thread
		}
		ns := nets[nsID]
		if ns == nil {
			ns = readNetns(pid)
			nets[nsID] = ns
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			continue
		}
		for _, fdEnt := range fds {
			fd, err := strconv.Atoi(fdEnt.Name())
			if err != nil {
				continue
			}
			target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
			if err != nil || !strings.HasPrefix(target, "socket:[") {
				continue
			}
			inode, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]"), 10, 64)
			if err != nil {
				continue
			}
			ent, ok := ns.byInode[inode]
			if !ok || ent.listener {
				continue
			}
			if !c.portsMatch(ent.tuple) {
				continue
			}
			role := uint8(event.CaptureConnRoleROLE_CLIENT)
			switch {
			case ent.tuple.Family == event.AFUnix:
				// An accepted Unix socket shares its listener's address; an
				// unbound connecting socket has none.
				if ent.path != "" {
					role = uint8(event.CaptureConnRoleROLE_SERVER)
				} else {
					role = uint8(event.CaptureConnRoleROLE_UNKNOWN)
				}
			case ns.listening[ent.tuple.Sport]:
				role = uint8(event.CaptureConnRoleROLE_SERVER)
			}
			key := event.CaptureSockKey{Tgid: uint32(pid), Fd: int32(fd)}
			info := event.CaptureSockInfo{ConnId: next, Inode: inode, Tuple: ent.tuple, Role: role}
			if err := c.objs.Sockets.Update(&key, &info, ebpf.UpdateNoExist); err != nil {
				continue // the kernel entered it first, or the table is full
			}
			open := event.CaptureConnEvent{
				Type: event.TypeConnOpen, Role: role, Pid: uint32(pid), Tid: uint32(pid),
				Fd: int32(fd), ConnId: next, Inode: inode,
				// Stamped like kernel records, so idle expiry counts from now.
				TsNs: MonotonicNow(),
			}
			open.Tuple = ent.tuple
			copyCString(open.Comm[:], strings.TrimSpace(string(comm)))
			copyCString(open.UnixPath[:], ent.path)
			c.existing = append(c.existing, event.EncodeConn(&open))
			next++
			added++
			perProc[uint32(pid)]++
		}
	}
	// Let the programs know which processes hold tracked sockets: the
	// data syscalls test the bit, the fork program the count.
	for pid, n := range perProc {
		c.bits.mark(pid)
		var cur uint32
		_ = c.objs.TrackedProcs.Lookup(pid, &cur)
		if err := c.objs.TrackedProcs.Put(pid, cur+n); err != nil {
			return added, fmt.Errorf("record sockets of pid %d: %w", pid, err)
		}
	}
	return added, nil
}

func copyCString(dst []int8, s string) {
	for i := 0; i < len(s) && i < len(dst)-1; i++ {
		dst[i] = int8(s[i])
	}
}

// processMatches applies the pid, executable and cgroup filters in user
// space, as the kernel would at connect/accept.
func (c *Capture) processMatches(pid int) bool {
	f := c.opts.Filter
	if len(f.PIDs) > 0 {
		ok := false
		for _, p := range f.PIDs {
			ok = ok || int(p) == pid
		}
		if !ok {
			return false
		}
	}
	if len(f.Comms) > 0 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil {
			return false
		}
		name := strings.TrimSpace(string(b))
		ok := false
		for _, cm := range f.Comms {
			if len(cm) > commLen-1 {
				cm = cm[:commLen-1]
			}
			ok = ok || cm == name
		}
		if !ok {
			return false
		}
	}
	if len(f.Cgroups) > 0 {
		cg, ok := cgroupv2.Of(pid)
		if !ok || c.cgroupRoot == "" {
			return false
		}
		in := false
		for _, dir := range f.Cgroups {
			in = in || cgroupv2.Under(cg, c.cgroupRoot, dir)
		}
		if !in {
			return false
		}
	}
	return true
}

func (c *Capture) portsMatch(t event.CaptureConnTuple) bool {
	if len(c.opts.Filter.Ports) == 0 {
		return true
	}
	if t.Family == event.AFUnix {
		return false
	}
	for _, p := range c.opts.Filter.Ports {
		if p == t.Sport || p == t.Dport {
			return true
		}
	}
	return false
}

func readNetns(pid int) *netns {
	ns := &netns{byInode: map[uint64]sockEntry{}, listening: map[uint16]bool{}}
	readTCP(fmt.Sprintf("/proc/%d/net/tcp", pid), event.AFInet, ns)
	readTCP(fmt.Sprintf("/proc/%d/net/tcp6", pid), event.AFInet6, ns)
	readUnix(fmt.Sprintf("/proc/%d/net/unix", pid), ns)
	return ns
}

// TCP states of /proc/net/tcp (include/net/tcp_states.h).
const (
	tcpEstablished = 0x01
	tcpListen      = 0x0A
)

// readTCP parses /proc/net/tcp{,6}: "sl local_address rem_address st ... inode".
// Addresses are hex of the in-memory (network order) words as the host
// prints them, i.e. each 32-bit word byte-swapped on little endian.
func readTCP(path string, family uint16, ns *netns) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		st, err := strconv.ParseUint(fields[3], 16, 8)
		if err != nil {
			continue
		}
		inode, err := strconv.ParseUint(fields[9], 10, 64)
		if err != nil || inode == 0 {
			continue
		}
		var ent sockEntry
		ent.tuple.Family = family
		lport, ok1 := parseHexAddr(fields[1], ent.tuple.Saddr[:])
		rport, ok2 := parseHexAddr(fields[2], ent.tuple.Daddr[:])
		if !ok1 || !ok2 {
			continue
		}
		ent.tuple.Sport, ent.tuple.Dport = lport, rport
		switch st {
		case tcpListen:
			ent.listener = true
			ns.listening[lport] = true
		case tcpEstablished:
		default:
			continue
		}
		ns.byInode[inode] = ent
	}
}

// parseHexAddr decodes "0100007F:1F90" into dst (network order) and a port.
func parseHexAddr(s string, dst []byte) (uint16, bool) {
	addr, port, ok := strings.Cut(s, ":")
	if !ok {
		return 0, false
	}
	raw, err := hex.DecodeString(addr)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return 0, false
	}
	// The kernel prints each 32-bit word with %08X of its host-order value.
	for w := 0; w+4 <= len(raw); w += 4 {
		raw[w], raw[w+1], raw[w+2], raw[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
	}
	copy(dst, raw)
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return 0, false
	}
	return uint16(p), true
}

// readUnix parses /proc/net/unix:
// "Num RefCount Protocol Flags Type St Inode [Path]"; Type 0001 is
// SOCK_STREAM, St 03 is SS_CONNECTED.
func readUnix(path string, ns *netns) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 || fields[4] != "0001" || fields[5] != "03" {
			continue
		}
		inode, err := strconv.ParseUint(fields[6], 10, 64)
		if err != nil {
			continue
		}
		ent := sockEntry{}
		ent.tuple.Family = event.AFUnix
		if len(fields) >= 8 {
			ent.path = fields[7]
		}
		ns.byInode[inode] = ent
	}
}
