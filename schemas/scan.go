package schemas

// maxDepth is the deepest nesting of arrays and objects accepted, as in
// encoding/json.
const maxDepth = 10000

// scanner validates a JSON text exactly as json.Valid does (RFC 8259;
// bytes that are not UTF-8 are accepted inside strings, as encoding/json
// accepts them) in one pass without allocating (but for its nesting stack,
// one byte a level), and records the boundaries of the elements of a
// top-level array on the way: the parsers then need no second pass to find
// them. It is iterative, so hostile nesting costs a byte a level, not a
// stack frame. FuzzScanMatchesEncodingJSON holds it to json.Valid.
type scanner struct {
	b []byte
	// spans receives the top-level array's elements, up to max; count
	// counts them all.
	spans []span
	max   int
	count int
	// stack holds the open containers, '{' or '['.
	stack []byte
}

const (
	wantValue = iota
	afterValue
	wantKey
)

// scan reports whether s.b is one valid JSON value.
func (s *scanner) scan() bool {
	b := s.b
	stack := s.stack[:0]
	defer func() { s.stack = stack[:0] }()
	i := skipSpace(b, 0)
	if i >= len(b) {
		return false
	}
	top := b[i] == '[' // record the elements of a top-level array
	elemStart := 0
	mode := wantValue
	for {
		switch mode {
		case wantValue:
			if i >= len(b) {
				return false
			}
			if top && len(stack) == 1 {
				elemStart = i
			}
			switch c := b[i]; {
			case c == '{' || c == '[':
				if len(stack) == maxDepth {
					return false
				}
				j := skipSpace(b, i+1)
				if j < len(b) && (c == '{' && b[j] == '}' || c == '[' && b[j] == ']') {
					i, mode = j+1, afterValue
					continue
				}
				stack = append(stack, c)
				i, mode = j, wantValue
				if c == '{' {
					mode = wantKey
				}
				continue
			case c == '"':
				i = s.str(i)
			case c == '-' || '0' <= c && c <= '9':
				i = s.number(i)
			case c == 't':
				i = s.literal(i, "true")
			case c == 'f':
				i = s.literal(i, "false")
			case c == 'n':
				i = s.literal(i, "null")
			default:
				return false
			}
			if i < 0 {
				return false
			}
			mode = afterValue
		case afterValue:
			if top && len(stack) == 1 { // an element of the top-level array ended
				if s.count < s.max {
					s.spans = append(s.spans, span{elemStart, i})
				}
				s.count++
			}
			i = skipSpace(b, i)
			if len(stack) == 0 {
				return i == len(b)
			}
			if i >= len(b) {
				return false
			}
			open := stack[len(stack)-1]
			switch b[i] {
			case ',':
				i, mode = skipSpace(b, i+1), wantValue
				if open == '{' {
					mode = wantKey
				}
			case '}', ']':
				if open == '{' && b[i] != '}' || open == '[' && b[i] != ']' {
					return false
				}
				stack = stack[:len(stack)-1]
				i++
			default:
				return false
			}
		case wantKey:
			if i >= len(b) || b[i] != '"' {
				return false
			}
			if i = s.str(i); i < 0 {
				return false
			}
			i = skipSpace(b, i)
			if i >= len(b) || b[i] != ':' {
				return false
			}
			i, mode = skipSpace(b, i+1), wantValue
		}
	}
}

// str returns the index just past the string at i (a '"'), or -1.
func (s *scanner) str(i int) int {
	b := s.b
	for j := i + 1; j < len(b); {
		c := b[j]
		if c >= 0x20 && c != '"' && c != '\\' {
			j++
			continue
		}
		switch c {
		case '"':
			return j + 1
		case '\\':
			if j+1 >= len(b) {
				return -1
			}
			switch b[j+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				j += 2
			case 'u':
				if j+6 > len(b) || !isHex(b[j+2]) || !isHex(b[j+3]) || !isHex(b[j+4]) || !isHex(b[j+5]) {
					return -1
				}
				j += 6
			default:
				return -1
			}
		default: // a control character
			return -1
		}
	}
	return -1
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// number returns the index just past the number at i, or -1.
func (s *scanner) number(i int) int {
	b := s.b
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = digits(b, i+1)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return -1
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return -1
		}
		i = j
	}
	return i
}

func digits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

func (s *scanner) literal(i int, lit string) int {
	if len(s.b)-i < len(lit) || string(s.b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}
