package upstream

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// benchBackend starts a minimal HTTP/1.1 backend in a child process (this
// test binary, see TestMain), so that the CPU time the benchmarks report
// is the client's alone. It returns the URL to request.
func benchBackend(b *testing.B) string {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), benchBackendEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatal(err)
	}
	return "http://" + strings.TrimSpace(addr) + "/bench?x=1"
}

const benchBackendEnv = "UPSTREAM_BENCH_BACKEND"

// TestMain runs the benchmarks' backend when asked to, instead of the
// tests.
func TestMain(m *testing.M) {
	if os.Getenv(benchBackendEnv) == "" {
		os.Exit(m.Run())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr())
	serveBench(ln)
}

// serveBench answers every request with "ok", allocating next to nothing:
// it reads the header lines, then a Content-Length body.
func serveBench(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				length := 0
				for {
					line, err := br.ReadSlice('\n')
					if err != nil {
						return
					}
					if len(line) <= 2 {
						break
					}
					if len(line) > 16 && strings.EqualFold(string(line[:15]), "content-length:") {
						length, _ = strconv.Atoi(strings.TrimSpace(string(line[15:])))
					}
				}
				if _, err := br.Discard(length); err != nil {
					return
				}
				if _, err := io.WriteString(c, okReply); err != nil {
					return
				}
			}
		}()
	}
}

// transports are the round trippers compared, both set up as proxy.go
// sets up an app's transport (10s timeout): ours, and http.Transport.
func transports() []struct {
	name string
	rt   http.RoundTripper
} {
	const timeout = 10 * time.Second
	return []struct {
		name string
		rt   http.RoundTripper
	}{
		{"upstream", &Transport{
			DialTimeout:           timeout,
			ResponseHeaderTimeout: timeout,
			ExpectContinueTimeout: time.Second,
			MaxIdlePerHost:        256,
		}},
		{"http.Transport", &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   timeout,
			ResponseHeaderTimeout: timeout,
			ExpectContinueTimeout: time.Second,
			DisableCompression:    true,
		}},
	}
}

// cpuPerOp reports the process's CPU time per operation as the metric
// cpu-ns/op: the client's, the backend being another process.
func cpuPerOp(b *testing.B) func() {
	start := processCPU()
	return func() {
		b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
	}
}

// reqContext is a cancelable context, as a server's request has.
func reqContext(b *testing.B) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	return ctx
}

// BenchmarkRoundTrip compares a round trip (request written, response
// read, body copied and closed) on a keep-alive connection to a loopback
// backend.
func BenchmarkRoundTrip(b *testing.B) {
	target := benchBackend(b)
	body := bytes.Repeat([]byte("x"), 1024)
	newReq := func(b *testing.B, post bool) (*http.Request, *bytes.Reader) {
		if !post {
			req, _ := http.NewRequestWithContext(reqContext(b), "GET", target, nil)
			req.Header.Set("User-Agent", "")
			return req, nil
		}
		r := bytes.NewReader(body)
		req, _ := http.NewRequestWithContext(reqContext(b), "POST", target, r)
		req.GetBody = nil
		return req, r
	}
	roundTrip := func(b *testing.B, rt http.RoundTripper, req *http.Request, r *bytes.Reader) {
		if r != nil {
			// Opaque to net/http, as a server's request body is.
			r.Reset(body)
			req.Body = opaqueBody{r}
		}
		resp, err := rt.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for _, kind := range []string{"GET", "POST1K"} {
		post := kind == "POST1K"
		for _, tc := range transports() {
			b.Run(kind+"/"+tc.name+"/serial", func(b *testing.B) {
				defer tc.rt.(interface{ CloseIdleConnections() }).CloseIdleConnections()
				req, r := newReq(b, post)
				b.ReportAllocs()
				defer cpuPerOp(b)()
				for b.Loop() {
					roundTrip(b, tc.rt, req, r)
				}
			})
			b.Run(kind+"/"+tc.name+"/parallel", func(b *testing.B) {
				defer tc.rt.(interface{ CloseIdleConnections() }).CloseIdleConnections()
				b.ReportAllocs()
				defer cpuPerOp(b)()
				b.RunParallel(func(pb *testing.PB) {
					req, r := newReq(b, post)
					for pb.Next() {
						roundTrip(b, tc.rt, req, r)
					}
				})
			})
		}
	}
}

// benchBuffers pools ReverseProxy's copy buffers, as proxy.go does.
type benchBuffers struct{}

var benchBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (benchBuffers) Get() []byte  { return *benchBufPool.Get().(*[]byte) }
func (benchBuffers) Put(b []byte) { benchBufPool.Put(&b) }

// opaqueBody hides a bytes.Reader from net/http's special cases for
// in-memory bodies: a proxied body is a server's request body.
type opaqueBody struct{ r *bytes.Reader }

func (b opaqueBody) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b opaqueBody) Close() error               { return nil }

// discardWriter is a ResponseWriter that keeps nothing.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(int)             {}

// BenchmarkReverseProxy compares httputil.ReverseProxy over each
// transport: the proxy's share of serving a request, without the front
// server.
func BenchmarkReverseProxy(b *testing.B) {
	target, _ := url.Parse(benchBackend(b))
	for _, tc := range transports() {
		rp := &httputil.ReverseProxy{
			Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
			Transport:  tc.rt,
			BufferPool: benchBuffers{},
		}
		b.Run(tc.name+"/serial", func(b *testing.B) {
			defer tc.rt.(interface{ CloseIdleConnections() }).CloseIdleConnections()
			in := httptest.NewRequest("GET", "http://front.example/page", nil).WithContext(reqContext(b))
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			defer cpuPerOp(b)()
			for b.Loop() {
				clear(w.h)
				rp.ServeHTTP(w, in)
			}
		})
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			defer tc.rt.(interface{ CloseIdleConnections() }).CloseIdleConnections()
			b.ReportAllocs()
			defer cpuPerOp(b)()
			b.RunParallel(func(pb *testing.PB) {
				in := httptest.NewRequest("GET", "http://front.example/page", nil).WithContext(reqContext(b))
				w := &discardWriter{h: http.Header{}}
				for pb.Next() {
					clear(w.h)
					rp.ServeHTTP(w, in)
				}
			})
		})
	}
}
