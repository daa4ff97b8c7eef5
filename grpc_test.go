package caddylb_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// TestGRPCUnaryPerCall: 300 unary calls on one client connection are
// spread over three h2c backends call by call, not pinned by the
// connection.
func TestGRPCUnaryPerCall(t *testing.T) {
	bs := []*grpcBackend{newGRPCBackend(t, "b1", nil), newGRPCBackend(t, "b2", nil), newGRPCBackend(t, "b3", nil)}
	s := newSite(t)
	s.global = grpcGlobal
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer %s %s %s
}`, bs[0].url("h2c"), bs[1].url("h2c"), bs[2].url("h2c")))
	client := grpcClient(t, s.port)
	got := map[string]int{}
	for i := range 300 {
		resp, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte{byte(i)}}})
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if len(resp.GetPayload().GetBody()) != 1 || resp.GetPayload().GetBody()[0] != byte(i) {
			t.Fatalf("call %d: payload %v", i, resp.GetPayload().GetBody())
		}
		got[resp.GetHostname()]++
	}
	for _, b := range bs {
		// round_robin: exactly a third each.
		if got[b.name] != 100 {
			t.Errorf("calls per backend %v, want 100 each", got)
			break
		}
	}
}

// TestGRPCStreaming: a server-streaming call and a bidirectional one pass
// through, message by message, with trailers and headers.
func TestGRPCStreaming(t *testing.T) {
	b := newGRPCBackend(t, "b1", nil)
	s := newSite(t)
	s.global = grpcGlobal
	s.load(fmt.Sprintf("http://:{port} {\n\tload_balancer %s\n}", b.url("h2c")))
	client := grpcClient(t, s.port)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	out, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{
		{Size: 10}, {Size: 70000}, {Size: 0}, {Size: 5},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for i, size := range []int{10, 70000, 0, 5} {
		msg, err := out.Recv()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if body := msg.GetPayload().GetBody(); len(body) != size+1 || body[0] != byte(i) {
			t.Fatalf("message %d: %d bytes, want %d", i, len(body), size+1)
		}
	}
	if _, err := out.Recv(); err != io.EOF {
		t.Fatalf("after the last message: %v, want io.EOF (grpc-status 0 in the trailers)", err)
	}

	duplex, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		// One message at a time: the echo comes back before the next is
		// sent, so nothing may wait for more data either way.
		if err := duplex.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte{byte(i)}}}); err != nil {
			t.Fatal(err)
		}
		msg, err := duplex.Recv()
		if err != nil {
			t.Fatalf("echo %d: %v", i, err)
		}
		if body := msg.GetPayload().GetBody(); len(body) != 1 || body[0] != byte(i) {
			t.Fatalf("echo %d: %v", i, body)
		}
	}
	md, err := duplex.Header()
	if err != nil || len(md.Get("backend")) != 1 || md.Get("backend")[0] != "b1" {
		t.Errorf("header metadata %v, %v; want backend: b1", md, err)
	}
	if err := duplex.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := duplex.Recv(); err != io.EOF {
		t.Fatalf("after CloseSend: %v, want io.EOF", err)
	}
}

// TestGRPCUnavailableEjects: calls failing with UNAVAILABLE count as 503s,
// so unhealthy_status 503 ejects their backend; the access log has the
// gRPC status.
func TestGRPCUnavailableEjects(t *testing.T) {
	good, bad := newGRPCBackend(t, "good", nil), newGRPCBackend(t, "bad", nil)
	unavailable := codes.Unavailable
	bad.failWith.Store(&unavailable)
	s := newSite(t)
	s.global = grpcGlobal
	s.load(fmt.Sprintf(`
