package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// exchange is one request and its response on one connection.
//
// Up to two parties use the connection: the reader (the caller's goroutine,
// then whoever reads the response body) and, for requests with a body, the
// writer goroutine. Each calls release once; the last one puts the
// connection back in the pool if both ended cleanly, else closes it.
type exchange struct {
	t     *Transport
	c     *conn
	req   *http.Request // as the caller gave it: for ReadResponse
	ctx   context.Context
	trace *httptrace.ClientTrace
	stop  func() bool // stops the context watch; nil if none

	parties   atomic.Int32
	bad       atomic.Bool // the connection must not be reused
	keepAlive bool        // the response allows reuse

	// With a request body.
	rb          *reqBody
	wdone       chan struct{} // closed when the writer is done
	werr        error         // the writer's error, set before wdone is closed
	hmu         sync.Mutex
	headersDone bool      // the final response's headers are in (under hmu)
	cont        chan bool // Expect: 100-continue: send the body or not
	contSent    bool      // (reader only) a decision was sent on cont

	body respBody
}

// exchange sends wreq (req with the body wrapped as rb) on c and reads the
// response headers. On failure it returns an *attemptError, c closed; or
// the context's error if it ended as a 101 response came in.
func (t *Transport) exchange(c *conn, req, wreq *http.Request, rb *reqBody) (*http.Response, error) {
	ctx := req.Context()
	ex := &exchange{t: t, c: c, req: req, ctx: ctx, rb: rb}
	ex.trace = httptrace.ContextClientTrace(ctx)
	c.nread, c.nwritten = 0, 0
	c.readLimit = t.maxHeaderBytes()
	c.canceled.Store(false)
	if ctx.Done() != nil {
		ex.stop = context.AfterFunc(ctx, ex.cancel)
	}
	c.br = getReader(c)

	if rb == nil {
		ex.parties.Store(1)
		bw := getWriter(c)
		err := writeRequest(bw, wreq, ex.trace)
		if err == nil {
			err = bw.Flush()
		}
		putWriter(bw)
		if err != nil {
			return nil, ex.fail(err, false)
		}
		if d := t.ResponseHeaderTimeout; d > 0 {
			ex.setReadDeadline(time.Now().Add(d))
			c.staleDeadline = false
		}
	} else {
		if c.staleDeadline {
			c.staleDeadline = false
			_ = c.nc.SetReadDeadline(time.Time{})
		}
		ex.parties.Store(2)
		ex.wdone = make(chan struct{})
		if t.ExpectContinueTimeout > 0 && wreq.ProtoAtLeast(1, 1) &&
			httpguts.HeaderValuesContainsToken(wreq.Header["Expect"], "100-continue") {
			ex.cont = make(chan bool, 1)
			rb.gate = ex
		}
		go ex.writeLoop(wreq)
	}

	resp, err := ex.readHeaders()
	if err != nil {
		return nil, ex.fail(err, true)
	}

	// The final response's headers are in: no more header timeout.
	if rb != nil {
		ex.hmu.Lock()
		ex.headersDone = true
		if t.ResponseHeaderTimeout > 0 {
			ex.setReadDeadline(time.Time{})
		}
		ex.hmu.Unlock()
	} else if t.ResponseHeaderTimeout > 0 {
		if resp.StatusCode >= 200 && resp.StatusCode != http.StatusSwitchingProtocols &&
			resp.ContentLength >= 0 && int64(c.br.Buffered()) >= resp.ContentLength {
			c.staleDeadline = true // see conn.staleDeadline
		} else {
			ex.setReadDeadline(time.Time{})
		}
	}
	c.readLimit = math.MaxInt64
	ex.keepAlive = !resp.Close && !wantsClose(req) && resp.StatusCode >= 200
	// Without a 100 Continue, send the body anyway if the connection is to
	// be kept, as the backend must then read it (http.Transport does the
	// same).
	ex.signal(ex.keepAlive)
	resp.TLS = c.tlsState

	if resp.StatusCode == http.StatusSwitchingProtocols {
		if isUpgrade(resp.Header) && rb == nil {
			// The connection now belongs to the response body.
			if ex.stop != nil && !ex.stop() {
				c.close()
				return nil, ctx.Err()
			}
			resp.Body = &upgradeBody{br: c.br, c: c}
			return resp, nil
		}
		ex.keepAlive = false
	}
	if resp.Body == http.NoBody {
		ex.readerDone(true)
		return resp, nil
	}
	ex.body.ex, ex.body.rc = ex, resp.Body
	resp.Body = &ex.body
	return resp, nil
}

