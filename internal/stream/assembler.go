package stream

import (
	"net/netip"
	"sync/atomic"

	"github.com/ebpfotel/ebpfreceiver/internal/event"
)

// Config bounds the assembler's state.
type Config struct {
	// MaxConnections is the most connections kept at once; the least
	// recently active one is closed to make room.
	MaxConnections int
	// IdleTimeoutNs closes a connection with no traffic for this long.
	IdleTimeoutNs uint64
	// DetectBytes is how many bytes per direction protocol detection looks
	// at before it gives a connection up.
	DetectBytes int
	// RequestIdleNs is passed to parsers that implement Expirer: a request
	// with no traffic for this long ends incomplete. Zero leaves requests
	// to the parsers' own bounds.
	RequestIdleNs uint64
}

// Stats are the assembler's counters. Every loss has its own counter.
type Stats struct {
	Records        atomic.Uint64 // data records taken
	Bytes          atomic.Uint64 // payload bytes taken
	DecodeErrors   atomic.Uint64 // records that broke the contract
	GapEvents      atomic.Uint64 // holes in a byte stream (drops, truncation)
	LostBytes      atomic.Uint64 // bytes in those holes
	OutOfOrder     atomic.Uint64 // records older than bytes already delivered
	ConnsOpened    atomic.Uint64 // connections announced by the kernel or the scan
	ConnsUnseen    atomic.Uint64 // data for a connection whose open record was lost
	ConnsClosed    atomic.Uint64 // close(2) seen
	ConnsExpired   atomic.Uint64 // idle timeout
	ConnsEvicted   atomic.Uint64 // closed early: MaxConnections reached
	ConnsDetected  atomic.Uint64 // a protocol parser took the connection
	ConnsIgnored   atomic.Uint64 // no protocol recognised; capture stopped
	LiveConns      atomic.Int64  // connections held now
	ParserPanics   atomic.Uint64 // a parser panicked: connection dropped
	UnknownRecords atomic.Uint64 // records of an unknown type
	TLSConns       atomic.Uint64 // connections switched to TLS plaintext
	// CiphertextRecords are socket records of TLS connections (handshake,
	// or ciphertext before the library probe saw the connection): skipped.
	CiphertextRecords atomic.Uint64
}

// Assembler turns decoded ring-buffer records into per-connection,
// per-direction ordered byte streams and feeds protocol parsers. It is not
// safe for concurrent use: one goroutine reads the ring buffer and calls it.
type Assembler struct {
	cfg       Config
	detectors []Detector
	// ignore is told about connections no parser wants, so that the kernel
	// can stop capturing them.
	ignore func(pid uint32, fd int32)

	conns map[uint64]*conn
	// ends counts the watched ends of each connection by role, so a server
	// span can tell whether its client is watched too (see PeerObserved).
	ends map[peerKey]*connEnds
	// LRU list of connections by last activity, most recent at the front.
	lru       conn
	lastSweep uint64

	Stats Stats
}

type detectState uint8

const (
	detecting detectState = iota
	// awaitingTLS: the socket bytes are a TLS handshake; the connection
	// waits for plaintext from a TLS library probe.
	awaitingTLS
	detected
	ignored
)

type conn struct {
	info   ConnInfo
	parser Parser
	state  detectState
	// next is the stream offset expected next, per direction (index dir-1).
	next [2]uint64
	// started says whether a direction has delivered bytes yet.
	started [2]bool
	// seen counts bytes looked at by detection, per direction.
	seen     [2]int
	lastSeen uint64

	prev, nextLRU *conn
}

// NewAssembler builds an assembler feeding the given detectors, tried in
// order. ignore may be nil.
func NewAssembler(cfg Config, detectors []Detector, ignore func(pid uint32, fd int32)) *Assembler {
	if cfg.DetectBytes <= 0 {
		cfg.DetectBytes = 4096
	}
	a := &Assembler{cfg: cfg, detectors: detectors, ignore: ignore, conns: map[uint64]*conn{}, ends: map[peerKey]*connEnds{}}
	a.lru.prev, a.lru.nextLRU = &a.lru, &a.lru
	return a
}

