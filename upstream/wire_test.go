package upstream

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// recorder is a backend that keeps the exact bytes of each request.
type recorder struct {
	*rawServer
	got chan string
}

type teeReader struct {
	r   io.Reader
	buf *bytes.Buffer
}

func (t *teeReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.buf.Write(p[:n])
	return n, err
}

func newRecorder(t *testing.T) *recorder {
	rec := &recorder{got: make(chan string, 16)}
	rec.rawServer = newRawServer(t, func(_ int, c net.Conn) {
		var buf bytes.Buffer
		br := bufio.NewReader(&teeReader{c, &buf})
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return
			}
			// The client waits for the answer: nothing beyond this
			// request has been read.
			rec.got <- buf.String()
			buf.Reset()
			if _, err := io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n"); err != nil {
				return
			}
		}
	})
	return rec
}

// TestWireFormat: the bytes written upstream are those http.Transport (with
// DisableCompression, as a proxy uses it) writes for the same request.
func TestWireFormat(t *testing.T) {
	tests := []struct {
		name string
		req  func(base string) *http.Request
	}{
		{"GET", func(b string) *http.Request { return mustReq(t, "GET", b+"/path?q=1&r=two", nil) }},
		{"headers", func(b string) *http.Request {
			r := mustReq(t, "GET", b+"/", nil)
			r.Header.Add("Accept", "text/html")
			r.Header.Add("Accept", "application/json")
			r.Header["x-lower-case"] = []string{"kept as is"}
			r.Header.Set("X-Forwarded-For", "192.0.2.1, 198.51.100.2")
			r.Header.Set("Cookie", "a=1; b=2")
			return r
		}},
		{"no User-Agent: Go's default", func(b string) *http.Request { return mustReq(t, "GET", b+"/", nil) }},
		{"empty User-Agent: none", func(b string) *http.Request {
			r := mustReq(t, "GET", b+"/", nil)
			r.Header.Set("User-Agent", "")
			return r
		}},
		{"custom User-Agent", func(b string) *http.Request {
			r := mustReq(t, "GET", b+"/", nil)
			r.Header.Set("User-Agent", "curl/8.0")
			return r
		}},
		{"Host from req.Host", func(b string) *http.Request {
			r := mustReq(t, "GET", b+"/", nil)
			r.Host = "shop.example.com:8443"
			return r
		}},
		{"escaped path and raw query", func(b string) *http.Request {
			r := mustReq(t, "GET", b+"/a%2Fb/c%20d?raw=%zz&x=a+b&empty", nil)
			return r
		}},
		{"URL with RawPath set by a proxy", func(b string) *http.Request {
			u, _ := url.Parse(b)
			u.Path, u.RawPath, u.RawQuery = "/base/a/b c", "/base/a/b%20c", "q=%7e"
			r := mustReq(t, "GET", u.String(), nil)
			r.URL = u
			return r
		}},
		{"POST with a known length", func(b string) *http.Request {
			return mustReq(t, "POST", b+"/form", strings.NewReader("a=1&b=2"))
		}},
		{"POST with an unknown length", func(b string) *http.Request {
			return mustReq(t, "POST", b+"/stream", io.NopCloser(strings.NewReader("streamed body")))
		}},
		{"chunked with trailers", func(b string) *http.Request {
			r := mustReq(t, "POST", b+"/t", nil)
			r.Trailer = http.Header{"X-Checksum": nil, "X-Other": nil}
			r.Body = &trailerBody{r: strings.NewReader("hello"), trailer: r.Trailer}
			r.ContentLength = -1
			return r
		}},
		{"explicit Transfer-Encoding", func(b string) *http.Request {
			r := mustReq(t, "PUT", b+"/te", bytes.NewReader([]byte("12345")))
			r.TransferEncoding = []string{"chunked"}
			return r
		}},
		{"empty POST", func(b string) *http.Request { return mustReq(t, "POST", b+"/", http.NoBody) }},
		{"DELETE", func(b string) *http.Request { return mustReq(t, "DELETE", b+"/item/1", nil) }},
		{"HEAD", func(b string) *http.Request { return mustReq(t, "HEAD", b+"/", nil) }},
		{"OPTIONS *", func(b string) *http.Request {
			r := mustReq(t, "OPTIONS", b, nil)
			r.URL.Opaque = "*"
			return r
		}},
		{"Close", func(b string) *http.Request {
			r := mustReq(t, "GET", b+"/", nil)
			r.Close = true
			return r
		}},
		{"Expect: 100-continue", func(b string) *http.Request {
			r := mustReq(t, "PUT", b+"/upload", strings.NewReader("data"))
			r.Header.Set("Expect", "100-continue")
			return r
		}},
		{"upgrade request", func(b string) *http.Request {
			r := mustReq(t, "GET", b+"/ws", nil)
			r.Header.Set("Connection", "Upgrade")
			r.Header.Set("Upgrade", "websocket")
			r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
			return r
		}},
		{"values trimmed, empty lists, many headers", func(b string) *http.Request {
			r := mustReq(t, "DELETE", b+"/x?", nil)
			r.URL.ForceQuery = true
			r.Header.Set("X-Pad", " \t padded \t ")
			r.Header["X-Empty"] = []string{}
			r.Header["User-Agent"] = []string{}
			for i := range 40 {
				r.Header.Set(fmt.Sprintf("X-H%02d", i), strconv.Itoa(i))
			}
			return r
		}},
		{"PATCH without a body", func(b string) *http.Request { return mustReq(t, "PATCH", b+"/p", nil) }},
		{"Host header in the map", func(b string) *http.Request {
			r := mustReq(t, "GET", b+"/", nil)
			r.Header.Set("Host", "ignored.example")
			return r
		}},
		{"tab in a header value", func(b string) *http.Request {
			r := mustReq(t, "GET", b+"/", nil)
			r.Header.Set("X-Tab", "a\tb")
			return r
		}},
	}
	rec := newRecorder(t)
	ours := newTransport(t)
	std := &http.Transport{DisableCompression: true}
	t.Cleanup(std.CloseIdleConnections)
	send := func(t *testing.T, rt http.RoundTripper, req *http.Request) string {
		t.Helper()
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return <-rec.got
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := send(t, std, tc.req(rec.url))
			got := send(t, ours, tc.req(rec.url))
			if got != want {
				t.Errorf("wrote\n%q\nhttp.Transport wrote\n%q", got, want)
			}
		})
	}
}

