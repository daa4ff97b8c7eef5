package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
)

// DrainFunc takes an instance out of rotation (drain true) or puts it back
// (drain false) at runtime, without a config reload. host and url name the
// instance as the report does: App.Host and Instance.URL. It returns an
// error wrapping ErrUnknownInstance when no app or instance matches.
type DrainFunc func(host, url string, drain bool) error

// ErrNoDrainer is returned by Drain when no DrainFunc is registered.
var ErrNoDrainer = errors.New("draining instances is not available")

// ErrUnknownInstance is what a DrainFunc wraps when the running config has
// no such app or instance.
var ErrUnknownInstance = errors.New("no such instance")

// drainer is the registered DrainFunc, if any. Process-wide, like drain
// state has to be: it must outlive config reloads.
var drainer atomic.Pointer[DrainFunc]

// SetDrainer registers f as the process's way to drain instances, or
// removes it with nil, and returns the DrainFunc it replaces (nil if none).
// The load balancer calls it once, from its package's init; tests may swap
// it and put the previous one back.
func SetDrainer(f DrainFunc) (previous DrainFunc) {
	var p *DrainFunc
	if f != nil {
		p = &f
	}
	if old := drainer.Swap(p); old != nil {
		return *old
	}
	return nil
}

// DrainAvailable reports whether a DrainFunc is registered.
func DrainAvailable() bool { return drainer.Load() != nil }

// Drain drains (drain true) or undrains the instance url of the app that
// serves host with the registered DrainFunc, or returns ErrNoDrainer.
func Drain(host, url string, drain bool) error {
	f := drainer.Load()
	if f == nil {
		return ErrNoDrainer
	}
	return (*f)(host, url, drain)
}

// Paths of the drain and undrain routes on Caddy's admin endpoint.
const (
	DrainPath   = "/api/v1/loadBalancers/instances/drain"
	UndrainPath = "/api/v1/loadBalancers/instances/undrain"
)

// MaxDrainBody bounds the body of a drain or undrain request.
const MaxDrainBody = 64 << 10

// DrainRequest is the body of a drain or undrain request: the instance as
// the report names it.
type DrainRequest struct {
	Host string `json:"host"`
	URL  string `json:"url"`
}

// DecodeDrainRequest reads the JSON body of a drain or undrain request.
// It returns the status to answer with when the request is bad (400, or
// 415 for a body that is not JSON), with an error saying why.
func DecodeDrainRequest(w http.ResponseWriter, r *http.Request) (DrainRequest, int, error) {
	var req DrainRequest
	// A JSON body also keeps HTML forms out: a cross-origin page cannot
	// send it without a CORS preflight.
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return req, http.StatusUnsupportedMediaType,
			errors.New(`want a JSON body {"host": ..., "url": ...} with Content-Type application/json`)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxDrainBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, http.StatusBadRequest, fmt.Errorf("bad request body: %v", err)
	}
	if req.URL == "" {
		return req, http.StatusBadRequest, errors.New(`bad request body: "url" is missing`)
	}
	return req, 0, nil
}

// serveDrain is the admin handler of DrainPath (drain true) and
// UndrainPath.
func serveDrain(drain bool) caddy.AdminHandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed,
				Err: fmt.Errorf("method %s not allowed: drain and undrain take POST", r.Method)}
		}
		req, status, err := DecodeDrainRequest(w, r)
		if err != nil {
			return caddy.APIError{HTTPStatus: status, Err: err}
		}
		switch err := Drain(req.Host, req.URL, drain); {
		case errors.Is(err, ErrNoDrainer):
			return caddy.APIError{HTTPStatus: http.StatusNotImplemented, Err: err}
		case errors.Is(err, ErrUnknownInstance):
			return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: err}
		case err != nil:
			return caddy.APIError{HTTPStatus: http.StatusConflict, Err: err}
		}
		body, err := json.Marshal(struct {
			Host     string `json:"host"`
			URL      string `json:"url"`
			Draining bool   `json:"draining"`
		}{req.Host, req.URL, drain})
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/json")
		_, err = w.Write(append(body, '\n'))
		return err
	}
}