// Record takes one raw ring-buffer record.
func (a *Assembler) Record(raw []byte) {
	switch event.Type(raw) {
	case event.TypeData:
		ev, payload, err := event.Data(raw)
		if err != nil {
			a.Stats.DecodeErrors.Add(1)
			return
		}
		a.data(ev, payload)
	case event.TypeConnOpen:
		ev, err := event.Conn(raw)
		if err != nil {
			a.Stats.DecodeErrors.Add(1)
			return
		}
		a.open(ev)
	case event.TypeConnClose:
		ev, err := event.Conn(raw)
		if err != nil {
			a.Stats.DecodeErrors.Add(1)
			return
		}
		a.close(ev)
	default:
		a.Stats.UnknownRecords.Add(1)
	}
}

func infoFrom(id uint64, pid uint32, fd int32, role uint8, t *event.CaptureConnTuple) ConnInfo {
	info := ConnInfo{ID: id, PID: pid, FD: fd, Role: Role(role), Preexisting: id&event.ExistingConnBit != 0}
	if t.Family == event.AFUnix {
		info.Transport = "unix"
	} else {
		info.Transport = "tcp"
		info.Local, info.Remote = event.Endpoints(t.Family, &t.Saddr, &t.Daddr, t.Sport, t.Dport)
	}
	return info
}

func (a *Assembler) open(ev *event.CaptureConnEvent) {
	if old := a.conns[ev.ConnId]; old != nil {
		a.finish(old, ev.TsNs)
	}
	c := &conn{info: infoFrom(ev.ConnId, ev.Pid, ev.Fd, ev.Role, &ev.Tuple), lastSeen: ev.TsNs}
	c.info.Comm = event.CString(ev.Comm[:])
	c.info.UnixPath = event.CString(ev.UnixPath[:])
	c.info.Nonce = ev.Nonce
	if c.info.Preexisting {
		// A socket found open at start-up: its stream offsets count from
		// the first byte captured, not from the connection's start.
		c.started = [2]bool{false, false}
	} else {
		c.started = [2]bool{true, true}
	}
	a.Stats.ConnsOpened.Add(1)
	a.insert(c)
}

func (a *Assembler) insert(c *conn) {
	if a.cfg.MaxConnections > 0 && len(a.conns) >= a.cfg.MaxConnections {
		oldest := a.lru.prev
		a.Stats.ConnsEvicted.Add(1)
		a.finish(oldest, c.lastSeen)
	}
	a.conns[c.info.ID] = c
	a.Stats.LiveConns.Add(1)
	a.touch(c)
	if k, ok := keyOf(&c.info); ok {
		n := a.ends[k]
		if n == nil {
			n = new(connEnds)
			a.ends[k] = n
		}
		n.open[c.info.Role]++
		n.seen[c.info.Role] = true
	}
}

// connEnds counts the watched ends of one connection by role. seen stays
// set while any end is open: a server whose request ends after its client
// closed (expiry, a late answer) still links to the client's span.
type connEnds struct {
	open [3]int
	seen [3]bool
}

// peerKey names a connection identically at its two ends.
type peerKey struct {
	transport string
	nonce     uint64
	a, b      netip.AddrPort // the two endpoints, ordered
}

// keyOf runs for every span (PeerObserved): it compares and stores the
// endpoints as values, without formatting them.
func keyOf(info *ConnInfo) (peerKey, bool) {
	if info.Nonce == 0 || info.Role == RoleUnknown {
		return peerKey{}, false
	}
	k := peerKey{transport: info.Transport, nonce: info.Nonce}
	if info.Transport == "tcp" {
		k.a, k.b = info.Local, info.Remote
		if k.a.Compare(k.b) > 0 {
			k.a, k.b = k.b, k.a
		}
	}
	return k, true
}

// PeerObserved reports whether the other end of conn (the same connection
// seen from the peer process, with the opposite role) is watched too.
func (a *Assembler) PeerObserved(info *ConnInfo) bool {
	k, ok := keyOf(info)
	if !ok {
		return false
	}
	n := a.ends[k]
	if n == nil {
		return false
	}
	if info.Role == RoleClient {
		return n.seen[RoleServer]
	}
	return n.seen[RoleClient]
}

func (a *Assembler) touch(c *conn) {
	if c.prev != nil {
		c.prev.nextLRU = c.nextLRU
		c.nextLRU.prev = c.prev
	}
	c.nextLRU = a.lru.nextLRU
	c.prev = &a.lru
	a.lru.nextLRU.prev = c
	a.lru.nextLRU = c
}

