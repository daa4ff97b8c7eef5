package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// hostPool holds the idle connections to one host: a stack, newest on top,
// so that the connections least likely to have been closed by the backend
// are used first and the others age out. No goroutine watches them: a
// connection is checked when it is taken (see conn.alive), and one timer
// per pool closes those idle for longer than the idle timeout.
type hostPool struct {
	t         *Transport
	addr      string // host:port to dial
	tlsConfig *tls.Config
	fallback  bool // requests to this host go to Fallback

	mu         sync.Mutex
	idle       []*conn // oldest first
	timer      *time.Timer
	timerArmed bool
}

func newHostPool(t *Transport, key poolKey) *hostPool {
	hp := &hostPool{t: t}
	host, port, err := net.SplitHostPort(key.host)
	if err != nil {
		// No port (or a malformed host, which dialing will report).
		host, port = key.host, ""
		if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
			host = host[1 : len(host)-1]
		}
	}
	if port == "" {
		port = "80"
		if key.tls {
			port = "443"
		}
	}
	for i := 0; i < len(key.host); i++ {
		if key.host[i] >= 0x80 {
			// An internationalised name needs IDNA: http.Transport's job.
			hp.fallback = true
		}
	}
	hp.addr = net.JoinHostPort(host, port)
	if key.tls {
		cfg := t.TLSClientConfig.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = host
		}
		cfg.NextProtos = []string{"http/1.1"}
		hp.tlsConfig = cfg
	}
	return hp
}

// get returns an idle connection that still looks alive, or a new one
// (always a new one if fresh).
func (hp *hostPool) get(ctx context.Context, fresh bool) (*conn, error) {
	for !fresh {
		hp.mu.Lock()
		n := len(hp.idle)
		if n == 0 {
			hp.mu.Unlock()
			break
		}
		c := hp.idle[n-1]
		hp.idle[n-1] = nil
		hp.idle = hp.idle[:n-1]
		var expired []*conn
		if d := hp.t.idleTimeout(); d > 0 && hp.t.clock().Sub(c.idleAt) >= d {
			// The newest is too old, so are all the others.
			expired = append(hp.idle, c)
			hp.idle = nil
		}
		hp.mu.Unlock()
		if expired != nil {
			for _, c := range expired {
				c.close()
			}
			break
		}
		if c.alive() {
			c.reused = true
			return c, nil
		}
		c.close()
	}
	return hp.dial(ctx)
}

// put gives back a connection whose exchange ended cleanly.
func (hp *hostPool) put(c *conn) bool {
	max := hp.t.maxIdle()
	if max <= 0 {
		c.close()
		return false
	}
	d := hp.t.idleTimeout()
	now := hp.t.clock()
	hp.mu.Lock()
	if len(hp.idle) >= max {
		hp.mu.Unlock()
		c.close()
		return false
	}
	c.idleAt = now
	hp.idle = append(hp.idle, c)
	if d > 0 && !hp.timerArmed {
		hp.timerArmed = true
		if hp.timer == nil {
			hp.timer = time.AfterFunc(d, hp.sweep)
		} else {
			hp.timer.Reset(d)
		}
	}
	hp.mu.Unlock()
	return true
}

// sweep closes the connections idle for the idle timeout or longer, and
// sets the timer for the next one to expire.
func (hp *hostPool) sweep() {
	d := hp.t.idleTimeout()
	now := hp.t.clock()
	hp.mu.Lock()
	if !hp.timerArmed {
		hp.mu.Unlock()
		return
	}
	i := 0
	for i < len(hp.idle) && now.Sub(hp.idle[i].idleAt) >= d {
		i++
	}
	expired := make([]*conn, i)
	copy(expired, hp.idle[:i])
	n := copy(hp.idle, hp.idle[i:])
	clear(hp.idle[n:])
	hp.idle = hp.idle[:n]
	if n > 0 {
		hp.timer.Reset(d - now.Sub(hp.idle[0].idleAt))
	} else {
		hp.timerArmed = false
	}
	hp.mu.Unlock()
	for _, c := range expired {
		c.close()
	}
}

// closeIdle closes every idle connection.
func (hp *hostPool) closeIdle() {
	hp.mu.Lock()
	idle := hp.idle
	hp.idle = nil
	if hp.timerArmed {
		hp.timer.Stop()
		hp.timerArmed = false
	}
	hp.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
}

// idleCount is for tests.
func (hp *hostPool) idleCount() int {
	hp.mu.Lock()
	defer hp.mu.Unlock()
	return len(hp.idle)
}

