package upstream

import (
	"bufio"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// defaultUserAgent is what net/http sends for a request without a
// User-Agent header.
const defaultUserAgent = "Go-http-client/1.1"

// writeRequest writes req to bw exactly as (*http.Request).Write does: by
// itself for a request without a body (most of a proxy's), through
// Request.Write for the others and for what it leaves out (see
// writeHead).
func writeRequest(bw *bufio.Writer, req *http.Request, trace *httptrace.ClientTrace) error {
	if writeHead(bw, req, trace) {
		return nil
	}
	return req.Write(bw)
}

// writeHead writes the head of a request without a body as Request.Write
// would, without its allocations, and reports whether it did: it writes
// nothing and returns false for a request with a body or trailers, an
// opaque URL, Close set, a Host that needs IDNA, has a zone or is invalid,
// or a trace that wants to hear about header fields (Request.Write tells
// it).
func writeHead(bw *bufio.Writer, req *http.Request, trace *httptrace.ClientTrace) bool {
	if hasBody(req) || req.ContentLength != 0 || len(req.Trailer) > 0 || req.Close ||
		req.URL.Opaque != "" || len(req.TransferEncoding) > 0 {
		return false
	}
	if trace != nil && (trace.WroteHeaderField != nil || trace.WroteHeaders != nil || trace.WroteRequest != nil) {
		return false
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	for i := range len(host) {
		if host[i] >= 0x80 || host[i] == '%' {
			return false // punycode or a zone: Request.Write's business
		}
	}
	if !httpguts.ValidHostHeader(host) {
		return false // Request.Write says why
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}

	bw.WriteString(method)
	bw.WriteByte(' ')
	if p := req.URL.EscapedPath(); p != "" {
		bw.WriteString(p)
	} else {
		bw.WriteByte('/')
	}
	if req.URL.ForceQuery || req.URL.RawQuery != "" {
		bw.WriteByte('?')
		bw.WriteString(req.URL.RawQuery)
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")

	ua := defaultUserAgent
	if vs, ok := req.Header["User-Agent"]; ok {
		ua = ""
		if len(vs) > 0 {
			ua = vs[0]
		}
	}
	if ua != "" {
		bw.WriteString("User-Agent: ")
		bw.WriteString(ua)
		bw.WriteString("\r\n")
	}
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n")
	}

	var buf [32]string
	keys := buf[:0]
	for k := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range req.Header[k] {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(strings.Trim(v, " \t\r\n"))
			bw.WriteString("\r\n")
		}
	}
	bw.WriteString("\r\n")
	return true
}