// finish closes a connection's parser and forgets it.
func (a *Assembler) finish(c *conn, ts uint64) {
	if c.parser != nil {
		a.safely(c, func() { c.parser.Close(ts) })
	}
	c.prev.nextLRU = c.nextLRU
	c.nextLRU.prev = c.prev
	c.prev, c.nextLRU = nil, nil
	delete(a.conns, c.info.ID)
	a.Stats.LiveConns.Add(-1)
	if k, ok := keyOf(&c.info); ok {
		if n := a.ends[k]; n != nil {
			n.open[c.info.Role]--
			if n.open[RoleClient] <= 0 && n.open[RoleServer] <= 0 {
				delete(a.ends, k)
			}
		}
	}
}

func (a *Assembler) close(ev *event.CaptureConnEvent) {
	c := a.conns[ev.ConnId]
	if c == nil {
		return
	}
	// Bytes written or read after the last captured record were lost.
	a.gap(c, Egress, ev.SeqEgress, ev.TsNs)
	a.gap(c, Ingress, ev.SeqIngress, ev.TsNs)
	a.Stats.ConnsClosed.Add(1)
	a.finish(c, ev.TsNs)
}

// gap reports bytes of a direction missing before stream offset upTo.
func (a *Assembler) gap(c *conn, dir Direction, upTo, ts uint64) {
	i := dir - 1
	if !c.started[i] || upTo <= c.next[i] {
		return
	}
	lost := upTo - c.next[i]
	c.next[i] = upTo
	a.Stats.GapEvents.Add(1)
	a.Stats.LostBytes.Add(lost)
	if c.parser != nil {
		a.safely(c, func() { c.parser.Data(dir, ts, nil, lost) })
	}
}

func (a *Assembler) data(ev *event.CaptureDataEvent, payload []byte) {
	a.Stats.Records.Add(1)
	a.Stats.Bytes.Add(uint64(len(payload)))
	c := a.conns[ev.ConnId]
	if c == nil {
		// The open record was lost (ring buffer full) or came before we
		// started reading: build the connection from the data record.
		a.Stats.ConnsUnseen.Add(1)
		c = &conn{info: infoFrom(ev.ConnId, ev.Pid, ev.Fd, 0, &ev.Tuple), lastSeen: ev.TsNs}
		c.info.Preexisting = true
		a.insert(c)
	}
	if ev.Flags&event.FlagTLS != 0 && !c.info.TLS {
		a.startTLS(c, ev.TsNs)
	}
	if c.state == ignored {
		return
	}
	if c.info.TLS && ev.Flags&event.FlagTLS == 0 {
		// Socket bytes of a connection whose plaintext comes from a TLS
		// library: ciphertext captured before the library was seen.
		a.Stats.CiphertextRecords.Add(1)
		return
	}
	dir := Direction(ev.Direction)
	i := dir - 1
	if !c.started[i] {
		c.started[i] = true
		c.next[i] = ev.Seq
	}
	switch {
	case ev.Seq > c.next[i]:
		a.gap(c, dir, ev.Seq, ev.TsNs)
	case ev.Seq < c.next[i]:
		// Two threads wrote the socket at once and their records crossed in
		// the ring buffer; the older bytes cannot be put back in place.
		a.Stats.OutOfOrder.Add(1)
		return
	}
	c.next[i] = ev.Seq + uint64(len(payload))
	c.lastSeen = ev.TsNs
	a.touch(c)

	if c.state == awaitingTLS {
		a.awaitTLS(c, dir, payload)
		return
	}
	if c.state == detecting && !a.detect(c, dir, ev.Seq, payload) {
		return
	}
	a.safely(c, func() { c.parser.Data(dir, ev.TsNs, payload, 0) })
}

// maxCiphertext is how much TLS handshake and ciphertext a connection may
// carry without plaintext from a TLS library before it is given up (its TLS
// library is not one we probe: statically linked, rustls, Go...).
const maxCiphertext = 256 << 10

// looksLikeTLS reports whether data starts with a TLS record header: a
// handshake (22) or application data (23) record of TLS 1.0-1.3.
func looksLikeTLS(data []byte) bool {
	return len(data) >= 3 && (data[0] == 22 || data[0] == 23) && data[1] == 3 && data[2] <= 4
}

