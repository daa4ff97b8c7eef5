package caddylb

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// relay passes the instance's response res to the client: its headers
// straight into the client's header map, without the hop-by-hop ones and
// with the load balancer's own (Via, the sticky cookie) added, its status,
// its body and its trailers (declared or not). It returns an error only
// if nothing was written to the client yet, so that the attempt fails as
// the instance's and may be retried (a *retryStatusError when the status
// is one of retry_status and another attempt is to be made: nothing of the
// response is written then); once the status is out, a body the instance
// breaks off sets at.cutShort (the caller then aborts the response), and
// one the client stops reading just ends the relay.
//
// Bodies are copied through pooled buffers. A response that streams (no
// length, an event stream, gRPC) is flushed after each read; any other
// is left to the writer's buffering, or flushed every flush_interval.
func (at *attempt) relay(res *http.Response, r *http.Request) error {
	defer res.Body.Close()
	if res.StatusCode == http.StatusSwitchingProtocols {
		return at.switchProtocols(res, r)
	}
	if a := at.app; a.limits.auto && a.resendOverloaded(r, res.StatusCode, max(at.inFlight, at.in.InFlight()), &at.rs) {
		// Refused for overload above what its limit now allows: sent
		// again, to it as well, once it has room.
		discard(res.Body)
		at.status = res.StatusCode
		return &retryStatusError{status: res.StatusCode, again: true}
	}
	if a := at.app; !a.retry.status.Empty() && a.retryOnStatus(r, at.in, res.StatusCode, &at.rs) {
		// Retried on another instance: nothing of this response goes to
		// the client. Its body is read (up to 64 KiB) so that the
		// connection may serve again.
		discard(res.Body)
		at.status = res.StatusCode
		return &retryStatusError{status: res.StatusCode}
	}
	h := at.w.Header()
	removeHopByHop(res.Header, false)
	for k, vs := range res.Header {
		h[k] = vs
	}
	if len(res.Trailer) > 0 {
		names := make([]string, 0, len(res.Trailer))
		for k := range res.Trailer {
			names = append(names, k)
		}
		h["Trailer"] = []string{strings.Join(names, ", ")}
	}
	announced := len(res.Trailer)
	at.final(res.StatusCode)
	at.w.WriteHeader(res.StatusCode)

	rc := http.NewResponseController(at.w)
	// A gRPC trailers-only response (its status in the headers) has no
	// body: not flushing lets the server send its headers with the end of
	// the stream, as the client expects.
	stream := (res.ContentLength == -1 || streaming(res.Header["Content-Type"]) || at.app.flush < 0) && res.Header["Grpc-Status"] == nil
	if announced > 0 || stream {
		// Trailers need a chunked response: flushing now keeps the server
		// from buffering a short body and giving it a length.
		_ = rc.Flush()
	}
	var err error
	if every := at.app.flush; every > 0 && !stream {
		// A controller of its own: the flusher outlives this frame, and
		// rc would then be allocated for every response.
		f := &intervalFlusher{w: at.w, rc: http.NewResponseController(at.w), every: every}
		err = at.copyBody(res.Body, f, rc, false)
		f.stop()
	} else {
		err = at.copyBody(res.Body, at.w, rc, stream)
	}
	if isGRPC(res.Header) {
		at.grpcOutcome(res, r, err)
	}
	if err != nil {
		return nil
	}
	if len(res.Trailer) == announced {
		for k, vs := range res.Trailer {
			h[k] = vs
		}
		return nil
	}
	for k, vs := range res.Trailer {
		// Trailers the instance did not declare, sent as such.
		h[http.TrailerPrefix+k] = vs
	}
	return nil
}

// grpcOutcome records how a gRPC call ended, as the HTTP status its gRPC
// status maps to (see grpcCallStatus): the client got a 200 either way, but
// passive health checks, metrics and the report count the call's outcome.
// A call the client cancelled counts as 499; the gRPC status also goes to
// the access log.
func (at *attempt) grpcOutcome(res *http.Response, r *http.Request, copyErr error) {
	if copyErr != nil && r.Context().Err() != nil {
		at.status = StatusClientClosedRequest
		logGRPCStatus(r, 1) // CANCELLED
		return
	}
	if code, status, ok := grpcCallStatus(res.Header, res.Trailer); ok {
		at.status = status
		logGRPCStatus(r, code)
	}
}

// final records the final response's status and adds what goes on it
// only: Via, and the sticky cookie.
func (at *attempt) final(code int) {
	at.status = code
	at.started = true
	at.observe()
	h := at.w.Header()
	if _, ok := h["Content-Type"]; !ok && code != http.StatusSwitchingProtocols {
		// A response the backend did not label stays unlabelled: a key
		// with no value stops net/http from sniffing one.
		h["Content-Type"] = nil
	}
	if at.cookie != "" {
		h.Add("Set-Cookie", at.cookie)
	}
	if prior := h["Via"]; len(prior) > 0 {
		h["Via"] = append(prior[:len(prior):len(prior)], viaValue)
	} else {
		h["Via"] = viaResponseSet
	}
}

