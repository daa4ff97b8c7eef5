package upstream

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// FuzzResponse sends two requests to a backend whose first reply is the
// fuzzer's bytes and whose later replies carry a random nonce. RoundTrip
// must not panic, must return a response or an error, and the second
// request must get the nonce: it never reads what was left of the first
// reply on a reused connection.
func FuzzResponse(f *testing.F) {
	for _, seed := range []string{
		okReply,
		okReply + okReply,
		okReply + "garbage",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: v\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + okReply,
		"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\nraw bytes",
		"HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
		"HTTP/1.1 999 Weird\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
		"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
		"HTTP/1.1 200 OK\r\n Folded: header\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
		"\r\n\r\n",
		"",
		"HTTP/1.1 2",
		okReply + strings.Repeat("x", 6000),
		// Exactly the client's buffer, then more: only the liveness peek
		// sees what is left.
		exactly4K + okReply,
		okReply + strings.Repeat("HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n0123456789abcdef", 100),
	} {
		f.Add(false, []byte(seed))
		f.Add(true, []byte(seed))
	}
	f.Fuzz(func(t *testing.T, head bool, reply []byte) {
		if len(reply) > 8000 {
			// One write on loopback: the backend's reply is all there
			// once any of it is. Longer than the client's 4 KiB buffer,
			// so that what is left may be in the socket.
			return
		}
		method := "GET"
		if head {
			method = "HEAD"
		}
		closeAfter := needsEOF(reply, method)
		var nonceBytes [8]byte
		rand.Read(nonceBytes[:])
		nonce := hex.EncodeToString(nonceBytes[:])
		second := "HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n" + nonce

		it := &fuzzIteration{reply: reply, closeAfter: closeAfter, second: second}
		backend := fuzzBackendFor(t)
		backend.cur.Store(it)
		tr := &Transport{DialContext: dialNoLinger}
		defer func() {
			tr.CloseIdleConnections()
			it.mu.Lock()
			for _, c := range it.conns {
				c.Close()
			}
			it.mu.Unlock()
			it.wg.Wait()
		}()
		// A safety net, not a measure: only a bug makes an exchange wait
		// for bytes that will never come.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		url := "http://" + backend.ln.Addr().String() + "/"

		req, _ := http.NewRequestWithContext(ctx, method, url, nil)
		resp, err := tr.RoundTrip(req)
		if (resp == nil) == (err == nil) {
			t.Fatalf("response %v and error %v", resp, err)
		}
		if ctx.Err() != nil {
			t.Fatal("first exchange hung")
		}
		if resp != nil {
			if resp.StatusCode == http.StatusSwitchingProtocols {
				resp.Body.Close()
			} else {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			if ctx.Err() != nil {
				t.Fatal("first body hung")
			}
		}

		req2, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp2, err := tr.RoundTrip(req2)
		if err != nil {
			t.Fatalf("second request: %v", err)
		}
		b, err := io.ReadAll(resp2.Body)
		resp2.Body.Close()
		if resp2.StatusCode != 200 || string(b) != nonce || err != nil {
			t.Fatalf("second request read %d %q (%v), want the nonce %q", resp2.StatusCode, b, err, nonce)
		}
	})
}

// exactly4K is a 4096-byte response.
var exactly4K = func() string {
	head := "HTTP/1.1 200 OK\r\nContent-Length: 4055\r\n\r\n"
	if len(head)+4055 != 4096 {
		panic("exactly4K is not 4096 bytes")
	}
	return head + strings.Repeat("b", 4055)
}()

// fuzzBackend is the backend of FuzzResponse: one listener for all the
// inputs a fuzzing process runs, one after the other, so that ports last.
type fuzzBackend struct {
	ln  net.Listener
	cur atomic.Pointer[fuzzIteration]
}

// fuzzIteration is what the backend does for one input, and the
// connections it accepted for it.
type fuzzIteration struct {
	reply      []byte
	closeAfter bool
	second     string
	first      atomic.Bool

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

var (
	fuzzOnce sync.Once
	fuzzSrv  *fuzzBackend
	fuzzErr  error
)

func fuzzBackendFor(t *testing.T) *fuzzBackend {
	fuzzOnce.Do(func() {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fuzzErr = err
			return
		}
		fuzzSrv = &fuzzBackend{ln: ln}
		go fuzzSrv.serve()
	})
	if fuzzErr != nil {
		t.Fatal(fuzzErr)
	}
	return fuzzSrv
}

func (b *fuzzBackend) serve() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		// The client of an input waits for each answer: a connection is
		// accepted while its input is the current one.
		it := b.cur.Load()
		it.mu.Lock()
		it.conns = append(it.conns, c)
		it.wg.Add(1)
		it.mu.Unlock()
		go it.handle(c)
	}
}

func (it *fuzzIteration) handle(c net.Conn) {
	defer it.wg.Done()
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		if it.first.CompareAndSwap(false, true) {
			if _, err := c.Write(it.reply); err != nil || it.closeAfter {
				return
			}
			continue
		}
		if _, err := io.WriteString(c, it.second); err != nil {
			return
		}
	}
}

// dialNoLinger dials with SO_LINGER 0, so that the client's closes leave
// no TIME_WAIT behind: a fuzzing run opens many connections.
func dialNoLinger(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.(*net.TCPConn).SetLinger(0)
	return c, nil
}

// needsEOF reports whether reading reply as the client does (1xx, final
// response, body to its end) needs the end of the connection: then the
// backend must close after it, or the client would wait forever.
func needsEOF(reply []byte, method string) bool {
	r := &eofReader{data: reply}
	br := bufio.NewReaderSize(r, 4<<10)
	req := &http.Request{Method: method}
	for {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return r.hitEOF
		}
		code := resp.StatusCode
		if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
			continue
		}
		if code != http.StatusSwitchingProtocols {
			io.Copy(io.Discard, resp.Body)
		}
		return r.hitEOF
	}
}

type eofReader struct {
	data   []byte
	hitEOF bool
}

func (r *eofReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		r.hitEOF = true
		return 0, io.EOF
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}
