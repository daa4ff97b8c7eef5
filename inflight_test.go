package caddylb_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
)

// TestLeastConnectionsAvoidsBusyInstance holds requests open on one
// instance and checks that new requests go to the others, spread evenly.
func TestLeastConnectionsAvoidsBusyInstance(t *testing.T) {
	busy, idle1, idle2 := newBackend(t, "busy"), newBackend(t, "idle1"), newBackend(t, "idle2")
	release := newGate()
	t.Cleanup(release.open)
	arrived := make(chan struct{}, 10)
	busy.handle(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		_ = release.wait(r.Context())
		_, _ = io.WriteString(w, "busy")
	})
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app pay.test {
			strategy least_connections
			instances %s %s %s
		}
	}
}`, busy.URL, idle1.URL, idle2.URL))

	// The first request goes to the first instance (all idle, none picked
	// yet) and stays there until released.
	done := s.getAsync("pay.test", "/")
	recv(t, arrived, "the request at the busy backend")
	if got := instanceOf(t, fetchReport(t), "pay.test", busy.URL).ActiveConnections; got != 1 {
		t.Fatalf("busy instance reports %d active connections, want 1", got)
	}

	for range 20 {
		if status, body := s.get("pay.test", "/"); status != 200 || body == "busy" {
			t.Fatalf("got %d %q while busy holds a request", status, body)
		}
	}
	if a, b := idle1.requests.Load(), idle2.requests.Load(); a != 10 || b != 10 {
		t.Fatalf("idle instances served %d and %d, want 10 and 10", a, b)
	}

	release.open()
	if a := recv(t, done, "the held request's answer"); a.err != nil || a.body != "busy" {
		t.Fatalf("held request got %q %v", a.body, a.err)
	}
	waitFor(t, "active connections back to 0", func() bool {
		return instanceOf(t, fetchReport(t), "pay.test", busy.URL).ActiveConnections == 0
	})
}

// TestInFlightCountedOnEveryExitPath checks that the in-flight count comes
// back to zero however a request ends.
func TestInFlightCountedOnEveryExitPath(t *testing.T) {
	tests := []struct {
		name string
		// handler is the backend's; request drives one request through
		// the load balancer and returns once the request has ended from
		// the client's side.
		handler func(t *testing.T) http.HandlerFunc
		request func(t *testing.T, s *site)
	}{
		{
			name:    "success",
			handler: func(*testing.T) http.HandlerFunc { return nil },
			request: func(t *testing.T, s *site) {
				if status, _ := s.get("x.test", "/"); status != 200 {
					t.Fatalf("status %d", status)
				}
			},
		},
		{
			name: "client aborts while backend works",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					<-r.Context().Done() // until the proxy gives up on it
				}
			},
			request: func(t *testing.T, s *site) {
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.url("/"), nil)
				req.Host = "x.test"
				go func() {
					waitFor(t, "request in flight", func() bool {
						return instanceOf(t, fetchReport(t), "x.test", s.backendURL).ActiveConnections == 1
					})
					cancel()
				}()
				if _, err := client.Do(req); err == nil {
					t.Fatal("request succeeded, want it cancelled")
				}
			},
		},
		{
			name: "backend breaks the connection mid-body",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Length", "1000")
					_, _ = io.WriteString(w, "partial")
					w.(http.Flusher).Flush()
					conn, _, err := http.NewResponseController(w).Hijack()
					if err == nil {
						conn.Close()
					}
				}
			},
			request: func(t *testing.T, s *site) {
				req, _ := http.NewRequest(http.MethodGet, s.url("/"), nil)
				req.Host = "x.test"
				// The status line may or may not have reached the client
				// before the abort; either way it must see a broken
				// exchange, never a complete one or a second status.
				resp, err := client.Do(req)
				if err != nil {
					return
				}
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				if err == nil || resp.StatusCode != 200 {
					t.Fatalf("got %d %q (read error %v), want the 200 stream aborted", resp.StatusCode, body, err)
				}
			},
		},
		{
			name: "upgraded connection until it closes",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					conn, brw, err := http.NewResponseController(w).Hijack()
					if err != nil {
						t.Error(err)
						return
					}
					defer conn.Close()
					_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
					_ = brw.Flush()
					line, _ := brw.ReadString('\n')
					_, _ = brw.WriteString("echo " + line)
					_ = brw.Flush()
					_, _ = brw.ReadString('\n') // until the client closes
				}
			},
			request: func(t *testing.T, s *site) {
				conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.port))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
				br := bufio.NewReader(conn)
				resp, err := http.ReadResponse(br, nil)
				if err != nil || resp.StatusCode != 101 {
					t.Fatalf("upgrade: %v %v", resp, err)
				}
				_, _ = io.WriteString(conn, "ping\n")
				if line, _ := br.ReadString('\n'); line != "echo ping\n" {
					t.Fatalf("echo: got %q", line)
				}
				if got := instanceOf(t, fetchReport(t), "x.test", s.backendURL).ActiveConnections; got != 1 {
					t.Fatalf("upgraded connection open: %d active connections, want 1", got)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t, "b")
			if h := tt.handler(t); h != nil {
				b.handle(h)
			}
			s := newSite(t)
			s.backendURL = b.URL
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app x.test {
			strategy least_connections
			instances %s
		}
	}
}`, b.URL))
			tt.request(t, s)
			waitFor(t, "active connections back to 0", func() bool {
				in := instanceOf(t, fetchReport(t), "x.test", b.URL)
				return in.ActiveConnections == 0 && in.TotalRequests == 1
			})
		})
	}
}