http://:{port} {
	log {
		output file %s
		format json
	}
	load_balancer %s %s {
		unhealthy_status 503
		max_fails 2
		fail_duration 1m
		retries 0
	}
}`, s.logFile, good.url("h2c"), bad.url("h2c")))
	client := grpcClient(t, s.port)
	failed := 0
	for range 20 {
		_, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
		if status.Code(err) == codes.Unavailable {
			failed++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	// round_robin sends the bad backend every other call until it is out:
	// two failures eject it (max_fails 2), then it gets none.
	if failed != 2 {
		t.Errorf("%d calls failed with UNAVAILABLE, want 2 before the ejection", failed)
	}
	rep := fetchReport(t)
	if in := instanceOf(t, rep, "", bad.url("h2c")); in.State != "ejected" || !strings.Contains(in.Reason, "status 503") {
		t.Errorf("the UNAVAILABLE backend: state %q, reason %q; want ejected for status 503", in.State, in.Reason)
	}
	if in := instanceOf(t, rep, "", good.url("h2c")); in.State != "healthy" || in.Failures != 0 {
		t.Errorf("the good backend: state %q, %d failures", in.State, in.Failures)
	}
	waitFor(t, "access log lines with grpc_status 14", func() bool {
		return len(logLines(t, s, func(l map[string]any) bool { return l["grpc_status"] == float64(14) })) == 2
	})
}

// TestGRPCHealthChecks: health_grpc takes out a backend whose health
// service says NOT_SERVING (for the service asked about) and brings it
// back when it says SERVING.
func TestGRPCHealthChecks(t *testing.T) {
	a, b := newGRPCBackend(t, "a", nil), newGRPCBackend(t, "b", nil)
	for _, be := range []*grpcBackend{a, b} {
		be.health.SetServingStatus("grpc.testing.TestService", healthpb.HealthCheckResponse_SERVING)
	}
	s := newSite(t)
	s.global = grpcGlobal
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer %s %s {
		health_grpc grpc.testing.TestService
		health_check_cooldown 20ms
	}
}`, a.url("h2c"), b.url("h2c")))
	state := func() string { return instanceOf(t, fetchReport(t), "", b.url("h2c")).State }
	waitFor(t, "b checked and healthy", func() bool {
		in := instanceOf(t, fetchReport(t), "", b.url("h2c"))
		return in.LastChecked != nil && in.State == "healthy"
	})
	b.health.SetServingStatus("grpc.testing.TestService", healthpb.HealthCheckResponse_NOT_SERVING)
	waitFor(t, "b unhealthy", func() bool { return state() == "unhealthy" })
	if in := instanceOf(t, fetchReport(t), "", b.url("h2c")); !strings.Contains(in.Reason, "NOT_SERVING") {
		t.Errorf("reason %q, want one naming NOT_SERVING", in.Reason)
	}
	client := grpcClient(t, s.port)
	for range 10 {
		resp, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
		if err != nil || resp.GetHostname() != "a" {
			t.Fatalf("with b out: %v, %v", resp.GetHostname(), err)
		}
	}
	b.health.SetServingStatus("grpc.testing.TestService", healthpb.HealthCheckResponse_SERVING)
	waitFor(t, "b healthy again", func() bool { return state() == "healthy" })
	if in := instanceOf(t, fetchReport(t), "", a.url("h2c")); in.State != "healthy" {
		t.Errorf("a: %q", in.State)
	}
}

// TestGRPCDeadlineAndCancel: the client's deadline reaches the backend
// (grpc-timeout), and a call the client cancels is cancelled at the
// backend, counting as no failure of the instance.
func TestGRPCDeadlineAndCancel(t *testing.T) {
	b := newGRPCBackend(t, "b", nil)
	s := newSite(t)
	s.global = grpcGlobal
	s.load(fmt.Sprintf("http://:{port} {\n\tload_balancer %s {\n\t\tmax_fails 1\n\t}\n}", b.url("h2c")))
	client := grpcClient(t, s.port)

	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: -1})
		done <- err
	}()
	backendCtx := recv(t, b.blocked, "the call at the backend")
	deadline, ok := backendCtx.Deadline()
	if !ok || time.Until(deadline) < 50*time.Minute {
		t.Errorf("backend deadline %v (set %v), want about an hour from now", deadline, ok)
	}
	cancel()
	if err := recv(t, done, "the cancelled call's end"); status.Code(err) != codes.Canceled {
		t.Errorf("client: %v, want Canceled", err)
	}
	<-backendCtx.Done() // the backend's stream was reset
	waitFor(t, "the cancelled call to end", func() bool {
		return instanceOf(t, fetchReport(t), "", b.url("h2c")).ActiveConnections == 0
	})
	if in := instanceOf(t, fetchReport(t), "", b.url("h2c")); in.Failures != 0 || in.State != "healthy" {
		t.Errorf("after a cancelled call: %d failures, state %q", in.Failures, in.State)
	}

	// A deadline the backend does not meet: DEADLINE_EXCEEDED, from the
	// client's own deadline.
	short, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	_, err := client.UnaryCall(short, &testpb.SimpleRequest{ResponseSize: -1})
	<-b.blocked
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("a call past its deadline: %v", err)
	}
}