// copyBody copies a response body to the client through w (the
// ResponseWriter, or an intervalFlusher of it), flushing after each read
// if stream. It returns the error that ended it: the instance's (and then
// sets at.cutShort, unless the client went away meanwhile) or the
// client's.
func (at *attempt) copyBody(body io.Reader, w io.Writer, rc *http.ResponseController, stream bool) error {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if stream {
				if err := rc.Flush(); err != nil {
					return err
				}
			}
		}
		switch {
		case rerr == io.EOF:
			return nil
		case rerr != nil:
			if at.out.Context().Err() == nil {
				at.cutShort = true
			}
			return rerr
		}
	}
}

// intervalFlusher writes a response body to the client and flushes it
// every interval while something written is not flushed yet (a body that
// trickles in reaches the client at that pace, one that streams fast is
// not flushed after every read). Writes and flushes never overlap.
type intervalFlusher struct {
	w     io.Writer
	rc    *http.ResponseController
	every time.Duration

	mu      sync.Mutex
	timer   *time.Timer
	pending bool // written, not flushed, a flush is scheduled
	stopped bool
}

func (f *intervalFlusher) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.w.Write(p)
	if n > 0 && !f.pending && !f.stopped {
		f.pending = true
		if f.timer == nil {
			f.timer = time.AfterFunc(f.every, f.flush)
		} else {
			f.timer.Reset(f.every)
		}
	}
	return n, err
}

func (f *intervalFlusher) flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pending && !f.stopped {
		f.pending = false
		_ = f.rc.Flush()
	}
}

// stop ends the flushing: after it returns no flush runs, and the handler
// may go on with the response.
func (f *intervalFlusher) stop() {
	f.mu.Lock()
	f.stopped = true
	f.mu.Unlock()
	if f.timer != nil {
		f.timer.Stop()
	}
}

// discard reads up to 64 KiB of body, and no more.
func discard(body io.Reader) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	_, _ = io.CopyBuffer(io.Discard, io.LimitReader(body, 64<<10), *bp)
}

// copyBuffers pools the 32 KiB buffers response bodies are copied through.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// streaming reports whether a response's Content-Type says it streams:
// an event stream or gRPC, which must reach the client as they come.
func streaming(ct []string) bool {
	if len(ct) == 0 {
		return false
	}
	v := ct[0]
	if i := strings.IndexByte(v, ';'); i >= 0 {
		v = v[:i]
	}
	v = strings.TrimSpace(v)
	return strings.EqualFold(v, "text/event-stream") || strings.EqualFold(v, "application/grpc") ||
		len(v) > len("application/grpc+") && strings.EqualFold(v[:len("application/grpc+")], "application/grpc+")
}

// Interim relays an interim response (1xx but 101) to the client with the
// instance's headers only, and leaves the client's header map as it was
// for the final response. It implements upstream.Interim.
func (at *attempt) Interim(code int, header http.Header) error {
	if at.quiet {
		return nil
	}
	h := at.w.Header()
	saved := make(http.Header, len(h))
	for k, vs := range h {
		saved[k] = vs
	}
	clear(h)
	for k, vs := range header {
		h[k] = vs
	}
	at.w.WriteHeader(code)
	clear(h)
	for k, vs := range saved {
		h[k] = vs
	}
	return nil
}

// errUpgradeMismatch fails an attempt whose instance switched to another
// protocol than the client asked for, or when it was not asked to.
var errUpgradeMismatch = errors.New("the instance switched protocols unasked")

// switchProtocols relays a 101 Switching Protocols: it takes the client's
// connection, writes the instance's response on it (with Via), and copies
// bytes both ways until either side closes or the request's context ends.
func (at *attempt) switchProtocols(res *http.Response, r *http.Request) error {
	if at.upgrade == "" || !strings.EqualFold(at.upgrade, res.Header.Get("Upgrade")) ||
		!httpguts.HeaderValuesContainsToken(res.Header["Connection"], "Upgrade") {
		return fmt.Errorf("%w: asked for %q, got %q", errUpgradeMismatch, at.upgrade, res.Header.Get("Upgrade"))
	}
	backConn, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		return errors.New("the transport gave a 101 response a body that cannot be written")
	}
	removeHopByHop(res.Header, true)
	h := at.w.Header()
	for k, vs := range res.Header {
		h[k] = vs
	}
	conn, brw, err := http.NewResponseController(at.w).Hijack()
	if err != nil {
		return fmt.Errorf("switching protocols: %w", err)
	}
	defer conn.Close()
	at.final(http.StatusSwitchingProtocols)
	at.hijacked = true
	res.Header, res.Body = h, nil
	if err := res.Write(brw); err != nil {
		return nil
	}
	if err := brw.Flush(); err != nil {
		return nil
	}
	errc := make(chan error, 2)
	go func() {
		// What the server read past the request's headers comes first.
		_, err := io.Copy(backConn, brw.Reader)
		errc <- err
	}()
	go func() {
		_, err := io.Copy(conn, backConn)
		errc <- err
	}()
	// Either side closing ends both, as does the request's context (Caddy
	// stopping).
	pending := 2
	select {
	case <-errc:
		pending--
	case <-r.Context().Done():
	}
	backConn.Close()
	conn.Close()
	for range pending {
		<-errc
	}
	return nil
}
