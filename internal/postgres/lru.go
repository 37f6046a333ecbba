package postgres

// lru is a bounded map from name to V that forgets the least recently used
// entry when full. Nodes live in one slice linked by index and are reused, so
// steady-state lookups and replacements do not allocate.
type lru[V any] struct {
	limit int
	m     map[string]int32
	nodes []lruNode[V]
	head  int32 // most recently used, -1 when empty
	tail  int32 // least recently used, -1 when empty
	free  int32 // first free node, -1 when none
}

type lruNode[V any] struct {
	key        string
	val        V
	prev, next int32
}

func newLRU[V any](limit int) lru[V] {
	return lru[V]{limit: limit, head: -1, tail: -1, free: -1}
}

func (l *lru[V]) len() int { return len(l.m) }

// get returns the value of key and marks it most recently used.
func (l *lru[V]) get(key string) (V, bool) {
	i, ok := l.m[key]
	if !ok {
		var zero V
		return zero, false
	}
	l.moveToFront(i)
	return l.nodes[i].val, true
}

// getBytes is get for a key held as bytes; it returns the stored key too,
// so that the caller gets the name as a string without allocating.
func (l *lru[V]) getBytes(key []byte) (string, V, bool) {
	i, ok := l.m[string(key)] // indexing with string(key) does not allocate
	if !ok {
		var zero V
		return "", zero, false
	}
	l.moveToFront(i)
	return l.nodes[i].key, l.nodes[i].val, true
}

// has reports whether key is present without touching its recency.
func (l *lru[V]) has(key string) bool {
	_, ok := l.m[key]
	return ok
}

// put stores key, replacing an existing value, and reports whether another
// entry had to be evicted to make room.
func (l *lru[V]) put(key string, v V) (evicted bool) {
	if i, ok := l.m[key]; ok {
		l.nodes[i].val = v
		l.moveToFront(i)
		return false
	}
	if l.m == nil {
		l.m = make(map[string]int32)
	}
	if len(l.m) >= l.limit && l.tail >= 0 {
		l.remove(l.tail)
		evicted = true
	}
	var i int32
	if l.free >= 0 {
		i = l.free
		l.free = l.nodes[i].next
	} else {
		l.nodes = append(l.nodes, lruNode[V]{})
		i = int32(len(l.nodes) - 1)
	}
	l.nodes[i] = lruNode[V]{key: key, val: v, prev: -1, next: l.head}
	if l.head >= 0 {
		l.nodes[l.head].prev = i
	}
	l.head = i
	if l.tail < 0 {
		l.tail = i
	}
	l.m[key] = i
	return evicted
}

// del forgets key if present.
func (l *lru[V]) del(key string) {
	if i, ok := l.m[key]; ok {
		l.remove(i)
	}
}

// clear forgets everything, keeping the allocated nodes.
func (l *lru[V]) clear() {
	for k := range l.m {
		delete(l.m, k)
	}
	l.nodes = l.nodes[:0]
	l.head, l.tail, l.free = -1, -1, -1
}

func (l *lru[V]) unlink(i int32) {
	n := &l.nodes[i]
	if n.prev >= 0 {
		l.nodes[n.prev].next = n.next
	} else {
		l.head = n.next
	}
	if n.next >= 0 {
		l.nodes[n.next].prev = n.prev
	} else {
		l.tail = n.prev
	}
}

func (l *lru[V]) moveToFront(i int32) {
	if l.head == i {
		return
	}
	l.unlink(i)
	n := &l.nodes[i]
	n.prev = -1
	n.next = l.head
	if l.head >= 0 {
		l.nodes[l.head].prev = i
	}
	l.head = i
	if l.tail < 0 {
		l.tail = i
	}
}

func (l *lru[V]) remove(i int32) {
	l.unlink(i)
	delete(l.m, l.nodes[i].key)
	var zero V
	l.nodes[i] = lruNode[V]{val: zero, next: l.free, prev: -1}
	l.free = i
}
