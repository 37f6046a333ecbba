package grpc

import (
	"errors"

	"golang.org/x/net/http2/hpack"
)

// staticTableLen is the number of entries of the HPACK static table (RFC
// 7541 Appendix A); dynamic table indices start after it (section 2.3.3).
const staticTableLen = 61

// entryOverhead is the per-entry size overhead of RFC 7541 section 4.1: an
// entry's size is its name length plus value length plus 32.
const entryOverhead = 32

// staticTable holds the HPACK static table, index i at [i]. It is read out
// of x/net's decoder (an indexed representation, RFC 7541 section 6.1, of
// each static index into a decoder with an empty dynamic table) rather than
// copied into this file.
var staticTable = func() (t [staticTableLen + 1]hpack.HeaderField) {
	i := 0
	d := hpack.NewDecoder(0, func(f hpack.HeaderField) { t[i] = f })
	for i = 1; i <= staticTableLen; i++ {
		_, _ = d.Write([]byte{0x80 | byte(i)})
	}
	_ = d.Close()
	return t
}()

var (
	errHPACKTruncated = errors.New("hpack: truncated representation")
	errHPACKInteger   = errors.New("hpack: integer out of range")
	errHPACKIndex     = errors.New("hpack: index 0")
	errHPACKString    = errors.New("hpack: string too long")
	errHPACKUpdate    = errors.New("hpack: table size update after a header field")
)

// shEntry is one dynamic table entry as far as we know it.
type shEntry struct {
	name, value string
	// size is the entry size of RFC 7541 section 4.1 when known, and a
	// lower bound (value length + 32) when the name is not known.
	size  uint32
	known bool
}

// shadow models a dynamic table (RFC 7541 section 2.3.2) whose beginning
// we missed. The real table, newest first, is always a prefix of
//
//	the modelled entries (newest first) ++ older entries we never saw
//
// because HPACK only inserts at the front (section 4.4: newest entry gets the
// lowest dynamic index) and only evicts from the back. So a dynamic index
// that falls on a modelled entry names that entry, whatever happened to the
// older part, and a valid encoder never references an index past the real
// table's end. We only trust entries we decoded ourselves since the gap.
type shadow struct {
	ents     []shEntry // oldest first; ents[head:] are live
	head     int
	size     uint64 // sum of live entry sizes (exact or lower bounds)
	unknownN int    // live entries that are not fully known
	// tail: entries older than ents[head] that we do not model may still
	// be in the real table.
	tail bool
	// maxKnown: max is the table's current maximum size, learnt from a
	// dynamic table size update (section 6.3) seen since the gap.
	maxKnown bool
	max      uint32
	// limit bounds the modelled bytes (Options.MaxTableSize); entries
	// dropped for it are forgotten, which makes them unknown again.
	limit uint32
}

func (s *shadow) reset(limit uint32) {
	clear(s.ents)
	s.ents = s.ents[:0]
	s.head = 0
	s.size = 0
	s.unknownN = 0
	s.tail = true
	s.maxKnown = false
	s.max = 0
	s.limit = limit
}

func (s *shadow) live() int { return len(s.ents) - s.head }

// exact reports whether the model is the whole table: no unknown older part,
// every entry known, and the maximum size known so eviction can be followed.
func (s *shadow) exact() bool { return !s.tail && s.maxKnown && s.unknownN == 0 }

func (s *shadow) dropOldest() {
	e := &s.ents[s.head]
	s.size -= uint64(e.size)
	if !e.known {
		s.unknownN--
	}
	*e = shEntry{}
	s.head++
	switch {
	case s.head == len(s.ents):
		s.ents = s.ents[:0]
		s.head = 0
	case s.head >= 32 && 2*s.head >= len(s.ents):
		n := copy(s.ents, s.ents[s.head:])
		clear(s.ents[n:])
		s.ents = s.ents[:n]
		s.head = 0
	}
}

func (s *shadow) dropAll() {
	for s.live() > 0 {
		s.dropOldest()
	}
}

// evict applies RFC 7541 section 4.3/4.4 eviction as far as we can follow it.
func (s *shadow) evict() {
	if s.maxKnown {
		if s.size > uint64(s.max) {
			// The modelled entries alone exceed the maximum, so the real
			// table evicted the whole older part first (eviction goes
			// oldest first) and then at least these entries.
			s.tail = false
			for s.size > uint64(s.max) && s.live() > 0 {
				s.dropOldest()
			}
		}
		if s.tail && s.size+entryOverhead > uint64(s.max) {
			// No room left for even an empty entry (32 bytes) older than
			// ours: the older part is gone.
			s.tail = false
		}
	}
	for s.size > uint64(s.limit) && s.live() > 0 {
		// Beyond what we are willing to hold: forget the oldest. The real
		// table may still have it, so references to it become unknown.
		s.dropOldest()
		s.tail = true
	}
}

