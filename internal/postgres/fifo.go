package postgres

// kind is the request a pending entry stands for; each expects its own
// responses from the backend.
type kind uint8

const (
	kQuery    kind = iota + 1 // 'Q': results, then ReadyForQuery
	kParse                    // 'P': ParseComplete
	kBind                     // 'B': BindComplete
	kDescribe                 // 'D': [ParameterDescription] RowDescription | NoData
	kExecute                  // 'E': DataRow* then CommandComplete | EmptyQueryResponse | PortalSuspended
	kClose                    // 'C': CloseComplete
	kSync                     // 'S': ReadyForQuery
	kFunction                 // 'F': FunctionCallResponse, then ReadyForQuery
)

// mask bits for match.
const (
	mQuery    = 1 << kQuery
	mParse    = 1 << kParse
	mBind     = 1 << kBind
	mDescribe = 1 << kDescribe
	mExecute  = 1 << kExecute
	mClose    = 1 << kClose
	mFunction = 1 << kFunction
)

// entry is a request waiting for its responses.
type entry struct {
	kind kind
	// ts is the time of the Data call that carried the request message;
	// no response can be older.
	ts uint64
	// seq numbers requests in the order they were sent.
	seq uint64
	// sub numbers the Parse/Bind/Describe/Execute group the request belongs
	// to: an error at Parse, Bind or Describe belongs to the Execute of the
	// same group.
	sub uint64
	// subStart is the time of the first request of that group.
	subStart uint64
	// q is the query of a kQuery or kExecute entry.
	q *Query
	// For Parse, Bind, Describe and Close: the statement (or portal) named
	// and what is known of its SQL, used if the request fails.
	name        string
	text        string
	textUnknown bool
	truncated   bool
	// inserted: this Parse created its statement in the table (undone if
	// the server rejects it).
	inserted bool
}

// fifo is a bounded ring of pending entries, oldest first.
type fifo struct {
	buf  []entry
	head int
	n    int
}

func (f *fifo) len() int { return f.n }

func (f *fifo) at(i int) *entry { return &f.buf[(f.head+i)%len(f.buf)] }

func (f *fifo) push(e entry) {
	if f.n == len(f.buf) {
		nb := make([]entry, max(8, 2*len(f.buf)))
		for i := range f.n {
			nb[i] = *f.at(i)
		}
		f.buf = nb
		f.head = 0
	}
	f.buf[(f.head+f.n)%len(f.buf)] = e
	f.n++
}

func (f *fifo) pop() entry {
	e := f.buf[f.head]
	f.buf[f.head] = entry{} // drop references
	f.head = (f.head + 1) % len(f.buf)
	f.n--
	return e
}
