package health

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
)

// response is what a probe learns of an answer.
type response struct {
	code      int    // the final status; 0 if none was read
	body      []byte // the body's first maxBodyRead bytes, if asked for
	keepAlive bool   // the connection may carry the next probe
}

var (
	// errNoResponse: the connection ended before any byte of an answer,
	// as a kept-alive connection the instance closed does.
	errNoResponse = errors.New("the connection closed with no answer")
	errHeadTooBig = errors.New("response head too large")
)

// readResponse reads an answer to a request of method from b.br: interim
// (1xx) responses, then the final one's head and its body, whose first
// maxBodyRead bytes it keeps in b.body if keepBody. A body longer than that
// is left unread, and the connection not kept. An error after the status
// line leaves res.code set.
//
// It understands what a health endpoint may send: HTTP/1.0 and 1.1,
// Content-Length, chunked bodies (trailers skipped), bodies that end with
// the connection, Connection: close and keep-alive.
func readResponse(b *buffers, method string, keepBody bool) (res response, err error) {
	br := b.br
	var h head
	for {
		if h, err = readHead(br); err != nil {
			return res, err
		}
		if h.code >= 200 || h.code == http.StatusSwitchingProtocols {
			break
		}
	}
	res.code = h.code
	res.keepAlive = h.keepAlive
	if keepBody {
		b.body = b.body[:0]
	}
	switch {
	case method == http.MethodHead || h.code == http.StatusNoContent || h.code == http.StatusNotModified:
		// No body.
	case h.code == http.StatusSwitchingProtocols:
		res.keepAlive = false // a protocol we do not speak
	case h.chunked:
		err = readChunked(b, keepBody, &res)
	case h.length >= 0:
		err = readBody(b, h.length, keepBody, &res)
	default:
		// The body ends with the connection.
		res.keepAlive = false
		err = readBody(b, -1, keepBody, &res)
	}
	if keepBody {
		res.body = b.body
	}
	return res, err
}

// head is what a response head says about the response.
type head struct {
	code      int
	chunked   bool
	length    int64 // -1 if not given
	keepAlive bool
}

// readHead reads one response head.
func readHead(br *bufio.Reader) (h head, err error) {
	line, err := readLine(br)
	if err != nil {
		if len(line) == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)) {
			return h, errNoResponse
		}
		return h, err
	}
	// HTTP/1.x SP 3DIGIT [SP reason]
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' ||
		(line[7] != '0' && line[7] != '1') || (len(line) > 12 && line[12] != ' ') {
		return h, fmt.Errorf("malformed status line %q", truncate(line))
	}
	code, ok := digits(line[9:12])
	if !ok || code < 100 {
		return h, fmt.Errorf("malformed status line %q", truncate(line))
	}
	h.code, h.length = int(code), -1
	http11 := line[7] == '1'
	var closeToken, keepAliveToken, sawLength bool
	for {
		line, err := readLine(br)
		if err != nil {
			return h, err
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			if line[0] == ' ' || line[0] == '\t' {
				continue // an obsolete continuation of the header before
			}
			return h, fmt.Errorf("malformed header line %q", truncate(line))
		}
		value = bytes.TrimSpace(value)
		switch {
		case asciiEqualFold(name, "Content-Length"):
			n, ok := digits(value)
			if !ok || (sawLength && n != h.length) {
				return h, fmt.Errorf("bad Content-Length %q", truncate(value))
			}
			h.length, sawLength = n, true
		case asciiEqualFold(name, "Transfer-Encoding"):
			if !http11 {
				continue // HTTP/1.0 has none: the body ends with the connection
			}
			if !asciiEqualFold(value, "chunked") {
				return h, fmt.Errorf("unsupported Transfer-Encoding %q", truncate(value))
			}
			h.chunked = true
		case asciiEqualFold(name, "Connection"):
			for token := range bytes.SplitSeq(value, []byte(",")) {
				token = bytes.TrimSpace(token)
				closeToken = closeToken || asciiEqualFold(token, "close")
				keepAliveToken = keepAliveToken || asciiEqualFold(token, "keep-alive")
			}
		}
	}
	if h.chunked {
		h.length = -1
	}
	h.keepAlive = !closeToken && (http11 || keepAliveToken)
	return h, nil
}

// readBody reads a body of n bytes (n < 0: up to the end of the
// connection), keeping it in b.body if keep. Past maxBodyRead bytes, the
// rest is left unread, and the connection not kept.
func readBody(b *buffers, n int64, keep bool, res *response) error {
	untilEOF := n < 0
	if untilEOF || n > maxBodyRead {
		res.keepAlive = false
		n = maxBodyRead
	}
	var err error
	if keep {
		start := len(b.body)
		b.body = grow(b.body, int(n))
		var m int
		m, err = io.ReadFull(b.br, b.body[start:start+int(n)])
		b.body = b.body[:start+m]
	} else {
		_, err = b.br.Discard(int(n))
	}
	if untilEOF && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
		return nil // the body ended with the connection
	}
	return eofUnexpected(err)
}

// readChunked reads a chunked body and its trailers.
func readChunked(b *buffers, keep bool, res *response) error {
	var total int64
	for {
		line, err := readLine(b.br)
		if err != nil {
			return eofUnexpected(err)
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i] // chunk extensions
		}
		size, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 62)
		if err != nil || size < 0 {
			return fmt.Errorf("malformed chunk size %q", truncate(line))
		}
		if size == 0 {
			break
		}
		if total+size > maxBodyRead {
			res.keepAlive = false
			return readBody(b, maxBodyRead-total, keep, res)
		}
		total += size
		if err := readBody(b, size, keep, res); err != nil {
			return err
		}
		if line, err := readLine(b.br); err != nil || len(line) != 0 {
			if err == nil {
				err = errors.New("malformed chunk end")
			}
			return eofUnexpected(err)
		}
	}
	for {
		// Trailers, skipped, up to the blank line.
		line, err := readLine(b.br)
		if err != nil {
			return eofUnexpected(err)
		}
		if len(line) == 0 {
			return nil
		}
	}
}

// readLine returns the next line without its line ending; it is valid
// until the next read.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, errHeadTooBig
	}
	if err != nil {
		return line, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

func eofUnexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// digits parses a non-negative decimal number of at most 18 digits.
func digits(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// asciiEqualFold reports whether b is s, ignoring ASCII case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c, d := b[i], s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// grow returns b with room for n more bytes.
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	return append(b[:cap(b)], make([]byte, len(b)+n-cap(b))...)[:len(b)]
}

// truncate shortens what goes into an error message.
func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}