// TestGRPCBackendStopsMidLoad: a backend that stops (gracefully, as a
// process told to exit) while calls flow loses no call: calls in flight
// finish, and those that can no longer reach it go to the others.
func TestGRPCBackendStopsMidLoad(t *testing.T) {
	bs := []*grpcBackend{newGRPCBackend(t, "b1", nil), newGRPCBackend(t, "b2", nil), newGRPCBackend(t, "b3", nil)}
	s := newSite(t)
	s.global = grpcGlobal
	s.load(fmt.Sprintf("http://:{port} {\n\tload_balancer %s %s %s\n}", bs[0].url("h2c"), bs[1].url("h2c"), bs[2].url("h2c")))
	client := grpcClient(t, s.port)
	const workers, perWorker = 4, 150
	var calls atomic.Int64
	stopped := make(chan struct{})
	var stopOnce sync.Once
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker)
	for range workers {
		wg.Go(func() {
			for range perWorker {
				if calls.Add(1) == workers*perWorker/3 {
					stopOnce.Do(func() {
						go func() {
							bs[1].srv.GracefulStop()
							close(stopped)
						}()
					})
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
				cancel()
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	<-stopped
	close(errs)
	for err := range errs {
		t.Errorf("a call failed: %v", err)
	}
	if n := bs[1].calls.Load(); n == 0 || n >= workers*perWorker/3+workers {
		t.Errorf("the stopped backend served %d calls", n)
	}
}

// TestGRPCOverTLS: an https instance speaks HTTP/2 if it offers it by
// ALPN (a gRPC server), HTTP/1.1 if not; its certificate is trusted
// through tls_trust_pool.
func TestGRPCOverTLS(t *testing.T) {
	cert, pemFile := testCert(t)
	g := newGRPCBackend(t, "tls", &cert)
	h1 := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s via %s", r.Proto, r.TLS.NegotiatedProtocol)
	}))
	h1.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
	h1.StartTLS()
	t.Cleanup(h1.Close)

	s := newSite(t)
	s.global = grpcGlobal
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app 127.0.0.1 {
			instances %s
			health_grpc
			health_check_cooldown 50ms
			tls_trust_pool file %s
		}
		app h1.test {
			instances %s
			tls_trust_pool file %s
		}
	}
}`, g.url("https"), pemFile, h1.URL, pemFile))
	client := grpcClient(t, s.port)
	resp, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
	if err != nil || resp.GetHostname() != "tls" {
		t.Fatalf("over TLS: %v, %v", resp.GetHostname(), err)
	}
	waitFor(t, "a passing gRPC check over TLS", func() bool {
		in := instanceOf(t, fetchReport(t), "127.0.0.1", g.url("https"))
		return in.LastChecked != nil && in.State == "healthy" && in.LastError == ""
	})
	if code, body := s.get("h1.test", "/"); code != 200 || body != "HTTP/1.1 via http/1.1" {
		t.Errorf("an HTTP/1.1-only https instance: %d %q", code, body)
	}
}

// TestHTTP1ClientToH2C: an HTTP/1.1 client reaches an h2c instance, which
// sees HTTP/2.
func TestHTTP1ClientToH2C(t *testing.T) {
	h := h2c.NewHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s %q", r.Proto, r.Method, r.URL.RequestURI(), body)
	}), &http2.Server{})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	s := newSite(t)
	s.load(fmt.Sprintf("http://:{port} {\n\tload_balancer %s\n}", strings.Replace(srv.URL, "http://", "h2c://", 1)))
	if code, body := s.get("x.test", "/p?q=1"); code != 200 || body != `HTTP/2.0 GET /p?q=1 ""` {
		t.Errorf("GET: %d %q", code, body)
	}
	req, _ := http.NewRequest("POST", s.url("/up"), strings.NewReader("hello"))
	req.Host = "x.test"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != `HTTP/2.0 POST /up "hello"` {
		t.Errorf("POST: %q", body)
	}
}

// TestGRPCDynamicH2C: instances a DNS source gives, with dynamic_scheme
// h2c, are h2c ones, checked with health_grpc.
func TestGRPCDynamicH2C(t *testing.T) {
	dnsSrv := newDNSServer(t)
	g1, g2 := newGRPCBackend(t, "g1", nil), newGRPCBackend(t, "g2", nil)
	dnsSrv.setA("g1.grpc.lbtest", "127.0.0.1")
	dnsSrv.setA("g2.grpc.lbtest", "127.0.0.1")
	const srvName = "_grpc._tcp.svc.lbtest"
	dnsSrv.setSRV(srvName, "g1.grpc.lbtest:"+hostPort(t, g1.url("http")), "g2.grpc.lbtest:"+hostPort(t, g2.url("http")))
	s := newSite(t)
	s.global = grpcGlobal
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		dynamic srv %s {
			resolvers %s
			refresh 1ms
		}
		dynamic_scheme h2c
		dynamic_refresh 20ms
		health_grpc
		health_check_cooldown 20ms
	}
}`, srvName, dnsSrv.addr))
	waitFor(t, "both discovered instances checked and healthy", func() bool {
		app := fetchReport(t).Apps[0]
		healthy := 0
		for _, in := range app.Instances {
			if strings.HasPrefix(in.URL, "h2c://") && in.LastChecked != nil && in.State == "healthy" {
				healthy++
			}
		}
		return healthy == 2
	})
	client := grpcClient(t, s.port)
	got := map[string]int{}
	for range 10 {
		resp, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
		if err != nil {
			t.Fatal(err)
		}
		got[resp.GetHostname()]++
	}
	if got["g1"] != 5 || got["g2"] != 5 {
		t.Errorf("calls per backend %v, want 5 each", got)
	}
}
