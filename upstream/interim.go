package upstream

import (
	"context"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
)

// Interim receives a request's interim responses (1xx but 101), in the
// order they come, before RoundTrip returns the final response. It is
// called from the goroutine that reads the response, which on Fallback may
// not be RoundTrip's caller. An error fails the request.
type Interim interface {
	Interim(code int, header http.Header) error
}

type interimKey struct{}

// WithInterim returns a copy of ctx under which Transport passes the 1xx
// responses of a request to h, on the fast path and on Fallback alike
// (there through httptrace's Got1xxResponse). A request's httptrace
// Got1xxResponse, if it has one, is called too. It costs a proxy one
// context value per request, where httptrace costs a trace and a closure.
func WithInterim(ctx context.Context, h Interim) context.Context {
	return context.WithValue(ctx, interimKey{}, h)
}

// interimOf returns the Interim under ctx, or nil.
func interimOf(ctx context.Context) Interim {
	h, _ := ctx.Value(interimKey{}).(Interim)
	return h
}

// withInterimTrace returns req with its Interim, if any, as an httptrace
// hook, for a transport that knows only those.
func withInterimTrace(req *http.Request) *http.Request {
	h := interimOf(req.Context())
	if h == nil {
		return req
	}
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, header textproto.MIMEHeader) error {
		return h.Interim(code, http.Header(header))
	}}
	return req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
}
