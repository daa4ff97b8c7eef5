package caddylb_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// grpcBackend is a real gRPC server on 127.0.0.1: grpc-go's interop
// TestService (each answer names the backend) and the standard health
// service.
type grpcBackend struct {
	testpb.UnimplementedTestServiceServer
	name   string
	ln     net.Listener
	srv    *grpc.Server
	health *health.Server

	calls    atomic.Int64
	failWith atomic.Pointer[codes.Code] // UnaryCall fails with it, if set
	// blocked gets a call's context when UnaryCall is asked to block
	// (ResponseSize -1): the test sees its deadline and its end.
	blocked chan context.Context
}

// newGRPCBackend starts a gRPC backend over h2c, or over TLS with ALPN h2
// if cert is set, stopped when the test ends.
func newGRPCBackend(t testing.TB, name string, cert *tls.Certificate) *grpcBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if cert != nil {
		opts = append(opts, grpc.Creds(credentials.NewServerTLSFromCert(cert)))
	}
	b := &grpcBackend{name: name, ln: ln, srv: grpc.NewServer(opts...), health: health.NewServer(),
		blocked: make(chan context.Context, 16)}
	testpb.RegisterTestServiceServer(b.srv, b)
	healthpb.RegisterHealthServer(b.srv, b.health)
	var wg sync.WaitGroup
	wg.Go(func() { _ = b.srv.Serve(ln) })
	t.Cleanup(func() {
		b.srv.Stop()
		wg.Wait()
	})
	return b
}

// url is the backend's instance URL: h2c://, or https:// for TLS.
func (b *grpcBackend) url(scheme string) string { return scheme + "://" + b.ln.Addr().String() }

func (b *grpcBackend) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	b.calls.Add(1)
	return &testpb.Empty{}, nil
}

func (b *grpcBackend) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	b.calls.Add(1)
	if c := b.failWith.Load(); c != nil {
		return nil, status.Error(*c, "told to fail")
	}
	if req.GetResponseSize() < 0 {
		b.blocked <- ctx
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &testpb.SimpleResponse{Hostname: b.name, Payload: req.GetPayload()}, nil
}

func (b *grpcBackend) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	b.calls.Add(1)
	for i, p := range req.GetResponseParameters() {
		body := []byte{byte(i)}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: append(body, make([]byte, p.GetSize())...)}}); err != nil {
			return err
		}
	}
	return nil
}

// FullDuplexCall echoes each message as it comes, with the backend's name
// in the header metadata: the client sees an answer before it sends the
// next message only if nothing buffers either way.
func (b *grpcBackend) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	b.calls.Add(1)
	if err := stream.SendHeader(metadata.Pairs("backend", b.name)); err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

// grpcClient returns a client of the test service through Caddy's h2c
// front on port: one connection for every call.
func grpcClient(t testing.TB, port int) testpb.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", port), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

// grpcGlobal is the global option a site serving gRPC over h2c needs.
const grpcGlobal = "servers {\n\t\tprotocols h1 h2c\n\t}"

// testCert makes a self-signed certificate for 127.0.0.1, and writes it
// to a PEM file for tls_trust_pool.
func testCert(t testing.TB) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "caddy-lb test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "cert.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, file
}
