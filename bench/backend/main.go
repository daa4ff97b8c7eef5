// Command backend is the benchmark's backend: a small HTTP server on
// loopback that answers every request with a fixed body, optionally after a
// sleep, and answers health checks.
//
//	backend -port 9001 -body 16 -sleep 5ms
//	backend -addr 127.1.0.1 -addrs 5000 -port 9100   # one listener on each of 5000 addresses
//	backend -port 9001 -grpc                         # gRPC over h2c (see grpc.go)
//	backend -port 9001 -sleep 5ms -cap 8             # at most 8 requests at once; 503 for more
//	backend -port 9001 -slow-percent 6 -slow 200ms   # 6% of the requests (at random) answered after 200 ms
//
// Any path ending in /health gets 200 "ok" at once (no sleep), so instances
// with a base path (http://127.0.0.1:9001/i3) pass their checks too.
// With -cap, a request beyond the cap is answered 503 at once and counted
// as refused; POST /_cap?n=16 changes the cap while it runs (n=0: none).
// GET /_stats returns the requests served so far as JSON. It listens on
// loopback addresses only and refuses any other.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1", "loopback address to listen on (the first one with -addrs)")
	port := flag.Int("port", 0, "port to listen on (required)")
	addrs := flag.Int("addrs", 1, "listen on this many consecutive loopback addresses from -addr, one listener each, same port")
	body := flag.Int("body", 16, "response body size in bytes")
	sleep := flag.Duration("sleep", 0, "sleep this long before answering (not for /health)")
	capacity := flag.Int("cap", 0, "serve at most this many requests at once, answering 503 to more (0: no cap)")
	slowPercent := flag.Float64("slow-percent", 0, "answer this share of the requests (in %, at random) after -slow instead of -sleep")
	slow := flag.Duration("slow", 200*time.Millisecond, "the sleep of the slow answers of -slow-percent")
	grpcMode := flag.Bool("grpc", false, "serve gRPC over h2c instead: grpc-go's interop TestService and the health service")
	flag.Parse()
	if *port <= 0 || *port > 65535 {
		log.Fatal("backend: -port is required")
	}
	first, err := netip.ParseAddr(*addr)
	if err != nil || !first.Is4() {
		log.Fatalf("backend: -addr %q: not an IPv4 address", *addr)
	}

	if *grpcMode {
		serveGRPC(first, *port)
		return
	}

	var requests, checks, refused, inFlight, limit atomic.Int64
	limit.Store(int64(*capacity))
	payload := bytes.Repeat([]byte("x"), *body)
	length := strconv.Itoa(len(payload))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/health"):
			checks.Add(1)
			w.Header().Set("Content-Length", "2")
			_, _ = w.Write([]byte("ok"))
		case r.URL.Path == "/_stats":
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]int64{
				"requests": requests.Load(), "health_checks": checks.Load(), "refused": refused.Load(),
			})
		case r.URL.Path == "/_cap" && r.Method == http.MethodPost:
			n, err := strconv.Atoi(r.URL.Query().Get("n"))
			if err != nil || n < 0 {
				http.Error(w, "n: a count of 0 or more", http.StatusBadRequest)
				return
			}
			limit.Store(int64(n))
			fmt.Fprintf(os.Stderr, "backend: cap %d\n", n)
		default:
			// A slot, taken only when one is free: a refused request
			// never holds one, even for a moment.
			for {
				n := inFlight.Load()
				if c := limit.Load(); c > 0 && n >= c {
					refused.Add(1)
					http.Error(w, "over capacity", http.StatusServiceUnavailable)
					return
				}
				if inFlight.CompareAndSwap(n, n+1) {
					break
				}
			}
			defer inFlight.Add(-1)
			requests.Add(1)
			d := *sleep
			if *slowPercent > 0 && rand.Float64()*100 < *slowPercent {
				d = *slow
			}
			if d > 0 {
				time.Sleep(d)
			}
			h := w.Header()
			h["Content-Type"] = []string{"text/plain"}
			h["Content-Length"] = []string{length}
			_, _ = w.Write(payload)
		}
	})
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(os.Stderr, "backend: ", 0)}

	a := first
	listeners := make([]net.Listener, 0, *addrs)
	for i := 0; i < *addrs; i++ {
		if !a.IsLoopback() {
			log.Fatalf("backend: %v is not a loopback address", a)
		}
		ln, err := net.Listen("tcp4", netip.AddrPortFrom(a, uint16(*port)).String())
		if err != nil {
			log.Fatalf("backend: %v (listener %d of %d)", err, i+1, *addrs)
		}
		listeners = append(listeners, ln)
		a = nextHost(a)
	}
	for _, ln := range listeners {
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Fatalf("backend: %v", err)
			}
		}()
	}
	fmt.Fprintf(os.Stderr, "backend: listening on %d address(es) from %v, port %d, body %d B, sleep %v, cap %d\n",
		len(listeners), first, *port, *body, *sleep, *capacity)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	_ = srv.Close()
}

// nextHost returns the address after a, skipping those whose last byte is
// 0 or 255, so a range never holds a network or broadcast-looking address.
func nextHost(a netip.Addr) netip.Addr {
	for {
		a = a.Next()
		if b := a.As4(); b[3] != 0 && b[3] != 255 {
			return a
		}
	}
}