// dial opens a new connection, with its TLS handshake done.
func (hp *hostPool) dial(ctx context.Context) (*conn, error) {
	t := hp.t
	var nc net.Conn
	var err error
	if t.DialContext != nil {
		dctx := ctx
		if t.DialTimeout > 0 {
			var cancel context.CancelFunc
			dctx, cancel = context.WithTimeout(ctx, t.DialTimeout)
			defer cancel()
		}
		nc, err = t.DialContext(dctx, "tcp", hp.addr)
		if err == nil && nc == nil {
			err = errors.New("DialContext returned no connection")
		}
		if err != nil {
			if _, ok := err.(*net.OpError); !ok {
				err = &net.OpError{Op: "dial", Net: "tcp", Err: err}
			}
		}
	} else {
		nc, err = t.dialer.DialContext(ctx, "tcp", hp.addr)
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		return nil, err
	}
	c := &conn{hp: hp, nc: nc}
	if hp.tlsConfig != nil {
		tc := tls.Client(nc, hp.tlsConfig)
		hctx := ctx
		if t.TLSHandshakeTimeout > 0 {
			var cancel context.CancelFunc
			hctx, cancel = context.WithTimeout(ctx, t.TLSHandshakeTimeout)
			defer cancel()
		}
		if err := tc.HandshakeContext(hctx); err != nil {
			nc.Close()
			if cerr := ctx.Err(); cerr != nil {
				return nil, cerr
			}
			if hctx.Err() != nil {
				return nil, errTLSTimeout
			}
			return nil, err
		}
		st := tc.ConnectionState()
		if p := st.NegotiatedProtocol; p != "" && p != "http/1.1" {
			tc.Close()
			return nil, fmt.Errorf("upstream: backend %s negotiated protocol %q", hp.addr, p)
		}
		c.nc, c.tlsConn, c.tlsState = tc, tc, &st
	}
	c.initPeek(nc)
	return c, nil
}

// conn is one connection to a backend. An exchange owns it from get to
// put or close; the pool owns it while it is idle.
type conn struct {
	hp       *hostPool
	nc       net.Conn // the TLS connection for https
	tlsConn  *tls.Conn
	tlsState *tls.ConnectionState
	reused   bool      // taken from the pool
	idleAt   time.Time // when it was put in the pool
	closed   atomic.Bool
	canceled atomic.Bool // the current exchange's context ended

	// Reading side, used by one goroutine at a time.
	br        *bufio.Reader
	nread     int64 // bytes read in the current exchange
	readLimit int64 // bytes that may still be read before the headers end
	// The read deadline of a past exchange's header timeout is still set:
	// its body was in the buffer already, so no read could reach it, and
	// the syscall to clear it was saved. An exchange that reads before
	// setting its own deadline clears it first.
	staleDeadline bool

	// Writing side, used by one goroutine at a time.
	nwritten int64 // bytes written in the current exchange

	// Liveness check (peek_unix.go).
	raw     syscall.RawConn
	peekFn  func(fd uintptr) bool
	peekBuf [1]byte
	peekRes int
}

var errHeaderTooLarge = errors.New("upstream: response headers too large")

// Read reads from the connection for the bufio.Reader, counting bytes and
// enforcing the header size limit.
func (c *conn) Read(p []byte) (int, error) {
	if c.readLimit <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > c.readLimit {
		p = p[:c.readLimit]
	}
	n, err := c.nc.Read(p)
	c.nread += int64(n)
	c.readLimit -= int64(n)
	return n, err
}

// Write writes to the connection for the bufio.Writer, counting bytes.
func (c *conn) Write(p []byte) (int, error) {
	n, err := c.nc.Write(p)
	c.nwritten += int64(n)
	return n, err
}

func (c *conn) close() {
	if c.closed.CompareAndSwap(false, true) {
		_ = c.nc.Close()
	}
}

// alive reports whether an idle connection may be used: the backend has
// not closed or reset it and sent nothing since its last response. For
// TLS, pending bytes might be a harmless record (a session ticket), but
// are taken as a reason to close too.
func (c *conn) alive() bool {
	if c.closed.Load() {
		return false
	}
	if c.raw == nil {
		return true
	}
	c.peekRes = peekUnknown
	if err := c.raw.Read(c.peekFn); err != nil {
		return false
	}
	return c.peekRes == peekNothing || c.peekRes == peekUnknown
}

// tlsClean reports whether the TLS connection holds no plaintext beyond
// the response just read: a read with a deadline in the past returns data
// only if a whole record is already buffered.
func (c *conn) tlsClean() bool {
	var b [1]byte
	if c.tlsConn.SetReadDeadline(aLongTimeAgo) != nil {
		return false
	}
	n, err := c.tlsConn.Read(b[:])
	if n > 0 {
		return false
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		return false
	}
	return c.tlsConn.SetReadDeadline(time.Time{}) == nil
}

// Results of a liveness peek.
const (
	peekUnknown = iota // no check possible
	peekNothing        // nothing to read: alive
	peekDead           // EOF or error
	peekData           // unsolicited bytes
)

var (
	readers sync.Pool
	writers sync.Pool
)

func getReader(c *conn) *bufio.Reader {
	if br, ok := readers.Get().(*bufio.Reader); ok {
		br.Reset(c)
		return br
	}
	return bufio.NewReaderSize(c, 4<<10)
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	readers.Put(br)
}

func getWriter(c *conn) *bufio.Writer {
	if bw, ok := writers.Get().(*bufio.Writer); ok {
		bw.Reset(c)
		return bw
	}
	return bufio.NewWriterSize(c, 4<<10)
}

func putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	writers.Put(bw)
}
