package postgres

// ParseCommandTag splits a CommandComplete tag into the command and the row
// count it reports: "INSERT 0 5" gives ("INSERT", 5), "SELECT 3" ("SELECT",
// 3), "COPY 7" ("COPY", 7), "CREATE TABLE" ("CREATE TABLE", -1). The
// command is a substring of tag (no allocation).
func ParseCommandTag(tag string) (command string, rows int64) {
	rows = -1
	end := len(tag)
	// Counts are trailing space-separated decimal words; INSERT carries an
	// OID (always 0 since PostgreSQL 12) before its count.
	for first := true; ; first = false {
		i := end
		for i > 0 && tag[i-1] >= '0' && tag[i-1] <= '9' {
			i--
		}
		if i == end || i == 0 || tag[i-1] != ' ' {
			break
		}
		if first {
			var n int64
			ok := true
			for _, c := range []byte(tag[i:end]) {
				if n > (1<<63-1-9)/10 {
					ok = false
					break
				}
				n = n*10 + int64(c-'0')
			}
			if ok {
				rows = n
			}
		}
		end = i - 1
	}
	return tag[:end], rows
}
