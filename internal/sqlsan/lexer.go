package sqlsan

// tokKind classifies a lexical token of PostgreSQL SQL.
type tokKind uint8

const (
	tkIdent  tokKind = iota + 1 // unquoted identifier or keyword
	tkQIdent                    // "quoted identifier" or U&"..."
	tkString                    // '...', E'...', B'...', X'...', N'...', U&'...', $tag$...$tag$
	tkNumber                    // 42, 1.5e-3, .5, 0x1F, 1_000, and -42 after an operator
	tkParam                     // $1
	tkOp                        // operator: + - * / < > = ~ ! @ # % ^ & | ` ? and runs of them
	tkPunct                     // ( ) [ ] , ; : :: .
)

// token is a span of the input. space says whitespace or a comment came
// before it.
type token struct {
	kind       tokKind
	space      bool
	kw         kwInfo // for tkIdent: what keyword it is, if any
	start, end int
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// isIdentStart: letters, underscore, and any byte of a multi-byte UTF-8
// character (PostgreSQL accepts those in identifiers).
func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func isIdentCont(c byte) bool { return isIdentStart(c) || isDigit(c) || c == '$' }

// isOpChar lists the characters PostgreSQL operators are made of.
func isOpChar(c byte) bool {
	switch c {
	case '+', '-', '*', '/', '<', '>', '=', '~', '!', '@', '#', '%', '^', '&', '|', '`', '?':
		return true
	}
	return false
}

// lex appends the tokens of s to toks. It never fails: unterminated strings,
// quoted identifiers and comments run to the end of the input.
func lex(s string, toks []token) []token {
	space := false
	i, n := 0, len(s)
	for i < n {
		c := s[i]
		start := i
		var k tokKind
		switch {
		case isSpace(c):
			i++
			space = true
			continue
		case c == '-' && i+1 < n && s[i+1] == '-':
			// Line comment.
			for i < n && s[i] != '\n' {
				i++
			}
			space = true
			continue
		case c == '/' && i+1 < n && s[i+1] == '*':
			// Block comment; PostgreSQL nests them.
			i = skipBlockComment(s, i)
			space = true
			continue
		case c == '\'':
			i = skipQuoted(s, i+1, '\'', false)
			k = tkString
		case (c == 'E' || c == 'e') && i+1 < n && s[i+1] == '\'':
			// Escape string: backslash escapes as well as ''.
			i = skipQuoted(s, i+2, '\'', true)
			k = tkString
		case (c == 'B' || c == 'b' || c == 'X' || c == 'x' || c == 'N' || c == 'n') && i+1 < n && s[i+1] == '\'':
			// Bit string, hex bit string, national character string.
			i = skipQuoted(s, i+2, '\'', false)
			k = tkString
		case (c == 'U' || c == 'u') && i+2 < n && s[i+1] == '&' && (s[i+2] == '\'' || s[i+2] == '"'):
			// Unicode escape string or identifier.
			q := s[i+2]
			i = skipQuoted(s, i+3, q, false)
			if q == '\'' {
				k = tkString
			} else {
				k = tkQIdent
			}
		case c == '"':
			i = skipQuoted(s, i+1, '"', false)
			k = tkQIdent
		case c == '$':
			if i+1 < n && isDigit(s[i+1]) {
				i += 2
				for i < n && isDigit(s[i]) {
					i++
				}
				k = tkParam
			} else if end, ok := dollarQuoted(s, i); ok {
				i = end
				k = tkString
			} else {
				i++
				k = tkOp
			}
		case isDigit(c) || c == '.' && i+1 < n && isDigit(s[i+1]):
			i = skipNumber(s, i)
			k = tkNumber
		case isIdentStart(c):
			i++
			for i < n && isIdentCont(s[i]) {
				i++
			}
			k = tkIdent
		case isOpChar(c):
			i = skipOperator(s, i)
			k = tkOp
			// A lone minus before a number is a sign when nothing that ends
			// an operand precedes it: "= -1", "(-1", "SELECT -1", but
			// "a - 1" and "f(x)-1" are subtractions.
			if i == start+1 && c == '-' && i < n && (isDigit(s[i]) || s[i] == '.' && i+1 < n && isDigit(s[i+1])) &&
				!endsOperand(s, toks) {
				i = skipNumber(s, i)
				k = tkNumber
			}
		case c == ':':
			i++
			if i < n && s[i] == ':' {
				i++
			}
			k = tkPunct
		default:
			// ( ) [ ] , ; . and anything unexpected, one byte at a time.
			i++
			k = tkPunct
		}
		t := token{kind: k, space: space, start: start, end: i}
		if k == tkIdent {
			t.kw = lookupKeyword(s[start:i])
		}
		toks = append(toks, t)
		space = false
	}
	return toks
}

// endsOperand reports whether the last token can end an operand, which
// makes a following minus binary.
func endsOperand(s string, toks []token) bool {
	if len(toks) == 0 {
		return false
	}
	t := toks[len(toks)-1]
	switch t.kind {
	case tkQIdent, tkString, tkNumber, tkParam:
		return true
	case tkPunct:
		c := s[t.start]
		return c == ')' || c == ']'
	case tkIdent:
		// A keyword that introduces an expression does not end an operand;
		// a column name (or END of CASE) does.
		return !t.kw.expr
	}
	return false
}

// skipBlockComment returns the index after the (possibly nested) block
// comment starting at i.
func skipBlockComment(s string, i int) int {
	depth := 0
	n := len(s)
	for i < n {
		switch {
		case s[i] == '/' && i+1 < n && s[i+1] == '*':
			depth++
			i += 2
		case s[i] == '*' && i+1 < n && s[i+1] == '/':
			depth--
			i += 2
			if depth == 0 {
				return i
			}
		default:
			i++
		}
	}
	return n
}

// skipQuoted returns the index after the closing quote q; a doubled quote
// is an escaped one, and with backslash a backslash escapes the next byte.
func skipQuoted(s string, i int, q byte, backslash bool) int {
	n := len(s)
	for i < n {
		c := s[i]
		switch {
		case backslash && c == '\\':
			i += 2
		case c == q:
			if i+1 < n && s[i+1] == q {
				i += 2
				continue
			}
			return i + 1
		default:
			i++
		}
	}
	return n
}

// dollarQuoted recognises $tag$...$tag$ (tag empty or identifier-like, not
// starting with a digit) at i and returns the index after it. The body ends
// only at the same tag, so other dollar quotes may nest inside.
func dollarQuoted(s string, i int) (int, bool) {
	j := i + 1
	n := len(s)
	if j < n && s[j] != '$' {
		if !isIdentStart(s[j]) {
			return 0, false
		}
		for j < n && s[j] != '$' {
			if !isIdentStart(s[j]) && !isDigit(s[j]) {
				return 0, false
			}
			j++
		}
	}
	if j >= n {
		return 0, false
	}
	tag := s[i : j+1] // "$tag$"
	body := j + 1
	for k := body; k+len(tag) <= n; k++ {
		if s[k] == '$' && s[k:k+len(tag)] == tag {
			return k + len(tag), true
		}
	}
	return n, true // unterminated: the rest is the literal
}

// skipNumber returns the index after the numeric literal at i: decimal with
// optional fraction and exponent, or 0x/0o/0b integers; underscores may
// separate digits (PostgreSQL 16).
func skipNumber(s string, i int) int {
	n := len(s)
	if s[i] == '0' && i+2 < n {
		switch s[i+1] {
		case 'x', 'X', 'o', 'O', 'b', 'B':
			j := i + 2
			for j < n && (isHex(s[j]) || s[j] == '_') {
				j++
			}
			if j > i+2 {
				return j
			}
		}
	}
	for i < n && (isDigit(s[i]) || s[i] == '_') {
		i++
	}
	// A decimal point, unless the dot is followed by another dot.
	if i < n && s[i] == '.' && (i+1 >= n || s[i+1] != '.') {
		i++
		for i < n && (isDigit(s[i]) || s[i] == '_') {
			i++
		}
	}
	if i < n && (s[i] == 'e' || s[i] == 'E') {
		j := i + 1
		if j < n && (s[j] == '+' || s[j] == '-') {
			j++
		}
		if j < n && isDigit(s[j]) {
			for j < n && isDigit(s[j]) {
				j++
			}
			i = j
		}
	}
	return i
}

func isHex(c byte) bool {
	return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// skipOperator returns the end of the operator starting at i. Like the
// PostgreSQL lexer it stops before a comment start, and drops trailing + or
// - unless the operator contains one of ~ ! @ # % ^ & | ` ?, so "=-1" is
// "=" then "-1".
func skipOperator(s string, i int) int {
	start := i
	n := len(s)
	for i < n && isOpChar(s[i]) {
		if i > start && (s[i] == '-' && i+1 < n && s[i+1] == '-' || s[i] == '/' && i+1 < n && s[i+1] == '*') {
			break
		}
		i++
	}
	if i-start > 1 {
		special := false
		for k := start; k < i; k++ {
			switch s[k] {
			case '~', '!', '@', '#', '%', '^', '&', '|', '`', '?':
				special = true
			}
		}
		if !special {
			for i-start > 1 && (s[i-1] == '+' || s[i-1] == '-') {
				i--
			}
		}
	}
	return i
}