// TestInvalidRequests: what http.Transport refuses to send, Transport
// refuses too, before dialing.
func TestInvalidRequests(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*http.Request)
	}{
		{"header name with a space", func(r *http.Request) { r.Header["Bad Name"] = []string{"x"} }},
		{"header value with a newline", func(r *http.Request) { r.Header.Set("X-Bad", "a\r\nInjected: yes") }},
		{"header value with NUL", func(r *http.Request) { r.Header.Set("X-Bad", "a\x00b") }},
		{"trailer name invalid", func(r *http.Request) { r.Trailer = http.Header{"Bad:Name": nil} }},
		{"method with a space", func(r *http.Request) { r.Method = "GE T" }},
		{"no host", func(r *http.Request) { r.URL.Host = "" }},
		{"nil header", func(r *http.Request) { r.Header = nil }},
		{"length without a body", func(r *http.Request) { r.ContentLength = 10 }},
	}
	rec, recStd := newRecorder(t), newRecorder(t)
	ours := newTransport(t)
	std := &http.Transport{DisableCompression: true}
	t.Cleanup(std.CloseIdleConnections)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, rt := range []http.RoundTripper{std, ours} {
				u := rec.url
				if rt == std {
					u = recStd.url
				}
				req := mustReq(t, "GET", u+"/", nil)
				tc.mod(req)
				resp, err := rt.RoundTrip(req)
				if err == nil {
					resp.Body.Close()
					t.Errorf("%T sent it", rt)
				}
			}
		})
	}
	if n := rec.accepts.Load(); n != 0 {
		t.Errorf("%d connections made for invalid requests", n)
	}
}
