package caddylb

import (
	"fmt"
	"net/http"
	"strconv"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// GRPCHealthCheck turns on gRPC health checks: each instance is asked
// grpc.health.v1.Health/Check over its own HTTP/2 connections.
type GRPCHealthCheck struct {
	// The service asked about; "" (the default) for the whole server.
	Service string `json:"service,omitempty"`
}

// grpcHTTPStatus maps gRPC status codes (google.rpc.Code) to the HTTP
// status a call that ends with them counts as in passive health checks,
// metrics and the report, as grpc-gateway maps them.
var grpcHTTPStatus = [...]int{
	0:  http.StatusOK,                  // OK
	1:  StatusClientClosedRequest,      // CANCELLED
	2:  http.StatusInternalServerError, // UNKNOWN
	3:  http.StatusBadRequest,          // INVALID_ARGUMENT
	4:  http.StatusGatewayTimeout,      // DEADLINE_EXCEEDED
	5:  http.StatusNotFound,            // NOT_FOUND
	6:  http.StatusConflict,            // ALREADY_EXISTS
	7:  http.StatusForbidden,           // PERMISSION_DENIED
	8:  http.StatusTooManyRequests,     // RESOURCE_EXHAUSTED
	9:  http.StatusBadRequest,          // FAILED_PRECONDITION
	10: http.StatusConflict,            // ABORTED
	11: http.StatusBadRequest,          // OUT_OF_RANGE
	12: http.StatusNotImplemented,      // UNIMPLEMENTED
	13: http.StatusInternalServerError, // INTERNAL
	14: http.StatusServiceUnavailable,  // UNAVAILABLE
	15: http.StatusInternalServerError, // DATA_LOSS
	16: http.StatusUnauthorized,        // UNAUTHENTICATED
}

// grpcCallStatus returns the gRPC status a call ended with, from the
// response's trailers (or its headers, for a trailers-only response), and
// the HTTP status it counts as; ok is false if the response has none.
func grpcCallStatus(header, trailer http.Header) (code, status int, ok bool) {
	v := trailer["Grpc-Status"]
	if len(v) == 0 {
		v = header["Grpc-Status"]
	}
	if len(v) == 0 {
		return 0, 0, false
	}
	code, err := strconv.Atoi(v[0])
	if err != nil || code < 0 {
		return 0, http.StatusBadGateway, true // a malformed status: the instance's fault
	}
	if code >= len(grpcHTTPStatus) {
		return code, http.StatusInternalServerError, true // unknown codes are UNKNOWN
	}
	return code, grpcHTTPStatus[code], true
}

// logGRPCStatus adds the call's gRPC status to r's access log entry, if it
// has one.
func logGRPCStatus(r *http.Request, code int) {
	if !accessLogged(r) {
		return
	}
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Set(zap.Int("grpc_status", code))
	}
}

// checkGRPCHealth checks the options of gRPC health checks: not with
// health_uri, nor with the options of HTTP checks, and the instances must
// speak HTTP/2.
func checkGRPCHealth(app *App, s *settings) error {
	if app.HealthURI != "" {
		return optionError("health_grpc", fmt.Errorf("%w: with health_uri; a check is either HTTP or gRPC", ErrInapplicableOption))
	}
	for _, o := range []struct {
		name string
		set  bool
	}{
		{"health_method", app.HealthMethod != ""},
		{"health_headers", len(app.HealthHeaders) > 0},
		{"health_status", len(app.HealthStatus) > 0},
		{"health_body", app.HealthBody != ""},
	} {
		if o.set {
			return optionError(o.name, fmt.Errorf("%w: it configures HTTP health checks, and health_grpc makes them gRPC ones", ErrInapplicableOption))
		}
	}
	for i, u := range s.urls {
		if u.Scheme == "http" {
			return optionError(fmt.Sprintf("instances[%d].url", i),
				fmt.Errorf("%w: health_grpc needs instances that speak HTTP/2: h2c:// or https://, got %q", ErrInapplicableOption, u.Redacted()))
		}
	}
	if s.discovery.on && s.discovery.scheme == "http" {
		return optionError("dynamic_scheme", fmt.Errorf("%w: health_grpc needs instances that speak HTTP/2: h2c or https", ErrInapplicableOption))
	}
	return nil
}