// readHeaders reads responses up to the final one, passing 1xx responses
// to the request's Interim and trace.
func (ex *exchange) readHeaders() (*http.Response, error) {
	c, trace := ex.c, ex.trace
	if trace != nil && trace.GotFirstResponseByte != nil {
		if _, err := c.br.Peek(1); err == nil {
			trace.GotFirstResponseByte()
		}
	}
	for {
		resp, err := http.ReadResponse(c.br, ex.req)
		if err != nil {
			return nil, err
		}
		code := resp.StatusCode
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			return resp, nil
		}
		if code == http.StatusContinue && ex.cont != nil && !ex.contSent {
			if trace != nil && trace.Got100Continue != nil {
				trace.Got100Continue()
			}
			ex.signal(true)
		}
		passed := false
		if h := interimOf(ex.ctx); h != nil {
			if err := h.Interim(code, resp.Header); err != nil {
				return nil, err
			}
			passed = true
		}
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
				return nil, err
			}
			passed = true
		}
		if passed {
			c.readLimit = ex.t.maxHeaderBytes()
		}
	}
}

// fail ends a failed exchange: the connection is closed, and the error
// says what RoundTrip needs to decide on a replay.
func (ex *exchange) fail(err error, reading bool) error {
	c := ex.c
	c.close()
	ex.signal(false)
	ae := &attemptError{err: err}
	if ex.rb != nil {
		// The writer has either not read the body yet, and after detach
		// never will, so it ends as soon as its writes fail; or it has,
		// and it might block on the body: don't wait for it.
		if ex.rb.detach() {
			<-ex.wdone
			ae.nothingWritten = c.nwritten == 0
		} else if be := ex.rb.readErr.Load(); be != nil {
			// The client's body broke the exchange: the writer closed the
			// connection, which failed the reading of the response.
			ae.err, ae.final = be, true
		}
	} else if !reading {
		ae.nothingWritten = c.nwritten == 0
	}
	ae.gotBytes = c.nread > 0
	switch {
	case c.canceled.Load() && ex.ctx.Err() != nil:
		ae.err, ae.final = ex.ctx.Err(), true
	case errors.Is(err, errHeaderTooLarge) || c.readLimit <= 0:
		ae.err = fmt.Errorf("upstream: response headers exceed %d bytes", ex.t.maxHeaderBytes())
		ae.final = true
	case reading && isTimeout(err):
		ae.err, ae.final = errHeaderTimeout, true
	}
	ex.release(false)
	return ae
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// signal tells the writer, waiting for a 100 Continue, whether to send the
// body. Reader only.
func (ex *exchange) signal(send bool) {
	if ex.cont != nil && !ex.contSent {
		ex.contSent = true
		ex.cont <- send
	}
}

// cancel runs when the request's context ends: it makes every pending and
// future read and write on the connection fail at once.
func (ex *exchange) cancel() {
	ex.c.canceled.Store(true)
	_ = ex.c.nc.SetDeadline(aLongTimeAgo)
}

// setReadDeadline sets the read deadline without undoing a cancel that
// raced with it.
func (ex *exchange) setReadDeadline(t time.Time) {
	c := ex.c
	_ = c.nc.SetReadDeadline(t)
	if c.canceled.Load() {
		_ = c.nc.SetDeadline(aLongTimeAgo)
	}
}

// writeLoop writes a request that has a body, concurrently with the
// response being read.
func (ex *exchange) writeLoop(wreq *http.Request) {
	c := ex.c
	bw := getWriter(c)
	err := wreq.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	putWriter(bw)
	ex.werr = err
	ex.hmu.Lock()
	if !ex.headersDone {
		switch {
		case err != nil && (ex.rb.readErr.Load() != nil || c.nwritten == 0):
			// The backend waits for a request or the rest of a body that
			// will not come: no use waiting for its response.
			c.close()
		case ex.t.ResponseHeaderTimeout > 0:
			// The header timeout runs from the end of the request. After
			// a failed write too: the backend may have answered early
			// (413...) and closed, and its answer is still to be read.
			ex.setReadDeadline(time.Now().Add(ex.t.ResponseHeaderTimeout))
		}
	}
	ex.hmu.Unlock()
	close(ex.wdone)
	ex.release(err == nil)
}

// readerDone ends the reader's part; clean means the response was read to
// its end.
func (ex *exchange) readerDone(clean bool) {
	c := ex.c
	reuse := clean && ex.keepAlive && c.br.Buffered() == 0
	if clean {
		putReader(c.br)
		c.br = nil
	}
	if !reuse {
		c.close()
	}
	ex.release(reuse)
}

// release ends one party's use of the connection.
func (ex *exchange) release(ok bool) {
	if !ok {
		ex.bad.Store(true)
	}
	if ex.parties.Add(-1) != 0 {
		return
	}
	c := ex.c
	if ex.stop != nil && !ex.stop() {
		ex.bad.Store(true) // the cancel set a deadline in the past
	}
	if ex.rb != nil {
		ex.rb.closeUnclaimed()
	}
	pooled := false
	if !ex.bad.Load() && !c.closed.Load() && (c.tlsConn == nil || c.tlsClean()) {
		pooled = c.hp.put(c)
	} else {
		c.close()
	}
	if h := ex.t.testHookRelease; h != nil {
		h(pooled)
	}
}

// ctxErr returns the context's error if the context ended during the
// exchange, else err.
func (ex *exchange) ctxErr(err error) error {
	if ex.c.canceled.Load() {
		if cerr := ex.ctx.Err(); cerr != nil {
			return cerr
		}
	}
	return err
}

// respBody is the response body: it gives the connection back at io.EOF
// and closes it when closed early.
type respBody struct {
	ex *exchange
	rc io.ReadCloser // from http.ReadResponse

	mu    sync.Mutex
	state int // bodyOpen...
	err   error
}

const (
	bodyOpen = iota
	bodyEOF
	bodyClosed
	bodyFailed
)

var errBodyClosed = errors.New("upstream: read on closed response body")

func (b *respBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	state, serr := b.state, b.err
	b.mu.Unlock()
	switch state {
	case bodyEOF:
		return 0, io.EOF
	case bodyClosed:
		return 0, errBodyClosed
	case bodyFailed:
		return 0, serr
	}
	n, err := b.rc.Read(p)
	if err == nil {
		return n, nil
	}
	b.mu.Lock()
	if b.state == bodyClosed {
		// Closed while this Read was blocked: Close released the
		// connection.
		b.mu.Unlock()
		return n, errBodyClosed
	}
	if err == io.EOF {
		b.state = bodyEOF
	} else {
		err = b.ex.ctxErr(err)
		b.state, b.err = bodyFailed, err
	}
	b.mu.Unlock()
	b.ex.readerDone(err == io.EOF)
	return n, err
}

// Close closes the body; before io.EOF, it closes the connection.
func (b *respBody) Close() error {
	b.mu.Lock()
	state := b.state
	if state == bodyOpen {
		b.state = bodyClosed
	}
	b.mu.Unlock()
	if state == bodyOpen {
		b.ex.c.close()
		// The reading side's buffer is left to the garbage collector: a
		// Read may still be using it.
		b.ex.release(false)
	}
	return nil
}

// upgradeBody is the body of a 101 Switching Protocols response: the
// connection itself, with what was buffered after the headers read first.
type upgradeBody struct {
	br *bufio.Reader
	c  *conn
}

func (u *upgradeBody) Read(p []byte) (int, error)  { return u.br.Read(p) }
func (u *upgradeBody) Write(p []byte) (int, error) { return u.c.nc.Write(p) }
func (u *upgradeBody) Close() error {
	u.c.close()
	return nil
}

// reqBody wraps a request body for the writer goroutine: it remembers
// whether the body was read at all (so that RoundTrip can replay it as it
// is), lets RoundTrip take it back (detach) if not, holds the first Read
// until the backend sends 100 Continue, and keeps the body's read error.
type reqBody struct {
	rc      io.ReadCloser
	state   atomic.Int32 // rbFresh, rbStarted, rbDetached
	closed  atomic.Bool
	gate    *exchange // Expect: 100-continue; writer only
	readErr atomic.Pointer[bodyReadError]
}

const (
	rbFresh = iota
	rbStarted
	rbDetached
)

var (
	errBodyNotSent = errors.New("upstream: request body not sent: backend answered without 100 Continue")
	errDetached    = errors.New("upstream: request body taken back for a retry")
)

func (b *reqBody) Read(p []byte) (int, error) {
	if ex := b.gate; ex != nil {
		b.gate = nil
		if !ex.waitContinue() {
			return 0, errBodyNotSent
		}
	}
	if b.state.Load() != rbStarted && !b.state.CompareAndSwap(rbFresh, rbStarted) {
		return 0, errDetached
	}
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF {
		be := &bodyReadError{err}
		b.readErr.CompareAndSwap(nil, be)
		return n, be
	}
	return n, err
}

// Close closes the body if it was read from. One never read stays open,
// for RoundTrip to send again or for the end of the exchange to close
// (closeUnclaimed).
func (b *reqBody) Close() error {
	if b.state.Load() == rbStarted && b.closed.CompareAndSwap(false, true) {
		return b.rc.Close()
	}
	return nil
}

// closeUnclaimed closes a body that was never read, unless RoundTrip took
// it back. Run when both parties of the exchange are done.
func (b *reqBody) closeUnclaimed() {
	if b.state.CompareAndSwap(rbFresh, rbStarted) && b.closed.CompareAndSwap(false, true) {
		_ = b.rc.Close()
	}
}

// detach takes the body back from the writer if it has not touched it.
func (b *reqBody) detach() bool {
	return b.state.CompareAndSwap(rbFresh, rbDetached) || b.state.Load() == rbDetached
}

func (b *reqBody) isDetached() bool { return b.state.Load() == rbDetached }

// closeOwned closes the request body when no writer will: before any
// attempt, or after the body was taken back.
func (b *reqBody) closeOwned(req *http.Request) {
	if b == nil {
		closeBody(req.Body)
		return
	}
	if b.state.CompareAndSwap(rbFresh, rbDetached) || b.isDetached() {
		if b.closed.CompareAndSwap(false, true) {
			_ = b.rc.Close()
		}
	}
}

// waitContinue waits for the backend's 100 Continue (true), its final
// response (true if the connection is kept), the timeout (true), or the
// end of the exchange (false). Writer only.
func (ex *exchange) waitContinue() bool {
	if ex.trace != nil && ex.trace.Wait100Continue != nil {
		ex.trace.Wait100Continue()
	}
	timer := time.NewTimer(ex.t.ExpectContinueTimeout)
	defer timer.Stop()
	select {
	case send := <-ex.cont:
		return send
	case <-timer.C:
		return true
	case <-ex.ctx.Done():
		return false
	}
}
