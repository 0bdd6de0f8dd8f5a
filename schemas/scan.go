package schemas

// maxDepth is the deepest nesting of arrays and objects accepted, as in
// encoding/json.
const maxDepth = 10000

// scanner validates a JSON text exactly as json.Valid does (RFC 8259;
// bytes that are not UTF-8 are accepted inside strings, as encoding/json
// accepts them) in one pass without allocating, and records the
// boundaries of the elements of a top-level array on the way: the parsers
// then need no second pass to find them. FuzzScanMatchesEncodingJSON holds
// it to json.Valid.
type scanner struct {
	b     []byte
	depth int
	// spans receives the top-level array's elements, up to max; count
	// counts them all.
	spans []span
	max   int
	count int
}

// scan reports whether s.b is one valid JSON value.
func (s *scanner) scan() bool {
	i := skipSpace(s.b, 0)
	if i >= len(s.b) {
		return false
	}
	var end int
	if s.b[i] == '[' {
		end = s.array(i, true)
	} else {
		end = s.value(i)
	}
	return end >= 0 && skipSpace(s.b, end) == len(s.b)
}

// value returns the index just past the value at i, or -1.
func (s *scanner) value(i int) int {
	if i >= len(s.b) {
		return -1
	}
	switch c := s.b[i]; {
	case c == '{':
		return s.object(i)
	case c == '[':
		return s.array(i, false)
	case c == '"':
		return s.str(i)
	case c == '-' || '0' <= c && c <= '9':
		return s.number(i)
	case c == 't':
		return s.literal(i, "true")
	case c == 'f':
		return s.literal(i, "false")
	case c == 'n':
		return s.literal(i, "null")
	}
	return -1
}

func (s *scanner) object(i int) int {
	if s.depth++; s.depth > maxDepth {
		return -1
	}
	i = skipSpace(s.b, i+1)
	if i < len(s.b) && s.b[i] == '}' {
		s.depth--
		return i + 1
	}
	for {
		if i >= len(s.b) || s.b[i] != '"' {
			return -1
		}
		if i = s.str(i); i < 0 {
			return -1
		}
		i = skipSpace(s.b, i)
		if i >= len(s.b) || s.b[i] != ':' {
			return -1
		}
		if i = s.value(skipSpace(s.b, i+1)); i < 0 {
			return -1
		}
		i = skipSpace(s.b, i)
		if i >= len(s.b) {
			return -1
		}
		switch s.b[i] {
		case ',':
			i = skipSpace(s.b, i+1)
		case '}':
			s.depth--
			return i + 1
		default:
			return -1
		}
	}
}

// array scans the array at i; top says it is the body's top-level array,
// whose elements are recorded.
func (s *scanner) array(i int, top bool) int {
	if s.depth++; s.depth > maxDepth {
		return -1
	}
	i = skipSpace(s.b, i+1)
	if i < len(s.b) && s.b[i] == ']' {
		s.depth--
		return i + 1
	}
	for {
		start := i
		if i = s.value(i); i < 0 {
			return -1
		}
		if top {
			if s.count < s.max {
				s.spans = append(s.spans, span{start, i})
			}
			s.count++
		}
		i = skipSpace(s.b, i)
		if i >= len(s.b) {
			return -1
		}
		switch s.b[i] {
		case ',':
			i = skipSpace(s.b, i+1)
		case ']':
			s.depth--
			return i + 1
		default:
			return -1
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
