// Package cookie reads cookies from request headers without allocating,
// for code on the request path (http.Request.Cookie parses every cookie
// into a new slice).
package cookie

import "strings"

// Value returns the value of the first non-empty cookie named name in the
// Cookie header lines, unquoted, or "".
func Value(lines []string, name string) string {
	for _, line := range lines {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			if !ok || k != name {
				continue
			}
			if len(v) > 1 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			if v != "" {
				return v
			}
		}
	}
	return ""
}