// startTLS switches a connection to the plaintext a TLS library probe
// captured: what was parsed from socket bytes so far (a PostgreSQL
// SSLRequest, a TLS handshake) is finished, and detection starts again on
// the plaintext, which has its own place in the stream offsets.
func (a *Assembler) startTLS(c *conn, ts uint64) {
	if c.parser != nil {
		a.safely(c, func() { c.parser.Close(ts) })
		c.parser = nil
	}
	c.info.TLS = true
	c.state = detecting
	c.seen = [2]int{}
	c.started = [2]bool{}
	a.Stats.TLSConns.Add(1)
}

// awaitTLS counts the ciphertext of a connection that waits for plaintext.
func (a *Assembler) awaitTLS(c *conn, dir Direction, payload []byte) {
	a.Stats.CiphertextRecords.Add(1)
	c.seen[dir-1] += len(payload)
	if c.seen[0]+c.seen[1] >= maxCiphertext {
		a.ignoreConn(c)
	}
}

func (a *Assembler) ignoreConn(c *conn) {
	c.state = ignored
	a.Stats.ConnsIgnored.Add(1)
	if a.ignore != nil {
		a.ignore(c.info.PID, c.info.FD)
	}
}

// detect offers the first bytes of a connection to the detectors. It
// returns true once a parser owns the connection.
func (a *Assembler) detect(c *conn, dir Direction, seq uint64, payload []byte) bool {
	if seq != 0 && !c.info.Preexisting && !c.info.TLS {
		// The beginning of this direction was lost: parsers must treat the
		// connection as joined mid-stream.
		c.info.Preexisting = true
	}
	if a.tryDetect(c, dir, payload) {
		return true
	}
	if c.info.TLS && !c.info.Preexisting {
		// TLS plaintext whose start the library probe missed (the probe
		// was attached after the process began talking): the parsers must
		// take it as joined mid-stream.
		c.info.Preexisting = true
		if a.tryDetect(c, dir, payload) {
			return true
		}
		c.info.Preexisting = false
	}
	if !c.info.TLS && c.seen[dir-1] == 0 && looksLikeTLS(payload) {
		// A TLS handshake on the socket: the protocol is inside. Wait for
		// plaintext from the TLS library probes instead of giving up.
		c.state = awaitingTLS
		a.awaitTLS(c, dir, payload)
		return false
	}
	c.seen[dir-1] += len(payload)
	if c.seen[0] >= a.cfg.DetectBytes || c.seen[1] >= a.cfg.DetectBytes {
		a.ignoreConn(c)
	}
	return false
}

func (a *Assembler) tryDetect(c *conn, dir Direction, payload []byte) bool {
	for _, d := range a.detectors {
		if d.Detect(&c.info, dir, payload) {
			c.parser = d.New(&c.info)
			c.state = detected
			a.Stats.ConnsDetected.Add(1)
			return true
		}
	}
	return false
}

// safely runs a parser call; a parser that panics loses its connection
// (counted) instead of stopping the pipeline for every other connection.
func (a *Assembler) safely(c *conn, f func()) {
	defer func() {
		if r := recover(); r != nil {
			a.Stats.ParserPanics.Add(1)
			c.parser = nil
			c.state = ignored
		}
	}()
	f()
}

// Tick expires idle connections. now is CLOCK_MONOTONIC in nanoseconds, the
// kernel's record clock. Work is done at most once per second.
func (a *Assembler) Tick(now uint64) {
	if now-a.lastSweep < 1e9 {
		return
	}
	a.lastSweep = now
	if a.cfg.RequestIdleNs > 0 {
		for _, c := range a.conns {
			if e, ok := c.parser.(Expirer); ok {
				a.safely(c, func() { e.Expire(now, a.cfg.RequestIdleNs) })
			}
		}
	}
	if a.cfg.IdleTimeoutNs == 0 {
		return
	}
	for c := a.lru.prev; c != &a.lru; {
		// Records are read before now is taken, on the same clock: a
		// connection stamped after now holds a time that broke the
		// contract. It is expired rather than kept: kept, it would stop
		// this sweep for every connection behind it, for ever.
		if c.lastSeen <= now && now-c.lastSeen < a.cfg.IdleTimeoutNs {
			break // the rest were active more recently
		}
		older := c.prev
		a.Stats.ConnsExpired.Add(1)
		a.finish(c, now)
		c = older
	}
}

// Len is the number of connections held.
func (a *Assembler) Len() int { return len(a.conns) }

// CloseAll closes every connection (at shutdown).
func (a *Assembler) CloseAll(now uint64) {
	for c := a.lru.prev; c != &a.lru; {
		older := c.prev
		a.finish(c, now)
		c = older
	}
}