// insert adds an entry the way a literal with incremental indexing does
// (RFC 7541 section 6.2.1). A name we could not resolve makes the entry
// unknown, but it still takes its index.
func (s *shadow) insert(name, value string, known bool) {
	size := uint64(len(value)) + entryOverhead
	if known {
		size += uint64(len(name))
	} else {
		name, value = "", ""
	}
	if s.maxKnown && size > uint64(s.max) {
		// Section 4.4: an entry larger than the maximum size empties the
		// table and is not added.
		s.dropAll()
		s.tail = false
		return
	}
	if size > uint64(s.limit) {
		s.dropAll()
		s.tail = true
		return
	}
	s.ents = append(s.ents, shEntry{name: name, value: value, size: uint32(size), known: known})
	s.size += size
	if !known {
		s.unknownN++
	}
	s.evict()
}

// setMax applies a dynamic table size update (RFC 7541 section 6.3).
func (s *shadow) setMax(v uint32) {
	s.max = v
	s.maxKnown = true
	s.evict()
}

// lookup resolves an index (RFC 7541 section 2.3.3). ok is false when the
// index falls on an entry we do not know.
func (s *shadow) lookup(idx uint64) (name, value string, ok bool) {
	if idx <= staticTableLen {
		f := staticTable[idx]
		return f.Name, f.Value, true
	}
	k := idx - staticTableLen // 1 is the newest dynamic entry
	if k > uint64(s.live()) {
		return "", "", false
	}
	e := &s.ents[len(s.ents)-int(k)]
	return e.name, e.value, e.known
}

// readInt decodes an integer with an n-bit prefix (RFC 7541 section 5.1).
// Values are capped near 2^35, far above any size or index we accept.
func readInt(n uint, p []byte) (uint64, []byte, error) {
	if len(p) == 0 {
		return 0, nil, errHPACKTruncated
	}
	mask := uint64(1)<<n - 1
	v := uint64(p[0]) & mask
	p = p[1:]
	if v < mask {
		return v, p, nil
	}
	var m uint
	for i, b := range p {
		if m > 28 {
			return 0, nil, errHPACKInteger
		}
		v += uint64(b&0x7f) << m
		if b&0x80 == 0 {
			return v, p[i+1:], nil
		}
		m += 7
	}
	return 0, nil, errHPACKTruncated
}

// hstring is a string literal (RFC 7541 section 5.2) not yet decoded.
type hstring struct {
	b    []byte
	huff bool
}

func readString(p []byte, maxLen int) (hstring, []byte, error) {
	if len(p) == 0 {
		return hstring{}, nil, errHPACKTruncated
	}
	huff := p[0]&0x80 != 0 // H bit: Huffman coded (section 5.2)
	l, p, err := readInt(7, p)
	if err != nil {
		return hstring{}, nil, err
	}
	if l > uint64(maxLen) {
		return hstring{}, nil, errHPACKString
	}
	if l > uint64(len(p)) {
		return hstring{}, nil, errHPACKTruncated
	}
	return hstring{b: p[:l], huff: huff}, p[l:], nil
}

func (h hstring) decode() (string, error) {
	if h.huff {
		return hpack.HuffmanDecodeToString(h.b)
	}
	return string(h.b), nil
}

// fieldFunc receives one decoded header field. known is false when the
// field's name (and so its meaning) could not be resolved; size is the
// field's size for header list accounting (RFC 9113 section 6.5.2).
type fieldFunc func(name, value string, known bool, size uint32)

// decode walks one complete header block against the model, inserting what
// literals with incremental indexing insert and emitting every field. A
// returned error means the model no longer matches the encoder's table.
func (s *shadow) decode(p []byte, maxStr int, emit fieldFunc) (unknownRefs int, err error) {
	first := true
	for len(p) > 0 {
		b := p[0]
		switch {
		case b&0x80 != 0: // indexed header field (RFC 7541 section 6.1)
			var idx uint64
			if idx, p, err = readInt(7, p); err != nil {
				return unknownRefs, err
			}
			if idx == 0 {
				return unknownRefs, errHPACKIndex // section 6.1: index 0 is a decoding error
			}
			name, value, ok := s.lookup(idx)
			if !ok {
				unknownRefs++
			}
			emit(name, value, ok, uint32(len(name)+len(value)+entryOverhead))
		case b&0xe0 == 0x20: // dynamic table size update (section 6.3)
			if !first {
				// Section 4.2: updates come at the beginning of a block.
				return unknownRefs, errHPACKUpdate
			}
			var v uint64
			if v, p, err = readInt(5, p); err != nil {
				return unknownRefs, err
			}
			if v > 1<<32-1 {
				return unknownRefs, errHPACKInteger
			}
			s.setMax(uint32(v))
			continue
		default:
			// Literal with incremental indexing (6-bit name index, section
			// 6.2.1), without indexing or never indexed (4-bit, 6.2.2, 6.2.3).
			indexing := b&0xc0 == 0x40
			prefix := uint(4)
			if indexing {
				prefix = 6
			}
			var nameIdx uint64
			if nameIdx, p, err = readInt(prefix, p); err != nil {
				return unknownRefs, err
			}
			var name string
			known := true
			var rawName hstring
			if nameIdx > 0 {
				var ok bool
				if name, _, ok = s.lookup(nameIdx); !ok {
					known = false
					unknownRefs++
				}
			} else if rawName, p, err = readString(p, maxStr); err != nil {
				return unknownRefs, err
			}
			var rawValue hstring
			if rawValue, p, err = readString(p, maxStr); err != nil {
				return unknownRefs, err
			}
			if nameIdx == 0 {
				if name, err = rawName.decode(); err != nil {
					return unknownRefs, err
				}
			}
			var value string
			// Values are decoded only when they are kept: in the table or
			// by us.
			if indexing || (known && wantField(name)) {
				if value, err = rawValue.decode(); err != nil {
					return unknownRefs, err
				}
			}
			if indexing {
				s.insert(name, value, known)
			}
			emit(name, value, known, uint32(len(name)+len(rawValue.b)+entryOverhead))
		}
		first = false
	}
	return unknownRefs, nil
}

