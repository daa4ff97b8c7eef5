package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// testService answers UnaryCall with the request's payload, and
// EmptyCall.
type testService struct {
	testpb.UnimplementedTestServiceServer
}

func (testService) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	return &testpb.Empty{}, nil
}

func (testService) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

// serveGRPC serves gRPC over h2c (prior knowledge) on addr:port until
// SIGTERM or SIGINT.
func serveGRPC(addr netip.Addr, port int) {
	if !addr.IsLoopback() {
		log.Fatalf("backend: %v is not a loopback address", addr)
	}
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(addr, uint16(port)).String())
	if err != nil {
		log.Fatalf("backend: %v", err)
	}
	srv := grpc.NewServer()
	testpb.RegisterTestServiceServer(srv, testService{})
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() {
		if err := srv.Serve(ln); err != nil {
			log.Fatalf("backend: %v", err)
		}
	}()
	fmt.Fprintf(os.Stderr, "backend: gRPC over h2c on %v\n", ln.Addr())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	srv.Stop()
}
