// Package upstream is an HTTP/1.1 client transport for a reverse proxy's
// backends, cheaper per request than http.Transport.
//
// http.Transport runs two goroutines per connection (a read loop and a
// write loop) and hands every request and response between them and the
// caller over channels. [Transport] does the whole exchange in the
// caller's goroutine: it takes an idle keep-alive connection (or dials
// one), writes the request (a request without a body by itself, the bytes
// (*http.Request).Write would write; others with Request.Write), reads the reply
// with http.ReadResponse through a pooled bufio.Reader, and gives the
// connection back when the caller has read the response body to its end.
// A second goroutine runs only for requests with a body, so that the body
// streams while the response may already be coming. Idle connections have
// no goroutine: a pool's single timer closes those idle too long.
//
// It is meant to sit under a reverse proxy's own header handling (the
// load balancer's outbound.go and relay.go): it passes 1xx responses to an
// [Interim] set with [WithInterim] (and to httptrace's Got1xxResponse),
// and returns a 101 response whose Body is an io.ReadWriteCloser, the
// connection, for protocol upgrades. In the load balancer's transport.go:
//
//	fast := &upstream.Transport{
//		Fallback:              newStdTransport(timeout, dial), // an *http.Transport
//		DialContext:           dial,
//		DialTimeout:           timeout,
//		TLSHandshakeTimeout:   timeout,
//		ResponseHeaderTimeout: timeout,
//		ExpectContinueTimeout: time.Second,
//		MaxIdlePerHost:        256,
//		IdleTimeout:           90 * time.Second,
//	}
//
// # What goes where
//
// Chosen per request. The fast path: scheme "http"; "https" when
// TLSClientConfig is set (HTTP/1.1 only: ALPN offers just "http/1.1", SNI
// is the URL's host name); upgrade requests without a body (WebSocket).
// Fallback: other schemes, https without TLSClientConfig, CONNECT,
// upgrade requests with a body (h2c's upgrade), hosts with non-ASCII
// names (IDNA), and whatever UseFallback picks.
//
// # Connection reuse
//
// A connection goes back to the pool only when the response body was read
// to io.EOF (or the response has none: HEAD, 1xx, 204, 304, a zero
// length), neither side asked to close it (Connection: close either way,
// Request.Close, HTTP/1.0 without keep-alive, a body delimited by the end
// of the connection), the request body was written in full, and no byte
// beyond the response had been received. Closing a response body before
// its end closes the connection (no draining: a proxy reads to the end
// anyway, and draining could block on a slow backend).
//
// Before an idle connection is used, a non-blocking MSG_PEEK on its socket
// (one syscall, on Linux and the BSDs) tells whether the backend closed or
// reset it, or sent something unasked; such a connection is closed and
// another one taken. If a request still fails on a reused connection
// before any byte of the response arrived, it is sent again on a new
// connection when http.Transport would: if nothing of it was written, or
// if it is idempotent (GET, HEAD, OPTIONS, TRACE, or with an
// Idempotency-Key or X-Idempotency-Key header); and in both cases only if
// its body can be sent again (none, GetBody set, or not read yet). Never
// after a response byte.
//
// # Errors and cancellation
//
// A dial failure is a *net.OpError with Op "dial". No response headers
// within ResponseHeaderTimeout (counted from the end of the request, body
// included) is a net.Error whose Timeout() is true. When the request's
// context ends, the connection's deadline is set in the past
// (context.AfterFunc: no goroutine waits for it), which stops a blocked
// read or write at once; RoundTrip or the body's Read returns the
// context's error, and the connection is closed.
package upstream
