package mappressure

import (
	"bytes"
	"errors"
)

var memlockKey = []byte("\nmemlock:")

// parseMemlock extracts the decimal value of the "memlock:" line.
func parseMemlock(b []byte) (uint64, error) {
	i := bytes.Index(b, memlockKey)
	if i < 0 {
		return 0, errors.New("fdinfo has no memlock line")
	}
	b = b[i+len(memlockKey):]
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	var v uint64
	digits := 0
	for ; digits < len(b) && b[digits] >= '0' && b[digits] <= '9'; digits++ {
		d := uint64(b[digits] - '0')
		if v > (1<<64-1-d)/10 {
			return 0, errors.New("fdinfo memlock overflows uint64")
		}
		v = v*10 + d
	}
	if digits == 0 || digits == len(b) || b[digits] != '\n' {
		return 0, errors.New("fdinfo memlock line is malformed")
	}
	return v, nil
}