// appendInt encodes v with an n-bit prefix after the high bits in first
// (RFC 7541 section 5.1).
func appendInt(dst []byte, first byte, n uint, v uint64) []byte {
	mask := uint64(1)<<n - 1
	if v < mask {
		return append(dst, first|byte(v))
	}
	dst = append(dst, first|byte(mask))
	v -= mask
	for v >= 0x80 {
		dst = append(dst, byte(v)|0x80)
		v >>= 7
	}
	return append(dst, byte(v))
}

// appendLiteralIndexed encodes a literal header field with incremental
// indexing and a literal name (RFC 7541 section 6.2.1, first byte 0x40),
// with plain (non-Huffman) strings.
func appendLiteralIndexed(dst []byte, name, value string) []byte {
	dst = append(dst, 0x40)
	dst = appendInt(dst, 0, 7, uint64(len(name)))
	dst = append(dst, name...)
	dst = appendInt(dst, 0, 7, uint64(len(value)))
	return append(dst, value...)
}

// wantField reports whether a header field is one a call record uses.
func wantField(name string) bool {
	switch name {
	case ":path", ":authority", ":status", "content-type", "grpc-status", "grpc-message", "grpc-timeout":
		return true
	}
	return false
}

// onlyIndexed reports whether a header block holds nothing but indexed
// header field representations (RFC 7541 section 6.1: a 1 bit, then the
// index as a 7-bit prefix integer). Such a block neither inserts into nor
// resizes the dynamic table (sections 4.4, 6.3 need the other
// representations).
func onlyIndexed(blk []byte) bool {
	for len(blk) > 0 {
		if blk[0]&0x80 == 0 {
			return false
		}
		var err error
		if _, blk, err = readInt(7, blk); err != nil {
			return false
		}
	}
	return true
}

const (
	// memoSlots: a connection's steady state repeats a request block in
	// one direction, a response headers block and a trailers block in the
	// other.
	memoSlots = 4
	// memoMaxBlock bounds the blocks remembered: indexed representations
	// take one or two bytes each.
	memoMaxBlock = 64
)

// blockMemo remembers the fields that recent header blocks of only indexed
// representations decoded to. Decoding such a block again against the same
// dynamic table (or shadow model) gives the same fields and changes
// nothing, so decoding is skipped. gen numbers the states of the table:
// anything that may change it (any other block, a new decoder or model)
// moves gen on, which forgets every slot.
type blockMemo struct {
	gen   uint64
	next  int
	slots [memoSlots]memoSlot
	// off disables the memo, for tests that compare with and without;
	// hits counts the blocks it answered.
	off  bool
	hits uint64
}

type memoSlot struct {
	gen      uint64 // the table state the block was decoded against
	n        int    // key length; 0 when empty
	key      [memoMaxBlock]byte
	f        fields
	listSize uint64
}

// changed records that the dynamic table may have changed.
func (m *blockMemo) changed() { m.gen++ }

// find returns the slot holding blk for the current table, or nil.
func (m *blockMemo) find(blk []byte) *memoSlot {
	if m.off || len(blk) == 0 || len(blk) > memoMaxBlock {
		return nil
	}
	for i := range m.slots {
		s := &m.slots[i]
		if s.gen == m.gen && s.n == len(blk) && string(s.key[:s.n]) == string(blk) {
			m.hits++
			return s
		}
	}
	return nil
}

// store remembers what blk decoded to against the current table.
func (m *blockMemo) store(blk []byte, f *fields, listSize uint64) {
	if m.off || len(blk) == 0 || len(blk) > memoMaxBlock {
		return
	}
	s := &m.slots[m.next]
	m.next = (m.next + 1) % memoSlots
	s.gen, s.n, s.f, s.listSize = m.gen, copy(s.key[:], blk), *f, listSize
}
